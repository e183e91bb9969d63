"""The provider agent end to end over a running exchange: the agent posts its inventory's ask, a
trader's bid fills, the agent provisions the lease over ssh, the renter gets the connection on its
private channel and logs in with its key; releasing the lease tears it down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from exchange_helpers import USD, running_exchange

from feeds.client import FeedClient
from settlement.agent.agent import Agent
from settlement.agent.ssh import SshBackend

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
