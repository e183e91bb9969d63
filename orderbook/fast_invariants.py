"""`NumbaBook.validate()`: every derived structure of the numba book checked against its rows.

The primary data of the numba book are its order rows (``O``), its lease rows (``Lz``) and the
clocks in ``S``; everything else is derived from them and kept up to date incrementally
(docs/orderbook.md).  `check(st)` recomputes what each derived structure must hold from the
rows and raises `BookInvariantError` naming the first one that does not.  The checks are jitted
functions in orderbook/fast.py (section "invariants": numba's cache is keyed on the file a
function is in, so checks kept elsewhere could run, cached, against another version of the
layout); this module holds their messages and the numpy form of the checks that read every
level, used without the compiler.  The invariants:

* ``order-rows`` / ``lease-rows`` — rows below the high-water marks are free or live (no order
  left half-inserted), ids below the clocks' next ids, live leases end after now and count as
  holding their ask (``L_NOW``) exactly when they have started;
* ``counters`` — ``S_NORD`` / ``S_NLEASE`` count the live rows, the high-water marks lie inside
  the pools, no batch error is pending;
* ``order-free-list`` / ``lease-free-list`` — the free lists hold every used row that is not
  live, once, and nothing above the high-water marks;
* ``ladder-list`` — each price level's FIFO list (``LH``/``LT``, next/prev links) is a proper
  doubly linked list of resting orders of that ladder and level, in arrival (order id) order,
  and every resting order is on the ladder(s) it belongs to;
* ``bitmap`` — the ladder rows of ``BM`` mark exactly the non-empty levels, ``BS`` marks exactly
  the non-zero words of every ``BM`` row, no bit lies beyond the last level;
* ``now-row`` — the *open now* rows (``NOWROW``) mark every level holding an ask that has
  started and has a GPU free now (a superset), and only non-empty levels;
* ``hour-row`` — the *short bids* rows (``HOURROW``) mark every level holding a bid of at most
  2**k hours (a superset), and only non-empty levels;
* ``ask-bounds`` / ``bid-bounds`` — each non-empty level's ``AG`` / ``BG`` bounds cover all its
  orders (latest end, earliest start, least min_hours, most GPUs free now; shortest and longest
  hours, least block, latest reserved start, earliest reserved end): bounds, not equalities;
* ``bid-top`` — ``S_BIDTOP`` is at or above every non-empty bid level;
* ``order-map`` / ``lease-map`` — ``HK``/``HV`` find every resting order's row by its id and
  ``LK``/``LV`` every live lease's row by its trade id, and hold nothing else (counted over the
  slots a key of an id handed out so far can occupy: the whole table once ids reach 2**20 or
  the table's size, else slots 1 .. the last id and the occupied run after it);
* ``lease-list`` — each ask's lease list is a doubly linked list of live leases of that ask;
  every live lease is on its ask's list, or detached (``L_ASLOT`` −1) once its ask has gone;
  a bid has no list;
* ``lease-sums`` — an ask's ``O_FSUM`` / ``O_SSUM`` / ``O_UNF`` / ``O_UNS`` equal the sums over its
  leases; ``O_LMAXEND`` is at or after every lease's end, ``O_NEXTSTART`` at or before every
  start still to come;
* ``usage-cache`` — each cached usage function (``UC``) belongs to a resting ask, lies inside
  the pool, has increasing times, and from now on equals the usage of the ask's leases (firm
  and all);
* ``timers`` — the timer heap (``TM``) is a 4-ary heap of timers due after now and before the
  near limit, each ``TF`` bucket holds the timers of its hour (counts, free rows and overflow
  list consistent), every timer's row lies in the used rows, and every live row has the timers
  it needs (expiry, window start, lease start and end);
* ``reoffers`` — no re-offer is pending between commands;
* ``config`` — ``P`` is the book's configuration (checked by `NumbaBook.validate`).

It reads only the rows below the high-water marks (``S_OHIGH``, ``S_LHIGH``), the levels, the
hash tables and ``UC``'s tags: fast enough to run after every command of the rule and
differential tests.
"""

from __future__ import annotations

import numba
import numpy as np

from orderbook.book import BookInvariantError
from orderbook.fast import (
    _IV_INDEX_OF,
    E_AG,
    E_BG,
    E_BM_BEYOND,
    E_BM_LADDER,
    E_BS,
    E_BS_BEYOND,
    E_HOUR_EMPTY,
    E_LT_EMPTY,
    E_NOW_EMPTY,
    E_OK,
    E_SUM,
    E_TFHIGH,
    NBK,
    NLAD,
    NOWROW,
    S_LASTOID,
    S_NEXTTID,
    UC_TAGS,
    _iv_check,
    _iv_check_all,
    _iv_fail,
)

# (invariant, message) by error code E_* (orderbook/fast.py, in this order); {a} {b} {c} are the
# details the check found
ERRORS = (
    ("", "no error"),
    ("counters", "S_OHIGH {a} lies outside the order pool of {b} rows"),
    ("counters", "S_LHIGH {a} lies outside the lease pool of {b} rows"),
    ("counters", "S_NORD is {a} but {b} order rows are live"),
    ("counters", "S_NLEASE is {a} but {b} lease rows are live"),
    ("counters", "S_ERR is {a}: a batch failed"),
    ("order-rows", "order row {a} has O_LIVE {b} (neither free nor resting)"),
    ("order-rows", "resting order row {a}: side {b}"),
    ("order-rows", "resting order row {a}: order id {b} is not in 1..S_LASTOID {c}"),
    ("lease-rows", "lease row {a} has L_LIVE {b}"),
    ("lease-rows", "lease row {a}: trade id {b} is not in 1..S_NEXTTID - 1 ({c})"),
    ("lease-rows", "live lease row {a} ends at {b}, not after now {c}"),
    ("lease-rows", "live lease row {a}: L_NOW {b} but it starts at {c}"),
    ("order-free-list", "free list reaches row {a}, outside the used rows 0..{b}"),
    ("order-free-list", "free list reaches row {a}, which is not free (O_LIVE {b})"),
    ("order-free-list", "free list reaches row {a} twice"),
    ("order-free-list", "free list holds {a} rows, but {b} used rows are free"),
    ("lease-free-list", "free list reaches row {a}, outside the used rows 0..{b}"),
    ("lease-free-list", "free list reaches row {a}, which is live"),
    ("lease-free-list", "free list reaches row {a} twice"),
    ("lease-free-list", "free list holds {a} rows, but {b} used rows are free"),
    ("ladder-list", "ladder {a} level {b}: one of LH and LT is -1 (empty), the other not ({c})"),
    ("ladder-list", "ladder {a} level {b}: list reaches row {c}, not a resting order"),
    ("ladder-list", "ladder {a} level {b}: row {c} reached twice (a cycle, or on two lists)"),
    ("ladder-list", "ladder {a} level {b}: row {c}'s prev link does not point to the row before it"),
    ("ladder-list", "ladder {a} level {b}: row {c} does not belong to this ladder and level"),
    ("ladder-list", "ladder {a} level {b}: row {c} is out of arrival (order id) order"),
    ("ladder-list", "ladder {a} level {b}: LT is not the list's last row {c}"),
    ("ladder-list", "resting order row {a} is not on ladder {b}"),
    ("bitmap", "ladder {a} level {b}: bit {c} disagrees with the level's list (set iff it is not empty)"),
    ("bitmap", "BM row {a} word {b}: BS bit {c} disagrees with the word (set iff it is not zero)"),
    ("bitmap", "BM row {a}: a bit beyond the last level, in word {b}"),
    ("bitmap", "BS row {a}: a bit beyond the last BM word, in word {b}"),
    ("now-row", "ask ladder {a} level {b}: open-now bit clear but row {c} has started with a GPU free"),
    ("now-row", "ask ladder {a} level {b}: open-now bit set on an empty level"),
    ("hour-row", "bid ladder {a} level {b}: short-bids row {c} clear but a bid of the level is that short"),
    ("hour-row", "bid ladder {a} level {b}: short-bids row {c} set on an empty level"),
    ("ask-bounds", "ask ladder {a} level {b}: bound {c} does not cover the level's asks"),
    ("bid-bounds", "bid ladder {a} level {b}: bound {c} does not cover the level's bids"),
    ("bid-top", "S_BIDTOP {a} lies below bid ladder {b}'s level {c}"),
    ("order-map", "order id {a} (row {b}) is not found in HK/HV (found {c})"),
    ("order-map", "HK holds {a} keys for {b} resting orders"),
    ("lease-map", "trade id {a} (row {b}) is not found in LK/LV (found {c})"),
    ("lease-map", "LK holds {a} keys for {b} live leases"),
    ("lease-list", "ask row {a}: lease list reaches row {b}, not a live lease"),
    ("lease-list", "ask row {a}: lease row {b} reached twice (a cycle, or on two lists)"),
    ("lease-list", "ask row {a}: lease row {b}'s prev link does not point to the row before it"),
    ("lease-list", "ask row {a}: lease row {b} names another ask (L_ASLOT / L_ASK)"),
    ("lease-list", "bid row {a} has a lease list (O_LHEAD {b})"),
    ("lease-list", "live lease row {a} (L_ASLOT {b}) is not on its ask's list"),
    ("lease-list", "live lease row {a} is detached, but its ask (row {b}) still rests"),
    ("lease-sums", "ask row {a}: {b} differs from the sum over its leases ({c})"),
    ("lease-sums", "ask row {a}: O_LMAXEND {b} is before a lease's end {c}"),
    ("lease-sums", "ask row {a}: O_NEXTSTART {b} is after the start {c} of a lease still to come"),
    ("usage-cache", "tag {a}: names row {b}, which is not a resting ask of that tag"),
    ("usage-cache", "tag {a}: function at {b} lies outside the pool's used words"),
    ("usage-cache", "tag {a}: function's times are not increasing at row {b}"),
    ("usage-cache", "ask row {a}: cached usage at time {b} is not its leases' ({c})"),
    ("timers", "timer heap holds {a} rows, more than its {b}"),
    ("timers", "timer heap row {a} orders before its parent row {b}"),
    ("timers", "timer at {a} (kind {b}) is due at or before now {c}"),
    ("timers", "heap timer at {a} is not before the near limit {b}"),
    ("timers", "timer of kind {a} names row {b}, outside the used rows"),
    ("timers", "TF bucket {a}: reaches row {b}, not a timer row in use"),
    ("timers", "TF row {a} reached twice"),
    ("timers", "TF bucket {a}: row {b}'s time is not in that bucket's hour"),
    ("timers", "TF bucket {a}: holds {b} timers, its count says {c}"),
    ("timers", "TF: {a} timers in buckets, TF_NBUCKET says {b}"),
    ("timers", "TF overflow: {a} timers, TF_NOVER says {b}"),
    ("timers", "TF overflow row {a}: time {b} before TF_OMIN or the near limit"),
    ("timers", "TF: {a} free rows, {b} in use, high-water mark {c}"),
    ("timers", "TF: the near limit {a} is not after now {b}"),
    ("timers", "resting order row {a} has no expiry timer at {b}"),
    ("timers", "ask row {a} has no timer for its start {b}"),
    ("timers", "lease row {a} has no timer for its end {b}"),
    ("timers", "lease row {a} has no timer for its start {b}"),
    ("reoffers", "{a} re-offers pending between commands"),
    ("reoffers", "resting order row {a} is marked pending a re-offer"),
    ("counters", "TF_HIGH {a} outside the TF rows 0..{b}"),
)
assert len(ERRORS) == E_TFHIGH + 1 and ERRORS[E_SUM][0] == "lease-sums" and ERRORS[E_TFHIGH][0] == "counters"

# names of the bounds in messages
SUM_NAMES = ("O_FSUM", "O_SSUM", "O_UNF", "O_UNS")
AG_NAMES = ("AG_END", "AG_START", "AG_MINH", "AG_FREE")
BG_NAMES = ("BG_MINH", "BG_MAXH", "BG_MINBLK", "BG_MAXSTART", "BG_MINEND", "BG_STALE")


def _words(bits: np.ndarray, nw: int) -> np.ndarray:
    """Rows of booleans (one per level) -> rows of the bitmap words that mark them (bit i of
    word w: level 64 w + i)."""
    b = np.packbits(bits, axis=1, bitorder="little")
    packed = np.zeros((bits.shape[0], nw * 8), dtype=np.uint8)
    packed[:, : b.shape[1]] = b
    return packed.view(np.uint64)


def _bit(B: np.ndarray, r: int, i: int) -> int:
    return int(B[r, i >> 6] >> np.uint64(i & 63)) & 1


def _first_bit(words: np.ndarray) -> tuple[int, int]:
    """(row, bit index) of the first set bit of a 2-d array of words."""
    r, w = (int(v[0]) for v in np.nonzero(words))
    return r, 64 * w + int(np.flatnonzero(np.unpackbits(words[r, w:w + 1].view(np.uint8), bitorder="little"))[0])


def _check_levels(st, err: np.ndarray, levels: int):
    """What concerns every level, vectorised (numpy: as fast without the compiler): heads and
    tails of empty levels, the ladder rows of BM against the heads, the index rows marking
    only non-empty levels, BS against BM, nothing beyond the last level.  Returns an error
    code and the ladders and levels of the non-empty levels."""
    LH, LT, BM, BS = st.LH, st.LT, st.BM, st.BS
    nw = BM.shape[1]
    full = LH[:, :levels] >= 0  # the two passes over every level (~0.5 ms for 100,000 levels)
    if not np.array_equal(LT[:, :levels] >= 0, full):
        lad, lvl = (int(v[0]) for v in np.nonzero((LT[:, :levels] >= 0) != full))
        return _iv_fail(err, E_LT_EMPTY, lad, lvl, LT[lad, lvl]), None, None
    want = _words(full, nw)
    if not np.array_equal(BM[:NLAD], want):
        lad, lvl = _first_bit(BM[:NLAD] ^ want)
        return _iv_fail(err, E_BM_LADDER, lad, lvl, _bit(BM, lad, lvl)), None, None
    extra = BM[NOWROW:] & ~want[_IV_INDEX_OF]
    if extra.any():
        r, lvl = _first_bit(extra)
        lad = int(_IV_INDEX_OF[r])
        if r < 2:
            return _iv_fail(err, E_NOW_EMPTY, lad, lvl, 0), None, None
        return _iv_fail(err, E_HOUR_EMPTY, lad, lvl, NOWROW + r), None, None
    last = levels - 64 * (nw - 1)  # levels in the last word
    beyond = BM[:, nw - 1] >> np.uint64(last) if last < 64 else np.zeros(1, dtype=np.uint64)
    if beyond.any():
        return _iv_fail(err, E_BM_BEYOND, int(np.flatnonzero(beyond)[0]), nw - 1, 0), None, None
    want = _words(BM != 0, BS.shape[1])
    if not np.array_equal(BS, want):
        r, w = _first_bit(BS ^ want)
        if w >= nw:
            return _iv_fail(err, E_BS_BEYOND, r, w >> 6, 0), None, None
        return _iv_fail(err, E_BS, r, w, _bit(BS, r, w)), None, None
    # the non-empty levels, from the ladder rows' words (the rows are right, as checked above)
    rows = BM[:NLAD].reshape(-1)
    at = np.flatnonzero(rows)
    bits = np.unpackbits(rows[at].view(np.uint8), bitorder="little").reshape(-1, 64)
    w, b = np.nonzero(bits)
    flat = at[w].astype(np.int64) * 64 + b
    return E_OK, flat // (64 * nw), flat % (64 * nw)


def _keys(K: np.ndarray, top: int) -> int:
    """`fast._iv_keys` with numpy: the keys map K can hold when no id is above top."""
    n = K.shape[0]
    if top >= (1 << 20) or top >= n - 1:
        return int(np.count_nonzero(K))
    c = int(np.count_nonzero(K[1 : top + 1]))
    i = top + 1
    while i < n and K[i] != 0:  # the occupied run after them
        c += 1
        i += 1
    return c + (1 if i == n and K[0] != 0 else 0)


def check(st, levels: int, vectorised: bool | None = None) -> None:
    """Raise `BookInvariantError` naming the first invariant the state `st` breaks.

    Jitted, the whole check runs as loops (`fast._iv_check_all`).  Under NUMBA_DISABLE_JIT (or with
    vectorised=True) what reads every level and whole tables is numpy's (`_check_levels`,
    `np.count_nonzero`): loops over 100,000 levels would take a second in plain Python."""
    err = np.zeros(4, dtype=np.int64)
    if vectorised is None:
        vectorised = bool(numba.config.DISABLE_JIT)
    if not vectorised:
        code = int(_iv_check_all(st, err, levels))
    else:
        code, lads, lvls = _check_levels(st, err, levels)
        if code == E_OK:
            tags = np.flatnonzero(st.UC[:UC_TAGS]).astype(np.int64)
            buckets = np.flatnonzero(st.TF[:NBK]) // st.TF.shape[1]  # sorted; a bucket may repeat
            code = int(_iv_check(st, err, lads, lvls, _keys(st.HK, int(st.S[S_LASTOID])),
                                 _keys(st.LK, int(st.S[S_NEXTTID]) - 1), tags,
                              buckets))
    if code == E_OK:
        return
    name, text = ERRORS[code]
    a, b, c = (int(v) for v in err[1:])
    if code == E_SUM:
        b = SUM_NAMES[b]
    elif code == E_AG:
        c = AG_NAMES[c]
    elif code == E_BG:
        c = BG_NAMES[c]
    raise BookInvariantError(name, text.format(a=a, b=b, c=c))
