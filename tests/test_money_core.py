"""Money in the core (exchange/money.py): balances, escrow and leases' money are state of the
deterministic core, kept from the journal like the books.  R17 (escrow) is decided from that
state by the sequencer, exactly, for every bid of a batch; deposits and withdrawals are
journaled; a replay, with or without a snapshot, gives the same money; the SQLite ledger, a
projection of the same journal, ends with the same balances (tests/exchange_helpers.py checks
that after every test that runs an exchange)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.exchange import Exchange
from client.api import ClientError
from exchange.config import Instrument, ServerConfig
from exchange.entries import Fund, decode_entry
from exchange.errors import ApiError
from exchange.journal import read
from exchange.recovery import recover
from exchange.sequencer import Request
from exchange.snapshots import Snapshot, snapshots
from gateway.accounts import AccountStore
from orderbook.config import BookConfig
from orderbook.types import ON_DEMAND, ask_command, bid_command
from tests.exchange_helpers import USD, run, running_exchange

P = 2_000_000  # $2 / GPU-hour


def bid(acc: int, gpus: int, hours: int, limit: int = P) -> Request:
    return Request("H100", bid_command(acc, ON_DEMAND, gpus, hours, limit), acc)


async def submit_together(ex: Exchange, *reqs: Request) -> list:
    """Requests queued in one turn of the event loop: the sequencer takes them as one batch."""
    futs = [ex.sequencer.submit(r) for r in reqs]
    return await asyncio.gather(*futs, return_exceptions=True)


def test_r17_two_bids_of_one_batch_cannot_spend_the_same_money(tmp_path: Path) -> None:
    """R17: a bid holds gpus × hours × limit (+ fee) of escrow; $100 cannot back two $90 bids,
    even when both arrive in the same batch, before either is applied."""
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            acc, _, _ = x.account("alice", "trader", deposit=100 * USD)
            await x.settle()
            assert x.exchange.engine.money.available(acc) == 100 * USD
            first, second = await submit_together(x.exchange, bid(acc, 9, 5), bid(acc, 9, 5))  # $90 each
            assert first["ok"] and first["order"]["status"] == "open" and first["order"]["hold"] == 90 * USD
            assert isinstance(second, ApiError) and second.code == "INSUFFICIENT_FUNDS"
            assert "10000000 µ$ is available" in second.message  # $100 - $90
            money = x.exchange.engine.money
            assert money.of(acc) == {"available": 10 * USD, "escrow": 90 * USD}
            # the refused bid never reached the journal
            assert x.exchange.engine.state.open_count(acc) == 1

    run(scenario())


def test_a_deposit_earlier_in_the_batch_backs_a_bid_after_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            acc, _, _ = x.account("bob", "trader")
            await x.settle()
            fund = Request("", None, acc, fund=Fund("deposit", acc, 50 * USD, "test:bob", 0))
            again = Request("", None, acc, fund=Fund("deposit", acc, 50 * USD, "test:bob", 0))  # the same ref
            dep, rep, b1, b2 = await submit_together(x.exchange, fund, again, bid(acc, 5, 5), bid(acc, 1, 1))
            assert dep["applied"] and not rep["applied"]  # a ref applies once
            assert b1["ok"]  # $50: exactly what the deposit brought
            assert isinstance(b2, ApiError) and b2.code == "INSUFFICIENT_FUNDS"
            assert x.exchange.engine.money.of(acc) == {"escrow": 50 * USD}

    run(scenario())


def test_withdrawals_are_journaled_and_never_take_escrowed_money(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            acc, _, _ = x.account("carol", "trader", deposit=100 * USD)
            admin = x.client("root", "admin")
            await x.settle()
            assert (await x.exchange.sequencer.submit(bid(acc, 10, 3)))["ok"]  # $60 in escrow
            with pytest.raises(ClientError) as e:
                await admin.withdraw(acc, 41 * USD)
            assert e.value.code == "INSUFFICIENT_FUNDS" and e.value.status == 402
            assert x.exchange.engine.money.available(acc) == 40 * USD  # nothing changed
            ok = await admin.withdraw(acc, 40 * USD)
            assert ok == {"ok": True, "account": acc, "withdrawn": 40 * USD, "available": 0}
            assert x.exchange.engine.money.of(acc) == {"escrow": 60 * USD}
            funds = [e for _, p in read(x.exchange.data / "journal") if type(e := decode_entry(p)) is Fund]
            assert [(f.op, f.account, f.amount) for f in funds] == [("deposit", acc, 100 * USD),
                                                                 ("withdraw", acc, 40 * USD)]
            assert funds[1].ref.startswith("journal:")

    run(scenario())


def test_money_replays_exactly_from_the_journal_and_from_a_snapshot(tmp_path: Path) -> None:
    """Trades, fees, prepayment and a withdrawal; then the core recovered from the journal alone
    and from the final snapshot has the same balances, bids' escrow and leases' money (the
    snapshot's money hash is checked on restore)."""
    data = tmp_path / "d"
    fees = {"H100": Instrument(BookConfig(name="H100"), maker_fee_bps=10, taker_fee_bps=25)}

    async def scenario() -> dict:
        async with running_exchange(data, instruments=fees) as x:
            prov, _, _ = x.account("prov", "provider")
            buyers = [x.account(f"b{i}", "trader", deposit=(50 + 10 * i) * USD)[0] for i in range(4)]
            await x.settle()
            seq = x.exchange.sequencer
            now = seq.times["H100"]
            await seq.submit(Request("H100", ask_command(prov, 16, P, now + 48 * 3600), prov))
            for i, b in enumerate(buyers):
                await seq.submit(bid(b, 1 + i, 2, P + 100_000 * i))
            await seq.submit(Request("", None, buyers[0], fund=Fund("withdraw", buyers[0], USD, "", 0)))
            return x.exchange.engine.money.all()

    live = run(scenario())
    cfg = ServerConfig(data_dir=str(data), instruments=fees)
    assert live[(0, "fees")] > 0 and any(k[1] == "lease_prepaid" for k in live)
    replayed = recover(cfg, use_snapshots=False)
    restored = recover(cfg)
    snap_seq, path = snapshots(data)[-1]
    snap = msgspec.msgpack.decode(path.read_bytes(), type=Snapshot)
    assert snap_seq == restored.seq == replayed.seq
    assert replayed.money.all() == restored.money.all() == live
    assert replayed.money.state_hash() == restored.money.state_hash() == snap.money_hash


def test_a_snapshot_whose_money_does_not_match_its_hash_is_not_used(tmp_path: Path) -> None:
    data = tmp_path / "d"

    async def scenario() -> None:
        async with running_exchange(data) as x:
            x.account("dora", "trader", deposit=7 * USD)
            await x.settle()

    run(scenario())
    _, path = snapshots(data)[-1]
    snap = msgspec.msgpack.decode(path.read_bytes(), type=Snapshot)
    assert snap.money is not None
    snap.money.balances = [(k, v + 1) for k, v in snap.money.balances]  # money the journal never made
    path.write_bytes(msgspec.msgpack.encode(snap))
    engine = recover(ServerConfig(data_dir=str(data)))  # falls back to the journal
    assert engine.money.available(1) == 7 * USD


def test_two_exchanges_sharing_an_account_store_never_credit_the_same_deposit(tmp_path: Path) -> None:
    """A deposit request is taken by one exchange before it is journaled: a trader with $100
    cannot get $90 holds accepted by two exchanges that share one accounts.db."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_dir.mkdir()
    with AccountStore(a_dir / "accounts.db") as store:
        acc = store.create_account("erin", "trader", deposit=100 * USD)[0].id
    os.symlink(a_dir / "accounts.db", b_dir / "accounts.db")

    async def scenario() -> tuple:
        async with running_exchange(a_dir) as a, running_exchange(b_dir) as b:
            await a.settle()
            await b.settle()
            got = (a.exchange.engine.money.available(acc), b.exchange.engine.money.available(acc))
            ra = await asyncio.gather(a.exchange.sequencer.submit(bid(acc, 9, 5)), return_exceptions=True)
            rb = await asyncio.gather(b.exchange.sequencer.submit(bid(acc, 9, 5)), return_exceptions=True)
            return got, ra[0], rb[0]

    got, ra, rb = run(scenario())
    assert sorted(got) == [0, 100 * USD]
    accepted = [r for r in (ra, rb) if isinstance(r, dict) and r.get("ok")]
    refused = [r for r in (ra, rb) if isinstance(r, ApiError) and r.code == "INSUFFICIENT_FUNDS"]
    assert len(accepted) == 1 and len(refused) == 1


def test_the_cores_money_keeps_live_bids_and_leases_not_every_one_there_was():
    """Closed bids and ended leases leave the core's money tables (their slots are used again):
    after 60,000 workload commands the tables hold about the live ones, and the money equals a
    replay of the same commands in one apply (state hash over live bids and leases only)."""
    from bench.recovery import REC_SIZE, sequenced
    from clearing import core
    from exchange.engine import Engine
    from exchange.entries import Cmd
    from exchange.money import settlement_config

    cfg = ServerConfig(data_dir="unused")
    cmds, names = sequenced(60_000, 3)
    blob = cmds.tobytes()
    entries = [Cmd(names[k], blob[k * REC_SIZE:(k + 1) * REC_SIZE], "") for k in range(len(cmds))]
    live = Engine(cfg.instruments, cfg.engine, None, settlement_config(cfg))
    for lo in range(0, len(entries), 64):
        live.apply(entries[lo:lo + 64])
    ended = 0
    for c in live.money.engine.classes.values():
        n_live = len(c.live_slots())
        assert int(c.S[core.S_NGL]) == 0 and int(c.S[core.S_NGB]) == 0  # nothing waits to be freed
        assert c.L.shape[0] <= 2 * max(n_live, 1024), (c.L.shape, n_live)
        assert c.B.shape[0] <= 2 * max(len(c.bmap), 4096), (c.B.shape, len(c.bmap))
        ended += int(c.L[:, core.TID].max())  # trade ids made so far (at least)
    assert ended > 3 * sum(len(c.live_slots()) for c in live.money.engine.classes.values())  # most ended
    from exchange.money import _live_leases, _open_bids

    for c in live.money.engine.classes.values():  # the snapshot's array reads equal the record-by-record ones
        assert _open_bids(c) == sorted(c.bids.items()) and len(c.bmap) > 0
        assert _live_leases(c) == [c.leases[t] for t in c.leases] and len(c.leases) > 0
    once = Engine(cfg.instruments, cfg.engine, None, settlement_config(cfg))
    once.apply(entries)
    assert live.money.state_hash() == once.money.state_hash() and live.money.all() == once.money.all()
    live.close()
    once.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 10**12)), max_size=60),
       st.sampled_from([0, 1 << 40, 1 << 56]))
def test_net_moves_sums_each_accounts_transfers_as_a_plain_loop_does(moves: list, spread: int) -> None:
    """A replay posts a big batch of transfers as each account's net change (`clearing.core.net_moves`):
    every account a transfer names, in increasing order, a net of 0 included, equal to adding the
    transfers up one by one; with keys close together (summed over their range) and far apart
    (``spread``: summed after a sort)."""
    from clearing import core

    rows = np.array([(k, 0, d * (1 + spread), c, a, 0) for k, (d, c, a) in enumerate(moves) if d != c],
                    dtype=np.int64).reshape(-1, 6)
    want: dict[int, int] = {}
    for _, _, debit, credit, amount, _ in rows.tolist():
        want[debit] = want.get(debit, 0) - amount
        want[credit] = want.get(credit, 0) + amount
    keys, net = core.net_moves(rows)
    assert keys.tolist() == sorted(want) and net.tolist() == [want[k] for k in sorted(want)]


def test_a_big_batch_of_transfers_moves_the_balances_as_small_ones_do() -> None:
    """`Money.post` of POST_VECTOR_MIN transfers or more (a replay's chunk) ends with the balances
    that posting them in small batches gives, accounts near and far apart alike."""
    from exchange.money import POST_VECTOR_MIN, Money, settlement_config

    rng = np.random.default_rng(7)
    n = 4 * POST_VECTOR_MIN
    owners = np.concatenate((rng.integers(1, 300, n // 2), rng.integers(1, 1 << 50, n - n // 2)))
    debit = owners << 3 | 1
    credit = np.roll(owners, 7) << 3 | rng.integers(1, 4, n)
    rows = np.stack([np.arange(n), np.zeros(n, np.int64), debit, credit, rng.integers(1, 10**9, n),
                     np.zeros(n, np.int64)], axis=1).astype(np.int64)
    rows = rows[rows[:, 2] != rows[:, 3]]
    cfg = ServerConfig(data_dir="unused")
    big, small = Money(cfg.instruments, settlement_config(cfg)), Money(cfg.instruments, settlement_config(cfg))
    big.post(rows)
    for lo in range(0, len(rows), 10):
        small.post(rows[lo:lo + 10])
    assert big.all() == small.all() and big.state_hash() == small.state_hash() and len(big.all()) > 300
    assert big.transfers == small.transfers == len(rows)
