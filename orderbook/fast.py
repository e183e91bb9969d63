"""The numba book: the same market rules as `reference.py`, over preallocated arrays.

Layout (structure of rows, plain `@njit(cache=True)` functions, no jitclass / typed Dict):

* ``O[slot, O_*]`` — orders (bids and asks).  Free slots form a list through ``O_FREE``; rows
  past ``S_OHIGH`` were never used (leases likewise, ``S_LHIGH``).
* ``L[slot, L_*]`` — running leases.  Each ask keeps a doubly linked list of its leases.
* Ladders: for each of the five ladders (firm asks, spot asks; on-demand, spot and reserved
  bids) a FIFO list per price level (``LH``/``LT`` heads and tails) and a two-level bitmap of
  the levels that hold orders, so the next level with orders is found in a few word operations.
  More bitmap rows index levels by what makes their orders incompatible: ask levels that may
  be open right now (``NOWROW``), bid levels whose shortest bid is at most 2**k hours
  (``HOURROW``); walks step through those rows instead.
* Per-level skip index ``AG[ladder, level, *]``: for asks the latest window end, the earliest
  window start and the smallest min_hours of the level's asks (bounds, kept conservative), so a
  walk skips whole levels of asks that cannot hold a bid's window without visiting them.
* ``HK``/``HV`` — open-addressing hash maps (order id -> slot, trade id -> lease slot).
* ``UC`` — each ask's usage over time (firm, all), cached and kept up to date on fills: what
  capacity questions the per-ask bounds cannot answer read instead of the lease list.
* ``TM`` — a 4-ary heap of the timers due within the hour (expiries, lease ends, starts of
  leases sold ahead and of ask windows); ``TF`` — the later ones, in hour buckets; ``RO`` — a
  heap of asks waiting for a re-offer (R13), in ask priority.
* ``S`` — scalars (engine time, sequence numbers, counters).
* ``PT`` — the address and shape of every array above, written by ``process_batch`` once per
  batch: the hot functions take its address (one word) instead of the arrays (7–11 words each
  on the stack) and rebuild the arrays they use as views (``_st``).

Commands are read straight from the caller's COMMAND_DTYPE records and events written straight
into an EVENT_DTYPE buffer (no conversion on either side).  A batch stops early when a pool
runs low; the Python wrapper grows the pools and resumes, so a command is never cut in half
(R15).
"""

from __future__ import annotations

import io
from collections import namedtuple

import numba
import numpy as np
from numba import njit
from numba.core import types as nbt
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from orderbook import jitcache
from orderbook import reasons as R
from orderbook.config import (
    P_GATE_S,
    P_MAX_GPUS,
    P_MAX_HOURS,
    P_MAX_PRICE,
    P_MAX_WINDOW_HOURS,
    P_MIN_PRICE,
    P_NOTICE_S,
    P_TICK,
    BookConfig,
)
from orderbook.invariants import BookInvariantError
from orderbook.quote import Quote, QuoteFill, QuoteRequest, check_request
from orderbook.statehash import hash_words
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
    END_FOK,
    END_GATE,
    END_GTD,
    END_IOC,
    END_USER,
    END_WINDOW,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_RELEASED,
    EV_TRADE,
    EVENT_DTYPE,
    FOK,
    GTC,
    GTD,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SIDE_BID,
    SPOT,
)

jitcache.use(__name__)  # numba's cache for the functions below: keyed by the sources they are compiled from

# --- order columns ---------------------------------------------------------------
# grouped by 64-byte line (rows are 256 bytes): what a walk reads of an ask comes first (two
# lines), then what it reads of a bid, then what only arrival, removal and timers touch
(O_NEXT, O_OID, O_ACC, O_PRICE, O_START, O_END, O_GPUS, O_MINH,
 O_SNEXT, O_SPOT, O_FSUM, O_SSUM, O_UNF, O_UNS, O_NEXTSTART, O_LMAXEND,
 O_HOURS, O_BLOCK, O_REM, O_KIND, O_LHEAD, O_SIDE, O_TIF, O_LIVE,
 O_PREV, O_SPREV, O_EXP, O_WHY, O_LEASE, O_POST, O_PEND, O_FREE) = range(32)
NO = 32
# O_FSUM / O_SSUM: GPUs of all running firm / spot leases on an ask (an upper bound of its usage);
# O_UNF / O_UNS: GPUs of the leases that hold the ask at the current time (a lower bound);
# O_LMAXEND: no lease on the ask ends after this (an upper bound); O_NEXTSTART: no lease that
# has not started yet starts before this (a lower bound; BIG when there is none)
LIVE_FREE, LIVE_RESTING, LIVE_INCOMING = 0, 1, 2

# --- lease columns ---------------------------------------------------------------------
# what a capacity scan reads comes first: one 64-byte line per lease (rows are 192 bytes)
(L_NEXT, L_START, L_END, L_GPUS, L_KIND, L_NOW, L_TID, L_ASK, L_BID, L_BUYER, L_PROV, L_PRICE,
 L_RESOLD, L_ASLOT, L_PREV, L_LIVE, L_FREE) = range(17)
NL = 24  # L_NOW: 1 if the lease is counted in its ask's O_UNF / O_UNS; 7 columns of padding

# --- scalars -------------------------------------------------------------------------------
(S_NOW, S_SEQ, S_LASTOID, S_NEXTTID, S_OFREE, S_LFREE, S_NEV, S_TMN, S_RON, S_ERR, S_NORD,
 S_NLEASE, S_VISIT_ASK, S_VISIT_BID, S_VISIT_LEVEL, S_SCAN, S_BIDTOP, S_OHIGH, S_LHIGH) = range(19)
NS = 19  # S_VISIT_* / S_SCAN: work counters (orders and levels walked, lease lists scanned);
# S_BIDTOP: no bid rests above this level (an upper bound, where a walk of the bids starts; restore
# recomputes it); S_OHIGH / S_LHIGH: order / lease rows from here on were never used.  A row is
# taken from the free list, else from there: the pools are allocated large but cost memory (and
# the first touch of each page, a tenth of a 1M-command run) only for the rows the book ever held.

# Snapshots record their layout: the order columns, the scalars, the bitmap rows and the bound
# columns above.  Restore takes only this one; a snapshot of another is refused (ValueError),
# and the exchange's recovery then replays the journal instead.  (Layout 2 had a 20th, unused
# scalar between S_BIDTOP and S_OHIGH.)
LAYOUT = 3

# ladders
LAD_ASK_FIRM, LAD_ASK_SPOT, LAD_BID_OD, LAD_BID_SPOT, LAD_BID_RES = 0, 1, 2, 3, 4
NLAD = 5
# bitmap rows NLAD + LAD_ASK_*: ask levels that may hold an ask open right now (started, a GPU
# free now); a walk whose window starts now steps through these instead of every ask level
NOWROW = NLAD
# bitmap rows HOURROW + NHB * (0 on-demand, 1 spot) + k: bid levels that may hold a bid of at
# most 2**k hours (k < NHB); an ask with little time left steps only through those
HOURROW = NLAD + 2
NHB = 7
NBM = HOURROW + 2 * NHB


@njit(cache=True, _nrt=False)
def _hour_row(lad, hours):
    """The bitmap row of bid ladder lad whose levels cover every bid of at most `hours`."""
    k = 0
    while k < NHB and (1 << k) < hours:
        k += 1
    if k == NHB or lad == LAD_BID_RES:
        return lad
    return HOURROW + (NHB if lad == LAD_BID_SPOT else 0) + k


@njit(cache=True, _nrt=False)
def _hour_rows_set(BM, BS, lad, lvl, minh):
    """Mark level lvl in the hour rows of bid ladder lad whose bound minh reaches (minh=BIG: none)."""
    if lad == LAD_BID_RES:
        return
    base = HOURROW + (NHB if lad == LAD_BID_SPOT else 0)
    for k in range(NHB):
        if minh <= (1 << k):
            _bm_set(BM, BS, base + k, lvl)
        else:
            _bm_clear(BM, BS, base + k, lvl)


@njit(cache=True, _nrt=False)
def _bid_ladder(kind):
    return LAD_BID_SPOT if kind == SPOT else (LAD_BID_RES if kind == RESERVED else LAD_BID_OD)
# skip index columns (asks): max end, min start, min min_hours
AG_END, AG_START, AG_MINH, AG_FREE = 0, 1, 2, 3  # ask ladders
BG_MINH, BG_MAXH, BG_MINBLK, BG_MAXSTART, BG_MINEND, BG_STALE = 0, 1, 2, 3, 4, 5  # bid ladders
NAG = 6  # AG_FREE: no ask of the level has more GPUs free right now (an upper bound)
# BG_STALE: 1 when a bid left the level since its bounds were made exact; a walk that reaches
# the level makes them exact first (bounds stay safe meanwhile: they only got wider)

# timer kinds, in the order they run at equal times
T_EXPIRE, T_LEASE_END, T_ASK_START, T_LEASE_START = 0, 1, 2, 3

# batch status
ST_DONE, ST_NEED_SPACE, ST_ERROR = 0, 1, 2
_NO_FIRSTS = np.zeros(0, dtype=np.int64)  # `process` without firsts

# what one command may consume at most (checked before it starts)
LEASE_RESERVE = 65_536
EVENT_RESERVE = 65_536

# Hot-path functions run without numba's reference counting (NRT): they never allocate, and
# counting references to the state's arrays on every call cost more than the matching itself.
_hot = njit(cache=True, _nrt=False)
# Functions that take the whole state and have one or two callers are inlined by numba itself:
# numba passes each array as 7-11 scalars, so a call with the state pushed ~150 words on the stack
# (a sixth of the samples in jitted code were those pushes); LLVM left most of these out of line.
_inl = njit(cache=True, _nrt=False, inline="always")

BIG = np.int64(2**62)
INT64_MAX = 2**63 - 1
U1 = np.uint64(1)
U0 = np.uint64(0)
ALL1 = np.uint64(0xFFFFFFFFFFFFFFFF)

# bit scans: one instruction each (tzcnt / lzcnt) when jitted; w is never 0
if numba.config.DISABLE_JIT:
    def _ctz(w: np.uint64) -> int:
        w = int(w)
        return (w & -w).bit_length() - 1

    def _msb(w: np.uint64) -> int:
        return int(w).bit_length() - 1
else:
    @_hot
    def _ctz(w: np.uint64) -> int:
        return np.int64(trailing_zeros(w))

    @_hot
    def _msb(w: np.uint64) -> int:
        return 63 - np.int64(leading_zeros(w))


@_hot
def _bm_set(BM, BS, lad, lvl):
    w = lvl >> 6
    BM[lad, w] |= U1 << np.uint64(lvl & 63)
    BS[lad, w >> 6] |= U1 << np.uint64(w & 63)


@_hot
def _bm_clear(BM, BS, lad, lvl):
    w = lvl >> 6
    BM[lad, w] &= ~(U1 << np.uint64(lvl & 63))
    if BM[lad, w] == U0:
        BS[lad, w >> 6] &= ~(U1 << np.uint64(w & 63))


@_hot
def _bm_next_up(BM, BS, lad, lvl):
    """Lowest level >= lvl that holds orders, or -1."""
    nw = BM.shape[1]
    w = lvl >> 6
    if w >= nw:
        return -1
    m = BM[lad, w] & (ALL1 << np.uint64(lvl & 63))
    if m != U0:
        return (w << 6) + _ctz(m)
    w += 1
    if w >= nw:
        return -1
    s = w >> 6
    ms = BS[lad, s] & (ALL1 << np.uint64(w & 63))
    ns = BS.shape[1]
    while ms == U0:
        s += 1
        if s >= ns:
            return -1
        ms = BS[lad, s]
    w = (s << 6) + _ctz(ms)
    return (w << 6) + _ctz(BM[lad, w])


@_hot
def _bm_next_down(BM, BS, lad, lvl):
    """Highest level <= lvl that holds orders, or -1."""
    if lvl < 0:
        return -1
    nw = BM.shape[1]
    w = lvl >> 6
    if w >= nw:
        w = nw - 1
        lvl = (w << 6) + 63
    b = lvl & 63
    mask = ALL1 if b == 63 else (U1 << np.uint64(b + 1)) - U1
    m = BM[lad, w] & mask
    if m != U0:
        return (w << 6) + _msb(m)
    w -= 1
    if w < 0:
        return -1
    s = w >> 6
    b = w & 63
    mask = ALL1 if b == 63 else (U1 << np.uint64(b + 1)) - U1
    ms = BS[lad, s] & mask
    while ms == U0:
        s -= 1
        if s < 0:
            return -1
        ms = BS[lad, s]
    w = (s << 6) + _msb(ms)
    return (w << 6) + _msb(BM[lad, w])


# ======================================================================= hash maps
@_hot
def _h(key, mask):
    """Home slot of an id.  Ids are handed out in order, so nearby ids share cache lines (a
    multiplicative hash sent every new order and lease to a cold line of a 2 MB table)."""
    return (key ^ (key >> 20)) & mask


@_hot
def _map_get(HK, HV, key):
    if key <= 0:  # 0 marks an empty slot; ids are positive
        return -1
    mask = HK.shape[0] - 1
    i = _h(key, mask)
    while True:
        k = HK[i]
        if k == key:
            return HV[i]
        if k == 0:
            return -1
        i = (i + 1) & mask


@_hot
def _map_put(HK, HV, key, val):
    mask = HK.shape[0] - 1
    i = _h(key, mask)
    while HK[i] != 0 and HK[i] != key:
        i = (i + 1) & mask
    HK[i] = key
    HV[i] = val


@_hot
def _map_del(HK, HV, key):
    """Delete with backward shift (linear probing keeps no tombstones)."""
    mask = HK.shape[0] - 1
    i = _h(key, mask)
    while HK[i] != key:
        if HK[i] == 0:
            return
        i = (i + 1) & mask
    j = i
    while True:
        HK[i] = 0
        while True:
            j = (j + 1) & mask
            if HK[j] == 0:
                return
            k = _h(HK[j], mask)
            # move HK[j] to i unless its home k lies cyclically in (i, j]
            if i <= j:
                if i < k <= j:
                    continue
            elif i < k or k <= j:
                continue
            break
        HK[i] = HK[j]
        HV[i] = HV[j]
        i = j


# ======================================================================= heaps
# rows: (k0, k1, k2, ref); ordered by (k0, k1, k2).  4-ary heaps (children of row i: 4i+1 .. 4i+4): half
# the depth of a binary heap and the children of a row side by side (the timer heap is small,
# ~3,000 rows on the benchmark, but evicted between commands).  Keys are unique (the row names one order
# or lease), so the order of pops does not depend on the heap's shape; snapshots hold the timers
# as sorted rows, which are a valid heap of any arity.
@_hot
def _hless(H, a, b):
    """Row a orders before row b.  Bitwise, not short-circuit: compiles to flag arithmetic and
    conditional moves, where branches on the keys mispredicted about every other comparison."""
    x0 = H[a, 0]
    y0 = H[b, 0]
    x1 = H[a, 1]
    y1 = H[b, 1]
    return (x0 < y0) | ((x0 == y0) & ((x1 < y1) | ((x1 == y1) & (H[a, 2] < H[b, 2]))))


@_hot
def _hrow_less(H, a, k0, k1, k2):
    """Row a of heap H orders before the key (k0, k1, k2)."""
    x0 = H[a, 0]
    x1 = H[a, 1]
    return (x0 < k0) | ((x0 == k0) & ((x1 < k1) | ((x1 == k1) & (H[a, 2] < k2))))


@_hot
def _hmin(H, a, b):
    return b if _hless(H, b, a) else a


@_hot
def _hmove(H, dst, src):
    H[dst, 0] = H[src, 0]
    H[dst, 1] = H[src, 1]
    H[dst, 2] = H[src, 2]
    H[dst, 3] = H[src, 3]


@_hot
def _hpush(H, S, si, k0, k1, k2, ref):
    """Sift up with a hole: parents move down, the new row is written once."""
    n = S[si]
    S[si] = n + 1
    while n > 0:
        p = (n - 1) >> 2
        if _hrow_less(H, p, k0, k1, k2):
            break
        _hmove(H, n, p)
        n = p
    H[n, 0] = k0
    H[n, 1] = k1
    H[n, 2] = k2
    H[n, 3] = ref


@_hot
def _hpop(H, S, si):
    """Drop the top row: the last row sifts down from the top with a hole."""
    n = S[si] - 1
    S[si] = n
    if n <= 0:
        return
    k0 = H[n, 0]
    k1 = H[n, 1]
    k2 = H[n, 2]
    ref = H[n, 3]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        if c + 4 <= n:  # the least of four children (one or two cache lines), as a tournament
            c = _hmin(H, _hmin(H, c, c + 1), _hmin(H, c + 2, c + 3))
        else:
            for d in range(c + 1, n):
                c = _hmin(H, c, d)
        if not _hrow_less(H, c, k0, k1, k2):
            break
        _hmove(H, i, c)
        i = c
    H[i, 0] = k0
    H[i, 1] = k1
    H[i, 2] = k2
    H[i, 3] = ref


# ======================================================================= timers
# The timer heap TM holds only the timers due before the "near limit" (an hour boundary, just
# after the engine time); later ones wait in TF, in a ring of hour buckets (linked lists of TF
# rows) or, beyond the ring, in an overflow list.  When the engine time reaches the near limit
# the next hour's bucket moves into the heap.  The heap stays small (the timers of about an
# hour, ~100 rows on the benchmark, instead of ~3,000) and so in cache: popping it was the
# book's largest cost.  Order is unchanged: every timer in the heap is due before every timer
# in TF.  TF rows: (k0 time, k1 kind, k2 key, ref, next) as in TM plus a link; header rows first:
# TF[b, 1..4] head bucket b's four lists (row + 1, 0 = empty; a bucket's timers go to them in
# turn, and `_tf_step` walks the four side by side) and TF[b, 0] counts its timers, for b < NBK;
# rows TFH and TFH + 1 hold the scalars.  Rows are taken from a free list, else from the
# never-used rows (TF_HIGH), so a large TF costs memory only for the rows it ever held.
NBK = 1024  # hours in the ring (~43 days)
TF_NEXT = 4
TFH = NBK  # header row of scalars:
TF_LIMIT, TF_FREE, TF_NBUCKET, TF_NOVER, TF_OVER = 0, 1, 2, 3, 4  # (free and overflow heads: row + 1)
TF_HIGH, TF_OMIN = 0, 1  # in row TFH + 1: the first row never used; no overflow timer is due before this
TF_BASE = NBK + 2  # first timer row


TIME_CAP = (1 << 60) // HOUR * HOUR  # timers at or after this always go into the heap


@_hot
def _hour_after(t):
    """The first hour boundary after t, at most TIME_CAP."""
    return TIME_CAP if t >= TIME_CAP - HOUR else (t // HOUR + 1) * HOUR


@_hot
def _tf_link(TF, r, k0):
    """Put TF row r (time k0, at or after the near limit) in its bucket, or the overflow list."""
    base = TF[TFH, TF_LIMIT] // HOUR
    hb = k0 // HOUR
    if hb - base < NBK:
        b = hb & (NBK - 1)
        h = 1 + (TF[b, 0] & 3)  # the bucket's four lists take its timers in turn (heads in columns 1-4)
        TF[r, TF_NEXT] = TF[b, h]
        TF[b, h] = r + 1
        TF[b, 0] += 1
        TF[TFH, TF_NBUCKET] += 1
    else:
        TF[r, TF_NEXT] = TF[TFH, TF_OVER]
        TF[TFH, TF_OVER] = r + 1
        TF[TFH, TF_NOVER] += 1
        if k0 < TF[TFH + 1, TF_OMIN]:
            TF[TFH + 1, TF_OMIN] = k0


@_hot
def _tpush(TM, TF, S, k0, k1, k2, ref):
    """Set a timer: into the heap if due before the near limit, else into its hour bucket."""
    if k0 < TF[TFH, TF_LIMIT] or k0 >= TIME_CAP:
        _hpush(TM, S, S_TMN, k0, k1, k2, ref)
        return
    r = TF[TFH, TF_FREE] - 1
    if r >= 0:
        TF[TFH, TF_FREE] = TF[r, TF_NEXT]
    else:
        r = TF[TFH + 1, TF_HIGH]
        TF[TFH + 1, TF_HIGH] = r + 1
    TF[r, 0] = k0
    TF[r, 1] = k1
    TF[r, 2] = k2
    TF[r, 3] = ref
    _tf_link(TF, r, k0)


@_hot
def _tf_respread(TF):
    """Move the overflow timers that now fall inside the ring into their buckets."""
    r = TF[TFH, TF_OVER]
    TF[TFH, TF_OVER] = 0
    TF[TFH, TF_NOVER] = 0
    TF[TFH + 1, TF_OMIN] = BIG
    while r > 0:
        nxt = TF[r - 1, TF_NEXT]
        _tf_link(TF, r - 1, TF[r - 1, 0])
        r = nxt


@_inl
def _tf_move(TM, TF, S, r):
    """Move TF row r - 1 into the heap and free it; returns the next row of its list (+ 1)."""
    x = r - 1
    nxt = TF[x, TF_NEXT]
    _hpush(TM, S, S_TMN, TF[x, 0], TF[x, 1], TF[x, 2], TF[x, 3])
    TF[x, 1] = -1  # free (snapshots take the rows of kind >= 0)
    TF[x, TF_NEXT] = TF[TFH, TF_FREE]
    TF[TFH, TF_FREE] = r
    TF[TFH, TF_NBUCKET] -= 1
    return nxt


@_hot
def _tf_step(TM, TF, S, t):
    """TF holds timers and the near limit is at or before t: move the timers of the hour at the
    limit into the heap and raise the limit by an hour; with none in any bucket, raise it to
    just after t or to the hour of the first overflow timer, whichever comes first.  Returns
    False, having done nothing, if the heap lacks room for the bucket."""
    lim = TF[TFH, TF_LIMIT]
    if TF[TFH, TF_NBUCKET] == 0:
        new = _hour_after(t)
        first = TF[TFH + 1, TF_OMIN] // HOUR  # the hour of the first overflow timer
        if first * HOUR < new:
            new = first * HOUR
        if new > lim:
            TF[TFH, TF_LIMIT] = new
        if first - TF[TFH, TF_LIMIT] // HOUR < NBK:  # some overflow timers now fall in the ring
            _tf_respread(TF)
        return True
    b = (lim // HOUR) & (NBK - 1)
    if S[S_TMN] + TF[b, 0] + 2 * LEASE_RESERVE + 4 > TM.shape[0]:
        return False
    # the four lists walked side by side: a walk of one linked list waits for a cache miss per
    # row, four walks overlap theirs (pushes in any order give the same pops: keys are unique)
    r1 = TF[b, 1]
    r2 = TF[b, 2]
    r3 = TF[b, 3]
    r4 = TF[b, 4]
    TF[b, 0] = 0
    TF[b, 1] = 0
    TF[b, 2] = 0
    TF[b, 3] = 0
    TF[b, 4] = 0
    while (r1 | r2 | r3 | r4) > 0:
        if r1 > 0:
            r1 = _tf_move(TM, TF, S, r1)
        if r2 > 0:
            r2 = _tf_move(TM, TF, S, r2)
        if r3 > 0:
            r3 = _tf_move(TM, TF, S, r3)
        if r4 > 0:
            r4 = _tf_move(TM, TF, S, r4)
    lim += HOUR
    TF[TFH, TF_LIMIT] = lim
    if TF[TFH, TF_NOVER] > 0 and (lim // HOUR) % (NBK // 2) == 0:
        _tf_respread(TF)
    return True


@_hot
def _tf_count(TF):
    return TF[TFH, TF_NBUCKET] + TF[TFH, TF_NOVER]


@_hot
def _tm_due(TM, TF, S, t):
    """A timer is due at or before t (in the heap, or in TF once the near limit is reached)."""
    return (S[S_TMN] > 0 and TM[0, 0] <= t) or TF[TFH, TF_LIMIT] <= t


# ======================================================================= events
@_hot
def _ev(E, S, typ):
    k = S[S_NEV]
    if k >= E.shape[0]:
        S[S_ERR] = 1
        return E.shape[0] - 1  # overwrite the last row; the batch is failed anyway
    S[S_NEV] = k + 1
    S[S_SEQ] += 1
    e = E[k]
    e["seq"] = S[S_SEQ]
    e["time"] = S[S_NOW]
    e["type"] = typ
    e["oid"] = 0
    e["oid2"] = 0
    e["trade_id"] = 0
    e["account"] = 0
    e["account2"] = 0
    e["price"] = 0
    e["price2"] = 0
    e["start"] = 0
    e["end"] = 0
    e["expire_at"] = 0
    e["lease_id"] = 0
    e["gpus"] = 0
    e["remaining"] = 0
    e["hours"] = 0
    e["block"] = 0
    e["min_hours"] = 0
    e["reason"] = 0
    e["kind"] = 0
    e["side"] = 0
    e["tif"] = 0
    e["maker"] = 0
    e["cmd"] = 0
    return k


@_hot
def _ev_order_end(E, S, O, o, typ, why):
    k = _ev(E, S, typ)
    E[k]["oid"] = O[o, O_OID]
    E[k]["account"] = O[o, O_ACC]
    E[k]["side"] = O[o, O_SIDE]
    E[k]["kind"] = O[o, O_KIND]
    E[k]["reason"] = why
    E[k]["remaining"] = O[o, O_REM]


@_hot
def _ev_lease(E, S, Lz, lz, typ, end):
    k = _ev(E, S, typ)
    E[k]["trade_id"] = Lz[lz, L_TID]
    E[k]["oid"] = Lz[lz, L_BID]
    E[k]["oid2"] = Lz[lz, L_ASK]
    E[k]["account"] = Lz[lz, L_BUYER]
    E[k]["account2"] = Lz[lz, L_PROV]
    E[k]["kind"] = Lz[lz, L_KIND]
    E[k]["gpus"] = Lz[lz, L_GPUS]
    E[k]["price"] = Lz[lz, L_PRICE]
    E[k]["start"] = Lz[lz, L_START]
    E[k]["end"] = end
    return k


@_hot
def _reject(E, S, C, i, code):
    k = _ev(E, S, EV_REJECTED)
    t = C[i]["type"]
    E[k]["oid"] = C[i]["oid"]
    E[k]["account"] = C[i]["account"]
    E[k]["reason"] = code
    E[k]["side"] = SIDE_ASK if t == CMD_ASK else (SIDE_BID if t == CMD_BID else 0)
    E[k]["cmd"] = t
    E[k]["lease_id"] = C[i]["lease_id"]


# ======================================================================= pools
@_hot
def _alloc_order(O, S):
    o = S[S_OFREE]
    if o >= 0:
        S[S_OFREE] = O[o, O_FREE]
    else:
        o = S[S_OHIGH]
        S[S_OHIGH] = o + 1
    for c in range(NO):
        O[o, c] = 0
    O[o, O_NEXT] = -1
    O[o, O_PREV] = -1
    O[o, O_SNEXT] = -1
    O[o, O_SPREV] = -1
    O[o, O_LHEAD] = -1
    S[S_NORD] += 1
    return o


@_hot
def _free_order(O, S, o):
    O[o, O_LIVE] = LIVE_FREE
    O[o, O_FREE] = S[S_OFREE]
    S[S_OFREE] = o
    S[S_NORD] -= 1


@_hot
def _alloc_lease(Lz, S):
    lz = S[S_LFREE]
    if lz >= 0:
        S[S_LFREE] = Lz[lz, L_FREE]
    elif S[S_LHIGH] < Lz.shape[0]:
        lz = S[S_LHIGH]
        S[S_LHIGH] = lz + 1
    else:
        S[S_ERR] = 2
        return 0
    for c in range(NL):
        Lz[lz, c] = 0
    Lz[lz, L_LIVE] = 1
    S[S_NLEASE] += 1
    return lz


@_hot
def _free_lease(Lz, S, lz):
    Lz[lz, L_LIVE] = 0
    Lz[lz, L_FREE] = S[S_LFREE]
    S[S_LFREE] = lz
    S[S_NLEASE] -= 1


# ======================================================================= ladders
@_hot
def _level(P, price):
    return (price - P[P_MIN_PRICE]) // P[P_TICK]


@_hot
def _lad_insert(O, LH, LT, BM, BS, lad, lvl, o, nxt, prv):
    tail = LT[lad, lvl]
    O[o, nxt] = -1
    O[o, prv] = tail
    if tail < 0:
        LH[lad, lvl] = o
        _bm_set(BM, BS, lad, lvl)
    else:
        O[tail, nxt] = o
    LT[lad, lvl] = o


@_hot
def _lad_remove(O, LH, LT, BM, BS, lad, lvl, o, nxt, prv):
    n = O[o, nxt]
    p = O[o, prv]
    if p < 0:
        LH[lad, lvl] = n
    else:
        O[p, nxt] = n
    if n < 0:
        LT[lad, lvl] = p
    else:
        O[n, prv] = p
    if LH[lad, lvl] < 0:
        _bm_clear(BM, BS, lad, lvl)


@_hot
def _now_open(O, BM, BS, P, o):
    """Ask o may have a GPU free now (it started, or a lease on it ended): mark its levels."""
    _bm_set(BM, BS, NOWROW + LAD_ASK_FIRM, _level(P, O[o, O_PRICE]))
    if O[o, O_SPOT] > 0:
        _bm_set(BM, BS, NOWROW + LAD_ASK_SPOT, _level(P, O[o, O_SPOT]))


@_hot
def _free_now(O, o, lad):
    """GPUs of ask o that no lease holds right now (spot ladder: neither firm nor spot)."""
    f = O[o, O_GPUS] - O[o, O_UNF]
    return f - O[o, O_UNS] if lad == LAD_ASK_SPOT else f


@_hot
def _ag_add(AG, lad, lvl, O, o):
    """Widen the level's bounds to cover ask o."""
    f = _free_now(O, o, lad)
    if f > AG[lad, lvl, AG_FREE]:
        AG[lad, lvl, AG_FREE] = f
    if O[o, O_END] > AG[lad, lvl, AG_END]:
        AG[lad, lvl, AG_END] = O[o, O_END]
    if O[o, O_START] < AG[lad, lvl, AG_START]:
        AG[lad, lvl, AG_START] = O[o, O_START]
    if O[o, O_MINH] < AG[lad, lvl, AG_MINH]:
        AG[lad, lvl, AG_MINH] = O[o, O_MINH]


@_hot
def _ag_recompute(AG, LH, O, lad, lvl, nxt):
    """Tighten the level's bounds to exactly its current asks."""
    AG[lad, lvl, AG_END] = -BIG
    AG[lad, lvl, AG_START] = BIG
    AG[lad, lvl, AG_MINH] = BIG
    AG[lad, lvl, AG_FREE] = -BIG
    a = LH[lad, lvl]
    while a >= 0:
        _ag_add(AG, lad, lvl, O, a)
        a = O[a, nxt]


@_hot
def _ag_drop(AG, LH, O, lad, lvl, nxt, o):
    """Ask o has left the level: tighten its bounds, rescanning only if o set one of them."""
    if LH[lad, lvl] < 0 or (
        O[o, O_END] >= AG[lad, lvl, AG_END] or O[o, O_START] <= AG[lad, lvl, AG_START]
        or O[o, O_MINH] <= AG[lad, lvl, AG_MINH] or _free_now(O, o, lad) >= AG[lad, lvl, AG_FREE]
    ):
        _ag_recompute(AG, LH, O, lad, lvl, nxt)


@_hot
def _bg_drop(AG, LH, BM, BS, O, lad, lvl, o):
    """Bid o has left the level: its bounds are made exact when a walk next reaches it (most
    bids that are cancelled rest on levels no ask reaches)."""
    if LH[lad, lvl] < 0:
        _bg_recompute(AG, LH, BM, BS, O, lad, lvl)
    else:
        AG[lad, lvl, BG_STALE] = 1


@_hot
def _bg_add(AG, lad, lvl, O, o):
    """Widen a bid level's bounds to cover bid o."""
    h = O[o, O_HOURS]
    if h < AG[lad, lvl, BG_MINH]:
        AG[lad, lvl, BG_MINH] = h
    if h > AG[lad, lvl, BG_MAXH]:
        AG[lad, lvl, BG_MAXH] = h
    if O[o, O_BLOCK] < AG[lad, lvl, BG_MINBLK]:
        AG[lad, lvl, BG_MINBLK] = O[o, O_BLOCK]
    if O[o, O_START] > AG[lad, lvl, BG_MAXSTART]:
        AG[lad, lvl, BG_MAXSTART] = O[o, O_START]
    if O[o, O_END] < AG[lad, lvl, BG_MINEND]:
        AG[lad, lvl, BG_MINEND] = O[o, O_END]


@_hot
def _bg_recompute(AG, LH, BM, BS, O, lad, lvl):
    AG[lad, lvl, BG_MINH] = BIG
    AG[lad, lvl, BG_MAXH] = -BIG
    AG[lad, lvl, BG_MINBLK] = BIG
    AG[lad, lvl, BG_MAXSTART] = -BIG
    AG[lad, lvl, BG_MINEND] = BIG
    AG[lad, lvl, BG_STALE] = 0
    b = LH[lad, lvl]
    while b >= 0:
        _bg_add(AG, lad, lvl, O, b)
        b = O[b, O_NEXT]
    _hour_rows_set(BM, BS, lad, lvl, AG[lad, lvl, BG_MINH])


@_hot
def _insert_order(pt, o):
    """Put an accepted order on its ladder(s) and set its timers."""
    st = _st(pt)
    O, LH, LT, BM, BS, AG, TM, TF, S, P = st.O, st.LH, st.LT, st.BM, st.BS, st.AG, st.TM, st.TF, st.S, st.P
    O[o, O_LIVE] = LIVE_RESTING
    if O[o, O_SIDE] == SIDE_ASK:
        lvl = _level(P, O[o, O_PRICE])
        _lad_insert(O, LH, LT, BM, BS, LAD_ASK_FIRM, lvl, o, O_NEXT, O_PREV)
        _ag_add(AG, LAD_ASK_FIRM, lvl, O, o)
        if O[o, O_SPOT] > 0:
            lvl = _level(P, O[o, O_SPOT])
            _lad_insert(O, LH, LT, BM, BS, LAD_ASK_SPOT, lvl, o, O_SNEXT, O_SPREV)
            _ag_add(AG, LAD_ASK_SPOT, lvl, O, o)
        if O[o, O_START] > S[S_NOW]:
            _tpush(TM, TF, S, O[o, O_START], T_ASK_START, O[o, O_OID], o)
        else:
            _now_open(O, BM, BS, P, o)
    else:
        lad = _bid_ladder(O[o, O_KIND])
        lvl = _level(P, O[o, O_PRICE])
        if lvl > S[S_BIDTOP]:
            S[S_BIDTOP] = lvl
        _lad_insert(O, LH, LT, BM, BS, lad, lvl, o, O_NEXT, O_PREV)
        if O[o, O_HOURS] < AG[lad, lvl, BG_MINH]:
            _hour_rows_set(BM, BS, lad, lvl, O[o, O_HOURS])
        _bg_add(AG, lad, lvl, O, o)
    if O[o, O_EXP] > 0:
        _tpush(TM, TF, S, O[o, O_EXP], T_EXPIRE, O[o, O_OID], o)


# ======================================================================= capacity (R5, R9)
@_hot
def _peak_usage(Lz, head, ws, we, with_spot, W):
    """max over t in [ws, we) of firm(a, t) (+ spot(a, t)) for the ask whose list is `head`."""
    if head < 0 or we <= ws:
        return 0
    return _free_for(Lz, head, ws, we, with_spot, BIG, 1, BIG, W)


@_hot
def _free_for(Lz, head, ws, we, with_spot, gpus, block, want, W):
    """With gpus=BIG: the peak usage over [ws, we).  Otherwise the free GPUs of an ask of `gpus`
    over [ws, we), exact when it matters: anything >= want may come back as want, anything
    below block as 0 (the caller rounds to blocks).

    One pass finds the usage at ws (a lower bound of the peak), the sum of the overlapping
    leases (an upper bound) and whether any lease starts inside the window; only then are
    the usages at those starts summed (the step function peaks at ws or at a lease start)."""
    at_ws = 0
    overlap = 0
    inner = 0
    n = 0
    starts = W[0]  # the overlapping leases, copied side by side for the second pass
    ends = W[1]
    held = W[2]
    lz = head
    while lz >= 0:
        st = Lz[lz, L_START]
        en = Lz[lz, L_END]
        if st < we and en > ws and (with_spot or Lz[lz, L_KIND] != SPOT):
            g = Lz[lz, L_GPUS]
            overlap += g
            if st <= ws:
                at_ws += g
            else:
                inner += 1
            starts[n] = st
            ends[n] = en
            held[n] = g
            n += 1
        lz = Lz[lz, L_NEXT]
    if gpus - overlap >= want:
        return want if gpus != BIG else overlap
    if inner == 0 or gpus - at_ws < block:
        return gpus - at_ws if gpus != BIG else at_ws
    peak = at_ws
    for i in range(n):
        p = starts[i]
        if p > ws:
            u = 0
            for j in range(n):
                if starts[j] <= p < ends[j]:
                    u += held[j]
            if u > peak:
                peak = u
                if gpus - peak < block:
                    break
    return gpus - peak if gpus != BIG else peak


@_hot
def _insertion_sort(a, lo, hi):
    for i in range(lo + 1, hi):
        x = a[i]
        j = i - 1
        while j >= lo and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@_hot
def _sort_prefix(a, n, tmp):
    """Sort a[:n] in place without allocating (tmp[:n] is scratch): insertion sort when short,
    otherwise runs of 16 by insertion merged bottom-up (a heapsort was 5 % of the book's time:
    its sift-downs mispredict and jump about; merges read and write in order)."""
    if n <= 32:
        _insertion_sort(a, 0, n)
        return
    w = 16
    for lo in range(0, n, w):
        _insertion_sort(a, lo, lo + w if lo + w < n else n)
    src = a
    dst = tmp
    in_tmp = False
    while w < n:
        for lo in range(0, n, 2 * w):
            mid = lo + w if lo + w < n else n
            hi = lo + 2 * w if lo + 2 * w < n else n
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                x = src[i]
                y = src[j]
                if y < x:
                    dst[k] = y
                    j += 1
                else:
                    dst[k] = x
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        t = src
        src = dst
        dst = t
        in_tmp = not in_tmp
        w *= 2
    if in_tmp:
        for k in range(n):
            a[k] = tmp[k]


# --- usage functions cached per ask -------------------------------------------------------
# UC[:UC_TAGS]: a direct-mapped table, one entry per ask slot modulo UC_TAGS: (offset << 32) | (slot + 1),
# 0 when empty; UC[UC_BUMP]: the next free word of the pool UC[UC_POOL:].  An entry at `off` is
# m, then m rows (t, firm, all): the ask's usage from t until the next row's t, by firm leases
# and by all leases, at the m distinct times at which it changes (sorted).  Built from the lease
# list on the first capacity question, dropped when the ask's leases change (a fill, a lease
# ending, a preemption, the ask leaving); a full pool is emptied at once.  ~80 % of capacity
# questions hit, each a short sequential read instead of a cache miss per lease.
UC_TAGS = 4096
UC_BUMP = UC_TAGS
UC_POOL = UC_TAGS + 1
UC_WORDS = UC_POOL + (1 << 18)
UC_LOW = np.int64(0xFFFFFFFF)
PACK = 21  # a usage event sorts as (time << PACK) | its index; at most 2**20 leases, times below 2**41
TIME_LIMIT = 1 << 41


@_hot
def _uc_drop(UC, a):
    """Ask a's leases changed: forget its usage function."""
    h = a & (UC_TAGS - 1)
    if UC[h] & UC_LOW == a + 1:
        UC[h] = 0


@_hot
def _uc_add(UC, a, now, ws, we, f, g):
    """A lease of g GPUs (f of them firm) over [ws, we) was sold on ask a: add it to a's usage
    function, if cached, into a fresh copy at the end of the pool.  Rows before now are dropped
    on the way, but for the one that holds at now."""
    h = a & (UC_TAGS - 1)
    x = UC[h]
    if x & UC_LOW != a + 1:
        return
    off = x >> 32
    i = off + 1
    e = i + 3 * UC[off]
    while i + 3 < e and UC[i + 3] <= now:
        i += 3
    bump = UC[UC_BUMP]
    if bump + 1 + (e - i) + 6 > UC.shape[0] - UC_POOL:
        UC[h] = 0  # no room: the next question builds it again (and empties the pool)
        return
    dst = UC_POOL + bump
    k = dst + 1
    pf = 0  # usage (firm, all) before the row at i
    pa = 0
    while i < e and UC[i] < ws:
        UC[k] = UC[i]
        pf = UC[i + 1]
        pa = UC[i + 2]
        UC[k + 1] = pf
        UC[k + 2] = pa
        i += 3
        k += 3
    if i >= e or UC[i] != ws:
        UC[k] = ws
        UC[k + 1] = pf + f
        UC[k + 2] = pa + g
        k += 3
    while i < e and UC[i] < we:
        UC[k] = UC[i]
        pf = UC[i + 1]
        pa = UC[i + 2]
        UC[k + 1] = pf + f
        UC[k + 2] = pa + g
        i += 3
        k += 3
    if i >= e or UC[i] != we:
        UC[k] = we
        UC[k + 1] = pf
        UC[k + 2] = pa
        k += 3
    while i < e:
        UC[k] = UC[i]
        UC[k + 1] = UC[i + 1]
        UC[k + 2] = UC[i + 2]
        i += 3
        k += 3
    UC[dst] = (k - dst - 1) // 3
    UC[UC_BUMP] = k - UC_POOL
    UC[h] = (dst << 32) | (a + 1)


@_inl
def _usage_fn(Lz, O, S, W, UC, a, build):
    """Offset in UC of ask a's usage function, built now if missing and build is True; -1 when
    it is missing or cannot be built (times or counts too large to pack, or a huge lease list):
    the caller then scans the lease list."""
    x = UC[a & (UC_TAGS - 1)]
    if x & UC_LOW == a + 1:
        return x >> 32
    if not build:
        return -1
    return _uc_build(Lz, O, S, W, UC, a)


@_hot
def _uc_build(Lz, O, S, W, UC, a):
    """`_usage_fn` when the function is missing: build it from the lease list."""
    h = a & (UC_TAGS - 1)
    keys = W[0]
    df = W[1]
    da = W[2]
    n = 0
    lz = O[a, O_LHEAD]
    while lz >= 0:
        st = Lz[lz, L_START]
        en = Lz[lz, L_END]
        g = Lz[lz, L_GPUS]
        if st < 0 or en >= TIME_LIMIT or n >= (1 << PACK) - 2:
            return -1
        f = 0 if Lz[lz, L_KIND] == SPOT else g
        keys[n] = (st << PACK) | n
        df[n] = f
        da[n] = g
        keys[n + 1] = (en << PACK) | (n + 1)
        df[n + 1] = -f
        da[n + 1] = -g
        n += 2
        lz = Lz[lz, L_NEXT]
    size = 1 + 3 * n
    pool = UC.shape[0] - UC_POOL
    if size > pool // 8:
        return -1
    S[S_SCAN] += 1
    bump = UC[UC_BUMP]
    if bump + size > pool:  # full: forget every function at once
        for k in range(UC_TAGS):
            UC[k] = 0
        bump = 0
    _sort_prefix(keys, n, W[3])
    off = UC_POOL + bump
    m = 0
    cf = 0
    ca = 0
    i = 0
    mask = (1 << PACK) - 1
    while i < n:
        t = keys[i] >> PACK
        while i < n and (keys[i] >> PACK) == t:
            j = keys[i] & mask
            cf += df[j]
            ca += da[j]
            i += 1
        k = off + 1 + 3 * m
        UC[k] = t
        UC[k + 1] = cf
        UC[k + 2] = ca
        m += 1
    UC[off] = m
    UC[UC_BUMP] = bump + 1 + 3 * m
    UC[h] = (off << 32) | (a + 1)
    return off


@_inl
def _fill_qty(O, Lz, S, W, UC, b, a, want):
    """GPUs bid b could take from ask a now, up to `want`; 0 if they cannot trade (R9, R10)."""
    kind = O[b, O_KIND]
    ws = O[b, O_START] if kind == RESERVED else S[S_NOW]
    return _ask_gives(O, Lz, S, W, UC, a, O[b, O_ACC], kind, O[b, O_PRICE], O[b, O_HOURS], ws,
                      O[b, O_BLOCK], want, True)


@_inl
def _ask_gives(O, Lz, S, W, UC, a, acc, kind, limit, hours, ws, block, want, build):
    """`_fill_qty` with the bid's fields as arguments instead of an order row (a quote has
    none): account, kind, limit, hours, window start and block of the bid.  build=False: a
    missing usage function is not built (a quote changes nothing, not even UC); the lease
    list is scanned instead."""
    if O[a, O_ACC] == acc or hours < O[a, O_MINH]:
        return 0
    spot = kind == SPOT
    if spot:
        sp = O[a, O_SPOT]
        if sp == 0 or limit < sp:
            return 0
    elif limit < O[a, O_PRICE]:
        return 0
    we = ws + hours * HOUR
    if ws < O[a, O_START] or we > O[a, O_END]:
        return 0
    gp = O[a, O_GPUS]
    used = O[a, O_FSUM] + (O[a, O_SSUM] if spot else 0)
    if kind != RESERVED:
        used_now = O[a, O_UNF] + (O[a, O_UNS] if spot else 0)
        if used == used_now or we <= O[a, O_NEXTSTART]:
            # no lease starts inside the window: usage is highest now, and only falls
            q = gp - used_now
            q = want if want < q else q
            return q - q % block if q >= block else 0
        if gp - used_now < block:
            return 0  # held right now by leases: no window starting now fits a block
    if gp - used >= want:
        q = want
    elif ws >= O[a, O_LMAXEND]:  # every lease on the ask ends before the window starts
        q = want if want < gp else gp
    else:
        q = _ask_free(O, Lz, S, W, UC, a, ws, we, spot, block, want, build)
    if q < block:
        return 0
    return q - q % block


@_hot
def _ask_free(O, Lz, S, W, UC, a, ws, we, spot, block, want, build):
    """`_ask_gives` when the ask's bounds do not answer: its free GPUs over [ws, we), up to
    want, from its usage function (or a scan of its leases); below block means none."""
    off = _usage_fn(Lz, O, S, W, UC, a, build)
    gp = O[a, O_GPUS]
    if off >= 0:
        c = 2 if spot else 1
        k = off + 1
        e = k + 3 * UC[off]
        lim = S[S_NOW] if S[S_NOW] < ws else ws
        while k + 3 < e and UC[k + 3] <= lim:
            k += 3
        if build and k > off + 1:
            # drop the rows before the one that holds at now for good (as `_uc_add` does): the
            # row before k becomes the header (its last word, the count, is rewritten)
            UC[k - 1] = (e - k) // 3
            UC[a & (UC_TAGS - 1)] = ((k - 1) << 32) | (a + 1)
        peak = 0
        while k < e and UC[k] <= ws:
            peak = UC[k + c]
            k += 3
        # the peak only matters up to gp - block + 1: free GPUs below block are none
        cap = gp - block + 1
        while k < e and UC[k] < we and peak < cap:
            if UC[k + c] > peak:
                peak = UC[k + c]
            k += 3
        free = gp - peak
    else:
        S[S_SCAN] += 1
        free = _free_for(Lz, O[a, O_LHEAD], ws, we, spot, gp, block, want, W)
    return want if want < free else free


@_hot
def _ask_level_can_hold(AG, lad, lvl, ws, we, hours):
    return AG[lad, lvl, AG_START] <= ws and AG[lad, lvl, AG_END] >= we and AG[lad, lvl, AG_MINH] <= hours


@_hot
def _ask_level_open(AG, lad, lvl, ws, we, hours, block, now_window):
    """False if the level's bounds show that none of its asks can trade with a bid of this
    window, hours and block (a window that starts now also needs a block free right now)."""
    return _ask_level_can_hold(AG, lad, lvl, ws, we, hours) and (
        not now_window or AG[lad, lvl, AG_FREE] >= block
    )


@_hot
def _ask_ladder(kind):
    """The ask ladder a bid of this kind walks and its link column: spot asks or firm asks."""
    if kind == SPOT:
        return LAD_ASK_SPOT, O_SNEXT
    return LAD_ASK_FIRM, O_NEXT


# ======================================================================= removal
@_hot
def _reoffer(O, RO, S, a):
    if O[a, O_PEND] == 0:
        O[a, O_PEND] = 1
        _hpush(RO, S, S_RON, O[a, O_PRICE], O[a, O_OID], 0, a)


@_hot
def _remove_order(pt, o):
    """Take a resting order out of the book and free its slot."""
    st = _st(pt)
    O, Lz, LH, LT, BM, BS, AG, S, P, W, UC = st.O, st.Lz, st.LH, st.LT, st.BM, st.BS, st.AG, st.S, st.P, st.W, st.UC
    if O[o, O_SIDE] == SIDE_ASK:
        lvl = _level(P, O[o, O_PRICE])
        _lad_remove(O, LH, LT, BM, BS, LAD_ASK_FIRM, lvl, o, O_NEXT, O_PREV)
        _ag_drop(AG, LH, O, LAD_ASK_FIRM, lvl, O_NEXT, o)
        if LH[LAD_ASK_FIRM, lvl] < 0:
            _bm_clear(BM, BS, NOWROW + LAD_ASK_FIRM, lvl)
        if O[o, O_SPOT] > 0:
            lvl = _level(P, O[o, O_SPOT])
            _lad_remove(O, LH, LT, BM, BS, LAD_ASK_SPOT, lvl, o, O_SNEXT, O_SPREV)
            _ag_drop(AG, LH, O, LAD_ASK_SPOT, lvl, O_SNEXT, o)
            if LH[LAD_ASK_SPOT, lvl] < 0:
                _bm_clear(BM, BS, NOWROW + LAD_ASK_SPOT, lvl)
        if O[o, O_LEASE] > 0:  # a resale ask gives its unsold GPUs back (R16)
            pl = _map_get(st.LK, st.LV, O[o, O_LEASE])
            if pl >= 0:
                sold = _peak_usage(Lz, O[o, O_LHEAD], S[S_NOW], O[o, O_END], True, W)
                Lz[pl, L_RESOLD] -= O[o, O_GPUS] - sold
        _uc_drop(UC, o)  # the slot will hold another order
        lz = O[o, O_LHEAD]
        while lz >= 0:  # what it sold stands, detached from the ask (R7)
            Lz[lz, L_ASLOT] = -1
            lz = Lz[lz, L_NEXT]
        O[o, O_PEND] = 0
    else:
        lad = _bid_ladder(O[o, O_KIND])
        lvl = _level(P, O[o, O_PRICE])
        _lad_remove(O, LH, LT, BM, BS, lad, lvl, o, O_NEXT, O_PREV)
        _bg_drop(AG, LH, BM, BS, O, lad, lvl, o)
    _map_del(st.HK, st.HV, O[o, O_OID])
    _free_order(O, S, o)


@_hot
def _drop_lease(pt, lz):
    """A lease has ended: its GPUs return to its ask, which is offered again (R13)."""
    st = _st(pt)
    O, Lz, AG, BM, BS, S, P = st.O, st.Lz, st.AG, st.BM, st.BS, st.S, st.P
    a = Lz[lz, L_ASLOT]
    if a >= 0:  # its usage function stays right from now on: the lease has ended
        n = Lz[lz, L_NEXT]
        p = Lz[lz, L_PREV]
        if p < 0:
            O[a, O_LHEAD] = n
        else:
            Lz[p, L_NEXT] = n
        if n >= 0:
            Lz[n, L_PREV] = p
        g = Lz[lz, L_GPUS]
        spot = Lz[lz, L_KIND] == SPOT
        if spot:
            O[a, O_SSUM] -= g
        else:
            O[a, O_FSUM] -= g
        if Lz[lz, L_NOW] == 1:
            if spot:
                O[a, O_UNS] -= g
            else:
                O[a, O_UNF] -= g
            _ag_add(AG, LAD_ASK_FIRM, _level(P, O[a, O_PRICE]), O, a)  # more free now
            if O[a, O_SPOT] > 0:
                _ag_add(AG, LAD_ASK_SPOT, _level(P, O[a, O_SPOT]), O, a)
            if O[a, O_START] <= S[S_NOW]:
                _now_open(O, BM, BS, P, a)
        _reoffer(O, st.RO, S, a)
    _map_del(st.LK, st.LV, Lz[lz, L_TID])
    _free_lease(Lz, S, lz)


# ======================================================================= matching (R9–R12)
@_hot
def _victim_before(Lz, x, y):
    """R12's preemption order: lowest trade price first, newest (highest trade id) on ties."""
    if Lz[x, L_PRICE] != Lz[y, L_PRICE]:
        return Lz[x, L_PRICE] < Lz[y, L_PRICE]
    return Lz[x, L_TID] > Lz[y, L_TID]


@_hot
def _victim_sift(Lz, hp, i, n):
    """Sift hp[i] down a binary heap of lease slots hp[:n], first victim at the top."""
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and _victim_before(Lz, hp[c + 1], hp[c]):
            c += 1
        if not _victim_before(Lz, hp[c], hp[i]):
            return
        t = hp[i]
        hp[i] = hp[c]
        hp[c] = t
        i = c


@_hot
def _lower_bound(a, n, x):
    """First index i < n with a[i] >= x (n if none); a[:n] sorted."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_hot
def _preempt(pt, a, firm):
    """R12: whole spot leases make room for a firm fill, from T0 = max(now + notice, start).

    The usage over [T0, end of the fill) is built once, as segments between sorted distinct
    breakpoints, and the spot leases are taken from a heap in preemption order.  Every spot
    lease started at its fill, at or before now <= T0, so it covers a prefix of the segments:
    it holds at an overcommitted moment iff it reaches past the first overcommitted segment,
    and preempting it (its end becomes T0) lowers that prefix.  Taking the leases in order and
    passing over those that reach no overcommitted segment preempts exactly the victims of
    "the first victim, again and again" (a lease that is not a victim never becomes one: usage
    only falls).  O(n log n) per fill that preempts, for n leases on the ask; recounting every
    lease at every breakpoint once per victim was ~2n^3 (tests/test_regression_hang.py).

    Scratch rows W[0..3]: an ask walking the bids drops its usage profile after every fill."""
    st = _st(pt)
    O, Lz, RO, TM, TF, E, S, P, W, UC = st.O, st.Lz, st.RO, st.TM, st.TF, st.E, st.S, st.P, st.W, st.UC
    now = S[S_NOW]
    t0 = now + P[P_NOTICE_S]
    fstart = Lz[firm, L_START]
    fend = Lz[firm, L_END]
    if fstart > t0:
        t0 = fstart
    gp = O[a, O_GPUS]
    if t0 >= fend or O[a, O_SSUM] == 0 or O[a, O_FSUM] + O[a, O_SSUM] <= gp:
        return  # no spot lease, or not even all leases at once overcommit the ask
    head = O[a, O_LHEAD]
    # one pass: usage at T0, all usage over [T0, fend) summed, and whether any lease starts
    # inside (T0, fend) (if none, usage is highest at T0 and T0 is the only breakpoint needed)
    at_t0 = 0
    overlap = 0
    inner = False
    lz = head
    while lz >= 0:
        st = Lz[lz, L_START]
        en = Lz[lz, L_END]
        if st < fend and en > t0:
            overlap += Lz[lz, L_GPUS]
            if st <= t0:
                at_t0 += Lz[lz, L_GPUS]
            else:
                inner = True
        lz = Lz[lz, L_NEXT]
    if overlap <= gp or (not inner and at_t0 <= gp):
        return  # no moment of the window is overcommitted
    # breakpoints: T0, and the starts and ends of leases inside (T0, fend) when any starts there
    pts = W[0]
    m = 1
    pts[0] = t0
    if inner:
        lz = head
        while lz >= 0:
            for c in (L_START, L_END):
                p = Lz[lz, c]
                if t0 < p < fend:
                    pts[m] = p
                    m += 1
            lz = Lz[lz, L_NEXT]
        _sort_prefix(pts, m, W[1])  # W[1] is written only after the sort
        k = 1
        for i in range(1, m):  # drop duplicates
            if pts[i] != pts[k - 1]:
                pts[k] = pts[i]
                k += 1
        m = k
    # usage of segment i = [pts[i], pts[i + 1]) (the last one up to fend), by differences
    use = W[1]
    acc = W[2]  # acc[j]: GPUs of the victims so far that cover segments [0, j)
    for i in range(m + 1):
        use[i] = 0
        acc[i] = 0
    hp = W[3]  # the spot leases that hold at T0, as a heap in preemption order
    nh = 0
    lz = head
    while lz >= 0:
        st = Lz[lz, L_START]
        en = Lz[lz, L_END]
        if st < fend and en > t0:
            g = Lz[lz, L_GPUS]
            use[_lower_bound(pts, m, st if st > t0 else t0)] += g
            use[_lower_bound(pts, m, en)] -= g  # m when it ends at or after fend
            if Lz[lz, L_KIND] == SPOT:
                hp[nh] = lz
                nh += 1
        lz = Lz[lz, L_NEXT]
    for i in range(1, m):
        use[i] += use[i - 1]
    bad = 0  # the first overcommitted segment (m: none)
    while bad < m and use[bad] <= gp:
        bad += 1
    for i in range(nh // 2 - 1, -1, -1):
        _victim_sift(Lz, hp, i, nh)
    taken = 0  # GPUs of the victims so far
    below = 0  # GPUs of the victims that reach no further than segment `bad` (acc[1..bad])
    while bad < m and nh > 0:
        victim = hp[0]
        nh -= 1
        hp[0] = hp[nh]
        _victim_sift(Lz, hp, 0, nh)
        reach = _lower_bound(pts, m, Lz[victim, L_END])  # it covers segments [0, reach)
        if reach <= bad:
            continue  # holds at no overcommitted moment
        g = Lz[victim, L_GPUS]
        taken += g
        acc[reach] += g
        Lz[victim, L_END] = t0
        _uc_drop(UC, a)
        k = _ev_lease(E, S, Lz, victim, EV_PREEMPTED, t0)
        E[k]["lease_id"] = Lz[firm, L_TID]
        _reoffer(O, RO, S, a)
        if t0 <= now:  # no notice: the spot lease is over already
            _drop_lease(pt, victim)
        else:
            _tpush(TM, TF, S, t0, T_LEASE_END, Lz[victim, L_TID], victim)
        while bad < m and use[bad] - (taken - below) <= gp:  # the victims covering `bad` are off
            bad += 1
            below += acc[bad]


# ======================================================================= the state bundle
State = namedtuple("State", "O Lz LH LT BM BS AG HK HV LK LV TM TF RO E S P W UC PT")
# Numba passes each array to a function that is not inlined as its struct flattened, 7-11 words
# on the stack, so a call with the state pushed ~155 words (over a quarter of the samples in
# jitted code).  Instead, `process_batch` writes each array's address and shape into PT (4 words
# per array, in State's order) once per batch, and the hot functions take PT's address `pt`, one
# word, and rebuild the arrays from it as views (`_st`): two or three loads per array used.  The
# inlined functions take `st`, the views plus `pt` (a JS).  The views are C-ordered: every array
# of a State must be C-contiguous (`_c_order`).
JS = namedtuple("JS", State._fields + ("pt",))
NPT = 4 * len(State._fields)


def _viewer(name, arrty):
    """An intrinsic (addr, n0[, n1[, n2]]) -> array of type arrty over the memory at addr, C order
    (no meminfo: the caller's state owns the memory for the call)."""
    nd = arrty.ndim

    def codegen(context, builder, sig, args):
        ary = make_array(arrty)(context, builder)
        dims = [context.cast(builder, v, t, nbt.intp) for v, t in zip(args[1:], sig.args[1:], strict=True)]
        item = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
        strides = []
        stride = context.get_constant(nbt.intp, item)
        for d in reversed(dims):
            strides.insert(0, stride)
            stride = builder.mul(stride, d)
        data = builder.inttoptr(context.cast(builder, args[0], sig.args[0], nbt.intp), ary.data.type)
        populate_array(ary, data=data, shape=dims, strides=strides,
                       itemsize=context.get_constant(nbt.intp, item), meminfo=None)
        return ary._getvalue()

    if nd == 1:
        def typer(typingctx, addr, n0):
            return arrty(addr, n0), codegen
    elif nd == 2:
        def typer(typingctx, addr, n0, n1):
            return arrty(addr, n0, n1), codegen
    else:
        def typer(typingctx, addr, n0, n1, n2):
            return arrty(addr, n0, n1, n2), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


if numba.config.DISABLE_JIT:  # plain Python (the rule tests run this way too): pt holds the views
    def _bind(st):
        pt = [None]  # a cycle (pt -> js -> pt), collected with the book: no registry keeps it alive
        js = JS(*st, pt)
        pt[0] = js
        return js

    def _st(pt):
        return pt[0]
else:
    _v_i1 = _viewer("_v_i1", numba.typeof(np.zeros(1, dtype=np.int64)))
    _v_i2 = _viewer("_v_i2", numba.typeof(np.zeros((1, 1), dtype=np.int64)))
    _v_i3 = _viewer("_v_i3", numba.typeof(np.zeros((1, 1, 1), dtype=np.int64)))
    _v_u2 = _viewer("_v_u2", numba.typeof(np.zeros((1, 1), dtype=np.uint64)))
    _v_ev = _viewer("_v_ev", numba.typeof(np.zeros(1, dtype=EVENT_DTYPE)))

    @intrinsic
    def _addr(typingctx, a):
        """The address of array a's data, as an int64."""
        def codegen(context, builder, sig, args):
            ary = make_array(sig.args[0])(context, builder, args[0])
            return builder.ptrtoint(ary.data, context.get_value_type(nbt.int64))
        return nbt.int64(a), codegen

    @_inl
    def _pt_put(PT, k, a):
        PT[4 * k] = _addr(a)
        for d in range(a.ndim):
            PT[4 * k + 1 + d] = a.shape[d]

    @_inl
    def _st(pt):
        """The state's arrays as views, from the addresses and shapes in PT (at address pt)."""
        PT = _v_i1(pt, NPT)
        return JS(
            _v_i2(PT[0], PT[1], NO), _v_i2(PT[4], PT[5], NL), _v_i2(PT[8], NLAD, PT[10]),
            _v_i2(PT[12], NLAD, PT[14]), _v_u2(PT[16], NBM, PT[18]), _v_u2(PT[20], NBM, PT[22]),
            _v_i3(PT[24], NLAD, PT[26], NAG), _v_i1(PT[28], PT[29]), _v_i1(PT[32], PT[33]),
            _v_i1(PT[36], PT[37]), _v_i1(PT[40], PT[41]), _v_i2(PT[44], PT[45], 4), _v_i2(PT[48], PT[49], 5),
            _v_i2(PT[52], PT[53], 4), _v_ev(PT[56], PT[57]), _v_i1(PT[60], PT[61]), _v_i1(PT[64], PT[65]),
            _v_i2(PT[68], PT[69], PT[70]), _v_i1(PT[72], PT[73]), PT, pt,
        )

    @_inl
    def _bind(st):
        """Write the addresses and shapes of st's arrays into st.PT; the state as views."""
        PT = st.PT
        _pt_put(PT, 0, st.O)
        _pt_put(PT, 1, st.Lz)
        _pt_put(PT, 2, st.LH)
        _pt_put(PT, 3, st.LT)
        _pt_put(PT, 4, st.BM)
        _pt_put(PT, 5, st.BS)
        _pt_put(PT, 6, st.AG)
        _pt_put(PT, 7, st.HK)
        _pt_put(PT, 8, st.HV)
        _pt_put(PT, 9, st.LK)
        _pt_put(PT, 10, st.LV)
        _pt_put(PT, 11, st.TM)
        _pt_put(PT, 12, st.TF)
        _pt_put(PT, 13, st.RO)
        _pt_put(PT, 14, st.E)
        _pt_put(PT, 15, st.S)
        _pt_put(PT, 16, st.P)
        _pt_put(PT, 17, st.W)
        _pt_put(PT, 18, st.UC)
        _pt_put(PT, 19, PT)
        return _st(_addr(PT))


@_inl
def _remove(st, o):
    _remove_order(st.pt, o)


@_inl
def _fill(st, b, a, q):
    """Bid b takes q GPUs from ask a: a lease, a TRADE event, maybe preemption (R10–R12, R16)."""
    O = st.O
    Lz = st.Lz
    S = st.S
    now = S[S_NOW]
    kind = O[b, O_KIND]
    ws = O[b, O_START] if kind == RESERVED else now
    we = ws + O[b, O_HOURS] * HOUR
    if O[b, O_OID] < O[a, O_OID]:  # R11: the maker's price
        maker = SIDE_BID
        price = O[b, O_PRICE]
    else:
        maker = SIDE_ASK
        price = O[a, O_SPOT] if kind == SPOT else O[a, O_PRICE]
    lz = _alloc_lease(Lz, S)
    tid = S[S_NEXTTID]
    S[S_NEXTTID] = tid + 1
    Lz[lz, L_TID] = tid
    Lz[lz, L_ASK] = O[a, O_OID]
    Lz[lz, L_BID] = O[b, O_OID]
    Lz[lz, L_BUYER] = O[b, O_ACC]
    Lz[lz, L_PROV] = O[a, O_ACC]
    Lz[lz, L_KIND] = kind
    Lz[lz, L_GPUS] = q
    Lz[lz, L_START] = ws
    Lz[lz, L_END] = we
    Lz[lz, L_PRICE] = price
    Lz[lz, L_ASLOT] = a
    _uc_add(st.UC, a, now, ws, we, 0 if kind == SPOT else q, q)
    head = O[a, O_LHEAD]
    Lz[lz, L_NEXT] = head
    Lz[lz, L_PREV] = -1
    if head >= 0:
        Lz[head, L_PREV] = lz
    O[a, O_LHEAD] = lz
    if kind == SPOT:
        O[a, O_SSUM] += q
    else:
        O[a, O_FSUM] += q
    if we > O[a, O_LMAXEND]:
        O[a, O_LMAXEND] = we
    if ws <= now:
        Lz[lz, L_NOW] = 1
        if kind == SPOT:
            O[a, O_UNS] += q
        else:
            O[a, O_UNF] += q
    else:  # starts later: counted as holding the ask from its start on
        _tpush(st.TM, st.TF, S, ws, T_LEASE_START, tid, lz)
        if ws < O[a, O_NEXTSTART]:
            O[a, O_NEXTSTART] = ws
    _map_put(st.LK, st.LV, tid, lz)
    _tpush(st.TM, st.TF, S, we, T_LEASE_END, tid, lz)
    O[b, O_REM] -= q
    E = st.E
    k = _ev(E, S, EV_TRADE)
    E[k]["trade_id"] = tid
    E[k]["oid"] = O[b, O_OID]
    E[k]["oid2"] = O[a, O_OID]
    E[k]["account"] = O[b, O_ACC]
    E[k]["account2"] = O[a, O_ACC]
    E[k]["kind"] = kind
    E[k]["gpus"] = q
    E[k]["remaining"] = O[b, O_REM]
    E[k]["price"] = price
    E[k]["start"] = ws
    E[k]["end"] = we
    E[k]["maker"] = maker
    E[k]["lease_id"] = O[a, O_LEASE]
    E[k]["hours"] = O[b, O_HOURS]
    if O[b, O_REM] == 0 and O[b, O_LIVE] == LIVE_RESTING:
        _remove(st, b)
    if kind != SPOT and O[a, O_SSUM] > 0 and O[a, O_FSUM] + O[a, O_SSUM] > O[a, O_GPUS]:  # else none to preempt
        _preempt(st.pt, a, lz)


@_hot
def _walk_asks(pt, b, dry):
    """Incoming bid b walks the asks cheapest first, then oldest (R10).

    With dry=True nothing changes and the GPUs that could be filled are returned (FOK)."""
    st = _st(pt)
    O = st.O
    P = st.P
    now = st.S[S_NOW]
    kind = O[b, O_KIND]
    lad, nxt = _ask_ladder(kind)
    ws = O[b, O_START] if kind == RESERVED else now
    we = ws + O[b, O_HOURS] * HOUR
    hours = O[b, O_HOURS]
    top = _level(P, O[b, O_PRICE])
    want = O[b, O_REM]
    got = 0
    block = O[b, O_BLOCK]
    now_window = kind != RESERVED
    AG = st.AG
    BM = st.BM
    BS = st.BS
    row = NOWROW + lad if now_window else lad  # a window from now: only levels open now
    lvl = _bm_next_up(BM, BS, row, 0)
    while 0 <= lvl <= top:
        if _ask_level_open(AG, lad, lvl, ws, we, hours, block, now_window):
            a = st.LH[lad, lvl]
            is_open = False  # an ask of the level has started and has a GPU free now
            while a >= 0:
                st.S[S_VISIT_ASK] += 1
                if dry:
                    got += _fill_qty(O, st.Lz, st.S, st.W, st.UC, b, a, want)
                    if got >= want:
                        return got
                else:
                    q = _fill_qty(O, st.Lz, st.S, st.W, st.UC, b, a, O[b, O_REM])
                    if q > 0:
                        _fill(st, b, a, q)
                        if O[b, O_REM] == 0:
                            return 0
                if O[a, O_START] <= now and _free_now(O, a, lad) >= 1:
                    is_open = True
                a = O[a, nxt]
            if now_window:  # fills and starts since the bounds were set: make them exact again
                _ag_recompute(AG, st.LH, O, lad, lvl, nxt)
                if not is_open:
                    _bm_clear(BM, BS, row, lvl)
        elif now_window and (AG[lad, lvl, AG_START] > now or AG[lad, lvl, AG_FREE] < 1):
            _bm_clear(BM, BS, row, lvl)  # no ask of the level has started, or none has a GPU free
        st.S[S_VISIT_LEVEL] += 1
        lvl = _bm_next_up(BM, BS, row, lvl + 1)
    return got


@_hot
def _quote_walk(st, S, kind, acc, limit, hours, ws, block, want, out):
    """The fills an incoming IOC bid of these fields would get now (a quote), changing nothing.

    The walk of `_walk_asks` (same ladder, same level skips, same `_fill_qty` rule per ask)
    with the bid's fields as arguments.  Each fill is written to a row of `out` as (ask id,
    provider, GPUs, price: the ask's, R11); returns the number of rows, or -1 if `out` is too
    short.  S is a scratch copy of st.S (a capacity question counts its lease scans there) and
    no level's bounds are tightened, so st is only read."""
    O = st.O
    lad, nxt = _ask_ladder(kind)
    we = ws + hours * HOUR
    top = _level(st.P, limit)
    now_window = kind != RESERVED
    got = 0
    n = 0
    lvl = _bm_next_up(st.BM, st.BS, lad, 0)
    while 0 <= lvl <= top:
        if _ask_level_open(st.AG, lad, lvl, ws, we, hours, block, now_window):
            a = st.LH[lad, lvl]
            while a >= 0:
                q = _ask_gives(O, st.Lz, S, st.W, st.UC, a, acc, kind, limit, hours, ws, block, want - got, False)
                if q > 0:
                    if n >= out.shape[0]:
                        return -1
                    out[n, 0] = O[a, O_OID]
                    out[n, 1] = O[a, O_ACC]
                    out[n, 2] = q
                    out[n, 3] = O[a, O_SPOT] if kind == SPOT else O[a, O_PRICE]
                    n += 1
                    got += q
                    if got >= want:
                        return n
                a = O[a, nxt]
        lvl = _bm_next_up(st.BM, st.BS, lad, lvl + 1)
    return n


@_hot
def _next_bid(pt, lad, lvl, low, b, a, free, horizon):
    """The bid after b on ladder lad walking down (b < 0: start at level lvl); -1, -1 at the end.

    Levels whose bounds show that none of their bids fits ask a (window, min_hours, at most
    `free` GPUs; a window from now must end by `horizon`) are skipped whole."""
    st = _st(pt)
    O = st.O
    if b >= 0:
        b = O[b, O_NEXT]
        if b >= 0:
            return lvl, b
        lvl -= 1
    AG = st.AG
    now = st.S[S_NOW]
    row = _hour_row(lad, (horizon - now) // HOUR)  # levels that may hold a bid short enough
    while True:
        lvl = _bm_next_down(st.BM, st.BS, row, lvl)
        if lvl < low:
            return -1, -1
        if AG[lad, lvl, BG_STALE] != 0:
            _bg_recompute(AG, st.LH, st.BM, st.BS, O, lad, lvl)
        if AG[lad, lvl, BG_MAXH] >= O[a, O_MINH] and AG[lad, lvl, BG_MINBLK] <= free:
            if lad == LAD_BID_RES:
                if AG[lad, lvl, BG_MAXSTART] >= O[a, O_START] and AG[lad, lvl, BG_MINEND] <= O[a, O_END]:
                    return lvl, st.LH[lad, lvl]
            elif now + AG[lad, lvl, BG_MINH] * HOUR <= horizon:
                return lvl, st.LH[lad, lvl]
        lvl -= 1


@_hot
def _horizon(O, Lz, S, W, UC, a, spot):
    """No window [now, we) with we after this can get a GPU of ask a (firm, or spot: R9).

    The ask's end, or earlier: the first moment from now on at which its usage (the usage
    function cached in UC) reaches all its GPUs.  Usage only grows while the ask walks the
    bids, except when a firm fill preempts spot leases, so a horizon stays an upper bound for
    firm bids and, until a preemption, for spot bids."""
    end = O[a, O_END]
    used = O[a, O_FSUM] + (O[a, O_SSUM] if spot else 0)
    used_now = O[a, O_UNF] + (O[a, O_UNS] if spot else 0)
    gp = O[a, O_GPUS]
    if used == used_now or used < gp or O[a, O_NEXTSTART] >= end:
        return end  # no lease starts later (usage is highest now), or all of them never fill it
    off = _usage_fn(Lz, O, S, W, UC, a, True)
    if off < 0:
        return end
    now = S[S_NOW]
    c = 2 if spot else 1
    k = off + 1
    e = k + 3 * UC[off]
    while k + 3 < e and UC[k + 3] <= now:  # the row that holds at now
        k += 3
    if k < e and UC[k] <= now and UC[k + c] >= gp:
        return now if now < end else end
    while k < e:
        t = UC[k]
        if t >= end:
            return end
        if t > now and UC[k + c] >= gp:
            return t
        k += 3
    return end


@_hot
def _spot_cursor(pt, a, lvl, oid, low_s, horizon):
    """The first spot bid after (level lvl, order id oid) in bid priority that may fit ask a."""
    st = _st(pt)
    O = st.O
    b = st.LH[LAD_BID_SPOT, lvl] if lvl >= low_s else -1
    while b >= 0 and O[b, O_OID] <= oid:
        b = O[b, O_NEXT]
    if b >= 0:
        return lvl, b
    free = O[a, O_GPUS] - O[a, O_UNF] - O[a, O_UNS]
    return _next_bid(pt, LAD_BID_SPOT, lvl - 1, low_s, -1, a, free, horizon)


@_inl
def _bids_may_pay(BM, BS, S, P, O, a):
    """False if no resting bid's limit reaches ask a's price (nor its spot price, on the spot
    ladder): a walk of the bids would find nothing.  Checked before calling `_walk_bids`, as
    most re-offers find nothing and the call alone (the state's ~150 words) cost more."""
    top = S[S_BIDTOP]
    low = _level(P, O[a, O_PRICE])
    if _bm_next_down(BM, BS, LAD_BID_RES, top) >= low or _bm_next_down(BM, BS, LAD_BID_OD, top) >= low:
        return True
    return O[a, O_SPOT] > 0 and _bm_next_down(BM, BS, LAD_BID_SPOT, top) >= _level(P, O[a, O_SPOT])


@_hot
def _walk_bids(pt, a, dry):
    """Ask a walks the resting bids: highest limit first, then oldest (R10).

    Three ladders (spot, on_demand, reserved) merged in that one order.  Spot bids need
    limit >= spot_price, the others limit >= price.  A ladder whose bids all need GPUs from
    now on is left out when the ask cannot give any now (not started, or fully held), which
    only skips bids that could not trade.  With dry=True nothing changes and 1 is returned if
    any bid could trade (post_only).

    Spot and on-demand bids (windows from now) are also passed over, without a capacity
    question, when they need more GPUs than are free now or reach past the ask's horizon
    (`_horizon`); whole levels when their bounds show it.  Both tests only get stricter as
    the walk fills bids, except that a firm fill that preempts spot leases frees capacity
    for spot: the spot cursor is then placed again just after the bid that was filled."""
    st = _st(pt)
    O = st.O
    P = st.P
    S = st.S
    now = S[S_NOW]
    top = S[S_BIDTOP]  # scanning the bitmaps down from the highest level was 5 % of the time
    low_f = _level(P, O[a, O_PRICE])
    gp = O[a, O_GPUS]
    started = O[a, O_START] <= now and O[a, O_END] - now >= HOUR
    free_od = gp - O[a, O_UNF]
    free_spot = free_od - O[a, O_UNS]
    lr, br = _next_bid(pt, LAD_BID_RES, top, low_f, -1, a, gp, 0)
    lo, bo = -1, -1
    end = O[a, O_END]
    hz_od = end  # the ask's end until a bid makes the horizon worth building
    if started and free_od >= 1:
        lo, bo = _next_bid(pt, LAD_BID_OD, top, low_f, -1, a, free_od, hz_od)
    ls, bs = -1, -1
    low_s = 0
    hz_spot = end
    spot_side = O[a, O_SPOT] > 0 and started
    if spot_side:
        low_s = _level(P, O[a, O_SPOT])
        if free_spot >= 1:
            ls, bs = _next_bid(pt, LAD_BID_SPOT, top, low_s, -1, a, free_spot, hz_spot)
    stale = True  # the horizons are not built yet, or predate the last fill
    while br >= 0 or bo >= 0 or bs >= 0:
        # pick the best of the three heads: highest level, then lowest order id
        pick = 0
        lvl, b = lr, br
        if bo >= 0 and (b < 0 or lo > lvl or (lo == lvl and O[bo, O_OID] < O[b, O_OID])):
            pick, lvl, b = 1, lo, bo
        if bs >= 0 and (b < 0 or ls > lvl or (ls == lvl and O[bs, O_OID] < O[b, O_OID])):
            pick, lvl, b = 2, ls, bs
        if pick != 0 and stale:
            free_od = gp - O[a, O_UNF]
            free_spot = free_od - O[a, O_UNS]
            if bo >= 0 or pick == 1:
                hz_od = _horizon(O, st.Lz, S, st.W, st.UC, a, False)
            if bs >= 0 or pick == 2:
                hz_spot = _horizon(O, st.Lz, S, st.W, st.UC, a, True)
            stale = False
        if pick == 0:
            lr, br = _next_bid(pt, LAD_BID_RES, lr, low_f, br, a, gp, 0)
        elif pick == 1:
            lo, bo = _next_bid(pt, LAD_BID_OD, lo, low_f, bo, a, free_od, hz_od)
            if O[b, O_BLOCK] > free_od or now + O[b, O_HOURS] * HOUR > hz_od:
                continue  # no GPU for it now or over its window: it cannot trade
        else:
            ls, bs = _next_bid(pt, LAD_BID_SPOT, ls, low_s, bs, a, free_spot, hz_spot)
            if O[b, O_BLOCK] > free_spot or now + O[b, O_HOURS] * HOUR > hz_spot:
                continue
        S[S_VISIT_BID] += 1
        q = _fill_qty(O, st.Lz, S, st.W, st.UC, b, a, O[b, O_REM])
        if q > 0:
            if dry:
                return 1
            seq = S[S_SEQ]
            oid = O[b, O_OID]
            _fill(st, b, a, q)
            stale = True
            if S[S_SEQ] != seq + 1 and spot_side:  # spot leases preempted: spot may fit again
                free_spot = gp - O[a, O_UNF] - O[a, O_UNS]
                ls, bs = -1, -1
                if free_spot >= 1:
                    ls, bs = _spot_cursor(pt, a, lvl, oid, low_s, end)
    return 0


@_inl
def _run_reoffers(st):
    """R13: asks whose free capacity grew meet the resting bids again, in ask priority."""
    RO = st.RO
    S = st.S
    O = st.O
    while S[S_RON] > 0:
        a = RO[0, 3]
        oid = RO[0, 1]
        _hpop(RO, S, S_RON)
        if O[a, O_LIVE] != LIVE_RESTING or O[a, O_OID] != oid or O[a, O_PEND] == 0:
            continue
        O[a, O_PEND] = 0
        if _bids_may_pay(st.BM, st.BS, S, st.P, O, a):
            _walk_bids(st.pt, a, False)


@_inl
def _space_ok(st):
    S = st.S
    return (
        S[S_NEV] + EVENT_RESERVE <= st.E.shape[0]
        and (S[S_OFREE] >= 0 or S[S_OHIGH] < st.O.shape[0])
        and S[S_NLEASE] + LEASE_RESERVE <= st.Lz.shape[0]
        and S[S_TMN] + 2 * LEASE_RESERVE + 4 <= st.TM.shape[0]
        and _tf_count(st.TF) + 2 * LEASE_RESERVE + 4 <= st.TF.shape[0] - TF_BASE
        and S[S_RON] + LEASE_RESERVE + 4 <= st.RO.shape[0]
        and 2 * (S[S_NORD] + 1) <= st.HK.shape[0]
        and 2 * (S[S_NLEASE] + LEASE_RESERVE) <= st.LK.shape[0]
    )


@_hot
def _lease_started(O, Lz, lz):
    """A lease that was sold ahead now holds its ask (O_UNF); find the ask's next such start."""
    Lz[lz, L_NOW] = 1
    a = Lz[lz, L_ASLOT]
    if a < 0:
        return
    O[a, O_UNF] += Lz[lz, L_GPUS]
    nxt = BIG
    if O[a, O_FSUM] + O[a, O_SSUM] == O[a, O_UNF] + O[a, O_UNS]:
        O[a, O_NEXTSTART] = nxt  # every lease on the ask holds it now: none starts later, no scan
        return
    x = O[a, O_LHEAD]
    while x >= 0:
        if Lz[x, L_NOW] == 0 and Lz[x, L_START] < nxt:
            nxt = Lz[x, L_START]
        x = Lz[x, L_NEXT]
    O[a, O_NEXTSTART] = nxt


@_inl
def _advance(st, t):
    """Apply everything that expires or ends at or before t, in time order (R13, R14).

    Returns False if it stopped early for space; calling it again continues."""
    S = st.S
    O = st.O
    Lz = st.Lz
    TM = st.TM
    TF = st.TF
    while True:
        due = S[S_TMN] > 0 and TM[0, 0] <= t
        if not (due and (TM[0, 0] < TF[TFH, TF_LIMIT] or _tf_count(TF) == 0)):
            # the heap's first timer may not be the first of all: TF may hold earlier ones
            if TF[TFH, TF_LIMIT] > t:
                break
            if _tf_count(TF) > 0:
                if not _tf_step(TM, TF, S, t):
                    return False
                continue
            TF[TFH, TF_LIMIT] = _hour_after(t)  # no timer in TF: nothing to move
            if not due:
                break
            continue
        if not _space_ok(st):
            return False
        when = TM[0, 0]
        kind = TM[0, 1]
        key = TM[0, 2]
        ref = TM[0, 3]
        _hpop(TM, S, S_TMN)
        if kind == T_EXPIRE:
            if O[ref, O_LIVE] == LIVE_RESTING and O[ref, O_OID] == key and O[ref, O_EXP] == when:
                S[S_NOW] = when
                _remove(st, ref)  # slot freed but its fields are still readable
                _ev_order_end(st.E, S, O, ref, EV_EXPIRED, O[ref, O_WHY])
        elif kind == T_LEASE_END:
            if Lz[ref, L_LIVE] == 1 and Lz[ref, L_TID] == key and Lz[ref, L_END] == when:
                _drop_lease(st.pt, ref)
        elif kind == T_LEASE_START:
            if Lz[ref, L_LIVE] == 1 and Lz[ref, L_TID] == key and Lz[ref, L_NOW] == 0:
                _lease_started(O, Lz, ref)
        else:
            if O[ref, O_LIVE] == LIVE_RESTING and O[ref, O_OID] == key:
                _now_open(O, st.BM, st.BS, st.P, ref)
                _reoffer(O, st.RO, S, ref)
    if t > S[S_NOW]:
        S[S_NOW] = t
    return True


# ======================================================================= commands
@_inl
def _check_price(P, price):
    """orderbook.rules.price_code, for the jitted handlers."""
    if price < P[P_MIN_PRICE] or price > P[P_MAX_PRICE]:
        return R.BAD_PRICE
    if price % P[P_TICK] != 0:
        return R.OFF_TICK
    return R.OK


@_inl
def _on_ask(st, C, i):
    O = st.O
    S = st.S
    P = st.P
    Lz = st.Lz
    now = S[S_NOW]
    start = C[i]["start"]
    if start < now:
        start = now
    end = C[i]["end"]
    minh = C[i]["min_hours"]
    if minh == 0:
        minh = 1
    gpus = C[i]["gpus"]
    price = C[i]["price"]
    spot = C[i]["spot_price"]
    code = R.OK
    # account, order id, then orderbook.rules.ask_code's checks, in its order (this copy is held
    # to it by tests/test_rules_r8_mirror.py), then the resale checks
    if C[i]["account"] <= 0:
        code = R.BAD_ACCOUNT
    elif C[i]["oid"] <= S[S_LASTOID]:
        code = R.BAD_ORDER_ID
    elif not 1 <= gpus <= P[P_MAX_GPUS]:
        code = R.BAD_GPUS
    else:
        code = _check_price(P, price)
    if code == R.OK and spot != 0:
        if spot < P[P_MIN_PRICE] or spot > price:
            code = R.BAD_SPOT_PRICE
        elif spot % P[P_TICK] != 0:
            code = R.OFF_TICK
    if code == R.OK and not 1 <= minh <= P[P_MAX_HOURS]:
        code = R.BAD_MIN_HOURS
    if code == R.OK and (end - start < minh * HOUR or end - start > P[P_MAX_WINDOW_HOURS] * HOUR):
        code = R.BAD_WINDOW
    pl = -1
    if code == R.OK and C[i]["lease_id"] != 0:
        pl = _map_get(st.LK, st.LV, C[i]["lease_id"])
        if pl < 0 or Lz[pl, L_END] <= now:
            code = R.UNKNOWN_LEASE
        elif Lz[pl, L_BUYER] != C[i]["account"]:
            code = R.NOT_LEASE_HOLDER
        elif Lz[pl, L_KIND] == SPOT:
            code = R.LEASE_NOT_RESELLABLE
        elif start < max(Lz[pl, L_START], now) or end > Lz[pl, L_END]:
            code = R.RESALE_WINDOW
        elif gpus > Lz[pl, L_GPUS] - Lz[pl, L_RESOLD]:
            code = R.RESALE_EXCEEDS_LEASE
    if code != R.OK:
        _reject(st.E, S, C, i, code)
        return
    a = _alloc_order(O, S)
    O[a, O_OID] = C[i]["oid"]
    O[a, O_ACC] = C[i]["account"]
    O[a, O_SIDE] = SIDE_ASK
    O[a, O_GPUS] = gpus
    O[a, O_PRICE] = price
    O[a, O_SPOT] = spot
    O[a, O_START] = start
    O[a, O_END] = end
    O[a, O_MINH] = minh
    O[a, O_EXP] = end
    O[a, O_WHY] = END_WINDOW
    O[a, O_LEASE] = C[i]["lease_id"]
    O[a, O_POST] = 1 if C[i]["post_only"] != 0 else 0
    O[a, O_LIVE] = LIVE_INCOMING
    O[a, O_NEXTSTART] = BIG
    may_pay = _bids_may_pay(st.BM, st.BS, S, P, O, a)
    if O[a, O_POST] == 1 and may_pay and _walk_bids(st.pt, a, True) == 1:
        _free_order(O, S, a)
        _reject(st.E, S, C, i, R.POST_ONLY_WOULD_TRADE)
        return
    S[S_LASTOID] = O[a, O_OID]
    if pl >= 0:
        Lz[pl, L_RESOLD] += gpus
    _insert_order(st.pt, a)
    _map_put(st.HK, st.HV, O[a, O_OID], a)
    E = st.E
    k = _ev(E, S, EV_ACCEPTED)
    E[k]["oid"] = O[a, O_OID]
    E[k]["account"] = O[a, O_ACC]
    E[k]["side"] = SIDE_ASK
    E[k]["gpus"] = gpus
    E[k]["price"] = price
    E[k]["price2"] = spot
    E[k]["start"] = start
    E[k]["end"] = end
    E[k]["min_hours"] = minh
    E[k]["lease_id"] = O[a, O_LEASE]
    E[k]["expire_at"] = end
    if may_pay:  # inserting the ask changed no bid
        _walk_bids(st.pt, a, False)


@_inl
def _on_bid(st, C, i):
    O = st.O
    S = st.S
    P = st.P
    now = S[S_NOW]
    kind = C[i]["kind"]
    tif = C[i]["tif"]
    gpus = C[i]["gpus"]
    hours = C[i]["hours"]
    block = C[i]["block"]
    if block == 0:
        block = 1
    code = R.OK
    # account, order id, then orderbook.rules.bid_code's checks, in its order (this copy is held
    # to it by tests/test_rules_r8_mirror.py)
    if C[i]["account"] <= 0:
        code = R.BAD_ACCOUNT
    elif C[i]["oid"] <= S[S_LASTOID]:
        code = R.BAD_ORDER_ID
    elif kind != SPOT and kind != ON_DEMAND and kind != RESERVED:
        code = R.BAD_KIND
    elif tif != GTC and tif != IOC and tif != FOK and tif != GTD:
        code = R.BAD_TIF
    elif not 1 <= gpus <= P[P_MAX_GPUS]:
        code = R.BAD_GPUS
    elif not 1 <= hours <= P[P_MAX_HOURS]:
        code = R.BAD_HOURS
    else:
        code = _check_price(P, C[i]["price"])
    if code == R.OK and (block < 1 or gpus % block != 0):
        code = R.BAD_BLOCK
    start = C[i]["start"] if kind == RESERVED else 0
    if code == R.OK and kind == RESERVED:
        if start % HOUR != 0:
            code = R.UNALIGNED_START
        elif start - now < P[P_GATE_S]:
            code = R.PAST_GATE
    expire_at = 0
    why = 0
    if code == R.OK and tif == GTD:
        if C[i]["expire_at"] <= now:
            code = R.BAD_EXPIRY
        expire_at = C[i]["expire_at"]
        why = END_GTD
    if code != R.OK:
        _reject(st.E, S, C, i, code)
        return
    gate = start - P[P_GATE_S]
    if kind == RESERVED and (tif == GTC or tif == GTD) and (expire_at == 0 or gate < expire_at):
        expire_at = gate
        why = END_GATE
    b = _alloc_order(O, S)
    O[b, O_OID] = C[i]["oid"]
    O[b, O_ACC] = C[i]["account"]
    O[b, O_SIDE] = SIDE_BID
    O[b, O_KIND] = kind
    O[b, O_TIF] = tif
    O[b, O_GPUS] = gpus
    O[b, O_REM] = gpus
    O[b, O_HOURS] = hours
    O[b, O_PRICE] = C[i]["price"]
    O[b, O_START] = start
    O[b, O_END] = start + hours * HOUR if kind == RESERVED else 0
    O[b, O_BLOCK] = block
    O[b, O_EXP] = expire_at
    O[b, O_WHY] = why
    O[b, O_LIVE] = LIVE_INCOMING
    S[S_LASTOID] = O[b, O_OID]
    E = st.E
    k = _ev(E, S, EV_ACCEPTED)
    E[k]["oid"] = O[b, O_OID]
    E[k]["account"] = O[b, O_ACC]
    E[k]["side"] = SIDE_BID
    E[k]["kind"] = kind
    E[k]["tif"] = tif
    E[k]["gpus"] = gpus
    E[k]["remaining"] = gpus
    E[k]["hours"] = hours
    E[k]["price"] = O[b, O_PRICE]
    E[k]["block"] = block
    E[k]["start"] = start
    E[k]["end"] = O[b, O_END]
    E[k]["expire_at"] = expire_at
    if tif == FOK and _walk_asks(st.pt, b, True) < gpus:
        _ev_order_end(E, S, O, b, EV_CANCELLED, END_FOK)
        _free_order(O, S, b)
        return
    _walk_asks(st.pt, b, False)
    if O[b, O_REM] == 0:
        _free_order(O, S, b)
    elif tif == IOC or tif == FOK:
        _ev_order_end(E, S, O, b, EV_CANCELLED, END_IOC)
        _free_order(O, S, b)
    elif expire_at != 0 and expire_at <= now:  # a reserved bid placed exactly at its gate
        _ev_order_end(E, S, O, b, EV_EXPIRED, why)
        _free_order(O, S, b)
    else:
        _insert_order(st.pt, b)
        _map_put(st.HK, st.HV, O[b, O_OID], b)


@_inl
def _owned_order(st, C, i):
    o = _map_get(st.HK, st.HV, C[i]["oid"])
    if o < 0:
        return -1, R.UNKNOWN_ORDER
    if st.O[o, O_ACC] != C[i]["account"]:
        return -1, R.NOT_OWNER
    return o, R.OK


@_inl
def _on_cancel(st, C, i):
    o, code = _owned_order(st, C, i)
    if o < 0:
        _reject(st.E, st.S, C, i, code)
        return
    _remove(st, o)
    _ev_order_end(st.E, st.S, st.O, o, EV_CANCELLED, END_USER)


@_inl
def _on_amend(st, C, i):
    O = st.O
    o, code = _owned_order(st, C, i)
    new = C[i]["gpus"]
    if o >= 0:
        if O[o, O_SIDE] == SIDE_BID:
            if not 1 <= new < O[o, O_REM] or new % O[o, O_BLOCK] != 0:
                code = R.BAD_AMEND
        elif not 1 <= new < O[o, O_GPUS]:
            code = R.BAD_AMEND
        elif new < _peak_usage(st.Lz, O[o, O_LHEAD], st.S[S_NOW], O[o, O_END], True, st.W):
            code = R.AMEND_BELOW_SOLD
    if code != R.OK:
        _reject(st.E, st.S, C, i, code)
        return
    if O[o, O_SIDE] == SIDE_BID:
        O[o, O_REM] = new
    else:
        if O[o, O_LEASE] != 0:
            pl = _map_get(st.LK, st.LV, O[o, O_LEASE])
            if pl >= 0:
                st.Lz[pl, L_RESOLD] -= O[o, O_GPUS] - new
        O[o, O_GPUS] = new
    k = _ev(st.E, st.S, EV_AMENDED)
    st.E[k]["oid"] = O[o, O_OID]
    st.E[k]["account"] = O[o, O_ACC]
    st.E[k]["side"] = O[o, O_SIDE]
    st.E[k]["kind"] = O[o, O_KIND]
    st.E[k]["gpus"] = new
    st.E[k]["remaining"] = O[o, O_REM]


@_inl
def _on_release(st, C, i):
    Lz = st.Lz
    S = st.S
    code = R.OK
    lz = _map_get(st.LK, st.LV, C[i]["lease_id"]) if C[i]["lease_id"] > 0 else -1
    if lz < 0 or Lz[lz, L_END] <= S[S_NOW]:
        code = R.UNKNOWN_LEASE
    elif Lz[lz, L_BUYER] != C[i]["account"]:
        code = R.NOT_LEASE_HOLDER
    elif Lz[lz, L_KIND] == RESERVED:
        code = R.LEASE_NOT_RELEASABLE
    elif Lz[lz, L_RESOLD] != 0:
        code = R.LEASE_RESOLD
    if code != R.OK:
        _reject(st.E, S, C, i, code)
        return
    Lz[lz, L_END] = S[S_NOW]
    if Lz[lz, L_ASLOT] >= 0:
        _uc_drop(st.UC, Lz[lz, L_ASLOT])
    _ev_lease(st.E, S, Lz, lz, EV_RELEASED, S[S_NOW])
    _drop_lease(st.pt, lz)


# nogil: the books of different GPU classes share nothing, so the engine and the benchmark may
# run them on threads at once (one core each)
@njit(cache=True, _nrt=False, nogil=True)
def process_batch(state, C, first, F):
    """Apply commands C[first:] in order.  Returns (status, index of the first command not applied).
    ``F`` (empty: not wanted): the index of each command's first event, written as it starts."""
    st = _bind(state)
    S = st.S
    n = C.shape[0]
    i = first
    firsts = F.shape[0] > 0
    while i < n:
        if not _space_ok(st):
            return ST_NEED_SPACE, i
        if firsts:
            F[i] = S[S_NEV]
        t = C[i]["time"]
        typ = C[i]["type"]
        if t < S[S_NOW]:
            _reject(st.E, S, C, i, R.STALE_TIME)
        else:
            # calls are guarded here: numba passes the state's ~150 words of array structs on the
            # stack to every call that is not inlined, and most commands have no timer or re-offer due
            if _tm_due(st.TM, st.TF, S, t):
                if not _advance(st, t):
                    return ST_NEED_SPACE, i
            elif t > S[S_NOW]:
                S[S_NOW] = t
            if S[S_RON] > 0:
                _run_reoffers(st)  # R4: exactly as a clock command would, re-offers included
            if typ == CMD_ASK:
                _on_ask(st, C, i)
            elif typ == CMD_BID:
                _on_bid(st, C, i)
            elif typ == CMD_CANCEL:
                _on_cancel(st, C, i)
            elif typ == CMD_AMEND:
                _on_amend(st, C, i)
            elif typ == CMD_RELEASE:
                _on_release(st, C, i)
            elif typ != CMD_CLOCK:
                _reject(st.E, S, C, i, R.BAD_COMMAND)
            if S[S_RON] > 0:
                _run_reoffers(st)
        if S[S_ERR] != 0:
            return ST_ERROR, i
        i += 1
    return ST_DONE, n


# ======================================================================= inspection
@njit(cache=True)
def _state_hash(st):
    O = st.O
    Lz = st.Lz
    S = st.S
    w = np.zeros(20, dtype=np.int64)
    w[0] = 0
    w[1] = S[S_NOW]
    w[2] = S[S_SEQ]
    w[3] = S[S_LASTOID]
    w[4] = S[S_NEXTTID]
    h = hash_words(w, 5)
    for o in range(S[S_OHIGH]):
        if O[o, O_LIVE] != LIVE_RESTING:
            continue
        w[0] = 1
        w[1] = O[o, O_OID]
        w[2] = O[o, O_ACC]
        w[3] = O[o, O_SIDE]
        w[4] = O[o, O_KIND]
        w[5] = O[o, O_TIF]
        w[6] = O[o, O_GPUS]
        w[7] = O[o, O_REM]
        w[8] = O[o, O_HOURS]
        w[9] = O[o, O_PRICE]
        w[10] = O[o, O_SPOT]
        w[11] = O[o, O_START]
        w[12] = O[o, O_END]
        w[13] = O[o, O_MINH]
        w[14] = O[o, O_BLOCK]
        w[15] = O[o, O_EXP]
        w[16] = O[o, O_LEASE]
        w[17] = O[o, O_POST]
        h += hash_words(w, 18)
    for lz in range(S[S_LHIGH]):
        if Lz[lz, L_LIVE] != 1 or Lz[lz, L_END] <= S[S_NOW]:
            continue
        w[0] = 2
        w[1] = Lz[lz, L_TID]
        w[2] = Lz[lz, L_ASK]
        w[3] = Lz[lz, L_BID]
        w[4] = Lz[lz, L_BUYER]
        w[5] = Lz[lz, L_PROV]
        w[6] = Lz[lz, L_KIND]
        w[7] = Lz[lz, L_GPUS]
        w[8] = Lz[lz, L_START]
        w[9] = Lz[lz, L_END]
        w[10] = Lz[lz, L_PRICE]
        w[11] = Lz[lz, L_RESOLD]
        h += hash_words(w, 12)
    return h


@njit(cache=True)
def _crossing_pairs(st):
    O = st.O
    out = []
    for b in range(st.S[S_OHIGH]):
        if O[b, O_LIVE] != LIVE_RESTING or O[b, O_SIDE] != SIDE_BID:
            continue
        for a in range(st.S[S_OHIGH]):
            if O[a, O_LIVE] == LIVE_RESTING and O[a, O_SIDE] == SIDE_ASK:
                if _fill_qty(O, st.Lz, st.S, st.W, st.UC, b, a, O[b, O_REM]) > 0:
                    out.append((O[b, O_OID], O[a, O_OID]))
    return out


# ======================================================================= invariants
# `NumbaBook.validate()`: every derived structure checked against the order and lease rows.  The
# checks live here, beside what they check, so that numba's cache (keyed on this file's stamp)
# never runs them against another version of the layout; the last section of this file holds the
# list of the invariants, their messages and the numpy form used without the compiler.  Each
# check returns 0 or an error code E_*, with what it found in err[1:4].
(E_OK, E_OHIGH, E_LHIGH, E_NORD, E_NLEASE, E_ERR, E_OLIVE, E_OSIDE, E_OOID, E_LLIVE, E_LTID, E_LEND,
 E_LNOW, E_OFREE_RANGE, E_OFREE_LIVE, E_OFREE_TWICE, E_OFREE_COUNT, E_LFREE_RANGE, E_LFREE_LIVE,
 E_LFREE_TWICE, E_LFREE_COUNT, E_LT_EMPTY, E_LAD_ROW, E_LAD_TWICE, E_LAD_PREV, E_LAD_WRONG, E_LAD_ORDER,
 E_LAD_TAIL, E_LAD_MISSING, E_BM_LADDER, E_BS, E_BM_BEYOND, E_BS_BEYOND, E_NOW_MISSING, E_NOW_EMPTY,
 E_HOUR_MISSING, E_HOUR_EMPTY, E_AG, E_BG, E_BIDTOP, E_HK_MISSING, E_HK_COUNT, E_LK_MISSING, E_LK_COUNT,
 E_LL_ROW, E_LL_TWICE, E_LL_PREV, E_LL_WRONG, E_LL_BID, E_LL_MISSING, E_LL_DETACHED, E_SUM, E_LMAXEND,
 E_NEXTSTART, E_UC_TAG, E_UC_RANGE, E_UC_ORDER, E_UC_VALUE, E_TM_SIZE, E_TM_HEAP, E_TM_DUE, E_TM_LIMIT,
 E_T_REF, E_TF_ROW, E_TF_TWICE, E_TF_BUCKET, E_TF_COUNT, E_TF_NBUCKET, E_TF_NOVER, E_TF_OVER, E_TF_FREE,
 E_TF_LIMIT, E_T_EXP, E_T_ASKSTART, E_T_LEASE_END, E_T_LEASE_START, E_RON, E_PEND, E_TFHIGH) = range(79)
_IV_INDEX_OF = np.array([LAD_ASK_FIRM, LAD_ASK_SPOT] + [LAD_BID_OD] * NHB + [LAD_BID_SPOT] * NHB, dtype=np.int64)


@njit(cache=True)
def _iv_bit(B, r, i):
    return (B[r, i >> 6] >> np.uint64(i & 63)) & np.uint64(1) != np.uint64(0)


@njit(cache=True)
def _iv_fail(err, code, a, b, c):
    err[0] = code
    err[1] = a
    err[2] = b
    err[3] = c
    return code


@njit(cache=True)
def _iv_rows(st, err):
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    oh = S[S_OHIGH]
    lh = S[S_LHIGH]
    if oh < 0 or oh > O.shape[0]:
        return _iv_fail(err, E_OHIGH, oh, O.shape[0], 0)
    if lh < 0 or lh > Lz.shape[0]:
        return _iv_fail(err, E_LHIGH, lh, Lz.shape[0], 0)
    if S[S_ERR] != 0:
        return _iv_fail(err, E_ERR, S[S_ERR], 0, 0)
    now = S[S_NOW]
    nord = 0
    for o in range(oh):
        live = O[o, O_LIVE]
        if live == LIVE_RESTING:
            nord += 1
            if O[o, O_SIDE] != SIDE_ASK and O[o, O_SIDE] != SIDE_BID:
                return _iv_fail(err, E_OSIDE, o, O[o, O_SIDE], 0)
            if O[o, O_OID] <= 0 or O[o, O_OID] > S[S_LASTOID]:
                return _iv_fail(err, E_OOID, o, O[o, O_OID], S[S_LASTOID])
        elif live != LIVE_FREE:
            return _iv_fail(err, E_OLIVE, o, live, 0)
    if nord != S[S_NORD]:
        return _iv_fail(err, E_NORD, S[S_NORD], nord, 0)
    nl = 0
    for lz in range(lh):
        live = Lz[lz, L_LIVE]
        if live == 1:
            nl += 1
            if Lz[lz, L_TID] <= 0 or Lz[lz, L_TID] >= S[S_NEXTTID]:
                return _iv_fail(err, E_LTID, lz, Lz[lz, L_TID], S[S_NEXTTID])
            if Lz[lz, L_END] <= now:
                return _iv_fail(err, E_LEND, lz, Lz[lz, L_END], now)
            if Lz[lz, L_NOW] != (1 if Lz[lz, L_START] <= now else 0):
                return _iv_fail(err, E_LNOW, lz, Lz[lz, L_NOW], Lz[lz, L_START])
        elif live != 0:
            return _iv_fail(err, E_LLIVE, lz, live, 0)
    if nl != S[S_NLEASE]:
        return _iv_fail(err, E_NLEASE, S[S_NLEASE], nl, 0)
    # free lists: every used row that is not live, once
    seen = np.zeros(max(oh, 1), dtype=np.bool_)
    n = 0
    o = S[S_OFREE]
    while o != -1:
        if o < 0 or o >= oh:
            return _iv_fail(err, E_OFREE_RANGE, o, oh - 1, 0)
        if O[o, O_LIVE] != LIVE_FREE:
            return _iv_fail(err, E_OFREE_LIVE, o, O[o, O_LIVE], 0)
        if seen[o]:
            return _iv_fail(err, E_OFREE_TWICE, o, 0, 0)
        seen[o] = True
        n += 1
        o = O[o, O_FREE]
    if n != oh - nord:
        return _iv_fail(err, E_OFREE_COUNT, n, oh - nord, 0)
    seen = np.zeros(max(lh, 1), dtype=np.bool_)
    n = 0
    lz = S[S_LFREE]
    while lz != -1:
        if lz < 0 or lz >= lh:
            return _iv_fail(err, E_LFREE_RANGE, lz, lh - 1, 0)
        if Lz[lz, L_LIVE] != 0:
            return _iv_fail(err, E_LFREE_LIVE, lz, 0, 0)
        if seen[lz]:
            return _iv_fail(err, E_LFREE_TWICE, lz, 0, 0)
        seen[lz] = True
        n += 1
        lz = Lz[lz, L_FREE]
    if n != lh - nl:
        return _iv_fail(err, E_LFREE_COUNT, n, lh - nl, 0)
    return E_OK


@njit(cache=True)
def _iv_ladders(st, err, lads, lvls):
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
            return _iv_fail(err, E_BIDTOP, S[S_BIDTOP], lad, lvl)
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
                return _iv_fail(err, E_LAD_ROW, lad, lvl, x)
            if on[x] & (1 << lad) or steps > nord:
                return _iv_fail(err, E_LAD_TWICE, lad, lvl, x)
            on[x] |= 1 << lad
            steps += 1
            if O[x, prv] != prev:
                return _iv_fail(err, E_LAD_PREV, lad, lvl, x)
            if ask:
                right = O[x, O_SIDE] == SIDE_ASK and O[x, col] > 0
            else:
                k = O[x, O_KIND]
                right = O[x, O_SIDE] == SIDE_BID and (
                    (lad == LAD_BID_SPOT and k == SPOT) or (lad == LAD_BID_OD and k == ON_DEMAND)
                    or (lad == LAD_BID_RES and k == RESERVED))
            if not right or (O[x, col] - P[P_MIN_PRICE]) // P[P_TICK] != lvl:
                return _iv_fail(err, E_LAD_WRONG, lad, lvl, x)
            if O[x, O_OID] <= last:
                return _iv_fail(err, E_LAD_ORDER, lad, lvl, x)
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
            return _iv_fail(err, E_LAD_TAIL, lad, lvl, prev)
        if ask:
            if AG[lad, lvl, AG_END] < maxend:
                return _iv_fail(err, E_AG, lad, lvl, AG_END)
            if AG[lad, lvl, AG_START] > minstart:
                return _iv_fail(err, E_AG, lad, lvl, AG_START)
            if AG[lad, lvl, AG_MINH] > minminh:
                return _iv_fail(err, E_AG, lad, lvl, AG_MINH)
            if AG[lad, lvl, AG_FREE] < maxfree:
                return _iv_fail(err, E_AG, lad, lvl, AG_FREE)
            if is_open >= 0 and not _iv_bit(BM, NOWROW + lad, lvl):
                return _iv_fail(err, E_NOW_MISSING, lad, lvl, is_open)
        else:
            if AG[lad, lvl, BG_MINH] > minh:
                return _iv_fail(err, E_BG, lad, lvl, BG_MINH)
            if AG[lad, lvl, BG_MAXH] < maxh:
                return _iv_fail(err, E_BG, lad, lvl, BG_MAXH)
            if AG[lad, lvl, BG_MINBLK] > minblk:
                return _iv_fail(err, E_BG, lad, lvl, BG_MINBLK)
            if AG[lad, lvl, BG_MAXSTART] < maxstart:
                return _iv_fail(err, E_BG, lad, lvl, BG_MAXSTART)
            if AG[lad, lvl, BG_MINEND] > minend:
                return _iv_fail(err, E_BG, lad, lvl, BG_MINEND)
            if AG[lad, lvl, BG_STALE] != 0 and AG[lad, lvl, BG_STALE] != 1:
                return _iv_fail(err, E_BG, lad, lvl, BG_STALE)
            if lad == LAD_BID_OD or lad == LAD_BID_SPOT:
                base = HOURROW + (NHB if lad == LAD_BID_SPOT else 0)
                for k in range(NHB):
                    if minh <= (1 << k) and not _iv_bit(BM, base + k, lvl):
                        return _iv_fail(err, E_HOUR_MISSING, lad, lvl, base + k)
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
            return _iv_fail(err, E_LAD_MISSING, o, lad, 0)
    return E_OK


@njit(cache=True)
def _iv_maps(st, err, hk_keys, lk_keys):
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    n = 0
    for o in range(S[S_OHIGH]):
        if O[o, O_LIVE] == LIVE_RESTING:
            n += 1
            got = _map_get(st.HK, st.HV, O[o, O_OID])
            if got != o:
                return _iv_fail(err, E_HK_MISSING, O[o, O_OID], o, got)
    if hk_keys != n:
        return _iv_fail(err, E_HK_COUNT, hk_keys, n, 0)
    n = 0
    for lz in range(S[S_LHIGH]):
        if Lz[lz, L_LIVE] == 1:
            n += 1
            got = _map_get(st.LK, st.LV, Lz[lz, L_TID])
            if got != lz:
                return _iv_fail(err, E_LK_MISSING, Lz[lz, L_TID], lz, got)
    if lk_keys != n:
        return _iv_fail(err, E_LK_COUNT, lk_keys, n, 0)
    return E_OK


@njit(cache=True)
def _iv_usage_at(Lz, head, t, spot):
    """GPUs the leases of the list at head hold at time t (firm leases only, or all: spot)."""
    u = 0
    x = head
    while x >= 0:
        if Lz[x, L_START] <= t < Lz[x, L_END] and (spot or Lz[x, L_KIND] != SPOT):
            u += Lz[x, L_GPUS]
        x = Lz[x, L_NEXT]
    return u


@njit(cache=True)
def _iv_cached_at(UC, off, t, c):
    """The usage function at off at time t (column c: 1 firm, 2 all)."""
    v = 0
    k = off + 1
    e = k + 3 * UC[off]
    while k < e and UC[k] <= t:
        v = UC[k + c]
        k += 3
    return v


@njit(cache=True)
def _iv_leases(st, err, tags):
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
                return _iv_fail(err, E_LL_BID, a, O[a, O_LHEAD], 0)
            continue
        sums[:] = 0
        prev = -1
        x = O[a, O_LHEAD]
        while x >= 0:
            if x >= lh or Lz[x, L_LIVE] != 1:
                return _iv_fail(err, E_LL_ROW, a, x, 0)
            if on[x]:
                return _iv_fail(err, E_LL_TWICE, a, x, 0)
            on[x] = True
            if Lz[x, L_PREV] != prev:
                return _iv_fail(err, E_LL_PREV, a, x, 0)
            if Lz[x, L_ASLOT] != a or Lz[x, L_ASK] != O[a, O_OID]:
                return _iv_fail(err, E_LL_WRONG, a, x, 0)
            g = Lz[x, L_GPUS]
            spot = Lz[x, L_KIND] == SPOT
            sums[1 if spot else 0] += g
            if Lz[x, L_NOW] == 1:
                sums[3 if spot else 2] += g
            elif Lz[x, L_START] < O[a, O_NEXTSTART]:
                return _iv_fail(err, E_NEXTSTART, a, O[a, O_NEXTSTART], Lz[x, L_START])
            if Lz[x, L_END] > O[a, O_LMAXEND]:
                return _iv_fail(err, E_LMAXEND, a, O[a, O_LMAXEND], Lz[x, L_END])
            prev = x
            x = Lz[x, L_NEXT]
        if O[a, O_FSUM] != sums[0]:
            return _iv_fail(err, E_SUM, a, 0, sums[0])
        if O[a, O_SSUM] != sums[1]:
            return _iv_fail(err, E_SUM, a, 1, sums[1])
        if O[a, O_UNF] != sums[2]:
            return _iv_fail(err, E_SUM, a, 2, sums[2])
        if O[a, O_UNS] != sums[3]:
            return _iv_fail(err, E_SUM, a, 3, sums[3])
    for lz in range(lh):
        if Lz[lz, L_LIVE] != 1 or on[lz]:
            continue
        a = Lz[lz, L_ASLOT]
        if a != -1:
            return _iv_fail(err, E_LL_MISSING, lz, a, 0)
        o = _map_get(st.HK, st.HV, Lz[lz, L_ASK])
        if o >= 0 and O[o, O_SIDE] == SIDE_ASK:
            return _iv_fail(err, E_LL_DETACHED, lz, o, 0)
    # usage functions: each tag's ask, its place in the pool, and its values from now on
    used = UC_POOL + UC[UC_BUMP]
    for h in tags:
        x = UC[h]
        a = (x & UC_LOW) - 1
        off = x >> 32
        if a < 0 or a >= oh or a & (UC_TAGS - 1) != h or O[a, O_LIVE] != LIVE_RESTING or O[a, O_SIDE] != SIDE_ASK:
            return _iv_fail(err, E_UC_TAG, h, a, 0)
        if off < UC_POOL or used > UC.shape[0] or off + 1 > used or off + 1 + 3 * UC[off] > used or UC[off] < 0:
            return _iv_fail(err, E_UC_RANGE, h, off, 0)
        m = UC[off]
        for i in range(1, m):
            if UC[off + 1 + 3 * i] <= UC[off + 1 + 3 * (i - 1)]:
                return _iv_fail(err, E_UC_ORDER, h, i, 0)
        # both are step functions: compare them at now and at every step of either after now
        head = O[a, O_LHEAD]
        for c in (1, 2):
            spot = c == 2
            t = now
            while True:
                want = _iv_usage_at(Lz, head, t, spot)
                if _iv_cached_at(UC, off, t, c) != want:
                    return _iv_fail(err, E_UC_VALUE, a, t, want)
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
def _iv_timer(st, err, when, kind, key, ref, flags):
    """One timer: its row must lie in the used rows; mark what it serves when it is live."""
    O = st.O  # noqa: E741
    Lz = st.Lz
    S = st.S
    if when <= S[S_NOW]:
        return _iv_fail(err, E_TM_DUE, when, kind, S[S_NOW])
    if kind == T_EXPIRE or kind == T_ASK_START:
        if ref < 0 or ref >= S[S_OHIGH]:
            return _iv_fail(err, E_T_REF, kind, ref, 0)
        if O[ref, O_LIVE] == LIVE_RESTING and O[ref, O_OID] == key:
            if kind == T_EXPIRE and O[ref, O_EXP] == when:
                flags[ref, 0] = True
            if kind == T_ASK_START and O[ref, O_START] == when:
                flags[ref, 1] = True
    elif kind == T_LEASE_END or kind == T_LEASE_START:
        if ref < 0 or ref >= S[S_LHIGH]:
            return _iv_fail(err, E_T_REF, kind, ref, 0)
        if Lz[ref, L_LIVE] == 1 and Lz[ref, L_TID] == key:
            if kind == T_LEASE_END and Lz[ref, L_END] == when:
                flags[ref, 2] = True
            if kind == T_LEASE_START and Lz[ref, L_START] == when:
                flags[ref, 3] = True
    else:
        return _iv_fail(err, E_T_REF, kind, ref, 0)
    return E_OK


@njit(cache=True)
def _iv_timers(st, err, buckets):
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
        return _iv_fail(err, E_TF_LIMIT, limit, now, 0)
    n = S[S_TMN]
    if n < 0 or n > TM.shape[0]:
        return _iv_fail(err, E_TM_SIZE, n, TM.shape[0], 0)
    for i in range(n):
        if i > 0:
            p = (i - 1) >> 2
            if TM[i, 0] < TM[p, 0] or (TM[i, 0] == TM[p, 0] and (
                    TM[i, 1] < TM[p, 1] or (TM[i, 1] == TM[p, 1] and TM[i, 2] < TM[p, 2]))):
                return _iv_fail(err, E_TM_HEAP, i, p, 0)
        if limit <= TM[i, 0] < TIME_CAP:
            return _iv_fail(err, E_TM_LIMIT, TM[i, 0], limit, 0)
        code = _iv_timer(st, err, TM[i, 0], TM[i, 1], TM[i, 2], TM[i, 3], flags)
        if code:
            return code
    high = TF[TFH + 1, TF_HIGH]
    if high < TF_BASE or high > TF.shape[0]:
        return _iv_fail(err, E_TFHIGH, high, TF.shape[0], 0)
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
                    return _iv_fail(err, E_TF_ROW, b, x, 0)
                if seen[x - TF_BASE] or cnt > high:
                    return _iv_fail(err, E_TF_TWICE, x, 0, 0)
                seen[x - TF_BASE] = True
                cnt += 1
                hb = TF[x, 0] // HOUR
                if TF[x, 0] < limit or hb - base >= NBK or hb & (NBK - 1) != b:
                    return _iv_fail(err, E_TF_BUCKET, b, x, 0)
                code = _iv_timer(st, err, TF[x, 0], TF[x, 1], TF[x, 2], TF[x, 3], flags)
                if code:
                    return code
                r = TF[x, TF_NEXT]
        if cnt != TF[b, 0]:
            return _iv_fail(err, E_TF_COUNT, b, cnt, TF[b, 0])
        total += cnt
    if total != TF[TFH, TF_NBUCKET]:
        return _iv_fail(err, E_TF_NBUCKET, total, TF[TFH, TF_NBUCKET], 0)
    cnt = 0
    r = TF[TFH, TF_OVER]
    while r > 0:
        x = r - 1
        if x < TF_BASE or x >= high or TF[x, 1] < 0:
            return _iv_fail(err, E_TF_ROW, -1, x, 0)
        if seen[x - TF_BASE]:
            return _iv_fail(err, E_TF_TWICE, x, 0, 0)
        seen[x - TF_BASE] = True
        cnt += 1
        if TF[x, 0] < TF[TFH + 1, TF_OMIN] or TF[x, 0] < limit:
            return _iv_fail(err, E_TF_OVER, x, TF[x, 0], 0)
        code = _iv_timer(st, err, TF[x, 0], TF[x, 1], TF[x, 2], TF[x, 3], flags)
        if code:
            return code
        r = TF[x, TF_NEXT]
    if cnt != TF[TFH, TF_NOVER]:
        return _iv_fail(err, E_TF_NOVER, cnt, TF[TFH, TF_NOVER], 0)
    free = 0
    r = TF[TFH, TF_FREE]
    while r > 0:
        x = r - 1
        if x < TF_BASE or x >= high or TF[x, 1] != -1 or seen[x - TF_BASE]:
            return _iv_fail(err, E_TF_FREE, free, total + cnt, high)
        seen[x - TF_BASE] = True
        free += 1
        r = TF[x, TF_NEXT]
    if free + total + cnt != high - TF_BASE:
        return _iv_fail(err, E_TF_FREE, free, total + cnt, high)
    # every live row has the timers it needs
    for o in range(oh):
        if O[o, O_LIVE] != LIVE_RESTING:
            continue
        if O[o, O_EXP] > 0 and not flags[o, 0]:
            return _iv_fail(err, E_T_EXP, o, O[o, O_EXP], 0)
        if O[o, O_SIDE] == SIDE_ASK and O[o, O_START] > now and not flags[o, 1]:
            return _iv_fail(err, E_T_ASKSTART, o, O[o, O_START], 0)
    for lz in range(lh):
        if Lz[lz, L_LIVE] != 1:
            continue
        if not flags[lz, 2]:
            return _iv_fail(err, E_T_LEASE_END, lz, Lz[lz, L_END], 0)
        if Lz[lz, L_NOW] == 0 and not flags[lz, 3]:
            return _iv_fail(err, E_T_LEASE_START, lz, Lz[lz, L_START], 0)
    # re-offers run to the end within each command
    if S[S_RON] != 0:
        return _iv_fail(err, E_RON, S[S_RON], 0, 0)
    for o in range(oh):
        if O[o, O_LIVE] == LIVE_RESTING and O[o, O_PEND] != 0:
            return _iv_fail(err, E_PEND, o, 0, 0)
    return E_OK


@njit(cache=True)
def _iv_check(st, err, lads, lvls, hk_keys, lk_keys, tags, buckets):
    code = _iv_rows(st, err)
    if code == E_OK:
        code = _iv_ladders(st, err, lads, lvls)
    if code == E_OK:
        code = _iv_maps(st, err, hk_keys, lk_keys)
    if code == E_OK:
        code = _iv_leases(st, err, tags)
    if code == E_OK:
        code = _iv_timers(st, err, buckets)
    return code


@njit(cache=True)
def _iv_low_bit(x, y):
    """The lowest bit set in x ^ y (x != y)."""
    d = x ^ y
    b = 0
    while (d >> np.uint64(b)) & np.uint64(1) == np.uint64(0):
        b += 1
    return b


@njit(cache=True)
def _iv_levels(st, err, levels):
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
                    return _iv_fail(err, E_LT_EMPTY, lad, lvl, LT[lad, lvl])
                if LH[lad, lvl] >= 0:
                    word |= np.uint64(1) << np.uint64(b)
            if BM[lad, w] != word:
                lvl = 64 * w + _iv_low_bit(BM[lad, w], word)
                return _iv_fail(err, E_BM_LADDER, lad, lvl, 1 if _iv_bit(BM, lad, lvl) else 0)
    for r in range(NOWROW, NBM):
        lad = _IV_INDEX_OF[r - NOWROW]
        for w in range(nw):
            extra = BM[r, w] & ~BM[lad, w]
            if extra != np.uint64(0):
                lvl = 64 * w + _iv_low_bit(extra, np.uint64(0))
                if r - NOWROW < 2:
                    return _iv_fail(err, E_NOW_EMPTY, lad, lvl, 0)
                return _iv_fail(err, E_HOUR_EMPTY, lad, lvl, r)
    last = levels - 64 * (nw - 1)
    for r in range(NBM):
        if last < 64 and BM[r, nw - 1] >> np.uint64(last) != np.uint64(0):
            return _iv_fail(err, E_BM_BEYOND, r, nw - 1, 0)
        for w in range(BS.shape[1] * 64):
            if _iv_bit(BS, r, w) != (w < nw and BM[r, w] != np.uint64(0)):
                if w >= nw:
                    return _iv_fail(err, E_BS_BEYOND, r, w >> 6, 0)
                return _iv_fail(err, E_BS, r, w, 1 if _iv_bit(BS, r, w) else 0)
    return E_OK


@njit(cache=True)
def _iv_nonempty(BM):
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
                b = _iv_low_bit(word, np.uint64(0))
                lads[k] = lad
                lvls[k] = 64 * w + b
                k += 1
                word &= word - np.uint64(1)
    return lads, lvls


@njit(cache=True)
def _iv_keys(K, top):
    """The keys in map K, when every id handed out is at most top.  A key enters only by
    `_map_put`, at its home slot or after it with no empty slot between.  While ids stay below
    2**20 and below the table's size an id's home is the id itself, so keys can only be in slots
    1 .. top, the occupied run after them and, when that run wraps, slot 0: those are counted
    (the whole table is scanned once ids have spread over it)."""
    n = K.shape[0]
    c = 0
    if top >= (1 << 20) or top >= n - 1:
        for i in range(n):
            if K[i] != 0:
                c += 1
        return c
    i = 1
    while i < n and (i <= top or K[i] != 0):
        if K[i] != 0:
            c += 1
        i += 1
    if i == n and K[0] != 0:
        c += 1
    return c


@njit(cache=True)
def _iv_check_all(st, err, levels):
    """Everything, jitted: the level checks, the table scans, then `_iv_check`."""
    code = _iv_levels(st, err, levels)
    if code != E_OK:
        return code
    lads, lvls = _iv_nonempty(st.BM)
    hk = _iv_keys(st.HK, st.S[S_LASTOID])
    lk = _iv_keys(st.LK, st.S[S_NEXTTID] - 1)
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
    return _iv_check(st, err, lads, lvls, hk, lk, tags, buckets)


@_hot
def _tm_spread(TM, TF, S):
    """After a restore: the sorted timers TM[:S_TMN] are split between the heap (those due
    before the near limit, and any at or after TIME_CAP) and TF."""
    n = S[S_TMN]
    TF[TFH, TF_LIMIT] = _hour_after(S[S_NOW])
    k = 0
    for i in range(n):
        if TM[i, 0] < TF[TFH, TF_LIMIT] or TM[i, 0] >= TIME_CAP:
            _hmove(TM, k, i)  # a sorted sequence stays sorted: a heap
            k += 1
        else:
            _tpush(TM, TF, S, TM[i, 0], TM[i, 1], TM[i, 2], TM[i, 3])
    S[S_TMN] = k


def _tf_new(rows: int, old: np.ndarray | None = None) -> np.ndarray:
    """A TF array with room for `rows` timers (copying `old`'s, its new rows free)."""
    TF = np.zeros((TF_BASE + rows, 5), dtype=np.int64)
    if old is not None:
        TF[: old.shape[0]] = old
    else:
        TF[TFH + 1, TF_HIGH] = TF_BASE
        TF[TFH + 1, TF_OMIN] = BIG
        TF[TFH, TF_LIMIT] = HOUR  # the near limit of a fresh book (time 0): after now, as `check` wants
    return TF


@_hot
def _rehash(HK, HV, keys, vals):
    HK[:] = 0
    for j in range(keys.shape[0]):
        _map_put(HK, HV, keys[j], vals[j])


# ======================================================================= the Python face
class BookCapacityError(RuntimeError):
    """A single command needed more leases or events than one command may produce."""


def _c_order(st: State) -> State:
    """st, checked: the jitted code rebuilds its arrays from address and shape, in C order."""
    for name, a in st._asdict().items():
        if not a.flags.c_contiguous:
            raise ValueError(f"the book's array {name} is not C-contiguous")
    return st


def _check_layout(arrays: dict[str, np.ndarray], fresh: State) -> None:
    """A snapshot's arrays are those of `LAYOUT`: the same names as a fresh book's (less what
    snapshots leave out), the same shapes but for the rows of the pools, tables and heaps."""
    want = set(State._fields) - {"E", "W", "UC", "TF", "PT"}
    if set(arrays) != want:
        raise ValueError(f"snapshot arrays {sorted(arrays)} are not those of layout {LAYOUT}")
    for name in want:
        a, f = arrays[name], getattr(fresh, name)
        skip = 1 if name in ("O", "Lz", "HK", "HV", "LK", "LV", "TM", "RO") else 0  # any number of rows
        if a.dtype != f.dtype or a.ndim != f.ndim or a.shape[skip:] != f.shape[skip:]:
            raise ValueError(f"snapshot array {name} is {a.dtype}{a.shape}, not as in layout {LAYOUT} "
                             f"({f.dtype}{f.shape})")
    for keys, vals in (("HK", "HV"), ("LK", "LV")):
        n = arrays[keys].shape[0]
        if n < 2 or n & (n - 1) or arrays[vals].shape != (n,):
            raise ValueError(f"snapshot maps {keys}/{vals} are not a power-of-two table")
    if int(arrays["S"][S_OHIGH]) > arrays["O"].shape[0] or int(arrays["S"][S_LHIGH]) > arrays["Lz"].shape[0]:
        raise ValueError("snapshot's high-water marks lie beyond its rows")


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


_TM_ROOM = "_tm_room"  # in a capture(): the timer heap's rows (TM is padded to them when encoded)
# In a snapshot, arrays that are mostly empty (per-price ladders and aggregates, bitmaps) are
# stored as the elements that differ from an empty book's, and the hash maps (rebuilt by
# `restore` from the live rows) as their shape only: ``NAME__shape``, ``NAME__fill`` (an empty
# book's values at index 0 of the longest axis: the same all along it), ``NAME__at`` (flat indices)
# and ``NAME__val``.  An empty book's snapshot went from 45 MB to deflate (~140 ms of CPU) to a
# few kilobytes.
_SPARSE = ("AG", "LH", "LT", "RO", "BM", "BS", "TM")
_REBUILT = ("HK", "HV", "LK", "LV")


def _fills(fresh: State) -> dict[str, np.ndarray]:
    """Per `_SPARSE` array, a fresh book's values at index 0 of its longest axis (in a fresh book,
    the same all along it).  Any fill gives a correct sparse form; a fresh book's, the smallest."""
    out = {}
    for name in _SPARSE:
        a = getattr(fresh, name)
        out[name] = a.take([0], axis=int(np.argmax(a.shape)))
    return out


def _sparse(arrays: dict[str, np.ndarray], fills: dict[str, np.ndarray]) -> None:
    """Replace the `_SPARSE` arrays that have a fill, and the `_REBUILT` ones, by their sparse form."""
    for name in _SPARSE + _REBUILT:
        a = arrays.get(name)
        if a is None:
            continue
        del arrays[name]
        if name in _SPARSE:
            fill = fills[name]
            at = np.flatnonzero(a != fill)
        else:
            fill = np.zeros((1,) * a.ndim, dtype=a.dtype)
            at = np.zeros(0, dtype=np.int64)
        arrays[name + "__shape"] = np.array(a.shape, dtype=np.int64)
        arrays[name + "__fill"] = fill
        arrays[name + "__at"] = at.astype(np.int64, copy=False)
        arrays[name + "__val"] = a.reshape(-1)[at]


def _dense(arrays: dict[str, np.ndarray]) -> None:
    """The inverse of `_sparse` (in place); arrays stored whole (older snapshots) stay as they are."""
    for key in [k for k in arrays if k.endswith("__shape")]:
        name = key[: -len("__shape")]
        shape = tuple(int(n) for n in arrays.pop(key))
        fill, at, val = arrays.pop(name + "__fill"), arrays.pop(name + "__at"), arrays.pop(name + "__val")
        a = np.broadcast_to(fill, shape).copy()
        a.reshape(-1)[at] = val
        arrays[name] = a


class NumbaBook:
    """One GPU class's book over numba-jitted functions; same interface as ReferenceBook."""

    def __init__(self, config: BookConfig | None = None, orders: int = 1 << 16) -> None:
        self.cfg = config or BookConfig()
        levels = self.cfg.levels
        nw = (levels + 63) // 64
        ns = (nw + 63) // 64
        O = np.zeros((orders, NO), dtype=np.int64)  # noqa: E741  (rows are taken from S_OHIGH on)
        nl = 2 * LEASE_RESERVE  # growth copies rows: start with room for 65,536 running leases
        Lz = np.zeros((nl, NL), dtype=np.int64)
        AG = np.zeros((NLAD, levels, NAG), dtype=np.int64)
        AG[:2, :, AG_END] = -BIG
        AG[:2, :, AG_START] = BIG
        AG[:2, :, AG_MINH] = BIG
        AG[:2, :, AG_FREE] = -BIG
        AG[2:, :, BG_MINH] = BIG
        AG[2:, :, BG_MAXH] = -BIG
        AG[2:, :, BG_MINBLK] = BIG
        AG[2:, :, BG_MAXSTART] = -BIG
        AG[2:, :, BG_MINEND] = BIG
        S = np.zeros(NS, dtype=np.int64)
        S[S_NEXTTID] = 1
        S[S_OFREE] = -1
        S[S_LFREE] = -1
        self.st = State(
            O=O,
            Lz=Lz,
            LH=np.full((NLAD, levels), -1, dtype=np.int64),
            LT=np.full((NLAD, levels), -1, dtype=np.int64),
            BM=np.zeros((NBM, nw), dtype=np.uint64),
            BS=np.zeros((NBM, ns), dtype=np.uint64),
            AG=AG,
            HK=np.zeros(_pow2_at_least(4 * orders), dtype=np.int64),
            HV=np.zeros(_pow2_at_least(4 * orders), dtype=np.int64),
            LK=np.zeros(_pow2_at_least(2 * nl), dtype=np.int64),
            LV=np.zeros(_pow2_at_least(2 * nl), dtype=np.int64),
            TM=np.zeros((2 * LEASE_RESERVE + 1024, 4), dtype=np.int64),
            TF=_tf_new(4 * LEASE_RESERVE),  # rows are touched only when used
            RO=np.zeros((LEASE_RESERVE + 1024, 4), dtype=np.int64),
            E=np.zeros(EVENT_RESERVE + 65536, dtype=EVENT_DTYPE),  # a batch of 4,096 commands gives ~8k events
            S=S,
            P=self.cfg.as_array(),
            W=np.zeros((7, 2 * nl + 2), dtype=np.int64),
            UC=np.zeros(UC_WORDS, dtype=np.int64),
            PT=np.zeros(NPT, dtype=np.int64),
        )
        self._fills = _fills(self.st)  # the empty values its snapshots leave out

    # ------------------------------------------------------------------ public API
    def process(self, commands: np.ndarray, firsts: np.ndarray | None = None) -> np.ndarray:
        """Apply a batch of command records; return the event records they produced.  ``firsts``
        (int64, one more than the commands): where each command's events start, then their count."""
        if commands.dtype != COMMAND_DTYPE:
            raise TypeError(f"commands must be an array of COMMAND_DTYPE records, not {commands.dtype}")
        C = np.ascontiguousarray(commands)
        F = _NO_FIRSTS if firsts is None else firsts
        self.st.S[S_NEV] = 0
        i = 0
        while True:
            status, i = process_batch(self.st, C, i, F)
            if status == ST_DONE:
                break
            if status == ST_ERROR:
                raise BookCapacityError(
                    f"command {i} needed more than {LEASE_RESERVE} leases or {EVENT_RESERVE} events; "
                    "the book is no longer consistent"
                )
            self._grow()
        # a byte copy: numpy copies a structured array field by field (~14x slower, 1 MB a batch)
        n = int(self.st.S[S_NEV])
        if firsts is not None:
            firsts[len(C)] = n
        out = np.empty(n, dtype=EVENT_DTYPE)
        out.view(np.uint8)[:] = self.st.E[:n].view(np.uint8)
        return out

    def state_hash(self) -> int:
        return int(_state_hash(self.st))

    def capture(self) -> dict[str, np.ndarray]:
        """What `snapshot()` holds, as copies of the book's arrays (no serialising): cheap enough
        to take between two batches; `encode_capture` makes the bytes, e.g. in a worker thread.
        The copies go into buffers the book keeps for the next capture once `encode_capture`
        of this one is done (fresh memory costs more than the copy: the kernel zeroes it)."""
        bufs = getattr(self, "_capture_bufs", None)
        if bufs is None or not self._capture_free:
            bufs = {} if bufs is None else None  # the first capture's copies become the buffers
        st = self.st

        def copy(key: str, src: np.ndarray, room: np.ndarray) -> np.ndarray:
            if bufs is None:
                return src.copy()
            buf = bufs.get(key)
            if buf is None or buf.dtype != room.dtype or buf.shape[1:] != room.shape[1:] or len(buf) < len(src):
                # room to grow (O and Lz: the rows used, and a quarter more)
                rows = min(len(room), max(len(src) + len(src) // 4, 1024))
                buf = bufs[key] = np.empty((rows, *room.shape[1:]), dtype=room.dtype)
            out = buf[: len(src)]
            np.copyto(out, src)
            return out

        made = ("TM", "S", "O", "Lz")  # below (a placeholder keeps the order of the arrays)
        arrays = {k: (None if k in made else copy(k, v, v)) for k, v in st._asdict().items()
                  if k not in ("E", "W", "UC", "TF", "PT")}
        # the timers, heap and TF together, as sorted rows (a heap of any arity)
        n = int(st.S[S_TMN])
        TF = st.TF[TF_BASE: st.TF[TFH + 1, TF_HIGH]]
        rows = np.concatenate([st.TM[:n], TF[TF[:, 1] >= 0, :4]])
        # the rows only: encode_capture pads them to the heap's size (zeros)
        arrays["TM"] = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
        arrays["S"] = st.S.copy()
        arrays["S"][S_TMN] = len(rows)
        arrays["O"] = copy("O", st.O[: st.S[S_OHIGH]], st.O)  # rows never used are left out
        arrays["Lz"] = copy("Lz", st.Lz[: st.S[S_LHIGH]], st.Lz)
        arrays[_TM_ROOM] = np.array([st.TM.shape[0]], dtype=np.int64)
        if bufs is not None:
            self._capture_bufs = bufs
            self._capture_free = False
            self._capture_owner = arrays
        return arrays

    def warm_capture(self) -> None:
        """Make (and fault in) the capture buffers now, e.g. at start-up, not at the first snapshot."""
        self.capture()
        self._capture_owner = None
        self._capture_free = True

    def encode_capture(self, arrays: dict[str, np.ndarray]) -> bytes:
        """The snapshot bytes of a `capture()` (after which its buffers serve the next capture)."""
        mine = arrays is getattr(self, "_capture_owner", None)
        arrays = dict(arrays)
        rows = arrays["TM"]
        arrays["TM"] = np.zeros((max(int(arrays.pop(_TM_ROOM)[0]), len(rows)), 4), dtype=np.int64)
        arrays["TM"][: len(rows)] = rows
        _sparse(arrays, self._fills)
        buf = io.BytesIO()
        np.savez(buf, LAYOUT=np.array([LAYOUT], dtype=np.int64), **arrays)
        if mine:
            self._capture_owner = None
            self._capture_free = True
        return buf.getvalue()

    def snapshot(self) -> bytes:
        return self.encode_capture(self.capture())

    @classmethod
    def restore(cls, config: BookConfig, blob: bytes) -> NumbaBook:
        """The book a `snapshot()` of this layout and configuration holds; ValueError for any other."""
        book = cls(config)
        with np.load(io.BytesIO(blob)) as z:
            arrays = {k: z[k] for k in z.files}
        _dense(arrays)
        layout = arrays.pop("LAYOUT", None)
        if layout is None or layout.shape != (1,) or int(layout[0]) != LAYOUT:
            got = "no layout record" if layout is None else f"layout {layout.tolist()}"
            raise ValueError(f"snapshot has {got}; this book restores layout {LAYOUT} only (replay the journal)")
        if "P" not in arrays or not np.array_equal(arrays["P"], config.as_array()):
            raise ValueError("snapshot was taken with another instrument configuration")
        _check_layout(arrays, book.st)
        arrays["E"] = book.st.E
        for name in ("O", "Lz"):  # back to the usual room (snapshots hold only the rows used)
            have, want = arrays[name], getattr(book.st, name)
            if have.shape[0] < want.shape[0]:
                arrays[name] = np.zeros_like(want)
                arrays[name][: have.shape[0]] = have
        for keys, vals, rows, live, idc in (("HK", "HV", "O", LIVE_RESTING, O_OID), ("LK", "LV", "Lz", 1, L_TID)):
            # the maps are rebuilt from the live rows: a snapshot never depends on the hash
            col = O_LIVE if rows == "O" else L_LIVE
            at = np.nonzero(arrays[rows][:, col] == live)[0]
            arrays[keys] = np.zeros_like(arrays[keys])
            arrays[vals] = np.zeros_like(arrays[vals])
            _rehash(arrays[keys], arrays[vals], arrays[rows][at, idc].copy(), at.astype(np.int64))
        arrays["W"] = np.zeros((7, 2 * arrays["Lz"].shape[0] + 2), dtype=np.int64)
        arrays["UC"] = np.zeros(UC_WORDS, dtype=np.int64)
        arrays["PT"] = np.zeros(NPT, dtype=np.int64)
        arrays["TF"] = _tf_new(arrays["TM"].shape[0])
        top = arrays["BM"].shape[1] * 64 - 1
        arrays["S"][S_BIDTOP] = max(_bm_next_down(arrays["BM"], arrays["BS"], lad, top)
                                    for lad in range(LAD_BID_OD, NLAD))
        _tm_spread(arrays["TM"], arrays["TF"], arrays["S"])  # the timers come sorted: a heap
        book.st = _c_order(State(**arrays))
        return book

    def crossing_pairs(self) -> list[tuple[int, int]]:
        return [(int(b), int(a)) for b, a in _crossing_pairs(self.st)]

    def resting_orders(self) -> int:
        return int(self.st.S[S_NORD])

    def quote(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
              account: int = 0, limit: int = 0) -> Quote:
        """What an IOC bid of these fields would fill now; changes nothing (orderbook/quote.py)."""
        req, out = self.quote_fills(kind, gpus, hours, start, block, account, limit)
        if req.reason:
            return req.refused()
        return req.answer([QuoteFill(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in out])

    def quote_fills(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
                    account: int = 0, limit: int = 0) -> tuple[QuoteRequest, np.ndarray]:
        """`quote`'s request check and its fills as an int64 array, one row per fill in the order
        the bid would fill: ``ask_oid, provider, gpus, price`` (no row when the request is refused).
        No Python object per fill: what the market-data products read (feeds/products.py)."""
        req = check_request(self.cfg, self.now, kind, gpus, hours, start, block, account, limit)
        if req.reason or req.end > INT64_MAX:  # no ask's window (int64) reaches that far
            return req, np.zeros((0, 4), dtype=np.int64)
        # each fill takes at least a block from a different resting ask
        out = np.zeros((max(1, min(req.gpus // req.block, int(self.st.S[S_NORD]))), 4), dtype=np.int64)
        acc = req.account if req.account <= INT64_MAX else 0  # no ask's account (int64) is that large
        n = _quote_walk(self.st, self.st.S.copy(), req.kind, acc, req.limit, req.hours, req.start,
                        req.block, req.gpus, out)
        if n < 0:
            raise AssertionError("quote: more fills than resting asks")
        return req, out[:n]

    def lease_count(self) -> int:
        return int(self.st.S[S_NLEASE])

    def validate(self) -> None:
        """Check the derived structures against the rows (`check`, section "invariants"); raises
        `orderbook.invariants.BookInvariantError` naming the first broken invariant."""
        if self.st.P.tolist() != self.cfg.as_array().tolist():
            raise BookInvariantError("config", "P differs from the book's configuration")
        check(self.st, self.cfg.levels)

    @property
    def now(self) -> int:
        return int(self.st.S[S_NOW])

    # ------------------------------------------------------------------ growth
    def _grow(self) -> None:
        st = self.st
        S = st.S
        changes: dict[str, np.ndarray] = {}
        if (S[S_OFREE] < 0 and S[S_OHIGH] >= st.O.shape[0]) or 2 * (S[S_NORD] + 1) > st.HK.shape[0]:
            old = st.O.shape[0]
            new = old + old // 2  # x1.5: deep books of resting orders waste less than with x2
            O = np.zeros((new, NO), dtype=np.int64)  # noqa: E741
            high = int(S[S_OHIGH])
            O[:high] = st.O[:high]  # rows from S_OHIGH on stay untouched
            live = np.nonzero(O[:, O_LIVE] == LIVE_RESTING)[0]
            size = _pow2_at_least(2 * new)  # load <= 1/2 at the new capacity
            HK = np.zeros(size, dtype=np.int64)
            HV = np.zeros(size, dtype=np.int64)
            _rehash(HK, HV, O[live, O_OID].copy(), live.astype(np.int64))
            changes.update(O=O, HK=HK, HV=HV)
        if S[S_NLEASE] + LEASE_RESERVE > st.Lz.shape[0] or 2 * (S[S_NLEASE] + LEASE_RESERVE) > st.LK.shape[0]:
            old = st.Lz.shape[0]
            # x1.5, enough: a book holds a few thousand running leases beside the 65,536 rows of
            # reserve, so the first growth (12 MB of fresh rows at x2, each page touched by the
            # free list) was a visible part of a 1M-command run
            new = max(old + old // 2, S[S_NLEASE] + LEASE_RESERVE)
            Lz = np.zeros((new, NL), dtype=np.int64)
            high = int(S[S_LHIGH])
            Lz[:high] = st.Lz[:high]
            live = np.nonzero(Lz[:, L_LIVE] == 1)[0]
            size = _pow2_at_least(2 * new)
            LK = np.zeros(size, dtype=np.int64)
            LV = np.zeros(size, dtype=np.int64)
            _rehash(LK, LV, Lz[live, L_TID].copy(), live.astype(np.int64))
            changes.update(Lz=Lz, LK=LK, LV=LV, W=np.zeros((7, 2 * new + 2), dtype=np.int64))
        far = int(st.TF[TFH, TF_NBUCKET] + st.TF[TFH, TF_NOVER])
        if far + 2 * LEASE_RESERVE + 4 > st.TF.shape[0] - TF_BASE:
            changes["TF"] = _tf_new(2 * (st.TF.shape[0] - TF_BASE), st.TF)
        bucket = int(st.TF[(int(st.TF[TFH, TF_LIMIT]) // HOUR) & (NBK - 1), 0])  # the next to enter the heap
        for name, key, need in (("TM", S_TMN, bucket + 2 * LEASE_RESERVE + 4), ("RO", S_RON, LEASE_RESERVE + 4),
                                ("E", S_NEV, EVENT_RESERVE)):
            arr = getattr(st, name)
            if S[key] + need > arr.shape[0]:
                bigger = np.zeros((2 * arr.shape[0],) + arr.shape[1:], dtype=arr.dtype)
                bigger[: S[key]] = arr[: S[key]]
                changes[name] = bigger
        self.st = _c_order(st._replace(**changes))


# ======================================================================= invariants: messages, numpy form
# `NumbaBook.validate()`: every derived structure of the numba book checked against its rows.
#
# The primary data of the numba book are its order rows (``O``), its lease rows (``Lz``) and the
# clocks in ``S``; everything else is derived from them and kept up to date incrementally
# (docs/orderbook.md).  `check(st)` recomputes what each derived structure must hold from the
# rows and raises `BookInvariantError` naming the first one that does not.  The checks are jitted
# functions in orderbook/fast.py (section "invariants": numba's cache is keyed on the file a
# function is in, so checks kept elsewhere could run, cached, against another version of the
# layout); this module holds their messages and the numpy form of the checks that read every
# level, used without the compiler.  The invariants:
#
# * ``order-rows`` / ``lease-rows`` — rows below the high-water marks are free or live (no order
#   left half-inserted), ids below the clocks' next ids, live leases end after now and count as
#   holding their ask (``L_NOW``) exactly when they have started;
# * ``counters`` — ``S_NORD`` / ``S_NLEASE`` count the live rows, the high-water marks lie inside
#   the pools, no batch error is pending;
# * ``order-free-list`` / ``lease-free-list`` — the free lists hold every used row that is not
#   live, once, and nothing above the high-water marks;
# * ``ladder-list`` — each price level's FIFO list (``LH``/``LT``, next/prev links) is a proper
#   doubly linked list of resting orders of that ladder and level, in arrival (order id) order,
#   and every resting order is on the ladder(s) it belongs to;
# * ``bitmap`` — the ladder rows of ``BM`` mark exactly the non-empty levels, ``BS`` marks exactly
#   the non-zero words of every ``BM`` row, no bit lies beyond the last level;
# * ``now-row`` — the *open now* rows (``NOWROW``) mark every level holding an ask that has
#   started and has a GPU free now (a superset), and only non-empty levels;
# * ``hour-row`` — the *short bids* rows (``HOURROW``) mark every level holding a bid of at most
#   2**k hours (a superset), and only non-empty levels;
# * ``ask-bounds`` / ``bid-bounds`` — each non-empty level's ``AG`` / ``BG`` bounds cover all its
#   orders (latest end, earliest start, least min_hours, most GPUs free now; shortest and longest
#   hours, least block, latest reserved start, earliest reserved end): bounds, not equalities;
# * ``bid-top`` — ``S_BIDTOP`` is at or above every non-empty bid level;
# * ``order-map`` / ``lease-map`` — ``HK``/``HV`` find every resting order's row by its id and
#   ``LK``/``LV`` every live lease's row by its trade id, and hold nothing else (counted over the
#   slots a key of an id handed out so far can occupy: the whole table once ids reach 2**20 or
#   the table's size, else slots 1 .. the last id and the occupied run after it);
# * ``lease-list`` — each ask's lease list is a doubly linked list of live leases of that ask;
#   every live lease is on its ask's list, or detached (``L_ASLOT`` −1) once its ask has gone;
#   a bid has no list;
# * ``lease-sums`` — an ask's ``O_FSUM`` / ``O_SSUM`` / ``O_UNF`` / ``O_UNS`` equal the sums over its
#   leases; ``O_LMAXEND`` is at or after every lease's end, ``O_NEXTSTART`` at or before every
#   start still to come;
# * ``usage-cache`` — each cached usage function (``UC``) belongs to a resting ask, lies inside
#   the pool, has increasing times, and from now on equals the usage of the ask's leases (firm
#   and all);
# * ``timers`` — the timer heap (``TM``) is a 4-ary heap of timers due after now and before the
#   near limit, each ``TF`` bucket holds the timers of its hour (counts, free rows and overflow
#   list consistent), every timer's row lies in the used rows, and every live row has the timers
#   it needs (expiry, window start, lease start and end);
# * ``reoffers`` — no re-offer is pending between commands;
# * ``config`` — ``P`` is the book's configuration (checked by `NumbaBook.validate`).
#
# It reads only the rows below the high-water marks (``S_OHIGH``, ``S_LHIGH``), the levels, the
# hash tables and ``UC``'s tags: fast enough to run after every command of the rule and
# differential tests.

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
