"""R7: cancel by order id; reducing gpus keeps priority; cancelling an ask keeps what it sold."""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.types import (
    CMD_AMEND,
    CMD_CANCEL,
    END_USER,
    HOUR,
    ON_DEMAND,
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
    accepted_ask,
    amend,
    amended,
    ask,
    bid,
    cancel,
    cancelled,
    rejected,
    release,
    released,
    run,
    trade,
    trades,
)


def test_r7_cancel_bid_removes_it(book):
    """R7: a cancelled bid leaves the book (END_USER, with what was still open) and never trades."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 3, 1, P))
    evs = run(book, cancel(T + 5, 1, BUYER), ask(T + 5, 2, PROV, 3, P, T + 2 * HOUR))
    assert evs == [
        cancelled(time=T + 5, oid=1, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_USER,
                  remaining=3),
        accepted_ask(time=T + 5, oid=2, account=PROV, gpus=3, price=P, start=T + 5, end=T + 2 * HOUR),
    ]


def test_r7_cancel_ask_keeps_sold_leases(book):
    """R7: cancelling an ask removes its unsold capacity; the lease it sold stands."""
    run(book, ask(T, 1, PROV, 4, P, T + 4 * HOUR), bid(T, 2, BUYER, ON_DEMAND, 2, 3, P))
    evs = run(book, cancel(T + 10, 1, PROV), bid(T + 10, 3, BUYER2, ON_DEMAND, 1, 1, P))
    assert [e["type"] for e in evs] == ["cancelled", "accepted"]
    assert evs[0] == cancelled(time=T + 10, oid=1, account=PROV, side=SIDE_ASK, reason=END_USER)
    # the lease is still running: its holder can release it (R16)
    evs = run(book, release(T + 20, BUYER, 1))
    assert evs == [released(time=T + 20, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND,
                            gpus=2, price=P, start=T)]
    # ...and the released GPUs do not come back: the ask is gone, bid 3 keeps resting
    assert run(book, cancel(T + 30, 3, BUYER2))[0]["type"] == "cancelled"


def test_r7_cancel_errors(book):
    """R7, R8: unknown, already-gone or someone else's orders cannot be cancelled."""
    run(book, ask(T, 1, PROV, 1, P, T + HOUR), bid(T, 2, BUYER, ON_DEMAND, 1, 1, P),
        bid(T, 3, BUYER, ON_DEMAND, 1, 1, S))
    evs = run(book, cancel(T, 99, BUYER), cancel(T, 2, BUYER), cancel(T, 3, BUYER2),
              cancel(T, 1, BUYER), cancel(T, 3, BUYER), cancel(T, 3, BUYER))
    assert evs == [
        rejected(time=T, oid=99, account=BUYER, reason=R.UNKNOWN_ORDER, cmd=CMD_CANCEL),
        rejected(time=T, oid=2, account=BUYER, reason=R.UNKNOWN_ORDER, cmd=CMD_CANCEL),  # filled
        rejected(time=T, oid=3, account=BUYER2, reason=R.NOT_OWNER, cmd=CMD_CANCEL),
        rejected(time=T, oid=1, account=BUYER, reason=R.NOT_OWNER, cmd=CMD_CANCEL),
        cancelled(time=T, oid=3, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_USER, remaining=1),
        rejected(time=T, oid=3, account=BUYER, reason=R.UNKNOWN_ORDER, cmd=CMD_CANCEL),
    ]


def test_r7_amend_bid_keeps_priority(book):
    """R7: a bid reduced in gpus keeps its time priority over a later bid at the same limit."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 4, 1, P), bid(T, 2, BUYER2, ON_DEMAND, 2, 1, P))
    evs = run(book, amend(T + 1, 1, BUYER, 2))
    assert evs == [amended(time=T + 1, oid=1, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, gpus=2,
                           remaining=2)]
    evs = run(book, ask(T + 2, 3, PROV, 2, P, T + 2 * HOUR))
    assert trades(evs) == [trade(time=T + 2, tid=1, bid=1, ask=3, buyer=BUYER, provider=PROV,
                                 kind=ON_DEMAND, gpus=2, price=P, start=T + 2, hours=1, maker=SIDE_BID)]
    # the amended bid is done (2 of 2); the next GPUs go to bid 2
    evs = run(book, ask(T + 3, 4, PROV, 3, P, T + 2 * HOUR))
    assert [(e["oid"], e["gpus"]) for e in trades(evs)] == [(2, 2)]


def test_r7_amend_ask_keeps_priority(book):
    """R7: an ask reduced in gpus keeps its place before a later ask at the same price."""
    run(book, ask(T, 1, PROV, 4, P, T + 2 * HOUR), ask(T, 2, PROV2, 4, P, T + 2 * HOUR))
    evs = run(book, amend(T, 1, PROV, 2))
    assert evs == [amended(time=T, oid=1, account=PROV, side=SIDE_ASK, gpus=2)]
    evs = run(book, bid(T, 3, BUYER, ON_DEMAND, 3, 1, P))
    assert [(e["oid2"], e["gpus"]) for e in trades(evs)] == [(1, 2), (2, 1)]


def test_r7_amend_bid_after_partial_fill_sets_new_remaining(book):
    """R7 (decision): amending a bid sets its new remaining, which must be below the current one."""
    run(book, bid(T, 1, BUYER, ON_DEMAND, 6, 1, P, block=2), ask(T, 2, PROV, 2, P, T + HOUR))
    evs = run(book, amend(T, 1, BUYER, 4), amend(T, 1, BUYER, 3), amend(T, 1, BUYER, 2))
    assert evs == [
        rejected(time=T, oid=1, account=BUYER, reason=R.BAD_AMEND, cmd=CMD_AMEND),  # not below 4
        rejected(time=T, oid=1, account=BUYER, reason=R.BAD_AMEND, cmd=CMD_AMEND),  # not a block multiple
        amended(time=T, oid=1, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, gpus=2, remaining=2),
    ]
    evs = run(book, ask(T, 3, PROV, 8, P, T + HOUR))
    assert [(e["oid"], e["gpus"], e.get("remaining", 0)) for e in trades(evs)] == [(1, 2, 0)]


def test_r7_amend_errors(book):
    """R7, R8: amend only reduces, to ≥ 1 (a block multiple for bids), and only your own order."""
    run(book, ask(T, 1, PROV, 4, P, T + 3 * HOUR, spot_price=S), bid(T, 2, BUYER, ON_DEMAND, 4, 1, S))
    evs = run(book, amend(T, 2, BUYER, 4), amend(T, 2, BUYER, 0), amend(T, 2, BUYER, -1),
              amend(T, 1, PROV, 4), amend(T, 1, PROV, 5), amend(T, 1, PROV, 0),
              amend(T, 2, BUYER2, 1), amend(T, 1, BUYER, 1), amend(T, 77, PROV, 1))
    assert evs == [
        rejected(time=T, oid=2, account=BUYER, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=2, account=BUYER, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=2, account=BUYER, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=1, account=PROV, reason=R.BAD_AMEND, cmd=CMD_AMEND),
        rejected(time=T, oid=2, account=BUYER2, reason=R.NOT_OWNER, cmd=CMD_AMEND),
        rejected(time=T, oid=1, account=BUYER, reason=R.NOT_OWNER, cmd=CMD_AMEND),
        rejected(time=T, oid=77, account=PROV, reason=R.UNKNOWN_ORDER, cmd=CMD_AMEND),
    ]


def test_r7_amend_ask_not_below_what_it_sold(book):
    """R7 (decision): an ask cannot go below the peak GPUs its leases use from now on (spot counts)."""
    run(book, ask(T, 1, PROV, 6, P, T + 3 * HOUR, spot_price=S),
        bid(T, 2, BUYER, ON_DEMAND, 2, 1, P), bid(T, 3, BUYER2, SPOT, 1, 2, S))
    evs = run(book, amend(T, 1, PROV, 2), amend(T, 1, PROV, 3))
    assert evs == [
        rejected(time=T, oid=1, account=PROV, reason=R.AMEND_BELOW_SOLD, cmd=CMD_AMEND),
        amended(time=T, oid=1, account=PROV, side=SIDE_ASK, gpus=3),
    ]
    # spot capacity is now 3 − 2 firm − 1 spot = 0: a spot bid rests ...
    evs = run(book, bid(T + 10, 4, BUYER, SPOT, 1, 1, S))
    assert [e["type"] for e in evs] == ["accepted"]
    # ... until the spot lease is released and its GPU comes back (R13)
    evs = run(book, release(T + 20, BUYER2, 2))
    assert [e["type"] for e in evs] == ["released", "trade"]
    assert evs[1] == trade(time=T + 20, tid=3, bid=4, ask=1, buyer=BUYER, provider=PROV, kind=SPOT,
                           gpus=1, price=S, start=T + 20, hours=1, maker=SIDE_ASK)
    # the amended ask still cannot go below its peak use (2 firm + 1 spot)
    assert run(book, amend(T + 30, 1, PROV, 2)) == [
        rejected(time=T + 30, oid=1, account=PROV, reason=R.AMEND_BELOW_SOLD, cmd=CMD_AMEND)
    ]
