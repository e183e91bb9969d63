"""The whole exchange in one process with time under the test's control (`exchange.clock.SimClock`):
the sequencer's clock commands, the ledger's commit timers, the feeds' heartbeats and the rate
limits all read the injected clock, so hours of engine time pass in a moment and the journal
carries exactly the times the test chose (R4: time moves only by journaled clock commands)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from exchange.clock import SimClock, WallClock
from exchange.entries import Cmd, decode_entry
from exchange.journal import read
from orderbook.types import CMD_CLOCK, COMMAND_DTYPE, HOUR
from tests.exchange_helpers import USD, run, running_exchange

PRICE = 2_000_000


async def until(cond, what: str, seconds: float = 10.0) -> None:
    """Wait (real time: the journal's sync thread answers in real time) until ``cond()``."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_sim_clock_runs_timers_in_time_order() -> None:
    async def scenario() -> list[tuple[float, str]]:
        sim = SimClock(1000.0)
        seen: list[tuple[float, str]] = []
        sim.call_later(5, lambda: seen.append((sim.monotonic(), "b")))
        sim.call_later(1, lambda: seen.append((sim.monotonic(), "a")))
        cancelled = sim.call_later(3, lambda: seen.append((sim.monotonic(), "never")))
        cancelled.cancel()

        async def sleeper() -> None:
            await sim.sleep(2)
            seen.append((sim.monotonic(), "slept"))
            await sim.sleep(10)  # past the advance: still asleep afterwards
            seen.append((sim.monotonic(), "late"))

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        await sim.advance(6)
        assert sim.time() == 1006 and sim.time_ms() == 1_006_000
        assert not task.done()
        await sim.advance(10)
        await task
        return seen

    assert run(scenario()) == [(1001.0, "a"), (1002.0, "slept"), (1005.0, "b"), (1012.0, "late")]


def test_wall_clock_is_the_system_clock() -> None:
    c = WallClock()
    assert abs(c.time() - time.time()) <= 1
    assert abs(c.time_ms() - time.time() * 1000) < 1000


def test_the_whole_exchange_on_simulated_time(tmp_path) -> None:
    """An ask, a 2-hour on-demand bid that fills, a GTD bid that rests: then two simulated hours pass
    in one call.  The GTD bid expires at its time, the lease ends at its end, settlement meters and
    pays the provider; every clock command in the journal carries a simulated time, and no clock
    command is later than the simulated clock."""

    async def scenario() -> None:
        t0 = float(int(time.time()))
        sim = SimClock(t0)
        async with running_exchange(tmp_path, clock=sim, fsync="off", clock_interval_s=60,
                                    snapshot_every_s=10 * 86_400, provisioning="auto") as ex:
            x = ex.exchange
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            now = int(t0)
            await prov.ask("H100", gpus=8, price=PRICE, end=now + 6 * HOUR)
            async with await alice.trader() as session:
                ack = await session.bid("H100", "on_demand", gpus=4, hours=2, limit=PRICE)
                assert ack["ok"] and len(ack["trades"]) == 1
                gtd = await session.bid("H100", "on_demand", gpus=1, hours=1, limit=PRICE // 2, tif="GTD",
                                        expire_at=now + 600)
                assert gtd["order"]["status"] == "open"
            lease = ack["trades"][0]
            end = lease["end"]
            assert end - lease["start"] == 2 * HOUR

            await sim.advance(700)  # past the GTD bid's expiry, not the lease's end
            await until(lambda: x.engine.book_time("H100") >= now + 600, "engine time past the expiry")
            assert x.engine.state.orders[gtd["oid"]].status == "expired"
            assert x.engine.state.leases[lease["lease"]].status(x.engine.book_time("H100")) == "running"

            await sim.advance(2 * HOUR)
            await until(lambda: x.engine.book_time("H100") >= end, "engine time past the lease's end")
            assert x.engine.book_time("H100") <= sim.time()
            assert x.engine.state.leases[lease["lease"]].status(x.engine.book_time("H100")) == "ended"
            await sim.advance(1)  # the ledger's commit timer is on the same clock
            await x.settlement.synced()
            paid = 4 * 2 * PRICE  # 4 GPUs × 2 h at the ask's price (no fees configured)
            assert x.settlement.balances(ex.keys["prov"][0])["receivable"] == paid
            assert x.settlement.balances(ex.keys["alice"][0]).get("lease_prepaid", 0) == 0
        clocks = []
        for _, payload in read(tmp_path / "journal"):
            e = decode_entry(payload)
            if type(e) is Cmd:
                rec = np.frombuffer(e.rec, dtype=COMMAND_DTYPE)[0]
                if rec["type"] == CMD_CLOCK:
                    clocks.append(int(rec["time"]))
        assert clocks == sorted(clocks) and clocks[0] >= int(t0) and clocks[-1] <= sim.time()
        assert clocks[-1] >= end  # the hours passed as journaled clock commands

    run(scenario())

