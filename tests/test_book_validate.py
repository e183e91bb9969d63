"""`Book.validate()`: it passes on a real book, and it fails, naming the structure, when one
derived structure is corrupted.

The rule tests and the differential tests call `validate()` after every command (tests/conftest.py,
tests/test_differential.py); here each corruption is made by hand on a copy of one book that
holds a bit of everything: asks open now and starting later, resting bids of every kind on
shared levels, leases running and sold ahead, a cached usage function, timers in the heap, in
the hour buckets and in the overflow list, free rows.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from orderbook import fast as F
from orderbook.book import BookInvariantError, make_book
from orderbook.config import BookConfig
from orderbook.fast import check
from orderbook.types import GTD, HOUR, IOC, ON_DEMAND, RESERVED, SPOT
from tests.helpers import BUYER, BUYER2, BUYER3, PROV, PROV2, P, S, T, ask, bid, clock, release, run

CFG = BookConfig()
MARKET = [
    ask(T, 1, PROV, 8, P, T + 10 * HOUR, spot_price=S),  # open now
    ask(T, 2, PROV2, 4, 3 * P, T + 60 * 24 * HOUR, start=T + 2 * HOUR),  # starts later, ends in 60 days
    ask(T, 3, PROV2, 2, P, T + 5 * HOUR),  # on ask 1's level, behind it
    bid(T, 4, BUYER, ON_DEMAND, 2, 2, P),  # lease 1 on ask 1: on-demand, 2 GPUs, [T, T+2h)
    bid(T, 5, BUYER2, SPOT, 1, 1, S),  # lease 2: spot, 1 GPU (released below)
    bid(T, 6, BUYER3, RESERVED, 4, 1, P, start=T + 2 * HOUR),  # lease 3: sold ahead, [T+2h, T+3h)
    release(T + 10, BUYER2, 2),  # (before lease 4: a release forgets the ask's usage function)
    bid(T + 10, 7, BUYER, ON_DEMAND, 3, 4, P),  # lease 4: needs ask 1's usage function, which it caches
    bid(T + 10, 8, BUYER2, ON_DEMAND, 2, 3, P // 2),  # rests
    bid(T + 10, 9, BUYER3, SPOT, 1, 2, S // 2),  # rests
    bid(T + 10, 10, BUYER, RESERVED, 1, 1, P // 2, start=T + 5 * HOUR),  # rests until its gate
    bid(T + 10, 11, BUYER2, ON_DEMAND, 1, 1, P // 4, tif=GTD, expire_at=T + 100),  # a timer in the heap
    bid(T + 10, 12, BUYER3, ON_DEMAND, 2, 5, P // 2),  # behind bid 8 on its level
    bid(T + 10, 13, BUYER3, SPOT, 1, 1, S // 4, tif=GTD, expire_at=T + 200),  # a second heap timer
    bid(T + 10, 14, BUYER, ON_DEMAND, 1, 1, P // 8, tif=IOC),  # cancelled: a free order row
    bid(T + 10, 15, PROV, ON_DEMAND, 1, 1, P),  # lease 5, on ask 3 (ask 1 is PROV's own)
    release(T + 10, PROV, 5),  # a free lease row
    clock(T + 20),
]


def _level(price: int) -> int:
    return (price - CFG.min_price) // CFG.tick


def _row(st, oid: int) -> int:
    return int(F._map_get(st.HK, st.HV, oid))


def _lease_row(st, tid: int) -> int:
    return int(F._map_get(st.LK, st.LV, tid))


def _flip(B, r: int, i: int) -> None:
    B[r, i >> 6] ^= np.uint64(1) << np.uint64(i & 63)


@pytest.fixture(scope="module")
def books():
    out = {}
    for engine in ("reference", "numba"):
        book = make_book(CFG, engine=engine)
        for cmd in MARKET:
            run(book, cmd)
            book.validate()
        out[engine] = book
    return out


def test_the_market_holds_what_the_corruptions_need(books):
    st = books["numba"].st
    a1 = _row(st, 1)
    assert int(st.S[F.S_NORD]) == 9 and int(st.S[F.S_NLEASE]) == 3
    assert st.O[a1, F.O_FSUM] == 9 and st.O[a1, F.O_UNF] == 5 and st.O[a1, F.O_NEXTSTART] == T + 2 * HOUR
    assert st.UC[a1 & (F.UC_TAGS - 1)] & F.UC_LOW == a1 + 1  # ask 1's usage function is cached
    assert st.O[a1, F.O_NEXT] == _row(st, 3) and st.O[_row(st, 8), F.O_NEXT] == _row(st, 12)
    assert st.S[F.S_TMN] >= 2 and st.TF[F.TFH, F.TF_NBUCKET] > 0 and st.TF[F.TFH, F.TF_NOVER] > 0
    assert st.S[F.S_OFREE] >= 0 and st.S[F.S_LFREE] >= 0
    ref = books["reference"]
    assert ref.state_hash() == books["numba"].state_hash()
    assert ref.ask_starts and ref.expiries and ref.ask_leases[1]


@pytest.mark.parametrize("engine", ["reference", "numba"])
def test_validate_passes_on_a_real_book(books, engine):
    books[engine].validate()
    if engine == "numba":
        check(books[engine].st, CFG.levels, vectorised=True)


# (invariant named, corruption of a numba book's state)
NUMBA = {
    "ladder bit cleared": ("bitmap", lambda st: _flip(st.BM, F.LAD_ASK_FIRM, _level(P))),
    "ladder bit on an empty level": ("bitmap", lambda st: _flip(st.BM, F.LAD_BID_RES, 0)),
    "summary bit flipped": ("bitmap", lambda st: _flip(st.BS, F.LAD_BID_OD, _level(P // 2) >> 6)),
    # (cleared with the summary bit kept right, or the summary would be what is wrong)
    "open-now bit cleared": ("now-row", lambda st: F._bm_clear(st.BM, st.BS, F.NOWROW + F.LAD_ASK_FIRM, _level(P))),
    "short-bids bit cleared": ("hour-row", lambda st: F._bm_clear(st.BM, st.BS, F.HOURROW + 2, _level(P // 2))),
    "ask level bound": ("ask-bounds", lambda st: st.AG[F.LAD_ASK_FIRM, _level(P)].__setitem__(F.AG_END, T)),
    "ask level free GPUs": ("ask-bounds",
                            lambda st: st.AG[F.LAD_ASK_FIRM, _level(P)].__setitem__(F.AG_FREE, 0)),
    "bid level bound": ("bid-bounds", lambda st: st.AG[F.LAD_BID_OD, _level(P // 2)].__setitem__(F.BG_MAXH, 1)),
    "bid top": ("bid-top", lambda st: st.S.__setitem__(F.S_BIDTOP, 0)),
    "order id dropped from the map": ("order-map", lambda st: F._map_del(st.HK, st.HV, 8)),
    "trade id dropped from the map": ("lease-map", lambda st: F._map_del(st.LK, st.LV, 1)),
    "stale key left in the map": ("order-map", lambda st: F._map_put(st.HK, st.HV, 14, 0)),
    "stray key, ids spread over the table": ("order-map", lambda st: _stray_key(st, 2**21 + 7)),
    "stale trade id left in the map": ("lease-map", lambda st: F._map_put(st.LK, st.LV, 2, 0)),
    "usage cache out of step": ("usage-cache", lambda st: _bump_usage(st, _row(st, 1))),
    "usage cache of a bid": ("usage-cache", lambda st: _move_usage(st, _row(st, 1), _row(st, 8))),
    "ask ladder prev link": ("ladder-list", lambda st: st.O[_row(st, 3)].__setitem__(F.O_PREV, -1)),
    "bid ladder next link": ("ladder-list", lambda st: st.O[_row(st, 8)].__setitem__(F.O_NEXT, -1)),
    "ladder tail": ("ladder-list", lambda st: st.LT.__setitem__((F.LAD_ASK_FIRM, _level(P)), _row(st, 1))),
    "lease list prev link": ("lease-list", lambda st: _break_lease_link(st, _row(st, 1))),
    "lease detached from a resting ask": ("lease-list",
                                          lambda st: st.Lz[_lease_row(st, 1)].__setitem__(F.L_ASLOT, -1)),
    "lease sum": ("lease-sums", lambda st: st.O[_row(st, 1)].__setitem__(F.O_FSUM, 10)),
    "next lease start": ("lease-sums", lambda st: st.O[_row(st, 1)].__setitem__(F.O_NEXTSTART, T + 3 * HOUR)),
    "order free list": ("order-free-list", lambda st: st.S.__setitem__(F.S_OFREE, _row(st, 1))),
    "lease free list": ("lease-free-list", lambda st: st.S.__setitem__(F.S_LFREE, _lease_row(st, 1))),
    "order count": ("counters", lambda st: st.S.__setitem__(F.S_NORD, st.S[F.S_NORD] + 1)),
    "timer heap order": ("timers", lambda st: _swap_heap_top(st)),
    "timer lost": ("timers", lambda st: st.S.__setitem__(F.S_TMN, st.S[F.S_TMN] - 1)),
    "bucket count": ("timers",
                     lambda st: st.TF[F.TFH].__setitem__(F.TF_NBUCKET, st.TF[F.TFH, F.TF_NBUCKET] + 1)),
    "re-offer pending": ("reoffers", lambda st: st.O[_row(st, 1)].__setitem__(F.O_PEND, 1)),
    "lease start flag": ("lease-rows", lambda st: st.Lz[_lease_row(st, 3)].__setitem__(F.L_NOW, 1)),
}


def _stray_key(st, key: int) -> None:
    """A key of an id above 2**20 in the order map (ids handed out so far said to reach it, so
    that the whole table is where keys may be)."""
    st.S[F.S_LASTOID] = key
    F._map_put(st.HK, st.HV, key, 0)


def _bump_usage(st, a: int) -> None:
    """Ask a's cached usage after its last lease ends: one GPU more than its leases hold."""
    off = int(st.UC[a & (F.UC_TAGS - 1)]) >> 32
    last = off + 1 + 3 * (int(st.UC[off]) - 1)
    st.UC[last + 1] += 1


def _move_usage(st, a: int, b: int) -> None:
    """Ask a's cached usage function filed under row b (a bid)."""
    st.UC[b & (F.UC_TAGS - 1)] = (st.UC[a & (F.UC_TAGS - 1)] & ~F.UC_LOW) | (b + 1)


def _break_lease_link(st, a: int) -> None:
    second = st.Lz[st.O[a, F.O_LHEAD], F.L_NEXT]
    st.Lz[second, F.L_PREV] = second


def _swap_heap_top(st) -> None:
    st.TM[[0, 1]] = st.TM[[1, 0]]


@pytest.mark.parametrize("what", sorted(NUMBA))
def test_numba_validate_names_the_broken_structure(books, what):
    invariant, corrupt = NUMBA[what]
    book = copy.deepcopy(books["numba"])
    book.validate()
    corrupt(book.st)
    with pytest.raises(BookInvariantError) as e:
        book.validate()
    assert e.value.invariant == invariant, str(e.value)
    assert isinstance(e.value, AssertionError)
    assert str(e.value).startswith(invariant + ": ")
    # the vectorised form (what runs under NUMBA_DISABLE_JIT) finds the same
    with pytest.raises(BookInvariantError) as v:
        check(book.st, CFG.levels, vectorised=True)
    assert str(v.value) == str(e.value)


REFERENCE = {
    "ask missing from its ladder": ("ladders", lambda b: b.asks_firm.pop(0)),
    "stray key on a ladder": ("ladders", lambda b: b.bids_spot.add((-5_000, 999))),
    "expiry lost": ("expiries", lambda b: b.expiries.pop(0)),
    "window start lost": ("ask-starts", lambda b: b.ask_starts.clear()),
    "lease end lost": ("lease-ends", lambda b: b.lease_ends.pop(0)),
    "lease missing from its ask's list": ("ask-leases", lambda b: b.ask_leases[1].pop()),
    "lease filed under another id": ("leases", lambda b: setattr(b.leases[1], "trade_id", 99)),
    "order filed under another id": ("orders", lambda b: setattr(b.orders[8], "oid", 77)),
    "re-offer pending": ("reoffers", lambda b: b._reoffer.add(1)),
}


@pytest.mark.parametrize("what", sorted(REFERENCE))
def test_reference_validate_names_the_broken_structure(books, what):
    invariant, corrupt = REFERENCE[what]
    book = copy.deepcopy(books["reference"])
    book.validate()
    corrupt(book)
    with pytest.raises(BookInvariantError) as e:
        book.validate()
    assert e.value.invariant == invariant, str(e.value)


def test_rule_test_books_validate_after_every_command(make_book):
    """tests/conftest.py: the rule tests' books check their invariants after each command."""
    book = make_book()
    run(book, *MARKET[:3])
    calls = []
    book.validate = lambda: calls.append(1)
    run(book, *MARKET[3:6])
    assert len(calls) == 3
