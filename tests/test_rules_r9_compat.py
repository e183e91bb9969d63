"""R9: when a bid and an ask can trade — accounts, windows, min_hours, price, firm and spot capacity."""

from __future__ import annotations

from orderbook.types import END_IOC, HOUR, IOC, ON_DEMAND, RESERVED, SIDE_ASK, SIDE_BID, SPOT
from tests.helpers import (
    BUYER,
    BUYER2,
    PROV,
    PROV2,
    P,
    S,
    T,
    accepted_ask,
    ask,
    bid,
    cancelled,
    preempted,
    run,
    trade,
    trades,
    types,
)


def test_r9_self_trade_incoming_bid_skips_own_resting_ask(book):
    """R9: an account's bid skips its own (cheaper) resting ask and trades with the next one."""
    run(book, ask(T, 1, PROV, 2, P, T + 2 * HOUR), ask(T, 2, PROV2, 2, 2 * P, T + 2 * HOUR))
    evs = run(book, bid(T, 3, PROV, ON_DEMAND, 2, 1, 2 * P))
    assert trades(evs) == [trade(time=T, tid=1, bid=3, ask=2, buyer=PROV, provider=PROV2, kind=ON_DEMAND,
                                 gpus=2, price=2 * P, start=T, hours=1, maker=SIDE_ASK)]
    # the skipped ask is untouched: someone else takes all of it
    evs = run(book, bid(T, 4, BUYER, ON_DEMAND, 2, 1, P))
    assert [(e["oid2"], e["gpus"]) for e in trades(evs)] == [(1, 2)]


def test_r9_self_trade_incoming_ask_skips_own_resting_bid(book):
    """R9: an ask skips its owner's resting (better) bid, fills a later bid; the skipped bid rests."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, 2 * P), bid(T, 2, BUYER2, ON_DEMAND, 1, 1, P))
    evs = run(book, ask(T, 3, BUYER, 2, P, T + 2 * HOUR))
    assert trades(evs) == [trade(time=T, tid=1, bid=2, ask=3, buyer=BUYER2, provider=BUYER, kind=ON_DEMAND,
                                 gpus=1, price=P, start=T, hours=1, maker=SIDE_BID)]
    # bid 1 still rests and fills from another provider's ask
    evs = run(book, ask(T + 1, 4, PROV, 1, P, T + 2 * HOUR))
    assert [(e["oid"], e["price"]) for e in trades(evs)] == [(1, 2 * P)]


def test_r9_bid_window_must_lie_inside_ask_window(book):
    """R9: a 3-hour on-demand bid does not fit a 2-hour ask; a 2-hour one does."""
    evs = run(book, ask(T, 1, PROV, 4, P, T + 2 * HOUR),
              bid(T, 2, BUYER, ON_DEMAND, 1, 3, P), bid(T, 3, BUYER, ON_DEMAND, 1, 2, P))
    assert types(evs) == ["accepted", "accepted", "accepted", "trade"]
    assert evs[3]["oid"] == 3 and evs[3]["end"] == T + 2 * HOUR


def test_r9_reserved_window_inside_future_ask(book):
    """R9: a reserved bid trades with an ask that starts later iff [start, start+hours) fits."""
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, start=T + 2 * HOUR))
    evs = run(book, bid(T, 2, BUYER, RESERVED, 1, 1, P, start=T + HOUR),
              bid(T, 3, BUYER, RESERVED, 1, 4, P, start=T + 2 * HOUR),
              bid(T, 4, BUYER, RESERVED, 1, 3, P, start=T + 2 * HOUR))
    assert types(evs) == ["accepted", "accepted", "accepted", "trade"]
    assert evs[3] == trade(time=T, tid=1, bid=4, ask=1, buyer=BUYER, provider=PROV, kind=RESERVED, gpus=1,
                           price=P, start=T + 2 * HOUR, hours=3, maker=SIDE_ASK)


def test_r9_bid_hours_at_least_ask_min_hours(book):
    """R9: b.hours ≥ a.min_hours, for spot bids too."""
    evs = run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S, min_hours=3),
              bid(T, 2, BUYER, SPOT, 1, 2, S), bid(T, 3, BUYER, SPOT, 1, 3, S))
    assert types(evs) == ["accepted", "accepted", "accepted", "trade"]
    assert evs[3]["oid"] == 3


def test_r9_firm_bid_needs_firm_price_spot_bid_needs_spot_price(book):
    """R9: a firm bid between spot_price and price does not trade; a spot bid at spot_price does."""
    evs = run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S),
              bid(T, 2, BUYER, ON_DEMAND, 1, 1, P - 1_000), bid(T, 3, BUYER, SPOT, 1, 1, S - 1_000),
              bid(T, 4, BUYER, SPOT, 1, 1, S))
    assert types(evs) == ["accepted"] * 4 + ["trade"]
    assert evs[4] == trade(time=T, tid=1, bid=4, ask=1, buyer=BUYER, provider=PROV, kind=SPOT, gpus=1,
                           price=S, start=T, hours=1, maker=SIDE_ASK)


def test_r9_firm_capacity_ignores_spot_leases(book):
    """R9, R12: spot leases do not count against a firm fill: all 4 GPUs can be sold firm again."""
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 4, 2, S))
    evs = run(book, bid(T + 60, 3, BUYER2, ON_DEMAND, 4, 1, P))
    assert evs[1:] == [
        trade(time=T + 60, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=4, price=P,
              start=T + 60, hours=1, maker=SIDE_ASK),
        preempted(time=T + 60, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, gpus=4, price=S, start=T,
                  end=T + 180, by=2),
    ]


def test_r9_spot_capacity_counts_firm_and_spot(book):
    """R9: a spot fill needs a.gpus − firm − spot ≥ q: with 1 firm and 2 spot of 4 taken, 1 is left."""
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, spot_price=S),
        bid(T, 2, BUYER, ON_DEMAND, 1, 1, P), bid(T, 3, BUYER, SPOT, 2, 1, S))
    evs = run(book, bid(T, 4, BUYER2, SPOT, 2, 1, S, tif=IOC))
    assert evs[1:] == [
        trade(time=T, tid=3, bid=4, ask=1, buyer=BUYER2, provider=PROV, kind=SPOT, gpus=1, price=S, start=T,
              hours=1, maker=SIDE_ASK, remaining=1),
        cancelled(time=T, oid=4, account=BUYER2, side=SIDE_BID, kind=SPOT, reason=END_IOC, remaining=1),
    ]


def test_r9_capacity_holds_for_every_t_in_the_window(book):
    """R9: a firm fill needs free GPUs at every t of its window, not just at its start."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR), bid(T, 2, BUYER, RESERVED, 3, 1, P, start=T + 2 * HOUR))
    evs = run(book, bid(T, 3, BUYER2, ON_DEMAND, 2, 3, P, tif=IOC), bid(T, 4, BUYER2, ON_DEMAND, 3, 2, P))
    assert trades(evs) == [
        trade(time=T, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=1, price=P,
              start=T, hours=3, maker=SIDE_ASK, remaining=1),
        trade(time=T, tid=3, bid=4, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=3, price=P,
              start=T, hours=2, maker=SIDE_ASK),
    ]


def test_r9_spot_lease_holds_its_gpus_over_its_whole_window(book):
    """R9: a 3-hour spot lease of 2 GPUs on a 4-GPU ask leaves 2 for spot during its window."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR, spot_price=S), bid(T, 2, BUYER, SPOT, 2, 3, S))
    evs = run(book, bid(T + 2 * HOUR, 3, BUYER2, SPOT, 3, 1, S, tif=IOC))
    assert [(e["type"], e.get("gpus", 0), e.get("remaining", 0)) for e in evs] == [
        ("accepted", 3, 3), ("trade", 2, 1), ("cancelled", 0, 1)]


def test_r9_ask_that_starts_later_is_not_compatible_with_on_demand_now(book):
    """R9: window containment uses the ask's own start, not the time of the bid."""
    evs = run(book, ask(T, 1, PROV, 1, P, T + 3 * HOUR, start=T + 1),
              bid(T, 2, BUYER, ON_DEMAND, 1, 1, P, tif=IOC))
    assert evs[0] == accepted_ask(time=T, oid=1, account=PROV, gpus=1, price=P, start=T + 1, end=T + 3 * HOUR)
    assert types(evs) == ["accepted", "accepted", "cancelled"]
