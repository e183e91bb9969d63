"""R11: the trade price is the maker's price (the order accepted first)."""

from __future__ import annotations

from orderbook.types import HOUR, ON_DEMAND, SIDE_ASK, SIDE_BID, SPOT
from tests.helpers import BUYER, BUYER2, PROV, P, S, T, ask, bid, clock, release, run, trade, trades


def test_r11_trade_price_is_makers_price_ask_maker_firm(book):
    """R11: resting ask, bid arrives with a higher limit: the trade is at the ask's price."""
    run(book, ask(T, 1, PROV, 2, P, T + 3 * HOUR, spot_price=S))
    evs = run(book, bid(T, 2, BUYER, ON_DEMAND, 1, 1, 3 * P))
    assert trades(evs) == [trade(time=T, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                                 gpus=1, price=P, start=T, hours=1, maker=SIDE_ASK)]


def test_r11_ask_maker_spot_fill_is_at_spot_price(book):
    """R11: a maker ask sells to spot at its spot_price, even to a bid with a higher limit."""
    run(book, ask(T, 1, PROV, 2, P, T + 3 * HOUR, spot_price=S))
    evs = run(book, bid(T, 2, BUYER, SPOT, 1, 1, 3 * P))
    assert trades(evs) == [trade(time=T, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=SPOT,
                                 gpus=1, price=S, start=T, hours=1, maker=SIDE_ASK)]


def test_r11_trade_price_is_makers_price_bid_maker(book):
    """R11: resting bids, ask arrives cheaper: each trade is at that bid's limit (firm and spot)."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, 3 * P), bid(T, 2, BUYER2, SPOT, 1, 1, 2 * S))
    evs = run(book, ask(T + 9, 3, PROV, 2, P, T + 3 * HOUR, spot_price=S))
    assert trades(evs) == [
        trade(time=T + 9, tid=1, bid=1, ask=3, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=1,
              price=3 * P, start=T + 9, hours=1, maker=SIDE_BID),
        trade(time=T + 9, tid=2, bid=2, ask=3, buyer=BUYER2, provider=PROV, kind=SPOT, gpus=1, price=2 * S,
              start=T + 9, hours=1, maker=SIDE_BID),
    ]


def test_r11_reoffer_older_bid_is_maker(book):
    """R11, R13: on a re-offer the older order is still the maker — here the bid, at its limit."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 1, 1, 3 * P),
        ask(T, 2, PROV, 1, P, T + 5 * HOUR, start=T + HOUR))
    evs = run(book, clock(T + HOUR))
    assert evs == [trade(time=T + HOUR, tid=1, bid=1, ask=2, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                         gpus=1, price=3 * P, start=T + HOUR, hours=1, maker=SIDE_BID)]


def test_r11_reoffer_older_ask_is_maker(book):
    """R11, R13: on a re-offer of an older ask to a later resting bid, the ask's price applies."""
    run(book, ask(T, 1, PROV, 1, P, T + 5 * HOUR, start=T + HOUR),
        bid(T, 2, BUYER, ON_DEMAND, 1, 1, 3 * P))
    evs = run(book, clock(T + HOUR))
    assert evs == [trade(time=T + HOUR, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                         gpus=1, price=P, start=T + HOUR, hours=1, maker=SIDE_ASK)]


def test_r11_reoffer_after_release_older_bid_is_maker(book):
    """R11, R13: capacity released back to an ask goes to an older resting bid at that bid's limit."""
    run(book, bid(T, 1, BUYER2, ON_DEMAND, 1, 1, 3 * P), bid(T, 2, BUYER, ON_DEMAND, 1, 1, 2 * P))
    evs = run(book, ask(T, 3, PROV, 1, P, T + 5 * HOUR))
    assert trades(evs) == [trade(time=T, tid=1, bid=1, ask=3, buyer=BUYER2, provider=PROV, kind=ON_DEMAND,
                                 gpus=1, price=3 * P, start=T, hours=1, maker=SIDE_BID)]
    evs = run(book, release(T + 60, BUYER2, 1))
    assert [e["type"] for e in evs] == ["released", "trade"]
    assert evs[1] == trade(time=T + 60, tid=2, bid=2, ask=3, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                           gpus=1, price=2 * P, start=T + 60, hours=1, maker=SIDE_BID)
