"""The provider agent end to end over a running exchange: the agent posts its inventory's ask, a
trader's bid fills, the agent provisions the lease over ssh, the renter gets the connection on its
private channel and logs in with its key; releasing the lease tears it down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from exchange_helpers import USD, running_exchange

from agent.agent import Agent
from agent.ssh import SshBackend
from agent.sshlib import asyncssh
from client.feeds import FeedClient

pytestmark = pytest.mark.timeout(180)


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_bid_fills_agent_provisions_renter_logs_in_release_tears_down(tmp_path: Path) -> None:
    renter_key = asyncssh.generate_private_key("ssh-ed25519")
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[asks]]\nclass = "H100"\ngpus = 8\nprice_usd = 2.00\nspot_price_usd = 1.20\nhours = 24\n')

    async def scenario() -> None:
        async with running_exchange(tmp_path / "data", engine="reference") as ex:
            _, pkey, psecret = ex.account("acme", "provider")
            ex.account("alice", "trader", 100 * USD, ssh_public_key=renter_key.export_public_key().decode())
            alice = ex.client_for("alice")
            prov = ex.client_for("acme")
            state = tmp_path / "agent"
            async with Agent(ex.url, pkey, psecret, SshBackend(state), inventory=inventory, state_dir=state,
                             gpus=8) as agent:
                await asyncio.wait_for(agent.connected.wait(), 20)
                [ask] = await until(prov.asks)
                assert (ask["price"], ask["spot_price"], ask["gpus"]) == (2 * USD, 1_200_000, 8)
                _, akey, asecret = ex.keys["alice"]
                fc = FeedClient(ex.url)
                fc.keep = True
                await fc.connect()
                await fc.auth(akey, asecret)
                await fc.subscribe("provisioning")
                await asyncio.sleep(0.01)  # FeedClient signs with its own Signer: not in the same ms as alice's
                async with await alice.trader() as t:
                    ack = await t.bid("H100", "on_demand", gpus=2, hours=1, limit=2 * USD)
                [trade] = ack["trades"]
                ref = trade["lease"]
                st = await agent.wait_status(ref, "ready", "failed")
                assert st.status == "ready", st.reason
                ready = await until(lambda: [x for m in fc.messages if m.get("type") == "provisioning"
                                             for x in m["provisioning"] if x.get("task") == "ready"])
                conn = ready[0]["connection"]
                assert conn["port"] == st.connection["port"] and conn["user"] == "gpux"
                async with asyncssh.connect(conn["host"], conn["port"], username=conn["user"],
                                            client_keys=[renter_key], known_hosts=None) as c:
                    r = await c.run("echo $GPUX_LEASE $GPUX_GPUS $CUDA_VISIBLE_DEVICES")
                    assert r.stdout == f"{ref} 2 0,1\n"
                    # the renter releases the lease: the exchange tells the agent, which tears it down
                    await alice.release("H100", trade["trade_id"])
                    await agent.wait_status(ref, "ended", timeout=20)
                    await asyncio.wait_for(c.wait_closed(), 10)
                with pytest.raises(OSError):
                    await asyncssh.connect(conn["host"], conn["port"], username="gpux", client_keys=[renter_key],
                                           known_hosts=None)
                await fc.close()

    asyncio.run(scenario())


def _short_notice(notice: int) -> dict[str, Any]:
    from exchange.config import DEFAULT_INSTRUMENTS, Instrument
    from orderbook.config import BookConfig

    return {n: Instrument(BookConfig(**{**i.book.to_dict(), "notice_s": notice}))
            for n, i in DEFAULT_INSTRUMENTS.items()}


def test_failed_provision_refunds_and_a_preempted_spot_lease_pays_pro_rata(tmp_path: Path) -> None:
    """Issue 5's end-to-end money: the ssh agent cannot provision a renter without a key → the
    lease fails and the renter gets everything back (R18); a spot renter logged in over SSH is
    preempted by a firm bid (R12): the notice reaches the agent, which closes the session at T0,
    and the renter pays from ready to T0 only (R17)."""
    notice = 3
    spot_key = asyncssh.generate_private_key("ssh-ed25519")
    spot_price = 1_200_000

    async def scenario() -> None:
        async with running_exchange(tmp_path / "data", engine="reference", instruments=_short_notice(notice)) as ex:
            _, pkey, psecret = ex.account("acme", "provider")
            prov = ex.client_for("acme")
            nokey = ex.client("nokey", "trader", 100 * USD)
            ex.account("spotter", "trader", 100 * USD, ssh_public_key=spot_key.export_public_key().decode())
            spotter = ex.client_for("spotter")
            firm_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
            ex.account("firm", "trader", 100 * USD, ssh_public_key=firm_key)
            firm = ex.client_for("firm")
            state = tmp_path / "agent"
            async with Agent(ex.url, pkey, psecret, SshBackend(state), state_dir=state, gpus=4) as agent:
                await asyncio.wait_for(agent.connected.wait(), 20)
                await prov.ask("H100", gpus=4, price=2 * USD, spot_price=spot_price, end=ex.now + 86_400)

                # no SSH key: the agent reports failed, settlement refunds in full
                async with await nokey.trader() as t:
                    [bad] = (await t.bid("H100", "on_demand", gpus=1, hours=1, limit=2 * USD))["trades"]
                st = await agent.wait_status(bad["lease"], "ready", "failed")
                assert st.status == "failed" and "SSH key" in st.reason
                await until(lambda: _settled(nokey, "failed"))  # the agent's answer reached the exchange
                acc = await nokey.account()
                assert (acc["available"], acc["escrow"], acc["lease_prepaid"]) == (100 * USD, 0, 0)

                # a spot lease, logged into, then preempted by a firm bid for every GPU left (the failed
                # lease's GPU is not offered again in its window, R18)
                async with await spotter.trader() as t:
                    [spot] = (await t.bid("H100", "spot", gpus=3, hours=2, limit=spot_price))["trades"]
                st = await agent.wait_status(spot["lease"], "ready", "failed")
                assert st.status == "ready", st.reason
                conn = st.connection
                async with asyncssh.connect(conn["host"], conn["port"], username="gpux", client_keys=[spot_key],
                                            known_hosts=None) as c:
                    assert (await c.run("echo $GPUX_LEASE")).stdout == f"{spot['lease']}\n"
                    ready_at = (await until(lambda: _settled(spotter, "ready")))["settlement"]["ready_at"]
                    async with await firm.trader() as t:
                        ack = await t.bid("H100", "on_demand", gpus=3, hours=1, limit=2 * USD)
                    assert ack["order"]["status"] == "filled"
                    [firm_trade] = ack["trades"]
                    t0 = firm_trade["time"] + notice
                    # the notice moves the lease's end to T0; the agent closes the session then
                    await agent.wait_status(spot["lease"], "ended", timeout=notice + 20)
                    assert time.time() >= t0 - 1
                    await asyncio.wait_for(c.wait_closed(), 10)
                lease = await until(lambda: _settled(spotter, "preempted"), timeout=20)
                used = 3 * spot_price * (t0 - ready_at) // 3600
                assert lease["end"] == t0 and lease["settlement"]["paid"] == used > 0
                acc = await spotter.account()
                assert (acc["available"], acc["lease_prepaid"]) == (100 * USD - used, 0)
                assert (await prov.account())["receivable"] >= used
                # the firm lease waited for the spot lease's GPUs (R12) and was delivered from T0 on
                st = await agent.wait_status(firm_trade["lease"], "ready", "failed", timeout=20)
                assert st.status == "ready", st.reason
                firm_lease = await until(lambda: _settled(firm, "ready"))
                assert firm_lease["settlement"]["ready_at"] >= t0

    asyncio.run(scenario())


async def _settled(client: Any, status: str) -> dict[str, Any] | None:
    [lease] = await client.leases()
    return lease if lease["settlement"]["status"] == status else None
