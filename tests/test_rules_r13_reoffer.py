"""R13: an ask whose free capacity grows meets the resting bids again, in ask priority order."""

from __future__ import annotations

from orderbook.config import BookConfig
from orderbook.types import END_GTD, GTD, HOUR, ON_DEMAND, SIDE_ASK, SIDE_BID, SPOT
from tests.helpers import (
    BUYER,
    BUYER2,
    BUYER3,
    PROV,
    PROV2,
    P,
    S,
    T,
    ask,
    bid,
    clock,
    expired,
    pick,
    preempted,
    release,
    released,
    run,
    trade,
    types,
)


def test_r13_reoffer_when_a_lease_ends(book):
    """R13: when a lease on an ask ends, the clock command that reaches its end re-offers the ask."""
    run(book, ask(T, 1, PROV, 2, P, T + 5 * HOUR), bid(T, 2, BUYER, ON_DEMAND, 2, 1, P),
        bid(T + 10, 3, BUYER2, ON_DEMAND, 2, 2, P))
    assert run(book, clock(T + HOUR - 1)) == []
    evs = run(book, clock(T + HOUR))
    assert evs == [trade(time=T + HOUR, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND,
                         gpus=2, price=P, start=T + HOUR, hours=2, maker=SIDE_ASK)]


def test_r13_reoffer_on_release(book):
    """R13, R16: a released lease's GPUs go straight to a resting bid, in the same command."""
    run(book, ask(T, 1, PROV, 2, P, T + 5 * HOUR), bid(T, 2, BUYER, ON_DEMAND, 2, 3, P),
        bid(T + 10, 3, BUYER2, ON_DEMAND, 1, 1, P))
    evs = run(book, release(T + 600, BUYER, 1))
    assert evs == [
        released(time=T + 600, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=2,
                 price=P, start=T),
        trade(time=T + 600, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=1,
              price=P, start=T + 600, hours=1, maker=SIDE_ASK),
    ]


def test_r13_reoffer_on_preemption(make_book):
    """R13, R12: with notice 0 a preempted spot lease frees spot capacity at once: re-offered now."""
    book = make_book(BookConfig(notice_s=0))
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 4, 3, S),
        bid(T + 1, 3, BUYER2, SPOT, 2, 1, S))
    evs = run(book, bid(T + 2, 4, BUYER3, ON_DEMAND, 2, 1, P))
    assert evs[1:] == [
        trade(time=T + 2, tid=2, bid=4, ask=1, buyer=BUYER3, provider=PROV, kind=ON_DEMAND, gpus=2, price=P,
              start=T + 2, hours=1, maker=SIDE_ASK),
        preempted(time=T + 2, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, gpus=4, price=S, start=T,
                  end=T + 2, by=2),
        trade(time=T + 2, tid=3, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=SPOT, gpus=2, price=S,
              start=T + 2, hours=1, maker=SIDE_ASK),
    ]


def test_r13_reoffer_when_preempted_lease_ends_at_t0(book):
    """R13, R12: with the default notice the GPUs come back at T0, when the shortened lease ends."""
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 4, 3, S),
        bid(T + 1, 3, BUYER2, SPOT, 2, 1, S))
    evs = run(book, bid(T + 2, 4, BUYER3, ON_DEMAND, 2, 1, P))
    assert types(evs) == ["accepted", "trade", "preempted"]  # the re-offer finds nothing before T0
    assert run(book, clock(T + 121)) == []
    evs = run(book, clock(T + 122))
    assert evs == [trade(time=T + 122, tid=3, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=SPOT, gpus=2,
                         price=S, start=T + 122, hours=1, maker=SIDE_ASK)]


def test_r13_reoffer_when_ask_window_starts(book):
    """R13: an ask whose window opens later is matched against resting bids at its start."""
    run(book, ask(T, 1, PROV, 3, P, T + 5 * HOUR, start=T + 2 * HOUR), bid(T, 2, BUYER, ON_DEMAND, 2, 1, P),
        bid(T, 3, BUYER2, SPOT, 2, 1, 10 * P))  # the ask has no spot price: never for spot
    assert run(book, clock(T + 2 * HOUR - 1)) == []
    evs = run(book, clock(T + 2 * HOUR + 30))
    assert evs == [trade(time=T + 2 * HOUR + 30, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV,
                         kind=ON_DEMAND, gpus=2, price=P, start=T + 2 * HOUR + 30, hours=1, maker=SIDE_ASK)]


def test_r13_reoffers_run_in_ask_priority_order(book):
    """R13: re-offers go cheapest ask first (firm price), then oldest — not in the order they arose."""
    run(book, ask(T, 1, PROV, 1, 2 * P, T + 5 * HOUR, start=T + HOUR),
        ask(T, 2, PROV2, 1, P, T + 5 * HOUR, start=T + HOUR + 1),
        ask(T, 3, PROV, 1, P, T + 5 * HOUR, start=T + HOUR + 2),
        bid(T, 4, BUYER, ON_DEMAND, 1, 1, 2 * P), bid(T, 5, BUYER2, ON_DEMAND, 1, 1, 2 * P))
    evs = run(book, clock(T + 2 * HOUR))
    assert pick(evs, "type", "oid", "oid2", "price") == [("trade", 4, 2, P), ("trade", 5, 3, P)]


def test_r13_clock_applies_expiries_before_reoffers(book):
    """R13, R14: a GTD bid expiring at or before T is gone before the re-offers of a clock to T."""
    run(book, ask(T, 1, PROV, 1, P, T + 5 * HOUR, start=T + HOUR),
        bid(T, 2, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + HOUR),
        bid(T, 3, BUYER2, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + HOUR + 1),
        bid(T, 4, BUYER3, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + HOUR + 60))
    evs = run(book, clock(T + HOUR + 30))
    assert evs == [
        expired(time=T + HOUR, oid=2, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_GTD,
                remaining=1),
        expired(time=T + HOUR + 1, oid=3, account=BUYER2, side=SIDE_BID, kind=ON_DEMAND, reason=END_GTD,
                remaining=1),
        trade(time=T + HOUR + 30, tid=1, bid=4, ask=1, buyer=BUYER3, provider=PROV, kind=ON_DEMAND, gpus=1,
              price=P, start=T + HOUR + 30, hours=1, maker=SIDE_ASK),
    ]


def test_r13_reoffers_caused_by_reoffers_run_in_turn(make_book):
    """R13: a re-offer whose firm fill preempts spot re-offers the same ask again, which fills more."""
    book = make_book(BookConfig(notice_s=0))
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S, start=T + HOUR),
        bid(T, 2, BUYER, SPOT, 4, 2, 4 * S),
        bid(T, 3, BUYER2, SPOT, 2, 1, 3 * S),
        bid(T, 4, BUYER3, ON_DEMAND, 2, 1, P))
    evs = run(book, clock(T + HOUR))
    t1 = T + HOUR
    assert evs == [
        trade(time=t1, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=SPOT, gpus=4, price=S, start=t1,
              hours=2, maker=SIDE_ASK),
        trade(time=t1, tid=2, bid=4, ask=1, buyer=BUYER3, provider=PROV, kind=ON_DEMAND, gpus=2, price=P,
              start=t1, hours=1, maker=SIDE_ASK),
        preempted(time=t1, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, gpus=4, price=S, start=t1, end=t1,
                  by=2),
        trade(time=t1, tid=3, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=SPOT, gpus=2, price=S, start=t1,
              hours=1, maker=SIDE_ASK),
    ]

