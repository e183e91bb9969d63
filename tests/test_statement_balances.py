"""A statement's running balances are balances the account had (issue 17, item 9): over REST, on a
real exchange whose clock stands still, so that every transfer has the same time and only the
order they were applied in tells them apart.  Listed by time then id (as before), order 10's hold
came before order 1's (with balances that never were: tests/test_settlement_ledger.py has one
below zero); and the ledger applied the deposits and withdrawals of a commit before the events
of the earlier batches in it, so they were listed before those too."""

from __future__ import annotations

import asyncio
import time

from clearing.money import hold, hold_fee_bps
from exchange.clock import SimClock
from tests.exchange_helpers import USD, running_exchange

GPUS, HOURS, LIMIT = 1, 1, 1_000_000


def test_statement_running_balances_are_the_accounts_real_balances(tmp_path):
    async def scenario():
        clock = SimClock(float(int(time.time())))  # stands still: one second for everything below
        async with running_exchange(tmp_path, clock=clock, fsync="off") as ex:
            admin = ex.client("root", "admin")
            inst = {i["name"]: i for i in await admin.instruments()}["H100"]
            one = hold(GPUS, HOURS, LIMIT, hold_fee_bps(inst["maker_fee_bps"], inst["taker_fee_bps"]))
            alice = ex.client("alice", "trader", one)  # a bid takes all she has
            acc = ex.keys["alice"][0]
            real: list[tuple[str, int]] = [("deposit:", one)]  # (id, available after it), in her order
            async with await alice.trader() as t:
                for oid in range(1, 10):  # orders 1 to 9 placed and cancelled, order 10 rests
                    ack = await t.bid("H100", "spot", gpus=GPUS, hours=HOURS, limit=LIMIT)
                    assert ack["oid"] == oid and ack["order"]["hold"] == one
                    await t.cancel(oid)
                    real += [(f"order:H100:{oid}:hold", 0), (f"order:H100:{oid}:release", one)]
                    if oid == 4:  # money in and out between two orders' transfers
                        await admin.deposit(acc, 5 * USD)
                        await admin.withdraw(acc, 5 * USD)
                        real += [("deposit:", one + 5 * USD), ("withdraw:", one)]
                ack = await t.bid("H100", "spot", gpus=GPUS, hours=HOURS, limit=LIMIT)
                assert ack["oid"] == 10 and ack["order"]["status"] == "open"
                real.append(("order:H100:10:hold", 0))
            st = await alice.request("GET", "/v1/account/statement")
            assert {x["time"] for x in st["transfers"]} == {clock.time()}
            assert all(x["balance"] >= 0 for x in st["transfers"]), [
                (x["id"], x["account"], x["balance"]) for x in st["transfers"] if x["balance"] < 0]
            lines = [(x["id"], x["balance"]) for x in st["transfers"] if x["account"] == "available"]
            assert len(lines) == len(real)
            for (tid, balance), (want, want_balance) in zip(lines, real, strict=True):
                assert tid.startswith(want) and balance == want_balance, (lines, real)
            assert st["balances"] == {"escrow": one}  # available 0 is left out
            running: dict[str, int] = {}
            for x in st["transfers"]:
                running[x["account"]] = running.get(x["account"], 0) + x["amount"]
                assert x["balance"] == running[x["account"]]

    asyncio.run(scenario())
