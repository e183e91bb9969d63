"""R12: spot is preemptible — a firm fill ends whole spot leases at T0, cheapest then newest first."""

from __future__ import annotations

from orderbook.config import BookConfig
from orderbook.types import HOUR, ON_DEMAND, RESERVED, SIDE_ASK, SPOT
from tests.helpers import (
    BUYER,
    BUYER2,
    BUYER3,
    PROV,
    P,
    S,
    T,
    ask,
    bid,
    clock,
    pick,
    preempted,
    release,
    released,
    run,
    trade,
    types,
)


def test_r12_firm_fill_preempts_spot_with_notice(book):
    """R12: T0 = now + notice_s; the whole spot lease now ends at T0, the event names the firm trade."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 4, 3, S))
    evs = run(book, bid(T + 100, 3, BUYER2, ON_DEMAND, 2, 1, P))
    assert evs[1:] == [
        trade(time=T + 100, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=2,
              price=P, start=T + 100, hours=1, maker=SIDE_ASK),
        preempted(time=T + 100, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, gpus=4, price=S, start=T,
                  end=T + 220, by=2),
    ]
    # the spot lease runs until T0: it can still be released one second before
    assert run(book, release(T + 219, BUYER, 1)) == [
        released(time=T + 219, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=SPOT, gpus=4, price=S,
                 start=T)]


def test_r12_t0_is_the_fill_start_when_later(book):
    """R12: for a reserved fill starting in 2 h, T0 is its start, not now + notice."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 4, 4, S))
    evs = run(book, bid(T, 3, BUYER2, RESERVED, 4, 1, P, start=T + 2 * HOUR))
    assert evs[2] == preempted(time=T, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, gpus=4, price=S,
                               start=T, end=T + 2 * HOUR, by=2)
    assert len(evs) == 3


def test_r12_lowest_price_first_newest_first_on_ties(book):
    """R12: spot leases go cheapest trade price first; among equal prices the newest goes first."""
    run(book, bid(T, 1, BUYER, SPOT, 1, 2, S + 2_000), bid(T, 2, BUYER2, SPOT, 1, 2, S),
        bid(T, 3, BUYER3, SPOT, 1, 2, S), bid(T, 4, BUYER, SPOT, 1, 2, S + 1_000))
    evs = run(book, ask(T, 5, PROV, 4, P, T + 10 * HOUR, spot_price=S))
    # ask walks highest limit first: leases 1..4 are bids 1, 4, 2, 3
    assert pick(evs[1:], "trade_id", "oid", "price") == [
        (1, 1, S + 2_000), (2, 4, S + 1_000), (3, 2, S), (4, 3, S)]
    evs = run(book, bid(T + 10, 6, BUYER2, ON_DEMAND, 2, 1, P))
    assert pick(evs[2:], "type", "trade_id", "end", "lease_id") == [
        ("preempted", 4, T + 130, 5), ("preempted", 3, T + 130, 5)]
    evs = run(book, bid(T + 20, 7, BUYER3, ON_DEMAND, 1, 1, P))
    assert pick(evs[2:], "type", "trade_id", "end", "lease_id") == [("preempted", 2, T + 140, 6)]


def test_r12_only_spot_leases_holding_gpus_at_violating_times(book):
    """R12: a cheap spot lease that ends before the firm window is spared; the one in the way goes."""
    run(book, bid(T, 1, BUYER, SPOT, 2, 1, S), bid(T, 2, BUYER2, SPOT, 2, 5, 2 * S))
    evs = run(book, ask(T, 3, PROV, 4, P, T + 10 * HOUR, spot_price=S))
    assert pick(evs[1:], "trade_id", "oid", "price", "end") == [(1, 2, 2 * S, T + 5 * HOUR),
                                                                (2, 1, S, T + HOUR)]
    evs = run(book, bid(T, 4, BUYER3, RESERVED, 3, 1, P, start=T + 2 * HOUR))
    assert evs[1:] == [
        trade(time=T, tid=3, bid=4, ask=3, buyer=BUYER3, provider=PROV, kind=RESERVED, gpus=3, price=P,
              start=T + 2 * HOUR, hours=1, maker=SIDE_ASK),
        preempted(time=T, tid=1, bid=2, ask=3, buyer=BUYER2, provider=PROV, gpus=2, price=2 * S, start=T,
                  end=T + 2 * HOUR, by=3),
    ]


def test_r12_no_preemption_while_capacity_suffices(book):
    """R12: firm + spot within a.gpus: nothing is preempted."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 2, 3, S))
    evs = run(book, bid(T + 5, 3, BUYER2, ON_DEMAND, 2, 2, P))
    assert types(evs) == ["accepted", "trade"]


def test_r12_overlap_only_before_t0_waits_without_preemption(book):
    """R12: if the excess ends before T0 (the spot lease ends within the notice), nothing is preempted."""
    run(book, ask(T, 1, PROV, 2, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 2, 1, S))
    evs = run(book, bid(T + HOUR - 60, 3, BUYER2, ON_DEMAND, 2, 1, P))
    assert types(evs) == ["accepted", "trade"]
    # the spot lease ends at its own end, as sold (its holder can still release it just before)
    assert types(run(book, release(T + HOUR - 1, BUYER, 1))) == ["released"]


def test_r12_spot_never_preempts_spot(book):
    """R12: a higher spot bid does not push out a running spot lease; it waits for capacity."""
    run(book, ask(T, 1, PROV, 2, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 2, 2, S))
    evs = run(book, bid(T + 1, 3, BUYER2, SPOT, 2, 1, P))
    assert types(evs) == ["accepted"]
    # when the lease ends the waiting spot bid gets the GPUs (R13)
    evs = run(book, clock(T + 2 * HOUR))
    assert evs == [trade(time=T + 2 * HOUR, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=SPOT,
                         gpus=2, price=S, start=T + 2 * HOUR, hours=1, maker=SIDE_ASK)]


def test_r12_notice_is_configuration(make_book):
    """R1, R12: notice_s comes from the book's configuration."""
    book = make_book(BookConfig(notice_s=600))
    run(book, ask(T, 1, PROV, 1, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 1, 3, S))
    evs = run(book, bid(T + 7, 3, BUYER2, ON_DEMAND, 1, 1, P))
    assert pick(evs, "type", "end") == [("accepted", 0), ("trade", T + 7 + HOUR), ("preempted", T + 607)]
