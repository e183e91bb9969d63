"""R15: a command is all or nothing; its events come in order with consecutive sequence numbers."""

from __future__ import annotations

from orderbook.book import restore_book
from orderbook.config import BookConfig
from orderbook.types import FOK, GTD, HOUR, IOC, ON_DEMAND, RESERVED, SPOT
from tests.helpers import (
    BUYER,
    BUYER2,
    BUYER3,
    PROV,
    PROV2,
    P,
    S,
    T,
    amend,
    ask,
    bid,
    cancel,
    clock,
    continue_seq,
    pick,
    release,
    run,
    run_raw,
)

LOG = [
    ask(T, 1, PROV, 4, P, T + 6 * HOUR, spot_price=S),
    bid(T, 2, BUYER, SPOT, 3, 3, S),
    bid(T, 3, BUYER2, ON_DEMAND, 0, 1, P),  # rejected
    bid(T + 10, 4, BUYER2, ON_DEMAND, 2, 2, P),  # preempts the spot lease
    bid(T + 10, 5, BUYER3, RESERVED, 2, 1, P, start=T + 3 * HOUR, tif=GTD, expire_at=T + HOUR),
    ask(T + 20, 6, PROV2, 2, 2 * P, T + 2 * HOUR, start=T + HOUR),
    bid(T + 30, 7, BUYER, ON_DEMAND, 4, 1, 2 * P),  # 2 now, 2 rest
    amend(T + 40, 7, BUYER, 1),
    release(T + 50, BUYER2, 2),  # re-offer: bid 7 gets its last GPU
    bid(T + 55, 8, BUYER3, ON_DEMAND, 1, 1, P // 2, tif=GTD, expire_at=T + HOUR),
    cancel(T + 60, 99, BUYER),  # rejected
    clock(T + 3 * HOUR),  # bid 8 expires at T + 1h, ask 6 at T + 2h
    bid(T + 3 * HOUR, 9, BUYER3, ON_DEMAND, 1, 1, P, tif=IOC),
    clock(T + 7 * HOUR),
]


def test_r15_sequence_numbers_are_consecutive_from_one(book):
    """R15: every event (rejections included) gets the next sequence number of the book, from 1."""
    evs = run_raw(book, *LOG)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert {"rejected", "trade", "preempted", "released", "amended", "expired"} <= {e["type"] for e in evs}
    more = run_raw(book, clock(T + 8 * HOUR), cancel(T + 8 * HOUR, 5, BUYER3))
    assert [e["seq"] for e in more] == [len(evs) + 1]


def test_r15_one_batch_equals_one_command_at_a_time(make_book, engine):
    """R15, R21: batching does not matter: the same commands give the same events and state."""
    from orderbook.book import make_book as plain_book

    # the fixture's books take a batch one command at a time (to validate after each): a is not one
    a, b = plain_book(BookConfig(), engine), make_book()
    batched = run_raw(a, *LOG)
    single = [e for cmd in LOG for e in run_raw(b, cmd)]
    assert batched == single
    assert a.state_hash() == b.state_hash()


def test_r15_events_of_a_command_share_its_time_except_expiries(book):
    """R15, R4: events carry their command's time; expiries applied on the way carry their own."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 100),
        ask(T, 2, PROV, 1, P, T + 5 * HOUR, start=T + HOUR), bid(T, 3, BUYER2, ON_DEMAND, 1, 1, P))
    evs = run(book, bid(T + 2 * HOUR, 4, BUYER3, ON_DEMAND, 1, 1, P))
    assert pick(evs, "type", "time", "oid") == [
        ("expired", T + 100, 1), ("trade", T + 2 * HOUR, 3), ("accepted", T + 2 * HOUR, 4)]


def test_r15_failed_fok_changes_nothing_but_its_own_events(make_book):
    """R15, R14: a FOK that cannot fill leaves every ask as it was (all or nothing)."""
    prefix = [ask(T, 1, PROV, 2, P, T + 2 * HOUR), ask(T, 2, PROV2, 1, P, T + 2 * HOUR)]
    a, b = make_book(), make_book()
    run(a, *prefix)
    run(b, *prefix)
    ev_a = run_raw(a, bid(T, 3, BUYER, ON_DEMAND, 4, 1, P, tif=FOK))
    ev_b = run_raw(b, bid(T, 3, BUYER, ON_DEMAND, 4, 1, P // 2, tif=IOC))  # trades nothing either
    assert [e["type"] for e in ev_a] == [e["type"] for e in ev_b] == ["accepted", "cancelled"]
    assert a.state_hash() == b.state_hash()
    probe = [bid(T + 1, 4, BUYER2, ON_DEMAND, 3, 1, P)]
    assert run_raw(a, *probe) == run_raw(b, *probe)


def test_r15_state_hash_tracks_state(make_book):
    """R15: equal logs give equal hashes; a different accepted command gives a different hash."""
    a, b = make_book(), make_book()
    run(a, *LOG[:4])
    run(b, *LOG[:4])
    assert a.state_hash() == b.state_hash()
    run(a, bid(T + 10, 5, BUYER3, SPOT, 1, 1, S // 2))
    run(b, bid(T + 10, 5, BUYER3, SPOT, 1, 1, S // 2 + 1_000))
    assert a.state_hash() != b.state_hash()


def test_r15_snapshot_restore_continues_identically(engine):
    """R15, R21: a book restored from its snapshot produces exactly the events the original does."""
    from orderbook.book import make_book

    cfg = BookConfig()
    a = make_book(cfg, engine)
    assert run_raw(a, *LOG[:7])[-1]["seq"] == 12
    b = restore_book(cfg, a.snapshot(), engine)
    continue_seq(b, 12)
    assert b.state_hash() == a.state_hash()
    rest = LOG[7:]
    assert run_raw(a, *rest) == run_raw(b, *rest)
    assert a.state_hash() == b.state_hash()
