"""R4: time arrives with commands, never goes backwards; a later stamp first advances the book."""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.types import CMD_BID, CMD_CLOCK, END_GTD, END_WINDOW, GTD, HOUR, ON_DEMAND, SIDE_ASK, SIDE_BID
from tests.helpers import (
    BUYER,
    BUYER2,
    PROV,
    P,
    T,
    accepted_ask,
    accepted_bid,
    ask,
    assert_rejection_changes_nothing,
    bid,
    clock,
    expired,
    rejected,
    run,
    run_raw,
    trade,
)


def test_r4_later_command_first_advances_the_clock(book):
    """R4: a bid stamped at an ask's end first expires the ask (at its own time), then applies."""
    run(book, ask(T, 1, PROV, 4, P, T + 2 * HOUR))
    evs = run(book, bid(T + 3 * HOUR, 2, BUYER, ON_DEMAND, 1, 1, P))
    assert evs == [
        expired(time=T + 2 * HOUR, oid=1, account=PROV, side=SIDE_ASK, reason=END_WINDOW),
        accepted_bid(time=T + 3 * HOUR, oid=2, account=BUYER, kind=ON_DEMAND, gpus=1, hours=1, limit=P),
    ]


def test_r4_stale_time_is_rejected(book):
    """R4, R8: a command stamped before the book's time is refused with STALE_TIME at book time."""
    run(book, clock(T + 100))
    evs = run(book, bid(T + 99, 1, BUYER, ON_DEMAND, 1, 1, P))
    assert evs == [rejected(time=T + 100, oid=1, account=BUYER, reason=R.STALE_TIME, cmd=CMD_BID)]
    # a stale clock command is refused too, and the oid 1 is still free to use
    assert run(book, clock(T + 50)) == [
        rejected(time=T + 100, oid=0, account=0, reason=R.STALE_TIME, cmd=CMD_CLOCK)
    ]
    assert run(book, bid(T + 100, 1, BUYER, ON_DEMAND, 1, 1, P))[0]["type"] == "accepted"


def test_r4_stale_time_changes_nothing(make_book):
    """R4, R8: a stale command leaves the book as it was (time does not go backwards)."""
    prefix = [ask(T, 1, PROV, 4, P, T + 4 * HOUR), clock(T + 500)]
    assert_rejection_changes_nothing(
        make_book, prefix, ask(T + 10, 2, PROV, 4, P, T + 4 * HOUR),
        rejected(time=T + 500, oid=2, account=PROV, reason=R.STALE_TIME, cmd=1),
        [bid(T + 500, 3, BUYER, ON_DEMAND, 4, 1, P), clock(T + 5 * HOUR)],
    )


def test_r4_late_stamp_equals_clock_then_command(make_book):
    """R4, R13: a command stamped T gives the same events as `clock(T)` followed by it.

    A resting older bid waits for an ask whose window opens at T+1h.  A new bid stamped
    T+1h must find the ask already re-offered to the older bid (the clock part comes first).
    """
    setup = [
        ask(T, 1, PROV, 2, P, T + 5 * HOUR, start=T + HOUR),
        bid(T, 2, BUYER, ON_DEMAND, 2, 1, P),
    ]
    late = bid(T + HOUR, 3, BUYER2, ON_DEMAND, 2, 1, 2 * P)
    a, b = make_book(), make_book()
    run(a, *setup)
    run(b, *setup)
    via_clock = run(a, clock(T + HOUR)) + run(a, late)
    direct = run(b, late)
    assert direct == via_clock
    assert via_clock == [
        trade(time=T + HOUR, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=2,
              price=P, start=T + HOUR, hours=1, maker=SIDE_ASK),
        accepted_bid(time=T + HOUR, oid=3, account=BUYER2, kind=ON_DEMAND, gpus=2, hours=1, limit=2 * P),
    ]
    assert a.state_hash() == b.state_hash()


def test_r4_same_log_same_events(make_book):
    """R4, R21: the same command log gives the same events and state, always."""
    log = [
        ask(T, 1, PROV, 8, P, T + 6 * HOUR, spot_price=P // 2),
        bid(T, 2, BUYER, ON_DEMAND, 3, 2, P),
        bid(T + 10, 3, BUYER2, 0, 4, 3, P),
        bid(T + 20, 4, BUYER, ON_DEMAND, 4, 1, P),
        clock(T + 3 * HOUR),
    ]
    a, b = make_book(), make_book()
    assert run_raw(a, *log) == run_raw(b, *log)
    assert a.state_hash() == b.state_hash()


def test_r4_accepted_ask_reports_now_as_start(book):
    """R4, R5: the book's time is the command's time: an ask without start starts at its stamp."""
    evs = run(book, clock(T), ask(T + 7, 1, PROV, 1, P, T + 7 + HOUR))
    assert evs == [accepted_ask(time=T + 7, oid=1, account=PROV, gpus=1, price=P, start=T + 7,
                                end=T + 7 + HOUR)]


def test_r4_rejected_late_command_still_advances_the_clock(make_book):
    """R4, R8: a refused command stamped later is `clock(t)` then the refusal: expiries still apply."""
    setup = [bid(T, 1, BUYER, ON_DEMAND, 1, 1, P, tif=GTD, expire_at=T + 100)]
    bad = bid(T + 200, 2, BUYER2, ON_DEMAND, 0, 1, P)
    a, b = make_book(), make_book()
    run(a, *setup)
    run(b, *setup)
    via_clock = run(a, clock(T + 200)) + run(a, bad)
    direct = run(b, bad)
    assert direct == via_clock == [
        expired(time=T + 100, oid=1, account=BUYER, side=SIDE_BID, kind=ON_DEMAND, reason=END_GTD,
                remaining=1),
        rejected(time=T + 200, oid=2, account=BUYER2, reason=R.BAD_GPUS, cmd=CMD_BID),
    ]
    assert a.state_hash() == b.state_hash()
