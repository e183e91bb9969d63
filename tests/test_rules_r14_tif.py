"""R14: time in force — IOC, FOK, GTC, GTD; reserved bids expire at the gate, asks at their end."""

from __future__ import annotations

from orderbook.types import (
    END_FOK,
    END_GATE,
    END_GTD,
    END_IOC,
    END_WINDOW,
    FOK,
    GTD,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SIDE_BID,
    SPOT,
)
from tests.helpers import (
    BUYER,
    BUYER2,
    PROV,
    PROV2,
    P,
    S,
    T,
    accepted_bid,
    ask,
    bid,
    cancelled,
    clock,
    expired,
    pick,
    run,
    trade,
    trades,
    types,
)


def test_r14_ioc_fills_what_it_can_and_cancels_the_rest(book):
    """R14: IOC trades what is possible now; the remainder is cancelled (END_IOC), nothing rests."""
    run(book, ask(T, 1, PROV, 3, P, T + 2 * HOUR))
    evs = run(book, bid(T, 2, BUYER, ON_DEMAND, 4, 1, P, tif=IOC))
    assert evs == [
        accepted_bid(time=T, oid=2, account=BUYER, kind=ON_DEMAND, gpus=4, hours=1, limit=P, tif=IOC),
        trade(time=T, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=3, price=P,
              start=T, hours=1, maker=SIDE_ASK, remaining=1),
        cancelled(time=T, oid=2, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_IOC, remaining=1),
    ]
    # nothing rests: a new ask finds no bid
    assert types(run(book, ask(T + 1, 3, PROV2, 1, P, T + 2 * HOUR))) == ["accepted"]


def test_r14_ioc_fully_filled_has_no_cancel(book):
    """R14: an IOC that fills in full ends with its last trade."""
    run(book, ask(T, 1, PROV, 3, P, T + 2 * HOUR))
    evs = run(book, bid(T, 2, BUYER, ON_DEMAND, 3, 1, P, tif=IOC))
    assert types(evs) == ["accepted", "trade"]


def test_r14_fok_fills_across_asks_or_nothing(book):
    """R14: FOK fills all of gpus across several asks, or nothing at all (END_FOK) and no trade."""
    run(book, ask(T, 1, PROV, 2, P, T + 2 * HOUR), ask(T, 2, PROV2, 2, P, T + 2 * HOUR))
    evs = run(book, bid(T, 3, BUYER, ON_DEMAND, 5, 1, P, tif=FOK))
    assert evs == [
        accepted_bid(time=T, oid=3, account=BUYER, kind=ON_DEMAND, gpus=5, hours=1, limit=P, tif=FOK),
        cancelled(time=T, oid=3, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_FOK, remaining=5),
    ]
    evs = run(book, bid(T, 4, BUYER, ON_DEMAND, 4, 1, P, tif=FOK))
    assert pick(evs, "type", "oid2", "gpus", "remaining") == [
        ("accepted", 0, 4, 4), ("trade", 1, 2, 2), ("trade", 2, 2, 0)]


def test_r14_fok_counts_only_whole_blocks(book):
    """R14, R10: FOK with block 2 over two 3-GPU asks can fill 4, not 6."""
    run(book, ask(T, 1, PROV, 3, P, T + 2 * HOUR), ask(T, 2, PROV2, 3, P, T + 2 * HOUR))
    evs = run(book, bid(T, 3, BUYER, ON_DEMAND, 6, 1, P, tif=FOK, block=2))
    assert types(evs) == ["accepted", "cancelled"] and evs[1]["reason"] == END_FOK
    evs = run(book, bid(T, 4, BUYER, ON_DEMAND, 4, 1, P, tif=FOK, block=2))
    assert pick(trades(evs), "oid2", "gpus") == [(1, 2), (2, 2)]


def test_r14_fok_dry_run_skips_own_and_incompatible_asks(book):
    """R14, R9: the FOK check counts only asks the bid can really trade with."""
    run(book, ask(T, 1, BUYER, 4, P, T + 2 * HOUR), ask(T, 2, PROV, 2, P, T + 2 * HOUR, min_hours=2),
        ask(T, 3, PROV2, 2, P, T + 2 * HOUR))
    evs = run(book, bid(T, 4, BUYER, ON_DEMAND, 3, 1, P, tif=FOK))
    assert types(evs) == ["accepted", "cancelled"]
    evs = run(book, bid(T, 5, BUYER, ON_DEMAND, 2, 1, P, tif=FOK))
    assert pick(trades(evs), "oid2", "gpus") == [(3, 2)]


def test_r14_gtc_rests_without_expiry(book):
    """R14: a GTC (non-reserved) bid rests indefinitely and trades when an ask comes, days later."""
    evs = run(book, bid(T, 1, BUYER, SPOT, 2, 1, S))
    assert "expire_at" not in evs[0]
    assert run(book, clock(T + 1000 * HOUR)) == []
    evs = run(book, ask(T + 1000 * HOUR, 2, PROV, 2, P, T + 1002 * HOUR, spot_price=S))
    assert pick(trades(evs), "oid", "gpus", "start") == [(1, 2, T + 1000 * HOUR)]


def test_r14_gtd_expires_at_expire_at(book):
    """R14: a GTD bid expires at expire_at; the event carries that time (not the clock's)."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 2, 1, P, tif=GTD, expire_at=T + 100))
    evs = run(book, clock(T + 5000))
    assert evs == [expired(time=T + 100, oid=1, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_GTD,
                           remaining=2)]


def test_r14_what_expires_at_x_is_gone_for_commands_stamped_x(book):
    """R14: a command stamped exactly at an expiry no longer sees the expired order."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 100),
        bid(T, 2, BUYER2, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 101))
    evs = run(book, ask(T + 100, 3, PROV, 2, P, T + 3 * HOUR))
    assert pick(evs, "type", "time", "oid", "oid2") == [
        ("expired", T + 100, 1, 0), ("accepted", T + 100, 3, 0), ("trade", T + 100, 2, 3)]


def test_r14_ask_expires_at_its_end(book):
    """R14: an ask expires at its end (END_WINDOW); a bid stamped at the end no longer sees it."""
    run(book, ask(T, 1, PROV, 2, P, T + 2 * HOUR, spot_price=S))
    evs = run(book, bid(T + 2 * HOUR, 2, BUYER, SPOT, 1, 1, S))
    assert evs == [
        expired(time=T + 2 * HOUR, oid=1, account=PROV, side=SIDE_ASK, reason=END_WINDOW),
        accepted_bid(time=T + 2 * HOUR, oid=2, account=BUYER, kind=SPOT, gpus=1, hours=1, limit=S),
    ]


def test_r14_reserved_gtc_expires_at_the_gate(book):
    """R14: a resting reserved GTC bid expires at start − gate_s; one second earlier it still trades."""
    start = T + 2 * HOUR
    run(book, bid(T, 1, BUYER, RESERVED, 1, 1, P, start=start),
        bid(T, 2, BUYER2, RESERVED, 1, 1, P, start=start))
    evs = run(book, ask(start - 301, 3, PROV, 1, P, start + HOUR))
    assert pick(trades(evs), "oid", "start", "end") == [(1, start, start + HOUR)]
    evs = run(book, clock(start - 300))
    assert evs == [expired(time=start - 300, oid=2, account=BUYER2, side=SIDE_BID, kind=RESERVED,
                           reason=END_GATE, remaining=1)]


def test_r14_reserved_gtd_expiry_is_capped_at_the_gate(book):
    """R14 (decision): a reserved GTD bid expires at the earlier of expire_at and start − gate_s."""
    start = T + 2 * HOUR
    evs = run(book, bid(T, 1, BUYER, RESERVED, 1, 1, P, start=start, tif=GTD, expire_at=start),
              bid(T, 2, BUYER, RESERVED, 1, 1, P, start=start, tif=GTD, expire_at=T + HOUR))
    assert pick(evs, "oid", "expire_at") == [(1, start - 300), (2, T + HOUR)]
    evs = run(book, clock(start))
    assert evs == [
        expired(time=T + HOUR, oid=2, account=BUYER, side=SIDE_BID, kind=RESERVED, reason=END_GTD,
                remaining=1),
        expired(time=start - 300, oid=1, account=BUYER, side=SIDE_BID, kind=RESERVED, reason=END_GATE,
                remaining=1),
    ]


def test_r14_expiries_apply_in_time_order_then_by_order_id(book):
    """R14, R13: one clock jump expires everything due, each at its own time, in time order."""
    run(book, ask(T, 1, PROV, 1, 3 * P, T + HOUR), bid(T, 2, BUYER, ON_DEMAND, 1, 1, P, tif=GTD,
                                                         expire_at=T + 500),
        bid(T, 3, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 200),
        bid(T, 4, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 500))
    evs = run(book, clock(T + 2 * HOUR))
    assert pick(evs, "type", "time", "oid") == [
        ("expired", T + 200, 3), ("expired", T + 500, 2), ("expired", T + 500, 4), ("expired", T + HOUR, 1)]


def test_r14_ioc_and_fok_reserved_never_rest(book):
    """R14: reserved IOC/FOK bids do not rest and carry no expiry."""
    evs = run(book, bid(T, 1, BUYER, RESERVED, 1, 1, P, start=T + 2 * HOUR, tif=IOC),
              bid(T, 2, BUYER, RESERVED, 1, 1, P, start=T + 2 * HOUR, tif=FOK))
    assert pick(evs, "type", "oid", "expire_at", "reason") == [
        ("accepted", 1, 0, 0), ("cancelled", 1, 0, END_IOC),
        ("accepted", 2, 0, 0), ("cancelled", 2, 0, END_FOK)]
