"""The core's exchange state (`exchange.tables`, int64 tables changed by jitted code) against its
specification (`exchange.state.ReferenceState`, plain Python records): the same entries in the
same batches give the same answers and the same state, read through every query the API and the
feeds use (R15 answers, R16 leases, R17 escrow, R21 replay).

Random streams of two classes with client order ids and halts (tests/test_engine_replay.py's
`exchange_entries`), applied in random batches to two engines that differ only in their state;
with the caps lowered (closed orders and client order ids forgotten, leases forgotten after a
short retention) so that every forgetting path runs; and through snapshots taken at random
points and restored into a fresh engine.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from test_engine_replay import BOOKS, INSTRUMENTS, batches, exchange_entries

import exchange.state as spec
from exchange.engine import Engine
from exchange.snapshots import Snapshot, encode_snapshot_parts
from exchange.state import ReferenceState
from exchange.tables import ExchangeState


def _engines() -> tuple[Engine, Engine]:
    tables = Engine(INSTRUMENTS, "numba")
    reference = Engine(INSTRUMENTS, "numba")
    reference.state = ReferenceState(INSTRUMENTS)  # type: ignore[assignment]
    assert isinstance(tables.state, ExchangeState)
    return tables, reference


def _accounts(st: Any) -> set[int]:
    return {o.account for o in st.orders.values()} | {x.buyer for x in st.leases.values()} | {
        x.provider for x in st.leases.values()} | {1, 2, 3, 999_999}


def view(st: Any) -> dict[str, Any]:
    """Everything a reader of the state sees (the orders by id, the leases in their order)."""
    b = msgspec.to_builtins
    accounts = sorted(_accounts(st))
    return {
        "orders": sorted(b(list(st.orders.values())), key=lambda o: o["oid"]),
        "order_ids": sorted(st.orders),
        "leases": b(list(st.leases.values())),
        "lease_refs": list(st.leases),
        "closed": sorted(st.closed),
        "coids": list(st.coids.items()),
        "halted": sorted(st.halted),
        "open_by_account": dict(sorted(st.open_by_account.items())),
        "leases_by_account": {a: list(refs) for a, refs in sorted(st.leases_by_account.items())},
        "open_orders": {a: b(st.open_orders(a)) for a in accounts},
        "open_count": {a: st.open_count(a) for a in accounts},
        "account_leases": {a: b(st.account_leases(a)) for a in accounts},
        "digest": st.digest(),
        "lookups": [(oid in st.orders, b(st.orders.get(oid))) for oid in range(0, 60)],
    }


def _run(seed: int, n: int = 400, most: int = 30, snapshot_every: int = 0) -> tuple[int, int, int]:
    rng = random.Random(seed)
    tables, reference = _engines()
    entries = exchange_entries(seed, n=n)
    checked = answered = restored = 0
    for k, batch in enumerate(batches(entries, rng, most)):
        got, got_arrays = tables.apply(batch, answers=True)
        want, want_arrays = reference.apply(batch, answers=True)
        assert [r.answer for r in got] == [r.answer for r in want]
        answered += sum(r.answer is not None for r in got)
        for name in got_arrays:
            assert got_arrays[name].tobytes() == want_arrays[name].tobytes()
        if rng.random() < 0.2:
            assert view(tables.state) == view(reference.state), f"batch {k}"
            checked += 1
        if snapshot_every and k % snapshot_every == snapshot_every - 1:
            fresh = Engine(INSTRUMENTS, "numba")
            fresh.load_snapshot(tables.snapshot())
            assert view(fresh.state) == view(tables.state)
            tables.close()
            tables = fresh
            restored += 1
    assert view(tables.state) == view(reference.state)
    assert tables.money.state_hash() == reference.money.state_hash()
    return checked, answered, restored


@pytest.mark.parametrize("seed", range(6))
def test_the_tables_answer_as_the_reference_does(seed: int) -> None:
    checked, answered, _ = _run(seed)
    assert checked > 2 and answered > 300


@pytest.mark.parametrize("seed", range(3))
def test_the_tables_forget_as_the_reference_does(monkeypatch: Any, seed: int) -> None:
    """With the caps low: the oldest closed orders, client order ids and ended leases go in both."""
    monkeypatch.setattr(spec, "MAX_CLOSED_ORDERS", 25)
    monkeypatch.setattr(spec, "MAX_COIDS", 20)
    monkeypatch.setattr(spec, "LEASE_RETENTION_S", 1_800)
    tables, reference = _engines()
    rng = random.Random(seed)
    pruned = 0
    for batch in batches(exchange_entries(100 + seed, n=500), rng, 20):
        got, _ = tables.apply(batch, answers=True)
        want, _ = reference.apply(batch, answers=True)
        assert [r.answer for r in got] == [r.answer for r in want]
        before = len(reference.state.leases)
        for name in BOOKS:  # a clock far ahead forgets in both (the engine prunes after clocks too)
            ended = [x.end for x in reference.state.leases.values() if x.book == name]
            edge = rng.choice(ended) + 1_800 if ended else 0  # a lease's last second, then its first gone
            for now in (edge - 1, edge, reference.book_time(name) + rng.randrange(0, 3_600)):
                assert tables.state.prune(name, now) == reference.state.prune(name, now)
        pruned += before - len(reference.state.leases)
        assert view(tables.state) == view(reference.state)
    assert len(reference.state.closed) == 25
    assert len(reference.state.coids) == 20
    assert pruned > 0


@pytest.mark.parametrize("seed", range(3))
def test_a_restored_snapshot_goes_on_as_the_reference_does(seed: int) -> None:
    _, _, restored = _run(200 + seed, n=300, most=25, snapshot_every=7)
    assert restored >= 3


def test_a_snapshot_of_other_classes_is_refused() -> None:
    tables, _ = _engines()
    tables.apply(exchange_entries(5, n=60))
    blob = b"".join(encode_snapshot_parts(Snapshot(seq=0, books={}, state=tables.state.capture()())))
    data = msgspec.msgpack.decode(blob, type=Snapshot).state
    ExchangeState(INSTRUMENTS).load_data(data)  # the same classes: fine
    with pytest.raises(ValueError, match="classes"):
        ExchangeState({"X": INSTRUMENTS[BOOKS[0]]}).load_data(data)


def test_a_first_answer_is_the_order_as_it_stood_after_its_own_command() -> None:
    """R15: a client order id's first answer shows the order right after the command that carried
    it, even when a later command in the same book call trades it (the tables copy its row there,
    `statecore.apply`'s marks), and so does the answer to a cancel and to a release."""
    from helpers import ask, bid, cancel, clock, release

    from exchange.entries import Cmd
    from orderbook.types import ON_DEMAND

    t0, hour = 1_700_000_000, 3_600
    day = [clock(t0), ask(t0, 1, 10, gpus=8, price=2_000, end=t0 + 48 * hour),
           bid(t0, 2, 20, ON_DEMAND, gpus=4, hours=2, limit=1_000),  # rests: under the ask
           bid(t0, 3, 21, ON_DEMAND, gpus=2, hours=2, limit=3_000),  # trades at once (lease 1)
           cancel(t0, 2, 20),  # the first bid goes: its answer above must still show it open
           ask(t0, 4, 11, gpus=4, price=900, end=t0 + 48 * hour),
           release(t0, 21, 1)]
    coids = ["", "a", "b", "c", "d", "e", "f"]
    entries = [Cmd("T", r.tobytes(), coid) for r, coid in zip(day, coids, strict=True)]
    tables, reference = _engines()
    got, _ = tables.apply(entries, answers=True)
    want, _ = reference.apply(entries, answers=True)
    assert [r.answer for r in got] == [r.answer for r in want]
    assert view(tables.state) == view(reference.state)
    first = {coid: msgspec.json.decode(a) for (_, coid), a in tables.state.coids.items()}
    assert first["b"]["order"]["status"] == "open"  # as it stood after its own command
    assert tables.state.orders[2].status == "cancelled"  # ... not as it stands at the end
    assert first["d"]["order"]["status"] == "cancelled"
    assert first["f"]["lease"]["ended_by"] == "released"


def test_ids_a_client_can_send_that_are_no_row_are_none() -> None:
    """Order ids past int64 and lease refs that are not ASCII digits (a client's path) find nothing
    in the tables and raise nothing, as in the reference (exchange.tables._look, _Leases._row)."""
    tables, reference = _engines()
    tables.apply(exchange_entries(5, n=80))
    reference.apply(exchange_entries(5, n=80))
    for st in (tables.state, reference.state):
        assert st.orders.get(2**80) is None and 2**80 not in st.orders
        assert st.leases.get(f"{BOOKS[0]}-²") is None and f"{BOOKS[0]}-1x" not in st.leases
        assert st.open_orders(2**80) == [] and st.open_count(2**80) == 0
    assert tables.state.orders_of([2**80, -(2**70)]) == {}
