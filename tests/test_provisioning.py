"""Provisioning over a running exchange (R18), spoken by hand as an agent would
(settlement/provisioning.py, docs/settlement.md "Provisioning"): the task reaches the provider's
private channel at the lease's start with the renter's SSH key; a ready answer starts metering
and gives the renter its connection; a failed answer or no answer by the deadline refunds the
renter in full; a preemption notice reaches both sides and a preempted spot lease pays only
for the time it ran (R12, R17).  The reference agent itself: tests/test_agent_*.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from exchange_helpers import USD, run, running_exchange

from client.api import Client, ClientError
from client.feeds import FeedClient
from exchange.config import DEFAULT_INSTRUMENTS, Instrument
from orderbook.config import BookConfig

P = 2_000_000  # $2 per GPU-hour
SPOT = 1_200_000
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOdPSdz9ah8bAW35i9Mrn2clI3hDVNvhJHJ7jBIR6Dz4 alice@laptop"
NUMBA = {"engine": "numba"}


async def private(ex: Any, name: str) -> FeedClient:
    """A feed connection authenticated as ``name``, subscribed to its provisioning channel."""
    _, key, secret = ex.keys[name]
    fc = FeedClient(ex.url)
    fc.keep = True
    await fc.connect()
    assert (await fc.auth(key, secret))["type"] == "authenticated"
    assert (await fc.subscribe("provisioning"))["type"] == "subscribed"
    return fc


def items(fc: FeedClient, task: str) -> list[dict[str, Any]]:
    return [x for m in fc.messages if m.get("type") == "provisioning" for x in m["provisioning"] if x["task"] == task]


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


async def refused(coro: Any) -> ClientError:
    with pytest.raises(ClientError) as e:
        await coro
    return e.value


def test_task_at_start_ready_starts_metering_and_the_renter_gets_its_connection(tmp_path: Path) -> None:
    """R18: the task carries the lease and the renter's key; ready → metering, connection to the renter."""

    async def scenario() -> None:
        async with running_exchange(tmp_path, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            other = ex.client("other", "provider")
            acc, _, _ = ex.account("alice", "trader", 100 * USD, ssh_public_key=KEY)
            alice = ex.client_for("alice")
            agent, renter = await private(ex, "prov"), await private(ex, "alice")
            await prov.ask("H100", gpus=8, price=P, end=ex.now + 86_400)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=2, hours=2, limit=P)
            [trade] = ack["trades"]
            ref = trade["lease"]
            [task] = await until(lambda: items(agent, "provision"))
            assert task["lease"] == ref and task["gpus"] == 2 and task["kind"] == "on_demand"
            assert (task["start"], task["end"]) == (trade["start"], trade["end"])
            assert task["renter"] == acc and task["ssh_public_key"] == KEY
            assert task["deadline"] == trade["start"] + ex.exchange.cfg.provision_timeout_s
            assert (await prov.request("GET", "/v1/provisioning"))["tasks"] == [task]  # an agent that was away
            assert (await other.request("GET", "/v1/provisioning"))["tasks"] == []
            [lease] = await alice.leases()
            assert lease["settlement"]["status"] == "provisioning" and lease["settlement"]["connection"] is None

            # only the lease's provider may answer; answers are checked
            e = await refused(other.request("POST", f"/v1/provisioning/{ref}", {"status": "ready",
                                                                               "connection": {"host": "x"}}))
            assert (e.code, e.status) == ("NOT_OWNER", 403)
            e = await refused(prov.request("POST", "/v1/provisioning/H100-999", {"status": "failed"}))
            assert (e.code, e.status) == ("UNKNOWN_LEASE", 404)
            e = await refused(prov.request("POST", "/v1/provisioning/nonsense", {"status": "failed"}))
            assert e.code == "MALFORMED"
            e = await refused(prov.request("POST", f"/v1/provisioning/{ref}", {"status": "ready"}))
            assert e.code == "MALFORMED"
            e = await refused(prov.request("POST", f"/v1/provisioning/{ref}", {"status": "maybe"}))
            assert e.code == "MALFORMED"
            assert (await alice.leases())[0]["settlement"]["status"] == "provisioning"  # nothing changed

            conn = {"host": "10.0.0.7", "port": 2222, "user": "gpux"}
            ans = await prov.request("POST", f"/v1/provisioning/{ref}", {"status": "ready", "connection": conn})
            assert ans["settlement"]["status"] == "ready" and ans["settlement"]["connection"] == conn
            again = await prov.request("POST", f"/v1/provisioning/{ref}", {"status": "ready", "connection": conn})
            assert again["settlement"] == ans["settlement"]  # a repeat is harmless
            [ready] = await until(lambda: items(renter, "ready"))
            assert ready["lease"] == ref and ready["connection"] == conn
            [lease] = await alice.leases()
            assert lease["settlement"]["status"] == "ready" and lease["settlement"]["connection"] == conn
            assert trade["start"] <= lease["settlement"]["ready_at"] <= ex.now
            assert (await prov.request("GET", "/v1/provisioning"))["tasks"] == []
            e = await refused(prov.request("POST", f"/v1/provisioning/{ref}", {"status": "failed"}))
            assert (e.code, e.status) == ("LEASE_STATE", 409)  # a ready lease cannot fail any more
            # the ledger (R17, R18): the renter pays from ready to the end — the seconds between the
            # start and the agent's answer came back — and nothing of it is the provider's yet
            # but what metering moved (no fees here); the renter's statement shows it
            st = await alice.request("GET", "/v1/account/statement")
            [x] = st["leases"]
            ready_at = x["ready_at"]
            assert x["lease"] == ref and trade["start"] <= ready_at
            pays = 2 * P * (trade["end"] - ready_at) // 3600
            assert st["balances"]["available"] == 100 * USD - pays
            assert st["balances"]["lease_prepaid"] + (await prov.account())["receivable"] == pays
            assert agent.messages and not items(agent, "end")
            async with aiohttp.ClientSession() as http, http.get(ex.url + "/metrics") as r:
                metrics = dict(ln.rsplit(" ", 1) for ln in (await r.text()).splitlines() if not ln.startswith("#"))
            assert metrics["gpux_provisioning_tasks_total"] == "1" and metrics["gpux_provisioning_ready_total"] == "1"
            assert metrics["gpux_settlement_healthy"] == "1" and int(metrics["gpux_settlement_commits_total"]) > 0
            await agent.close()
            await renter.close()

    run(scenario())


def test_failed_provision_refunds_the_renter_in_full(tmp_path: Path) -> None:
    """R18: the agent reports failed → the lease fails, the renter gets everything back (fee included)."""
    fees = {n: Instrument(i.book, maker_fee_bps=10, taker_fee_bps=30) for n, i in DEFAULT_INSTRUMENTS.items()}

    async def scenario() -> None:
        async with running_exchange(tmp_path, instruments=fees, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            ex.account("alice", "trader", 100 * USD, ssh_public_key=KEY)
            alice = ex.client_for("alice")
            agent, renter = await private(ex, "prov"), await private(ex, "alice")
            await prov.ask("H100", gpus=8, price=P, end=ex.now + 86_400)
            async with await alice.trader() as t:
                [trade] = (await t.bid("H100", "on_demand", gpus=4, hours=3, limit=P))["trades"]
            ref = trade["lease"]
            await until(lambda: items(agent, "provision"))
            acc = await alice.account()
            assert acc["available"] < 100 * USD - 4 * 3 * P  # cost and the taker fee are paid
            ans = await prov.request("POST", f"/v1/provisioning/{ref}", {"status": "failed", "reason": "GPU 3 is dead"})
            assert ans["settlement"]["status"] == "failed" and "GPU 3" in ans["settlement"]["failed_reason"]
            acc = await alice.account()
            assert (acc["available"], acc["escrow"], acc["lease_prepaid"]) == (100 * USD, 0, 0)
            assert (await prov.account())["receivable"] == 0
            for side in (agent, renter):
                [end] = await until(lambda s=side: items(s, "end"))
                assert end["lease"] == ref and end["reason"] == "failed"
            e = await refused(prov.request("POST", f"/v1/provisioning/{ref}",
                                           {"status": "ready", "connection": {"host": "h"}}))
            assert e.code == "LEASE_STATE"
            assert (await prov.request("POST", f"/v1/provisioning/{ref}", {"status": "failed"}))["ok"]  # repeat
            await agent.close()
            await renter.close()

    run(scenario())


def test_no_answer_by_the_deadline_fails_and_refunds(tmp_path: Path) -> None:
    """R18: not ready within provision_timeout_s → failed at the deadline, renter refunded, both told."""

    async def scenario() -> None:
        async with running_exchange(tmp_path, provision_timeout_s=1, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 100 * USD)
            agent, renter = await private(ex, "prov"), await private(ex, "alice")
            await prov.ask("H100", gpus=8, price=P, end=ex.now + 86_400)
            async with await alice.trader() as t:
                [trade] = (await t.bid("H100", "on_demand", gpus=1, hours=1, limit=P))["trades"]
            [task] = await until(lambda: items(agent, "provision"))
            assert task["ssh_public_key"] == ""  # alice registered no key
            for side in (agent, renter):
                [end] = await until(lambda s=side: items(s, "end"), timeout=15)
                assert end["lease"] == trade["lease"] and end["reason"] == "failed"
            [lease] = await alice.leases()
            assert lease["settlement"]["status"] == "failed"
            assert "timeout" in lease["settlement"]["failed_reason"]
            assert (await alice.account())["available"] == 100 * USD
            assert (await prov.request("GET", "/v1/provisioning"))["tasks"] == []
            await agent.close()
            await renter.close()

    run(scenario())


def test_preempted_spot_lease_pays_pro_rata_and_both_sides_hear_of_it(tmp_path: Path) -> None:
    """R12 + R17: a firm bid preempts a ready spot lease with notice; the notice reaches the
    renter and the agent; the spot renter pays only from ready to T0."""
    notice = 2
    short = {n: Instrument(BookConfig(**{**i.book.to_dict(), "notice_s": notice}) if n == "H100" else i.book)
             for n, i in DEFAULT_INSTRUMENTS.items()}

    async def scenario() -> None:
        async with running_exchange(tmp_path, instruments=short, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            spotter = ex.client("spotter", "trader", 100 * USD)
            firm = ex.client("firm", "trader", 100 * USD)
            agent, renter = await private(ex, "prov"), await private(ex, "spotter")
            await prov.ask("H100", gpus=4, price=P, spot_price=SPOT, end=ex.now + 86_400)
            async with await spotter.trader() as t:
                [spot] = (await t.bid("H100", "spot", gpus=4, hours=2, limit=SPOT))["trades"]
            assert spot["price"] == SPOT
            await until(lambda: items(agent, "provision"))
            await prov.request("POST", f"/v1/provisioning/{spot['lease']}",
                               {"status": "ready", "connection": {"host": "h", "port": 22}})
            ready_at = (await spotter.leases())[0]["settlement"]["ready_at"]
            async with await firm.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=4, hours=1, limit=P)
            assert ack["order"]["status"] == "filled"
            t0 = ack["trades"][0]["time"] + notice  # R12: spot is preempted from T0 = now + notice
            for side in (agent, renter):
                [end] = await until(lambda s=side: items(s, "end"))
                assert (end["lease"], end["reason"], end["end"]) == (spot["lease"], "preempted", t0)
            # after T0 the spot lease is settled: paid from ready to T0 only, the rest refunded
            lease = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                [lease] = await spotter.leases()
                if lease["settlement"]["status"] == "preempted":
                    break
                await asyncio.sleep(0.2)
            assert lease is not None and lease["settlement"]["status"] == "preempted"
            used = 4 * SPOT * (t0 - ready_at) // 3600
            assert lease["settlement"]["paid"] == used
            acc = await spotter.account()
            assert (acc["available"], acc["lease_prepaid"]) == (100 * USD - used, 0)
            assert (await prov.account())["receivable"] == used
            await agent.close()
            await renter.close()

    run(scenario())


def test_ssh_key_endpoint_sets_the_key_tasks_carry(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path, **NUMBA) as ex:
            alice = ex.client("alice", "trader", 10 * USD)
            assert (await alice.account())["ssh_public_key"] is None
            ok = await alice.request("PUT", "/v1/account/ssh-key", {"ssh_public_key": KEY})
            assert ok["ssh_public_key"] == KEY and (await alice.account())["ssh_public_key"] == KEY
            e = await refused(alice.request("PUT", "/v1/account/ssh-key", {"ssh_public_key": "hello"}))
            assert e.code == "BAD_SSH_KEY"
            assert (await alice.account())["ssh_public_key"] == KEY

    run(scenario())


def test_answers_are_journaled_a_lost_ledger_is_rebuilt_with_them(tmp_path: Path) -> None:
    """R21 for settlement: the agents' answers go through the journal, so a ledger rebuilt from
    the journal alone (ledger.db deleted) has the same leases ready, failed and connected, and
    the same money, as the one that was lost."""
    conn = {"host": "10.0.0.9", "port": 2200, "user": "gpux"}
    keys: dict[str, tuple[int, str, str]] = {}

    async def look(ex: Any) -> tuple[dict, dict, dict]:
        alice = Client(ex.url, *keys["alice"][1:])
        prov = Client(ex.url, *keys["prov"][1:])
        ex.clients += [alice, prov]
        leases = {x["lease"]: x["settlement"] for x in await alice.leases()}
        return (leases, await alice.request("GET", "/v1/account/statement"),
                await prov.request("GET", "/v1/account/statement"))

    async def first() -> tuple[dict, dict, dict]:
        async with running_exchange(tmp_path, meter_interval_s=10**9, **NUMBA) as ex:  # no metering point between
            prov = ex.client("prov", "provider")
            ex.account("alice", "trader", 100 * USD, ssh_public_key=KEY)
            keys.update(ex.keys)
            alice = ex.client_for("alice")
            agent = await private(ex, "prov")
            await prov.ask("H100", gpus=8, price=P, end=ex.now + 86_400)
            async with await alice.trader() as t:
                [good] = (await t.bid("H100", "on_demand", gpus=2, hours=2, limit=P))["trades"]
                [bad] = (await t.bid("H100", "on_demand", gpus=1, hours=1, limit=P))["trades"]
            await until(lambda: len(items(agent, "provision")) == 2)
            await prov.request("POST", f"/v1/provisioning/{good['lease']}", {"status": "ready", "connection": conn})
            await prov.request("POST", f"/v1/provisioning/{bad['lease']}", {"status": "failed", "reason": "no"})
            await agent.close()
            return await look(ex)

    async def again() -> tuple[dict, dict, dict]:
        async with running_exchange(tmp_path, meter_interval_s=10**9, **NUMBA) as ex:
            return await look(ex)

    leases, st_a, st_p = run(first())
    assert sorted(s["status"] for s in leases.values()) == ["failed", "ready"]
    assert conn in [s["connection"] for s in leases.values()]
    for f in tmp_path.glob("ledger.db*"):
        f.unlink()
    leases2, st_a2, st_p2 = run(again())
    assert leases2 == leases
    assert st_a2["balances"] == st_a["balances"] and st_p2["balances"] == st_p["balances"]
    assert [t["id"] for t in st_a2["transfers"]] == [t["id"] for t in st_a["transfers"]]
