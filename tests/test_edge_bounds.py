"""Values beyond what the records and the ledger can hold are refused at the edge with a stable
code and a sentence, and change nothing; none of them can stop the exchange (a trade id past
int64 once killed the sequencer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client.api import ClientError
from exchange.errors import ApiError
from exchange.sequencer import Request
from gateway.accounts import MAX_ALL, MAX_TOTAL, AccountStore
from orderbook.types import ON_DEMAND, bid_command, release_command
from tests.exchange_helpers import USD, run, running_exchange

BIG = 10**25


def test_ids_past_int64_in_paths_are_malformed_and_the_exchange_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            t = x.client("t", "trader", deposit=100 * USD)
            p = x.client("p", "provider")
            await x.settle()
            for client, method, path, body in [
                    (t, "POST", f"/v1/leases/H100/{BIG}/release", {}),
                    (p, "POST", f"/v1/provisioning/H100-{BIG}", {"status": "failed", "reason": "x"})]:
                with pytest.raises(ClientError) as e:
                    await client.request(method, path, body)
                assert (e.value.status, e.value.code) == (400, "MALFORMED"), (path, e.value)
                assert "2**63" in e.value.message
            for path in (f"/v1/orders/{BIG}", f"/v1/asks/{BIG}"):
                with pytest.raises(ClientError) as e:
                    await (t if "orders" in path else p).request("DELETE", path)
                assert e.value.status == 404
            assert (await t.health())["ok"]
            assert (await t.account())["available"] == 100 * USD

    run(scenario())


def test_a_command_its_record_cannot_hold_is_refused_and_its_batch_goes_on(tmp_path: Path) -> None:
    """The sequencer's own guard, behind the edge's: the other requests of the batch are journaled."""
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            acc, _, _ = x.account("t", "trader", deposit=100 * USD)
            await x.settle()
            seq = x.exchange.sequencer
            good = seq.submit(Request("H100", bid_command(acc, ON_DEMAND, 1, 1, 2_000_000), acc))
            bad = seq.submit(Request("H100", release_command(acc, 2**64), acc))
            after = seq.submit(Request("H100", bid_command(acc, ON_DEMAND, 2, 1, 2_000_000), acc))
            got = await asyncio.gather(good, bad, after, return_exceptions=True)
            assert got[0]["ok"] and got[2]["ok"]
            assert isinstance(got[1], ApiError) and got[1].code == "MALFORMED"
            assert seq.health() == "ok" and x.exchange.engine.state.open_count(acc) == 2

    run(scenario())


def test_deposits_are_bounded_per_account_and_in_all(tmp_path: Path) -> None:
    """The exchange's external balance is the sum of every deposit: it must fit the ledger's 64 bits."""
    with AccountStore(tmp_path / "accounts.db") as store:
        accounts = [store.create_account(f"rich{i}", "trader")[0].id for i in range(5)]
        with pytest.raises(Exception) as e:
            store.deposit(accounts[0], MAX_TOTAL + 1)
        assert getattr(e.value, "code", "") == "BAD_AMOUNT"
        for acc in accounts[:4]:
            store.deposit(acc, MAX_ALL // 4)
        with pytest.raises(Exception) as e:
            store.deposit(accounts[4], 1)
        assert getattr(e.value, "code", "") == "BAD_AMOUNT" and "all accounts" in str(e.value)
        assert sum(store.deposits().values()) == MAX_ALL


def test_reserved_bids_starting_past_two_years_are_refused(tmp_path: Path) -> None:
    """A reserved bid starting in the year 146 billion would hold its escrow for ever (R17)."""
    from exchange.sequencer import MAX_LEAD_S
    from orderbook.types import HOUR, RESERVED, ask_command

    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            acc, _, _ = x.account("t", "trader", deposit=100 * USD)
            prov, _, _ = x.account("p", "provider")
            await x.settle()
            seq = x.exchange.sequencer
            now = seq.times["H100"]
            far = (4_600_000_000_000_000_000 // HOUR) * HOUR
            soon = (now // HOUR + 48) * HOUR
            got = await asyncio.gather(
                seq.submit(Request("H100", bid_command(acc, RESERVED, 1, 1, 2_000_000, start=far), acc)),
                seq.submit(Request("H100", bid_command(acc, RESERVED, 1, 1, 2_000_000,
                                                       start=soon + MAX_LEAD_S), acc)),
                seq.submit(Request("H100", ask_command(prov, 8, 2_000_000, far + 100 * HOUR, start=far), prov)),
                seq.submit(Request("H100", bid_command(acc, RESERVED, 1, 1, 2_000_000, start=soon), acc)),
                return_exceptions=True)
            assert isinstance(got[0], ApiError) and got[0].code == "BAD_START" and "732 days" in got[0].message
            assert isinstance(got[1], ApiError) and got[1].code == "BAD_START"
            assert got[2]["ok"]  # an ask holds no money: a far window is the provider's business
            assert got[3]["ok"]  # two days ahead is fine
            assert x.exchange.engine.money.of(acc)["escrow"] == 2_000_000

    run(scenario())
