"""R6: bids — kind, gpus, hours, limit, block, tif; reserved windows and the gate."""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.types import (
    CMD_BID,
    END_GATE,
    END_GTD,
    END_IOC,
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
    PROV,
    P,
    S,
    T,
    accepted_bid,
    ask,
    bid,
    cancelled,
    clock,
    expired,
    rejected,
    run,
    trade,
)


def test_r6_reserved_window_is_start_plus_hours(book):
    """R6: a reserved bid's window is [start, start + hours); it is firm and expires at the gate."""
    evs = run(book, bid(T, 1, BUYER, RESERVED, 2, 3, P, start=T + 2 * HOUR))
    assert evs == [accepted_bid(time=T, oid=1, account=BUYER, kind=RESERVED, gpus=2, hours=3, limit=P,
                                start=T + 2 * HOUR, expire_at=T + 2 * HOUR - 300)]
    evs = run(book, ask(T + 60, 2, PROV, 4, P, T + 10 * HOUR))
    assert evs[1] == trade(time=T + 60, tid=1, bid=1, ask=2, buyer=BUYER, provider=PROV, kind=RESERVED,
                           gpus=2, price=P, start=T + 2 * HOUR, hours=3, maker=SIDE_BID)


def test_r6_reserved_start_must_be_on_an_hour_boundary(book):
    """R6, R8: a reserved start off the hour is UNALIGNED_START."""
    evs = run(book, bid(T, 1, BUYER, RESERVED, 1, 1, P, start=T + 2 * HOUR + 60))
    assert evs == [rejected(time=T, oid=1, account=BUYER, reason=R.UNALIGNED_START, cmd=CMD_BID)]


def test_r6_reserved_gate(book):
    """R6: start − now ≥ gate_s: exactly gate_s is accepted, one second less is PAST_GATE."""
    start = T + HOUR
    evs = run(book, bid(start - 301, 1, BUYER, RESERVED, 1, 1, P, start=start, tif=IOC),
              bid(start - 299, 2, BUYER, RESERVED, 1, 1, P, start=start, tif=IOC),
              bid(start - 299, 3, BUYER, RESERVED, 1, 1, P, start=start - HOUR, tif=IOC))
    assert evs == [
        accepted_bid(time=start - 301, oid=1, account=BUYER, kind=RESERVED, gpus=1, hours=1, limit=P,
                     tif=IOC, start=start),
        cancelled(time=start - 301, oid=1, account=BUYER, side=SIDE_BID, kind=RESERVED, reason=END_IOC,
                  remaining=1),
        rejected(time=start - 299, oid=2, account=BUYER, reason=R.PAST_GATE, cmd=CMD_BID),
        rejected(time=start - 299, oid=3, account=BUYER, reason=R.PAST_GATE, cmd=CMD_BID),
    ]


def test_r6_reserved_exactly_at_gate_trades(make_book):
    """R6, R14: a reserved bid placed with start − now == gate_s trades what it can, then expires."""
    book = make_book()
    start = T + HOUR
    run(book, ask(T, 1, PROV, 1, P, start + 2 * HOUR))
    evs = run(book, bid(start - 300, 2, BUYER, RESERVED, 2, 1, P, start=start))
    assert evs == [
        accepted_bid(time=start - 300, oid=2, account=BUYER, kind=RESERVED, gpus=2, hours=1, limit=P,
                     start=start, expire_at=start - 300),
        trade(time=start - 300, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=RESERVED, gpus=1,
              price=P, start=start, hours=1, maker=SIDE_ASK, remaining=1),
        expired(time=start - 300, oid=2, account=BUYER, side=SIDE_BID, kind=RESERVED, reason=END_GATE,
                remaining=1),
    ]


def test_r6_gate_is_configuration(make_book):
    """R1, R6: gate_s comes from the book's configuration."""
    book = make_book(BookConfig(gate_s=3600))
    evs = run(book, bid(T, 1, BUYER, RESERVED, 1, 1, P, start=T + HOUR),
              bid(T + 1, 2, BUYER, RESERVED, 1, 1, P, start=T + HOUR))
    assert evs[0] == accepted_bid(time=T, oid=1, account=BUYER, kind=RESERVED, gpus=1, hours=1, limit=P,
                                  start=T + HOUR, expire_at=T)
    assert evs[1:] == [
        expired(time=T, oid=1, account=BUYER, side=SIDE_BID, kind=RESERVED, reason=END_GATE, remaining=1),
        rejected(time=T + 1, oid=2, account=BUYER, reason=R.PAST_GATE, cmd=CMD_BID),
    ]


def test_r6_on_demand_starts_when_filled(book):
    """R6: an on-demand bid's window is [fill time, fill time + hours)."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 2, 2, P))
    evs = run(book, ask(T + 1000, 2, PROV, 2, P, T + 10 * HOUR))
    assert evs[1] == trade(time=T + 1000, tid=1, bid=1, ask=2, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                           gpus=2, price=P, start=T + 1000, hours=2, maker=SIDE_BID)


def test_r6_spot_starts_when_filled(book):
    """R6: a spot bid's window is [fill time, fill time + hours); its lease kind is spot."""
    run(book, bid(T, 1, BUYER, SPOT, 2, 3, S))
    evs = run(book, ask(T + 50, 2, PROV, 2, P, T + 10 * HOUR, spot_price=S))
    assert evs[1] == trade(time=T + 50, tid=1, bid=1, ask=2, buyer=BUYER, provider=PROV, kind=SPOT, gpus=2,
                           price=S, start=T + 50, hours=3, maker=SIDE_BID)


def test_r6_block_default_is_one_and_gpus_must_be_a_multiple(book):
    """R6, R8: block 0 means 1; gpus % block != 0 or block < 0 is BAD_BLOCK."""
    evs = run(book, bid(T, 1, BUYER, ON_DEMAND, 3, 1, P),
              bid(T, 2, BUYER, ON_DEMAND, 6, 1, P, block=4),
              bid(T, 3, BUYER, ON_DEMAND, 6, 1, P, block=-2),
              bid(T, 4, BUYER, ON_DEMAND, 6, 1, P, block=3))
    assert evs == [
        accepted_bid(time=T, oid=1, account=BUYER, kind=ON_DEMAND, gpus=3, hours=1, limit=P),
        rejected(time=T, oid=2, account=BUYER, reason=R.BAD_BLOCK, cmd=CMD_BID),
        rejected(time=T, oid=3, account=BUYER, reason=R.BAD_BLOCK, cmd=CMD_BID),
        accepted_bid(time=T, oid=4, account=BUYER, kind=ON_DEMAND, gpus=6, hours=1, limit=P, block=3),
    ]


def test_r6_each_fill_is_a_multiple_of_block_from_one_ask(book):
    """R6, R10: a block-4 bid takes 4 from a 6-GPU ask, skips a 3-GPU ask, then 4 from the next."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 8, 1, P, block=4))
    evs = run(book, ask(T, 2, PROV, 6, P, T + HOUR), ask(T, 3, PROV, 3, P, T + HOUR),
              ask(T, 4, PROV, 4, P, T + HOUR))
    tr = [e for e in evs if e["type"] == "trade"]
    assert [(e["oid2"], e["gpus"], e.get("remaining", 0)) for e in tr] == [(2, 4, 4), (4, 4, 0)]


def test_r6_accepted_bid_echoes_its_fields(book):
    """R6: the ACCEPTED event carries kind, tif, gpus, hours, limit, block and when it expires."""
    evs = run(book, bid(T, 1, BUYER, SPOT, 4, 5, S, tif=GTD, block=2, expire_at=T + 900),
              bid(T, 2, BUYER, ON_DEMAND, 4, 5, S, tif=FOK, block=4))
    assert evs == [
        accepted_bid(time=T, oid=1, account=BUYER, kind=SPOT, gpus=4, hours=5, limit=S, tif=GTD, block=2,
                     expire_at=T + 900),
        accepted_bid(time=T, oid=2, account=BUYER, kind=ON_DEMAND, gpus=4, hours=5, limit=S, tif=FOK,
                     block=4),
        cancelled(time=T, oid=2, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=3, remaining=4),
    ]
    evs = run(book, clock(T + 900))
    assert evs == [expired(time=T + 900, oid=1, account=BUYER, side=SIDE_BID, kind=SPOT, reason=END_GTD,
                           remaining=4)]


def test_r6_bad_kind_and_tif(book):
    """R6, R8: kind ∉ {spot, on_demand, reserved} is BAD_KIND; tif ∉ {GTC, IOC, FOK, GTD} is BAD_TIF."""
    evs = run(book, bid(T, 1, BUYER, 3, 1, 1, P), bid(T, 2, BUYER, -1, 1, 1, P),
              bid(T, 3, BUYER, ON_DEMAND, 1, 1, P, tif=4), bid(T, 4, BUYER, ON_DEMAND, 1, 1, P, tif=-1))
    assert [e["reason"] for e in evs] == [R.BAD_KIND, R.BAD_KIND, R.BAD_TIF, R.BAD_TIF]
    assert all(e["side"] == SIDE_BID and e["cmd"] == CMD_BID for e in evs)
