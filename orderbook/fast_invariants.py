"""`NumbaBook.validate()`: every derived structure of the numba book checked against its rows.

The primary data of the numba book are its order rows (``O``), its lease rows (``Lz``) and the
clocks in ``S``; everything else is derived from them and kept up to date incrementally
(docs/orderbook.md).  `check(st)` recomputes what each derived structure must hold from the
rows and raises `BookInvariantError` naming the first one that does not:

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
  ``LK``/``LV`` every live lease's row by its trade id, and hold nothing else;
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
* ``reoffers`` — no re-offer is pending between commands.

It reads only the rows below the high-water marks (``S_OHIGH``, ``S_LHIGH``), the levels, the
hash tables and ``UC``'s tags: fast enough to run after every command of the rule and
differential tests.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from orderbook.book import BookInvariantError
from orderbook.config import P_MIN_PRICE, P_TICK
from orderbook.fast import (
    AG_END,
    AG_FREE,
    AG_MINH,
    AG_START,
    BG_MAXH,
    BG_MAXSTART,
    BG_MINBLK,
    BG_MINEND,
    BG_MINH,
    BG_STALE,
    HOURROW,
    L_ASK,
    L_ASLOT,
    L_END,
    L_FREE,
    L_GPUS,
    L_KIND,
    L_LIVE,
    L_NEXT,
    L_NOW,
    L_PREV,
    L_START,
    L_TID,
    LAD_ASK_FIRM,
    LAD_ASK_SPOT,
    LAD_BID_OD,
    LAD_BID_RES,
    LAD_BID_SPOT,
    LIVE_FREE,
    LIVE_RESTING,
    NBK,
    NBM,
    NHB,
    NLAD,
    NOWROW,
    O_BLOCK,
    O_END,
    O_EXP,
    O_FREE,
    O_FSUM,
    O_HOURS,
    O_KIND,
    O_LHEAD,
    O_LIVE,
    O_LMAXEND,
    O_MINH,
    O_NEXT,
    O_NEXTSTART,
    O_OID,
    O_PEND,
    O_PREV,
    O_PRICE,
    O_SIDE,
    O_SNEXT,
    O_SPOT,
    O_SPREV,
    O_SSUM,
    O_START,
    O_UNF,
    O_UNS,
    S_BIDTOP,
    S_ERR,
    S_LASTOID,
    S_LFREE,
    S_LHIGH,
    S_NEXTTID,
    S_NLEASE,
    S_NORD,
    S_NOW,
    S_OFREE,
    S_OHIGH,
    S_RON,
    S_TMN,
    T_ASK_START,
    T_EXPIRE,
    T_LEASE_END,
    T_LEASE_START,
    TF_BASE,
    TF_FREE,
    TF_HIGH,
    TF_LIMIT,
    TF_NBUCKET,
    TF_NEXT,
    TF_NOVER,
    TF_OMIN,
    TF_OVER,
    TFH,
    TIME_CAP,
    UC_BUMP,
    UC_LOW,
    UC_POOL,
    UC_TAGS,
    _free_now,
    _map_get,
)
from orderbook.types import HOUR, ON_DEMAND, RESERVED, SIDE_ASK, SIDE_BID, SPOT

# (invariant, message) by error code; the message's {a} {b} {c} are the details check found
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
(E_OK, E_OHIGH, E_LHIGH, E_NORD, E_NLEASE, E_ERR, E_OLIVE, E_OSIDE, E_OOID, E_LLIVE, E_LTID, E_LEND,
 E_LNOW, E_OFREE_RANGE, E_OFREE_LIVE, E_OFREE_TWICE, E_OFREE_COUNT, E_LFREE_RANGE, E_LFREE_LIVE,
 E_LFREE_TWICE, E_LFREE_COUNT, E_LT_EMPTY, E_LAD_ROW, E_LAD_TWICE, E_LAD_PREV, E_LAD_WRONG, E_LAD_ORDER,
 E_LAD_TAIL, E_LAD_MISSING, E_BM_LADDER, E_BS, E_BM_BEYOND, E_BS_BEYOND, E_NOW_MISSING, E_NOW_EMPTY,
 E_HOUR_MISSING, E_HOUR_EMPTY, E_AG, E_BG, E_BIDTOP, E_HK_MISSING, E_HK_COUNT, E_LK_MISSING, E_LK_COUNT,
 E_LL_ROW, E_LL_TWICE, E_LL_PREV, E_LL_WRONG, E_LL_BID, E_LL_MISSING, E_LL_DETACHED, E_SUM, E_LMAXEND,
 E_NEXTSTART, E_UC_TAG, E_UC_RANGE, E_UC_ORDER, E_UC_VALUE, E_TM_SIZE, E_TM_HEAP, E_TM_DUE, E_TM_LIMIT,
 E_T_REF, E_TF_ROW, E_TF_TWICE, E_TF_BUCKET, E_TF_COUNT, E_TF_NBUCKET, E_TF_NOVER, E_TF_OVER, E_TF_FREE,
 E_TF_LIMIT, E_T_EXP, E_T_ASKSTART, E_T_LEASE_END, E_T_LEASE_START, E_RON, E_PEND, E_TFHIGH) = range(len(ERRORS))

# names of the bounds in messages
SUM_NAMES = ("O_FSUM", "O_SSUM", "O_UNF", "O_UNS")
AG_NAMES = ("AG_END", "AG_START", "AG_MINH", "AG_FREE")
BG_NAMES = ("BG_MINH", "BG_MAXH", "BG_MINBLK", "BG_MAXSTART", "BG_MINEND", "BG_STALE")


@njit(cache=True)
def _bit(B, r, i):
    return (B[r, i >> 6] >> np.uint64(i & 63)) & np.uint64(1) != np.uint64(0)


@njit(cache=True)
def _fail(err, code, a, b, c):
    err[0] = code
    err[1] = a
    err[2] = b
    err[3] = c
    return code


@njit(cache=True)
def _check_rows(st, err):
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    oh = S[S_OHIGH]
    lh = S[S_LHIGH]
    if oh < 0 or oh > O.shape[0]:
        return _fail(err, E_OHIGH, oh, O.shape[0], 0)
    if lh < 0 or lh > Lz.shape[0]:
        return _fail(err, E_LHIGH, lh, Lz.shape[0], 0)
    if S[S_ERR] != 0:
        return _fail(err, E_ERR, S[S_ERR], 0, 0)
    now = S[S_NOW]
    nord = 0
    for o in range(oh):
        live = O[o, O_LIVE]
        if live == LIVE_RESTING:
            nord += 1
            if O[o, O_SIDE] != SIDE_ASK and O[o, O_SIDE] != SIDE_BID:
                return _fail(err, E_OSIDE, o, O[o, O_SIDE], 0)
            if O[o, O_OID] <= 0 or O[o, O_OID] > S[S_LASTOID]:
                return _fail(err, E_OOID, o, O[o, O_OID], S[S_LASTOID])
        elif live != LIVE_FREE:
            return _fail(err, E_OLIVE, o, live, 0)
    if nord != S[S_NORD]:
        return _fail(err, E_NORD, S[S_NORD], nord, 0)
    nl = 0
    for lz in range(lh):
        live = Lz[lz, L_LIVE]
        if live == 1:
            nl += 1
            if Lz[lz, L_TID] <= 0 or Lz[lz, L_TID] >= S[S_NEXTTID]:
                return _fail(err, E_LTID, lz, Lz[lz, L_TID], S[S_NEXTTID])
            if Lz[lz, L_END] <= now:
                return _fail(err, E_LEND, lz, Lz[lz, L_END], now)
            if Lz[lz, L_NOW] != (1 if Lz[lz, L_START] <= now else 0):
                return _fail(err, E_LNOW, lz, Lz[lz, L_NOW], Lz[lz, L_START])
        elif live != 0:
            return _fail(err, E_LLIVE, lz, live, 0)
    if nl != S[S_NLEASE]:
        return _fail(err, E_NLEASE, S[S_NLEASE], nl, 0)
    # free lists: every used row that is not live, once
    seen = np.zeros(max(oh, 1), dtype=np.bool_)
    n = 0
    o = S[S_OFREE]
    while o != -1:
        if o < 0 or o >= oh:
            return _fail(err, E_OFREE_RANGE, o, oh - 1, 0)
        if O[o, O_LIVE] != LIVE_FREE:
            return _fail(err, E_OFREE_LIVE, o, O[o, O_LIVE], 0)
        if seen[o]:
            return _fail(err, E_OFREE_TWICE, o, 0, 0)
        seen[o] = True
        n += 1
        o = O[o, O_FREE]
    if n != oh - nord:
        return _fail(err, E_OFREE_COUNT, n, oh - nord, 0)
    seen = np.zeros(max(lh, 1), dtype=np.bool_)
    n = 0
    lz = S[S_LFREE]
    while lz != -1:
        if lz < 0 or lz >= lh:
            return _fail(err, E_LFREE_RANGE, lz, lh - 1, 0)
        if Lz[lz, L_LIVE] != 0:
            return _fail(err, E_LFREE_LIVE, lz, 0, 0)
        if seen[lz]:
            return _fail(err, E_LFREE_TWICE, lz, 0, 0)
        seen[lz] = True
        n += 1
        lz = Lz[lz, L_FREE]
    if n != lh - nl:
        return _fail(err, E_LFREE_COUNT, n, lh - nl, 0)
    return E_OK


@njit(cache=True)
def _check_ladders(st, err, lads, lvls):
    """The lists of the non-empty levels (ladder lads[i], level lvls[i]), the level bounds, the
    open-now and short-bids rows of those levels, and S_BIDTOP."""
    O = st.O  # noqa: E741
    S = st.S
    P = st.P
    LH = st.LH
    LT = st.LT
    BM = st.BM
    AG = st.AG
    oh = S[S_OHIGH]
    now = S[S_NOW]
    nord = S[S_NORD]
    on = np.zeros(max(oh, 1), dtype=np.int64)  # bit lad: the row was found on ladder lad
    for i in range(lads.shape[0]):
        lad = lads[i]
        lvl = lvls[i]
        ask = lad == LAD_ASK_FIRM or lad == LAD_ASK_SPOT
        nxt = O_SNEXT if lad == LAD_ASK_SPOT else O_NEXT
        prv = O_SPREV if lad == LAD_ASK_SPOT else O_PREV
        col = O_SPOT if lad == LAD_ASK_SPOT else O_PRICE
        if lad >= LAD_BID_OD and lvl > S[S_BIDTOP]:
            return _fail(err, E_BIDTOP, S[S_BIDTOP], lad, lvl)
        # walk the level's list; gather what the bounds must cover
        maxend = -(1 << 62)
        minstart = 1 << 62
        minminh = 1 << 62
        maxfree = -(1 << 62)
        is_open = -1
        minh = 1 << 62
        maxh = -(1 << 62)
        minblk = 1 << 62
        maxstart = -(1 << 62)
        minend = 1 << 62
        prev = -1
        last = 0
        x = LH[lad, lvl]
        steps = 0
        while x >= 0:
            if x >= oh or O[x, O_LIVE] != LIVE_RESTING:
                return _fail(err, E_LAD_ROW, lad, lvl, x)
            if on[x] & (1 << lad) or steps > nord:
                return _fail(err, E_LAD_TWICE, lad, lvl, x)
            on[x] |= 1 << lad
            steps += 1
            if O[x, prv] != prev:
                return _fail(err, E_LAD_PREV, lad, lvl, x)
            if ask:
                right = O[x, O_SIDE] == SIDE_ASK and O[x, col] > 0
            else:
                k = O[x, O_KIND]
                right = O[x, O_SIDE] == SIDE_BID and (
                    (lad == LAD_BID_SPOT and k == SPOT) or (lad == LAD_BID_OD and k == ON_DEMAND)
                    or (lad == LAD_BID_RES and k == RESERVED))
            if not right or (O[x, col] - P[P_MIN_PRICE]) // P[P_TICK] != lvl:
                return _fail(err, E_LAD_WRONG, lad, lvl, x)
            if O[x, O_OID] <= last:
                return _fail(err, E_LAD_ORDER, lad, lvl, x)
            last = O[x, O_OID]
            if ask:
                maxend = max(maxend, O[x, O_END])
                minstart = min(minstart, O[x, O_START])
                minminh = min(minminh, O[x, O_MINH])
                f = _free_now(O, x, lad)
                maxfree = max(maxfree, f)
                if is_open < 0 and O[x, O_START] <= now and f >= 1:
                    is_open = x
            else:
                minh = min(minh, O[x, O_HOURS])
                maxh = max(maxh, O[x, O_HOURS])
                minblk = min(minblk, O[x, O_BLOCK])
                maxstart = max(maxstart, O[x, O_START])
                minend = min(minend, O[x, O_END])
            prev = x
            x = O[x, nxt]
        if LT[lad, lvl] != prev:
            return _fail(err, E_LAD_TAIL, lad, lvl, prev)
        if ask:
            if AG[lad, lvl, AG_END] < maxend:
                return _fail(err, E_AG, lad, lvl, AG_END)
            if AG[lad, lvl, AG_START] > minstart:
                return _fail(err, E_AG, lad, lvl, AG_START)
            if AG[lad, lvl, AG_MINH] > minminh:
                return _fail(err, E_AG, lad, lvl, AG_MINH)
            if AG[lad, lvl, AG_FREE] < maxfree:
                return _fail(err, E_AG, lad, lvl, AG_FREE)
            if is_open >= 0 and not _bit(BM, NOWROW + lad, lvl):
                return _fail(err, E_NOW_MISSING, lad, lvl, is_open)
        else:
            if AG[lad, lvl, BG_MINH] > minh:
                return _fail(err, E_BG, lad, lvl, BG_MINH)
            if AG[lad, lvl, BG_MAXH] < maxh:
                return _fail(err, E_BG, lad, lvl, BG_MAXH)
            if AG[lad, lvl, BG_MINBLK] > minblk:
                return _fail(err, E_BG, lad, lvl, BG_MINBLK)
            if AG[lad, lvl, BG_MAXSTART] < maxstart:
                return _fail(err, E_BG, lad, lvl, BG_MAXSTART)
            if AG[lad, lvl, BG_MINEND] > minend:
                return _fail(err, E_BG, lad, lvl, BG_MINEND)
            if AG[lad, lvl, BG_STALE] != 0 and AG[lad, lvl, BG_STALE] != 1:
                return _fail(err, E_BG, lad, lvl, BG_STALE)
            if lad == LAD_BID_OD or lad == LAD_BID_SPOT:
                base = HOURROW + (NHB if lad == LAD_BID_SPOT else 0)
                for k in range(NHB):
                    if minh <= (1 << k) and not _bit(BM, base + k, lvl):
                        return _fail(err, E_HOUR_MISSING, lad, lvl, base + k)
    # every resting order on its ladder(s)
    for o in range(oh):
        if O[o, O_LIVE] != LIVE_RESTING:
            continue
        if O[o, O_SIDE] == SIDE_ASK:
            want = (1 << LAD_ASK_FIRM) | ((1 << LAD_ASK_SPOT) if O[o, O_SPOT] > 0 else 0)
        else:
            k = O[o, O_KIND]
            want = 1 << (LAD_BID_SPOT if k == SPOT else (LAD_BID_RES if k == RESERVED else LAD_BID_OD))
        if on[o] != want:
            miss = want & ~on[o]
            lad = 0
            while lad < NLAD - 1 and not miss & (1 << lad):
                lad += 1
            return _fail(err, E_LAD_MISSING, o, lad, 0)
    return E_OK


def _words(bits: np.ndarray, nw: int) -> np.ndarray:
    """Rows of booleans (one per level) -> rows of the bitmap words that mark them (bit i of
    word w: level 64 w + i)."""
    b = np.packbits(bits, axis=1, bitorder="little")
    packed = np.zeros((bits.shape[0], nw * 8), dtype=np.uint8)
    packed[:, : b.shape[1]] = b
    return packed.view(np.uint64)


# the ladder whose levels each bitmap row of index marks (rows NOWROW.. on)
_INDEX_OF = np.array([LAD_ASK_FIRM, LAD_ASK_SPOT] + [LAD_BID_OD] * NHB + [LAD_BID_SPOT] * NHB, dtype=np.int64)
assert _INDEX_OF.shape[0] == NBM - NOWROW


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
        return _fail(err, E_LT_EMPTY, lad, lvl, LT[lad, lvl]), None, None
    want = _words(full, nw)
    if not np.array_equal(BM[:NLAD], want):
        lad, lvl = _first_bit(BM[:NLAD] ^ want)
        return _fail(err, E_BM_LADDER, lad, lvl, int(_bit(BM, lad, lvl))), None, None
    extra = BM[NOWROW:] & ~want[_INDEX_OF]
    if extra.any():
        r, lvl = _first_bit(extra)
        lad = int(_INDEX_OF[r])
        if r < 2:
            return _fail(err, E_NOW_EMPTY, lad, lvl, 0), None, None
        return _fail(err, E_HOUR_EMPTY, lad, lvl, NOWROW + r), None, None
    last = levels - 64 * (nw - 1)  # levels in the last word
    beyond = BM[:, nw - 1] >> np.uint64(last) if last < 64 else np.zeros(1, dtype=np.uint64)
    if beyond.any():
        return _fail(err, E_BM_BEYOND, int(np.flatnonzero(beyond)[0]), nw - 1, 0), None, None
    want = _words(BM != 0, BS.shape[1])
    if not np.array_equal(BS, want):
        r, w = _first_bit(BS ^ want)
        if w >= nw:
            return _fail(err, E_BS_BEYOND, r, w >> 6, 0), None, None
        return _fail(err, E_BS, r, w, int(_bit(BS, r, w))), None, None
    # the non-empty levels, from the ladder rows' words (the rows are right, as checked above)
    rows = BM[:NLAD].reshape(-1)
    at = np.flatnonzero(rows)
    bits = np.unpackbits(rows[at].view(np.uint8), bitorder="little").reshape(-1, 64)
    w, b = np.nonzero(bits)
    flat = at[w].astype(np.int64) * 64 + b
    return E_OK, flat // (64 * nw), flat % (64 * nw)


@njit(cache=True)
def _check_maps(st, err, hk_keys, lk_keys):
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    n = 0
    for o in range(S[S_OHIGH]):
        if O[o, O_LIVE] == LIVE_RESTING:
            n += 1
            got = _map_get(st.HK, st.HV, O[o, O_OID])
            if got != o:
                return _fail(err, E_HK_MISSING, O[o, O_OID], o, got)
    if hk_keys != n:
        return _fail(err, E_HK_COUNT, hk_keys, n, 0)
    n = 0
    for lz in range(S[S_LHIGH]):
        if Lz[lz, L_LIVE] == 1:
            n += 1
            got = _map_get(st.LK, st.LV, Lz[lz, L_TID])
            if got != lz:
                return _fail(err, E_LK_MISSING, Lz[lz, L_TID], lz, got)
    if lk_keys != n:
        return _fail(err, E_LK_COUNT, lk_keys, n, 0)
    return E_OK


@njit(cache=True)
def _usage_at(Lz, head, t, spot):
    """GPUs the leases of the list at head hold at time t (firm leases only, or all: spot)."""
    u = 0
    x = head
    while x >= 0:
        if Lz[x, L_START] <= t < Lz[x, L_END] and (spot or Lz[x, L_KIND] != SPOT):
            u += Lz[x, L_GPUS]
        x = Lz[x, L_NEXT]
    return u


@njit(cache=True)
def _cached_at(UC, off, t, c):
    """The usage function at off at time t (column c: 1 firm, 2 all)."""
    v = 0
    k = off + 1
    e = k + 3 * UC[off]
    while k < e and UC[k] <= t:
        v = UC[k + c]
        k += 3
    return v


@njit(cache=True)
def _check_leases(st, err, tags):
    """Each ask's lease list and lease sums, detached leases, and the usage cache."""
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    UC = st.UC
    oh = S[S_OHIGH]
    lh = S[S_LHIGH]
    now = S[S_NOW]
    on = np.zeros(max(lh, 1), dtype=np.bool_)
    sums = np.zeros(4, dtype=np.int64)
    for a in range(oh):
        if O[a, O_LIVE] != LIVE_RESTING:
            continue
        if O[a, O_SIDE] != SIDE_ASK:
            if O[a, O_LHEAD] != -1:
                return _fail(err, E_LL_BID, a, O[a, O_LHEAD], 0)
            continue
        sums[:] = 0
        prev = -1
        x = O[a, O_LHEAD]
        while x >= 0:
            if x >= lh or Lz[x, L_LIVE] != 1:
                return _fail(err, E_LL_ROW, a, x, 0)
            if on[x]:
                return _fail(err, E_LL_TWICE, a, x, 0)
            on[x] = True
            if Lz[x, L_PREV] != prev:
                return _fail(err, E_LL_PREV, a, x, 0)
            if Lz[x, L_ASLOT] != a or Lz[x, L_ASK] != O[a, O_OID]:
                return _fail(err, E_LL_WRONG, a, x, 0)
            g = Lz[x, L_GPUS]
            spot = Lz[x, L_KIND] == SPOT
            sums[1 if spot else 0] += g
            if Lz[x, L_NOW] == 1:
                sums[3 if spot else 2] += g
            elif Lz[x, L_START] < O[a, O_NEXTSTART]:
                return _fail(err, E_NEXTSTART, a, O[a, O_NEXTSTART], Lz[x, L_START])
            if Lz[x, L_END] > O[a, O_LMAXEND]:
                return _fail(err, E_LMAXEND, a, O[a, O_LMAXEND], Lz[x, L_END])
            prev = x
            x = Lz[x, L_NEXT]
        if O[a, O_FSUM] != sums[0]:
            return _fail(err, E_SUM, a, 0, sums[0])
        if O[a, O_SSUM] != sums[1]:
            return _fail(err, E_SUM, a, 1, sums[1])
        if O[a, O_UNF] != sums[2]:
            return _fail(err, E_SUM, a, 2, sums[2])
        if O[a, O_UNS] != sums[3]:
            return _fail(err, E_SUM, a, 3, sums[3])
    for lz in range(lh):
        if Lz[lz, L_LIVE] != 1 or on[lz]:
            continue
        a = Lz[lz, L_ASLOT]
        if a != -1:
            return _fail(err, E_LL_MISSING, lz, a, 0)
        o = _map_get(st.HK, st.HV, Lz[lz, L_ASK])
        if o >= 0 and O[o, O_SIDE] == SIDE_ASK:
            return _fail(err, E_LL_DETACHED, lz, o, 0)
    # usage functions: each tag's ask, its place in the pool, and its values from now on
    used = UC_POOL + UC[UC_BUMP]
    for h in tags:
        x = UC[h]
        a = (x & UC_LOW) - 1
        off = x >> 32
        if a < 0 or a >= oh or a & (UC_TAGS - 1) != h or O[a, O_LIVE] != LIVE_RESTING or O[a, O_SIDE] != SIDE_ASK:
            return _fail(err, E_UC_TAG, h, a, 0)
        if off < UC_POOL or used > UC.shape[0] or off + 1 > used or off + 1 + 3 * UC[off] > used or UC[off] < 0:
            return _fail(err, E_UC_RANGE, h, off, 0)
        m = UC[off]
        for i in range(1, m):
            if UC[off + 1 + 3 * i] <= UC[off + 1 + 3 * (i - 1)]:
                return _fail(err, E_UC_ORDER, h, i, 0)
        # both are step functions: compare them at now and at every step of either after now
        head = O[a, O_LHEAD]
        for c in (1, 2):
            spot = c == 2
            t = now
            while True:
                want = _usage_at(Lz, head, t, spot)
                if _cached_at(UC, off, t, c) != want:
                    return _fail(err, E_UC_VALUE, a, t, want)
                nxt = 1 << 62  # the next step of either after t
                for i in range(m):
                    if t < UC[off + 1 + 3 * i] < nxt:
                        nxt = UC[off + 1 + 3 * i]
                y = head
                while y >= 0:
                    for tt in (Lz[y, L_START], Lz[y, L_END]):
                        if t < tt < nxt:
                            nxt = tt
                    y = Lz[y, L_NEXT]
                if nxt == 1 << 62:
                    break
                t = nxt
    return E_OK


@njit(cache=True)
def _timer_seen(st, err, when, kind, key, ref, flags):
    """One timer: its row must lie in the used rows; mark what it serves when it is live."""
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    if when <= S[S_NOW]:
        return _fail(err, E_TM_DUE, when, kind, S[S_NOW])
    if kind == T_EXPIRE or kind == T_ASK_START:
        if ref < 0 or ref >= S[S_OHIGH]:
            return _fail(err, E_T_REF, kind, ref, 0)
        if O[ref, O_LIVE] == LIVE_RESTING and O[ref, O_OID] == key:
            if kind == T_EXPIRE and O[ref, O_EXP] == when:
                flags[ref, 0] = True
            if kind == T_ASK_START and O[ref, O_START] == when:
                flags[ref, 1] = True
    elif kind == T_LEASE_END or kind == T_LEASE_START:
        if ref < 0 or ref >= S[S_LHIGH]:
            return _fail(err, E_T_REF, kind, ref, 0)
        if Lz[ref, L_LIVE] == 1 and Lz[ref, L_TID] == key:
            if kind == T_LEASE_END and Lz[ref, L_END] == when:
                flags[ref, 2] = True
            if kind == T_LEASE_START and Lz[ref, L_START] == when:
                flags[ref, 3] = True
    else:
        return _fail(err, E_T_REF, kind, ref, 0)
    return E_OK


@njit(cache=True)
def _check_timers(st, err, buckets):
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    TM = st.TM
    TF = st.TF
    now = S[S_NOW]
    oh = S[S_OHIGH]
    lh = S[S_LHIGH]
    flags = np.zeros((max(oh, lh, 1), 4), dtype=np.bool_)
    limit = TF[TFH, TF_LIMIT]
    if limit <= now:
        return _fail(err, E_TF_LIMIT, limit, now, 0)
    n = S[S_TMN]
    if n < 0 or n > TM.shape[0]:
        return _fail(err, E_TM_SIZE, n, TM.shape[0], 0)
    for i in range(n):
        if i > 0:
            p = (i - 1) >> 2
            if TM[i, 0] < TM[p, 0] or (TM[i, 0] == TM[p, 0] and (
                    TM[i, 1] < TM[p, 1] or (TM[i, 1] == TM[p, 1] and TM[i, 2] < TM[p, 2]))):
                return _fail(err, E_TM_HEAP, i, p, 0)
        if limit <= TM[i, 0] < TIME_CAP:
            return _fail(err, E_TM_LIMIT, TM[i, 0], limit, 0)
        code = _timer_seen(st, err, TM[i, 0], TM[i, 1], TM[i, 2], TM[i, 3], flags)
        if code:
            return code
    high = TF[TFH + 1, TF_HIGH]
    if high < TF_BASE or high > TF.shape[0]:
        return _fail(err, E_TFHIGH, high, TF.shape[0], 0)
    seen = np.zeros(max(high - TF_BASE, 1), dtype=np.bool_)
    base = limit // HOUR
    total = 0
    last = -1
    for b in buckets:
        if b == last:
            continue
        last = b
        cnt = 0
        for j in range(1, 5):
            r = TF[b, j]
            while r > 0:
                x = r - 1
                if x < TF_BASE or x >= high or TF[x, 1] < 0:
                    return _fail(err, E_TF_ROW, b, x, 0)
                if seen[x - TF_BASE] or cnt > high:
                    return _fail(err, E_TF_TWICE, x, 0, 0)
                seen[x - TF_BASE] = True
                cnt += 1
                hb = TF[x, 0] // HOUR
                if TF[x, 0] < limit or hb - base >= NBK or hb & (NBK - 1) != b:
                    return _fail(err, E_TF_BUCKET, b, x, 0)
                code = _timer_seen(st, err, TF[x, 0], TF[x, 1], TF[x, 2], TF[x, 3], flags)
                if code:
                    return code
                r = TF[x, TF_NEXT]
        if cnt != TF[b, 0]:
            return _fail(err, E_TF_COUNT, b, cnt, TF[b, 0])
        total += cnt
    if total != TF[TFH, TF_NBUCKET]:
        return _fail(err, E_TF_NBUCKET, total, TF[TFH, TF_NBUCKET], 0)
    cnt = 0
    r = TF[TFH, TF_OVER]
    while r > 0:
        x = r - 1
        if x < TF_BASE or x >= high or TF[x, 1] < 0:
            return _fail(err, E_TF_ROW, -1, x, 0)
        if seen[x - TF_BASE]:
            return _fail(err, E_TF_TWICE, x, 0, 0)
        seen[x - TF_BASE] = True
        cnt += 1
        if TF[x, 0] < TF[TFH + 1, TF_OMIN] or TF[x, 0] < limit:
            return _fail(err, E_TF_OVER, x, TF[x, 0], 0)
        code = _timer_seen(st, err, TF[x, 0], TF[x, 1], TF[x, 2], TF[x, 3], flags)
        if code:
            return code
        r = TF[x, TF_NEXT]
    if cnt != TF[TFH, TF_NOVER]:
        return _fail(err, E_TF_NOVER, cnt, TF[TFH, TF_NOVER], 0)
    free = 0
    r = TF[TFH, TF_FREE]
    while r > 0:
        x = r - 1
        if x < TF_BASE or x >= high or TF[x, 1] != -1 or seen[x - TF_BASE]:
            return _fail(err, E_TF_FREE, free, total + cnt, high)
        seen[x - TF_BASE] = True
        free += 1
        r = TF[x, TF_NEXT]
    if free + total + cnt != high - TF_BASE:
        return _fail(err, E_TF_FREE, free, total + cnt, high)
    # every live row has the timers it needs
    for o in range(oh):
        if O[o, O_LIVE] != LIVE_RESTING:
            continue
        if O[o, O_EXP] > 0 and not flags[o, 0]:
            return _fail(err, E_T_EXP, o, O[o, O_EXP], 0)
        if O[o, O_SIDE] == SIDE_ASK and O[o, O_START] > now and not flags[o, 1]:
            return _fail(err, E_T_ASKSTART, o, O[o, O_START], 0)
    for lz in range(lh):
        if Lz[lz, L_LIVE] != 1:
            continue
        if not flags[lz, 2]:
            return _fail(err, E_T_LEASE_END, lz, Lz[lz, L_END], 0)
        if Lz[lz, L_NOW] == 0 and not flags[lz, 3]:
            return _fail(err, E_T_LEASE_START, lz, Lz[lz, L_START], 0)
    # re-offers run to the end within each command
    if S[S_RON] != 0:
        return _fail(err, E_RON, S[S_RON], 0, 0)
    for o in range(oh):
        if O[o, O_LIVE] == LIVE_RESTING and O[o, O_PEND] != 0:
            return _fail(err, E_PEND, o, 0, 0)
    return E_OK


@njit(cache=True)
def _check(st, err, lads, lvls, hk_keys, lk_keys, tags, buckets):
    code = _check_rows(st, err)
    if code == E_OK:
        code = _check_ladders(st, err, lads, lvls)
    if code == E_OK:
        code = _check_maps(st, err, hk_keys, lk_keys)
    if code == E_OK:
        code = _check_leases(st, err, tags)
    if code == E_OK:
        code = _check_timers(st, err, buckets)
    return code


@njit(cache=True)
def _first_diff(x, y):
    """The lowest bit set in x ^ y (x != y)."""
    d = x ^ y
    b = 0
    while (d >> np.uint64(b)) & np.uint64(1) == np.uint64(0):
        b += 1
    return b


@njit(cache=True)
def _check_levels_jit(st, err, levels):
    """`_check_levels` as loops, for the jitted run (a few microseconds on a small ladder, and
    one pass over the heads and tails on a large one); the same checks, the same codes."""
    LH = st.LH
    LT = st.LT
    BM = st.BM
    BS = st.BS
    nw = BM.shape[1]
    for lad in range(NLAD):
        for w in range(nw):
            word = np.uint64(0)
            for b in range(64):
                lvl = 64 * w + b
                if lvl >= levels:
                    break
                if (LH[lad, lvl] >= 0) != (LT[lad, lvl] >= 0):
                    return _fail(err, E_LT_EMPTY, lad, lvl, LT[lad, lvl])
                if LH[lad, lvl] >= 0:
                    word |= np.uint64(1) << np.uint64(b)
            if BM[lad, w] != word:
                lvl = 64 * w + _first_diff(BM[lad, w], word)
                return _fail(err, E_BM_LADDER, lad, lvl, 1 if _bit(BM, lad, lvl) else 0)
    for r in range(NOWROW, NBM):
        lad = _INDEX_OF[r - NOWROW]
        for w in range(nw):
            extra = BM[r, w] & ~BM[lad, w]
            if extra != np.uint64(0):
                lvl = 64 * w + _first_diff(extra, np.uint64(0))
                if r - NOWROW < 2:
                    return _fail(err, E_NOW_EMPTY, lad, lvl, 0)
                return _fail(err, E_HOUR_EMPTY, lad, lvl, r)
    last = levels - 64 * (nw - 1)
    for r in range(NBM):
        if last < 64 and BM[r, nw - 1] >> np.uint64(last) != np.uint64(0):
            return _fail(err, E_BM_BEYOND, r, nw - 1, 0)
        for w in range(BS.shape[1] * 64):
            if _bit(BS, r, w) != (w < nw and BM[r, w] != np.uint64(0)):
                if w >= nw:
                    return _fail(err, E_BS_BEYOND, r, w >> 6, 0)
                return _fail(err, E_BS, r, w, 1 if _bit(BS, r, w) else 0)
    return E_OK


@njit(cache=True)
def _nonempty_levels(BM):
    """The ladders and levels marked in BM's ladder rows."""
    nw = BM.shape[1]
    n = 0
    for lad in range(NLAD):
        for w in range(nw):
            word = BM[lad, w]
            while word != np.uint64(0):
                n += 1
                word &= word - np.uint64(1)
    lads = np.empty(n, dtype=np.int64)
    lvls = np.empty(n, dtype=np.int64)
    k = 0
    for lad in range(NLAD):
        for w in range(nw):
            word = BM[lad, w]
            while word != np.uint64(0):
                b = _first_diff(word, np.uint64(0))
                lads[k] = lad
                lvls[k] = 64 * w + b
                k += 1
                word &= word - np.uint64(1)
    return lads, lvls


@njit(cache=True)
def _check_jit(st, err, levels):
    """Everything, jitted: the level checks, the table scans, then `_check`."""
    code = _check_levels_jit(st, err, levels)
    if code != E_OK:
        return code
    lads, lvls = _nonempty_levels(st.BM)
    hk = 0
    for i in range(st.HK.shape[0]):
        if st.HK[i] != 0:
            hk += 1
    lk = 0
    for i in range(st.LK.shape[0]):
        if st.LK[i] != 0:
            lk += 1
    n = 0
    for h in range(UC_TAGS):
        if st.UC[h] != 0:
            n += 1
    tags = np.empty(n, dtype=np.int64)
    n = 0
    for h in range(UC_TAGS):
        if st.UC[h] != 0:
            tags[n] = h
            n += 1
    n = 0
    for b in range(NBK):
        for j in range(st.TF.shape[1]):
            if st.TF[b, j] != 0:
                n += 1
                break
    buckets = np.empty(n, dtype=np.int64)
    n = 0
    for b in range(NBK):
        for j in range(st.TF.shape[1]):
            if st.TF[b, j] != 0:
                buckets[n] = b
                n += 1
                break
    return _check(st, err, lads, lvls, hk, lk, tags, buckets)


def check(st, levels: int, vectorised: bool | None = None) -> None:
    """Raise `BookInvariantError` naming the first invariant the state `st` breaks.

    Jitted, the whole check runs as loops (`_check_jit`).  Under NUMBA_DISABLE_JIT (or with
    vectorised=True) what reads every level and whole tables is numpy's (`_check_levels`,
    `np.count_nonzero`): loops over 100,000 levels would take a second in plain Python."""
    err = np.zeros(4, dtype=np.int64)
    if vectorised is None:
        vectorised = bool(numba.config.DISABLE_JIT)
    if not vectorised:
        code = int(_check_jit(st, err, levels))
    else:
        code, lads, lvls = _check_levels(st, err, levels)
        if code == E_OK:
            tags = np.flatnonzero(st.UC[:UC_TAGS]).astype(np.int64)
            buckets = np.flatnonzero(st.TF[:NBK]) // st.TF.shape[1]  # sorted; a bucket may repeat
            code = int(_check(st, err, lads, lvls, np.count_nonzero(st.HK), np.count_nonzero(st.LK), tags,
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
