"""R5: asks — gpus, price, optional spot_price ≤ price, window [start, end), min_hours, post_only."""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.types import CMD_ASK, HOUR, ON_DEMAND, SIDE_ASK, SIDE_BID, SPOT
from tests.helpers import (
    BUYER,
    PROV,
    P,
    S,
    T,
    accepted_ask,
    accepted_bid,
    ask,
    bid,
    clock,
    rejected,
    run,
    trade,
)


def test_r5_ask_defaults_start_now_and_min_hours_one(book):
    """R5: start defaults to now, min_hours to 1, no spot_price means not offered to spot."""
    evs = run(book, ask(T, 1, PROV, 4, P, T + 3 * HOUR))
    assert evs == [accepted_ask(time=T, oid=1, account=PROV, gpus=4, price=P, start=T, end=T + 3 * HOUR)]
    # min_hours 1: a one-hour on-demand bid trades at once, from now
    evs = run(book, bid(T, 2, BUYER, ON_DEMAND, 1, 1, P))
    assert evs[1] == trade(time=T, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                           gpus=1, price=P, start=T, hours=1, maker=SIDE_ASK)


def test_r5_ask_start_in_the_past_is_clamped_to_now(book):
    """R5 (decision): an ask whose start already passed starts now; its past hours are gone (R2)."""
    run(book, clock(T + 100))
    evs = run(book, ask(T + 100, 1, PROV, 2, P, T + 2 * HOUR, start=T))
    assert evs == [accepted_ask(time=T + 100, oid=1, account=PROV, gpus=2, price=P, start=T + 100,
                                end=T + 2 * HOUR)]


def test_r5_ask_future_start_is_kept_and_not_sold_before(book):
    """R5, R9: an ask starting later keeps its start; an on-demand bid now cannot use it."""
    evs = run(book, ask(T, 1, PROV, 2, P, T + 4 * HOUR, start=T + HOUR),
              bid(T, 2, BUYER, ON_DEMAND, 1, 1, P))
    assert evs == [
        accepted_ask(time=T, oid=1, account=PROV, gpus=2, price=P, start=T + HOUR, end=T + 4 * HOUR),
        accepted_bid(time=T, oid=2, account=BUYER, kind=ON_DEMAND, gpus=1, hours=1, limit=P),
    ]


def test_r5_spot_price_equal_to_price_is_accepted(book):
    """R5: spot_price ≤ price; equal is fine and is reported as price2."""
    evs = run(book, ask(T, 1, PROV, 1, P, T + HOUR, spot_price=P))
    assert evs == [accepted_ask(time=T, oid=1, account=PROV, gpus=1, price=P, start=T, end=T + HOUR, spot=P)]


def test_r5_spot_price_above_price_is_rejected(book):
    """R5, R8: spot_price above price is BAD_SPOT_PRICE; off-tick spot_price is OFF_TICK."""
    evs = run(book, ask(T, 1, PROV, 1, P, T + HOUR, spot_price=P + 1_000),
              ask(T, 2, PROV, 1, P, T + HOUR, spot_price=-1_000),
              ask(T, 3, PROV, 1, P, T + HOUR, spot_price=S + 1))
    assert evs == [
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_SPOT_PRICE, cmd=CMD_ASK),
        rejected(time=T, oid=2, account=PROV, reason=R.BAD_SPOT_PRICE, cmd=CMD_ASK),
        rejected(time=T, oid=3, account=PROV, reason=R.OFF_TICK, cmd=CMD_ASK),
    ]


def test_r5_spot_price_below_min_price_is_rejected(make_book):
    """R3, R5, R8: a spot price, like any price, lies within the instrument's bounds.

    (Found by probing: a spot price below min_price had no price level in the numba book.)"""
    book = make_book(BookConfig(min_price=100_000))
    evs = run(book, ask(T, 1, PROV, 1, P, T + HOUR, spot_price=1_000),
              ask(T, 2, PROV, 1, P, T + HOUR, spot_price=100_000))
    assert evs[0] == rejected(time=T, oid=1, account=PROV, reason=R.BAD_SPOT_PRICE, cmd=CMD_ASK)
    assert evs[1]["type"] == "accepted" and evs[1]["price2"] == 100_000


def test_r5_ask_without_spot_price_is_not_offered_to_spot(book):
    """R5, R9: a spot bid does not trade with an ask that has no spot_price, however high its limit."""
    evs = run(book, ask(T, 1, PROV, 4, P, T + 3 * HOUR), bid(T, 2, BUYER, SPOT, 1, 1, 10 * P))
    assert [e["type"] for e in evs] == ["accepted", "accepted"]
    # ...but it does trade with one that offers spot, at the spot price (R11)
    evs = run(book, ask(T, 3, PROV, 4, P, T + 3 * HOUR, spot_price=S))
    assert evs[1] == trade(time=T, tid=1, bid=2, ask=3, buyer=BUYER, provider=PROV, kind=SPOT, gpus=1,
                           price=10 * P, start=T, hours=1, maker=SIDE_BID)


def test_r5_window_must_hold_min_hours(book):
    """R5 (decision): the window must hold min_hours; shorter is BAD_WINDOW."""
    evs = run(book, ask(T, 1, PROV, 1, P, T + 2 * HOUR, min_hours=3),
              ask(T, 2, PROV, 1, P, T + 2 * HOUR - 1, min_hours=2),
              ask(T, 3, PROV, 1, P, T + 2 * HOUR, min_hours=2),
              ask(T, 4, PROV, 1, P, T + HOUR - 1),
              ask(T, 5, PROV, 1, P, T - 1),
              ask(T, 6, PROV, 1, P, T + 2 * HOUR, start=T + 2 * HOUR))
    assert evs == [
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
        rejected(time=T, oid=2, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
        accepted_ask(time=T, oid=3, account=PROV, gpus=1, price=P, start=T, end=T + 2 * HOUR, min_hours=2),
        rejected(time=T, oid=4, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
        rejected(time=T, oid=5, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
        rejected(time=T, oid=6, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
    ]


def test_r5_window_at_most_max_window_hours(make_book):
    """R5 (decision): an ask window longer than max_window_hours is BAD_WINDOW."""
    book = make_book(BookConfig(max_window_hours=2))
    evs = run(book, ask(T, 1, PROV, 1, P, T + 2 * HOUR + 1), ask(T, 2, PROV, 1, P, T + 2 * HOUR))
    assert evs == [
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_WINDOW, cmd=CMD_ASK),
        accepted_ask(time=T, oid=2, account=PROV, gpus=1, price=P, start=T, end=T + 2 * HOUR),
    ]


def test_r5_min_hours_is_enforced_against_bids(book):
    """R5, R9: min_hours is the shortest lease the ask accepts."""
    evs = run(book, ask(T, 1, PROV, 2, P, T + 5 * HOUR, min_hours=2),
              bid(T, 2, BUYER, ON_DEMAND, 1, 1, P),
              bid(T, 3, BUYER, ON_DEMAND, 1, 2, P))
    assert [e["type"] for e in evs] == ["accepted", "accepted", "accepted", "trade"]
    assert evs[0]["min_hours"] == 2
    assert evs[3] == trade(time=T, tid=1, bid=3, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                           gpus=1, price=P, start=T, hours=2, maker=SIDE_ASK)


def test_r5_post_only_ask_rests_when_it_would_not_trade(book):
    """R5 (decision): post_only is accepted when nothing would trade with it on arrival."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, P))
    evs = run(book, ask(T, 2, PROV, 1, P + 1_000, T + HOUR, post_only=1))
    assert evs == [accepted_ask(time=T, oid=2, account=PROV, gpus=1, price=P + 1_000, start=T,
                                end=T + HOUR)]


def test_r5_post_only_ask_that_would_trade_is_rejected(book):
    """R5, R8 (decision): a post_only ask that would trade on arrival is POST_ONLY_WOULD_TRADE."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, P))
    evs = run(book, ask(T, 2, PROV, 1, P, T + HOUR, post_only=1))
    assert evs == [rejected(time=T, oid=2, account=PROV, reason=R.POST_ONLY_WOULD_TRADE, cmd=CMD_ASK)]
    # a post_only ask that a spot bid would take is refused too
    run(book, bid(T, 3, BUYER, SPOT, 1, 1, S))
    evs = run(book, ask(T, 4, PROV, 1, 2 * P, T + HOUR, spot_price=S, post_only=1))
    assert evs == [rejected(time=T, oid=4, account=PROV, reason=R.POST_ONLY_WOULD_TRADE, cmd=CMD_ASK)]
