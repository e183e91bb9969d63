"""R10: price–time priority both ways; incompatible orders are skipped; block rounding; q = 0 skips."""

from __future__ import annotations

from orderbook.types import END_IOC, HOUR, IOC, ON_DEMAND, RESERVED, SIDE_ASK, SIDE_BID, SPOT
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
    cancelled,
    pick,
    run,
    trade,
    trades,
)


def test_r10_incoming_bid_walks_asks_cheapest_then_oldest(book):
    """R10: cheapest first, equal prices oldest first; each trade at that ask's price (R11)."""
    run(book, ask(T, 1, PROV, 2, 3 * P, T + 2 * HOUR), ask(T, 2, PROV2, 2, 2 * P, T + 2 * HOUR),
        ask(T, 3, PROV, 2, 2 * P, T + 2 * HOUR))
    evs = run(book, bid(T, 4, BUYER, ON_DEMAND, 5, 1, 3 * P))
    assert trades(evs) == [
        trade(time=T, tid=1, bid=4, ask=2, buyer=BUYER, provider=PROV2, kind=ON_DEMAND, gpus=2, price=2 * P,
              start=T, hours=1, maker=SIDE_ASK, remaining=3),
        trade(time=T, tid=2, bid=4, ask=3, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=2, price=2 * P,
              start=T, hours=1, maker=SIDE_ASK, remaining=1),
        trade(time=T, tid=3, bid=4, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=1, price=3 * P,
              start=T, hours=1, maker=SIDE_ASK),
    ]


def test_r10_spot_bid_walks_asks_by_spot_price(book):
    """R10: a spot bid ranks asks by spot_price, a firm bid by price — opposite orders here."""
    run(book, ask(T, 1, PROV, 1, 3 * P, T + 2 * HOUR, spot_price=S),
        ask(T, 2, PROV2, 1, 2 * P, T + 2 * HOUR, spot_price=2 * S))
    evs = run(book, bid(T, 3, BUYER, SPOT, 1, 1, 2 * S), bid(T, 4, BUYER2, ON_DEMAND, 1, 1, 3 * P))
    assert pick(trades(evs), "oid", "oid2", "price") == [(3, 1, S), (4, 2, 2 * P)]


def test_r10_incoming_ask_walks_bids_highest_limit_then_oldest(book):
    """R10: an ask fills the highest limit first (spot and firm bids in one ranking), then oldest."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, P), bid(T, 2, BUYER2, ON_DEMAND, 1, 1, 2 * P),
        bid(T, 3, BUYER3, ON_DEMAND, 1, 1, 2 * P), bid(T, 4, BUYER, SPOT, 1, 1, 3 * P),
        bid(T, 5, BUYER2, SPOT, 1, 1, P // 2))
    evs = run(book, ask(T + 1, 6, PROV, 8, P, T + 2 * HOUR, spot_price=P // 2))
    assert pick(trades(evs), "oid", "price", "kind") == [
        (4, 3 * P, SPOT), (2, 2 * P, ON_DEMAND), (3, 2 * P, ON_DEMAND), (1, P, ON_DEMAND), (5, P // 2, SPOT)]


def test_r10_incompatible_asks_are_skipped_not_blocking(book):
    """R10: cheaper asks that cannot take the bid (min_hours, window, own account) do not block it."""
    run(book, ask(T, 1, PROV, 4, P, T + 5 * HOUR, min_hours=3),  # minimum too long for 2h
        ask(T, 2, PROV, 4, P, T + HOUR),  # window too short
        ask(T, 3, PROV2, 4, P, T + 5 * HOUR, start=T + HOUR),  # starts later
        ask(T, 4, BUYER, 4, P, T + 5 * HOUR),  # the bidder's own ask
        ask(T, 5, PROV2, 4, 2 * P, T + 5 * HOUR),
        ask(T, 6, PROV, 4, 2 * P, T + 5 * HOUR))
    evs = run(book, bid(T, 7, BUYER, ON_DEMAND, 6, 2, 2 * P))
    assert pick(trades(evs), "oid2", "gpus", "price") == [(5, 4, 2 * P), (6, 2, 2 * P)]


def test_r10_incompatible_bids_are_skipped_not_blocking(book):
    """R10: an ask skips a higher bid it cannot serve (too long) and fills the next one."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 5, 3 * P), bid(T, 2, BUYER2, RESERVED, 1, 1, 3 * P,
                                                            start=T + 10 * HOUR),
        bid(T, 3, BUYER3, ON_DEMAND, 1, 1, P))
    evs = run(book, ask(T, 4, PROV, 2, P, T + 3 * HOUR))
    assert pick(trades(evs), "oid", "price") == [(3, P)]


def test_r10_fill_is_rounded_down_to_block(book):
    """R10: q = min(remaining, free) rounded down to the block: 3 free give 2 in blocks of 2."""
    run(book, ask(T, 1, PROV, 3, P, T + 2 * HOUR), ask(T, 2, PROV, 5, P, T + 2 * HOUR))
    evs = run(book, bid(T, 3, BUYER, ON_DEMAND, 6, 1, P, block=2))
    assert pick(trades(evs), "oid2", "gpus", "remaining") == [(1, 2, 4), (2, 4, 0)]
    # one GPU is left on ask 1 and one on ask 2: a block-2 bid gets nothing from either
    evs = run(book, bid(T, 4, BUYER2, ON_DEMAND, 2, 1, P, block=2, tif=IOC))
    assert evs[1:] == [cancelled(time=T, oid=4, account=BUYER2, side=SIDE_BID, kind=ON_DEMAND,
                                 reason=END_IOC, remaining=2)]
    evs = run(book, bid(T, 5, BUYER2, ON_DEMAND, 2, 1, P, tif=IOC))
    assert pick(trades(evs), "oid2", "gpus") == [(1, 1), (2, 1)]


def test_r10_zero_quantity_skips_to_next_ask(book):
    """R10: an ask too small for one block gives q = 0 and is skipped; the next older-or-dearer fills."""
    run(book, ask(T, 1, PROV, 3, P, T + 2 * HOUR), ask(T, 2, PROV2, 4, 2 * P, T + 2 * HOUR))
    evs = run(book, bid(T, 3, BUYER, ON_DEMAND, 4, 1, 2 * P, block=4))
    assert trades(evs) == [trade(time=T, tid=1, bid=3, ask=2, buyer=BUYER, provider=PROV2, kind=ON_DEMAND,
                                 gpus=4, price=2 * P, start=T, hours=1, maker=SIDE_ASK)]


def test_r10_resting_remainder_keeps_time_priority(book):
    """R10: a partly filled bid rests with its remainder ahead of later bids at its limit."""
    run(book, ask(T, 1, PROV, 1, P, T + 2 * HOUR), bid(T, 2, BUYER, ON_DEMAND, 3, 1, P),
        bid(T, 3, BUYER2, ON_DEMAND, 3, 1, P))
    evs = run(book, ask(T + 5, 4, PROV2, 4, P, T + 2 * HOUR))
    assert pick(trades(evs), "oid", "gpus", "remaining") == [(2, 2, 0), (3, 2, 1)]
