"""R16 (book part): every trade is a lease; firm leases can be resold; on-demand/spot released."""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.types import (
    CMD_ASK,
    CMD_RELEASE,
    END_USER,
    END_WINDOW,
    HOUR,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SPOT,
)
from tests.helpers import (
    BUYER,
    BUYER2,
    BUYER3,
    PROV,
    P,
    S,
    T,
    accepted_ask,
    amend,
    amended,
    ask,
    bid,
    cancel,
    clock,
    expired,
    pick,
    rejected,
    release,
    released,
    run,
    trade,
    trades,
    types,
)


def _leased(book, gpus: int = 4, hours: int = 3, kind: int = ON_DEMAND, start: int = 0) -> None:
    """PROV's ask 1 (exactly `gpus`, spot S) sold whole to BUYER as lease 1 (bid 2)."""
    run(book, ask(T, 1, PROV, gpus, P, T + 10 * HOUR, spot_price=S),
        bid(T, 2, BUYER, kind, gpus, hours, P if kind != SPOT else S, start=start))


def test_r16_lease_ids_are_trade_ids_numbered_per_book(make_book):
    """R16 (decision): lease id == trade_id, 1, 2, 3… per book, whatever the kind or ask."""
    for _ in range(2):
        book = make_book()
        evs = run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR, spot_price=S),
                  bid(T, 2, BUYER, SPOT, 1, 1, S), bid(T, 3, BUYER, ON_DEMAND, 1, 1, P),
                  bid(T, 4, BUYER, RESERVED, 1, 1, P, start=T + HOUR))
        assert [e["trade_id"] for e in trades(evs)] == [1, 2, 3]


def test_r16_resale_ask_sells_a_sublease(book):
    """R16: the holder resells part of a firm lease; the fill names the parent lease and pays the reseller."""
    _leased(book)
    evs = run(book, ask(T + 60, 3, BUYER, 2, 3 * P, T + 3 * HOUR, lease_id=1))
    assert evs == [accepted_ask(time=T + 60, oid=3, account=BUYER, gpus=2, price=3 * P, start=T + 60,
                                end=T + 3 * HOUR, lease_id=1)]
    evs = run(book, bid(T + 120, 4, BUYER2, ON_DEMAND, 3, 1, 3 * P))
    assert trades(evs) == [trade(time=T + 120, tid=2, bid=4, ask=3, buyer=BUYER2, provider=BUYER,
                                 kind=ON_DEMAND, gpus=2, price=3 * P, start=T + 120, hours=1, maker=SIDE_ASK,
                                 remaining=1, lease_id=1)]
    # the original ask has nothing left: the rest of bid 4 waits
    assert run(book, cancel(T + 130, 4, BUYER2))[0]["remaining"] == 1


def test_r16_resale_window_inside_the_remaining_lease(book):
    """R16: a resale window lies inside [max(lease start, now), lease end)."""
    _leased(book, hours=3)
    evs = run(book, ask(T + 60, 3, BUYER, 1, P, T + 3 * HOUR + 1, lease_id=1),
              ask(T + 60, 4, BUYER, 1, P, T + 3 * HOUR, start=T + 2 * HOUR, lease_id=1))
    assert evs == [
        rejected(time=T + 60, oid=3, account=BUYER, reason=R.RESALE_WINDOW, cmd=CMD_ASK, lease_id=1),
        accepted_ask(time=T + 60, oid=4, account=BUYER, gpus=1, price=P, start=T + 2 * HOUR, end=T + 3 * HOUR,
                     lease_id=1),
    ]


def test_r16_reserved_lease_resale_starts_at_the_lease_start(book):
    """R16: a future reserved lease can be resold only from its own start."""
    _leased(book, hours=2, kind=RESERVED, start=T + 2 * HOUR)
    evs = run(book, ask(T, 3, BUYER, 1, P, T + 4 * HOUR, lease_id=1),
              ask(T, 4, BUYER, 1, P, T + 4 * HOUR, start=T + 2 * HOUR, lease_id=1),
              bid(T, 5, BUYER2, RESERVED, 1, 2, P, start=T + 2 * HOUR))
    assert evs[0] == rejected(time=T, oid=3, account=BUYER, reason=R.RESALE_WINDOW, cmd=CMD_ASK, lease_id=1)
    assert evs[3] == trade(time=T, tid=2, bid=5, ask=4, buyer=BUYER2, provider=BUYER, kind=RESERVED, gpus=1,
                           price=P, start=T + 2 * HOUR, hours=2, maker=SIDE_ASK, lease_id=1)


def test_r16_resale_gpus_at_most_the_unsold(book):
    """R16: resale asks together offer at most the lease's GPUs; cancelling an unsold one frees them."""
    _leased(book, gpus=4)
    evs = run(book, ask(T, 3, BUYER, 2, 3 * P, T + 3 * HOUR, lease_id=1),
              ask(T, 4, BUYER, 2, 3 * P, T + 2 * HOUR, lease_id=1),
              ask(T, 5, BUYER, 1, 3 * P, T + 2 * HOUR, lease_id=1),
              cancel(T, 4, BUYER),
              ask(T, 6, BUYER, 2, 3 * P, T + 2 * HOUR, lease_id=1))
    assert pick(evs, "type", "oid", "reason") == [
        ("accepted", 3, 0), ("accepted", 4, 0), ("rejected", 5, R.RESALE_EXCEEDS_LEASE),
        ("cancelled", 4, END_USER), ("accepted", 6, 0)]


def test_r16_cancelling_a_resale_ask_keeps_what_it_sold(book):
    """R16 (decision): a cancelled resale ask gives back its GPUs minus the peak it sold from now on."""
    _leased(book, gpus=4)
    run(book, ask(T, 3, BUYER, 3, 3 * P, T + 3 * HOUR, lease_id=1), bid(T, 4, BUYER2, ON_DEMAND, 1, 1, 3 * P))
    evs = run(book, cancel(T + 10, 3, BUYER), ask(T + 10, 5, BUYER, 4, 3 * P, T + 3 * HOUR, lease_id=1),
              ask(T + 10, 6, BUYER, 3, 3 * P, T + 3 * HOUR, lease_id=1))
    assert pick(evs, "type", "oid", "reason") == [
        ("cancelled", 3, END_USER), ("rejected", 5, R.RESALE_EXCEEDS_LEASE), ("accepted", 6, 0)]


def test_r16_amend_resale_ask_frees_gpus(book):
    """R16, R7: reducing a resale ask gives the difference back to the lease."""
    _leased(book, gpus=4)
    evs = run(book, ask(T, 3, BUYER, 4, 3 * P, T + 3 * HOUR, lease_id=1), amend(T, 3, BUYER, 1),
              ask(T, 4, BUYER, 3, 3 * P, T + 3 * HOUR, lease_id=1))
    assert evs[1] == amended(time=T, oid=3, account=BUYER, side=SIDE_ASK, gpus=1)
    assert types(evs) == ["accepted", "amended", "accepted"]


def test_r16_resale_ask_expiry_returns_its_gpus(book):
    """R16, R14: a resale ask ending before its lease expires and its GPUs can be offered again."""
    _leased(book, gpus=2, hours=3)
    run(book, ask(T, 3, BUYER, 2, 3 * P, T + HOUR, lease_id=1))
    evs = run(book, ask(T + HOUR, 4, BUYER, 2, 3 * P, T + 3 * HOUR, lease_id=1))
    assert evs[0] == expired(time=T + HOUR, oid=3, account=BUYER, side=SIDE_ASK, reason=END_WINDOW)
    assert evs[1]["type"] == "accepted"


def test_r16_release_returns_remaining_capacity(book):
    """R16, R13: releasing an on-demand lease ends it now; its GPUs go back to the ask."""
    _leased(book, gpus=2, hours=3)
    run(book, bid(T + 5, 3, BUYER2, ON_DEMAND, 2, 2, P))
    evs = run(book, release(T + HOUR, BUYER, 1))
    assert evs == [
        released(time=T + HOUR, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=ON_DEMAND, gpus=2,
                 price=P, start=T),
        trade(time=T + HOUR, tid=2, bid=3, ask=1, buyer=BUYER2, provider=PROV, kind=ON_DEMAND, gpus=2,
              price=P, start=T + HOUR, hours=2, maker=SIDE_ASK),
    ]
    # a released lease is over: releasing it again is UNKNOWN_LEASE
    assert run(book, release(T + HOUR + 1, BUYER, 1)) == [
        rejected(time=T + HOUR + 1, oid=0, account=BUYER, reason=R.UNKNOWN_LEASE, cmd=CMD_RELEASE,
                 lease_id=1)]


def test_r16_release_spot_lease(book):
    """R16: a spot lease can be released early too."""
    _leased(book, gpus=2, hours=3, kind=SPOT)
    evs = run(book, release(T + 30, BUYER, 1))
    assert evs == [released(time=T + 30, tid=1, bid=2, ask=1, buyer=BUYER, provider=PROV, kind=SPOT, gpus=2,
                            price=S, start=T)]


def test_r16_ended_lease_cannot_be_released_or_resold(book):
    """R16: once a lease's end has passed it is gone for release and resale."""
    _leased(book, gpus=2, hours=1)
    evs = run(book, clock(T + HOUR), release(T + HOUR, BUYER, 1),
              ask(T + HOUR, 3, BUYER, 1, P, T + 2 * HOUR, lease_id=1))
    assert pick(evs, "type", "reason") == [("rejected", R.UNKNOWN_LEASE), ("rejected", R.UNKNOWN_LEASE)]


def test_r16_reserved_lease_is_not_releasable(book):
    """R16 (decision): a reserved lease is paid up front and cannot be released."""
    _leased(book, gpus=1, hours=1, kind=RESERVED, start=T + HOUR)
    assert run(book, release(T, BUYER, 1)) == [
        rejected(time=T, oid=0, account=BUYER, reason=R.LEASE_NOT_RELEASABLE, cmd=CMD_RELEASE, lease_id=1)]


def test_r16_spot_lease_is_not_resellable(book):
    """R16: only firm leases can be resold."""
    _leased(book, gpus=1, hours=2, kind=SPOT)
    assert run(book, ask(T, 3, BUYER, 1, P, T + 2 * HOUR, lease_id=1)) == [
        rejected(time=T, oid=3, account=BUYER, reason=R.LEASE_NOT_RESELLABLE, cmd=CMD_ASK, lease_id=1)]


def test_r16_release_refused_while_resold(book):
    """R16 (decision): a lease with GPUs offered for resale cannot be released; after the cancel it can."""
    _leased(book, gpus=2, hours=3)
    evs = run(book, ask(T, 3, BUYER, 1, 3 * P, T + 3 * HOUR, lease_id=1), release(T + 5, BUYER, 1),
              cancel(T + 6, 3, BUYER), release(T + 7, BUYER, 1))
    assert pick(evs, "type", "oid", "reason") == [
        ("accepted", 3, 0), ("rejected", 0, R.LEASE_RESOLD), ("cancelled", 3, END_USER), ("released", 2, 0)]


def test_r16_released_sublease_returns_to_the_resale_ask(book):
    """R16, R13: a released sub-lease's GPUs go back to the resale ask and are re-offered from it."""
    _leased(book, gpus=2, hours=3)
    run(book, ask(T, 3, BUYER, 2, 3 * P, T + 3 * HOUR, lease_id=1), bid(T, 4, BUYER2, ON_DEMAND, 2, 1, 3 * P),
        bid(T, 5, BUYER3, ON_DEMAND, 1, 1, 3 * P))
    evs = run(book, release(T + 100, BUYER2, 2))
    assert evs == [
        released(time=T + 100, tid=2, bid=4, ask=3, buyer=BUYER2, provider=BUYER, kind=ON_DEMAND, gpus=2,
                 price=3 * P, start=T),
        trade(time=T + 100, tid=3, bid=5, ask=3, buyer=BUYER3, provider=BUYER, kind=ON_DEMAND, gpus=1,
              price=3 * P, start=T + 100, hours=1, maker=SIDE_ASK, lease_id=1),
    ]
