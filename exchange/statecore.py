"""The exchange state's per-event work, jitted: orders and leases as rows of int64 arrays.

`exchange.tables.ExchangeState` keeps here what `exchange.state.ReferenceState` (the plain-Python
specification, checked against this one by the tests) keeps in dicts of records:

* ``OT`` — one row of ``NO`` int64 per order remembered (open, or closed and among the newest
  `MAX_CLOSED_ORDERS`); ``omap`` — oid -> row; ``ofree`` — rows given back; strings as codes;
* ``LS`` — one row of ``NLS`` per lease remembered (live, or ended less than
  `LEASE_RETENTION_S` ago); ``lmap`` — `lease_key` -> row; ``lfree``; (``omap``, ``lmap`` and
  ``accs`` are `clearing.intmap` tables: `ExchangeState._room` makes room in them before a call)
* ``closed`` — a min-heap of the closed orders' ids (the lowest forgotten first);
* ``fheap`` — per class, a min-heap of rows ``(end + retention, trade id)``: when to forget a
  lease (lazily: an entry counts only if the lease still ends then);
* ``accs`` — account -> its place in ``OC``, whose rows are ``(open orders, first open order's
  row + 1)``, an account's open orders linked through ``O_NEXT``/``O_PREV`` (a place is never
  given back; ``newacc`` lists the accounts given one in this call, for the Python side's own
  copy of ``accs``, so that reading a count calls no jitted code);
* ``S`` — scalars (row high-water marks, free counts, heap sizes); ``FC`` — each class's
  ``fheap`` size; ``gone`` — ids of forgotten orders that carried a client order id (the
  Python side keeps those strings).

The caller makes room in every array for the events it hands over (one row per event at most).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from clearing import intmap
from clearing.core import _hold_per_gpu, _lease_value
from orderbook import jitcache
from orderbook.borrow import borrow
from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    SIDE_BID,
)

jitcache.use(__name__)

# order columns
(O_OID, O_BOOK, O_ACCOUNT, O_SIDE, O_GPUS, O_PRICE, O_TIME, O_STATUS, O_REM, O_FILLED, O_KIND, O_TIF, O_HOURS,
 O_BLOCK, O_SPOT, O_START, O_END, O_MINH, O_EXPIRE, O_LEASE, O_REASON, O_HOLD, O_HPG, O_COID) = range(24)
# ... and an open order's neighbours in its account's list of open orders (row + 1; 0: none)
O_NEXT, O_PREV = 24, 25
NO = 26
# order statuses (FREE: a row not in use; zero, so that fresh rows, zeroed lazily by the
# system, need no writing until they are used)
FREE, OPEN, FILLED, CANCELLED, EXPIRED = 0, 1, 2, 3, 4
STATUS_NAMES = {OPEN: "open", FILLED: "filled", CANCELLED: "cancelled", EXPIRED: "expired"}
# lease columns (L_ORD: the order leases were recorded in, from 1; 0 for a row not in use)
(L_BOOK, L_TID, L_BID, L_ASK, L_BUYER, L_PROV, L_KIND, L_GPUS, L_START, L_END, L_PRICE, L_TIME, L_RESALE,
 L_ENDED, L_COST, L_ORD) = range(16)
NLS = 16
ENDED_NAMES = {0: "", 1: "preempted", 2: "released"}
# scalars
S_OHW, S_NOFREE, S_LHW, S_NLFREE, S_NCLOSED, S_ORD, S_NGONE, S_MAXCLOSED, S_RETENTION, S_NACC, S_NNEW = range(11)
NS = 11
KEY_SHIFT = 40  # a lease's key: class index << KEY_SHIFT | trade id

_nj = njit(cache=True, nogil=True)


@_nj
def lease_key(book: int, tid: int) -> int:
    return book << KEY_SHIFT | tid


@_nj
def _push(heap: np.ndarray, n: int, key: int, val: int) -> int:
    """Push (key, val) on a min-heap of rows with ``n`` entries; returns the new size.  (The
    rows move up into the hole inline: a helper called per level costs its arrays' reference
    counts, atomic adds, at every level.)"""
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if heap[p, 0] < key or (heap[p, 0] == key and heap[p, 1] <= val):
            break
        heap[i, 0] = heap[p, 0]
        heap[i, 1] = heap[p, 1]
        i = p
    heap[i, 0] = key
    heap[i, 1] = val
    return n + 1


@_nj
def _pop(heap: np.ndarray, n: int) -> int:
    """Remove the smallest row of a heap of ``n`` entries (read it first); returns the new size."""
    n -= 1
    key, val = heap[n, 0], heap[n, 1]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        d = c + 1
        if d < n and (heap[d, 0] < heap[c, 0] or (heap[d, 0] == heap[c, 0] and heap[d, 1] < heap[c, 1])):
            c = d
        if key < heap[c, 0] or (key == heap[c, 0] and val <= heap[c, 1]):
            break
        heap[i, 0] = heap[c, 0]
        heap[i, 1] = heap[c, 1]
        i = c
    if n > 0:
        heap[i, 0] = key
        heap[i, 1] = val
    return n


@_nj
def _new_row(S: np.ndarray, hw: int, nfree: int, free: np.ndarray) -> int:
    if S[nfree]:
        S[nfree] -= 1
        return free[S[nfree]]
    s = S[hw]
    S[hw] += 1
    return s


@_nj
def _link(OT: np.ndarray, OC: np.ndarray, k: int, s: int) -> None:
    """Count row ``s`` among account place ``k``'s open orders, first in its list."""
    OC[k, 0] += 1
    head = OC[k, 1]
    OT[s, O_NEXT] = head
    OT[s, O_PREV] = 0
    if head:
        OT[head - 1, O_PREV] = s + 1
    OC[k, 1] = s + 1


@_nj
def _unlink(OT: np.ndarray, OC: np.ndarray, k: int, s: int) -> None:
    p, n = OT[s, O_PREV], OT[s, O_NEXT]
    if p:
        OT[p - 1, O_NEXT] = n
    else:
        OC[k, 1] = n
    if n:
        OT[n - 1, O_PREV] = p
    OT[s, O_NEXT] = OT[s, O_PREV] = 0


@_nj
def open_rows(OT: np.ndarray, OC: np.ndarray, k: int) -> np.ndarray:
    """The rows of account place ``k``'s open orders (in no particular order)."""
    out = np.empty(OC[k, 0], np.int64)
    r = OC[k, 1]
    i = 0
    while r and i < len(out):
        out[i] = r - 1
        i += 1
        r = OT[r - 1, O_NEXT]
    return out[:i]


@_nj
def _close(OT: np.ndarray, omap: np.ndarray, ofree: np.ndarray, closed: np.ndarray, S: np.ndarray, accs: np.ndarray,
           OC: np.ndarray, gone: np.ndarray, s: int, status: int, reason: int) -> None:
    """(reference `_close`)"""
    if OT[s, O_STATUS] != OPEN:
        return
    OT[s, O_STATUS] = status
    OT[s, O_REASON] = reason
    if OT[s, O_SIDE] == SIDE_BID:
        OT[s, O_HOLD] = 0
    k = intmap.get(accs, OT[s, O_ACCOUNT])
    OC[k, 0] -= 1
    _unlink(OT, OC, k, s)
    S[S_NCLOSED] = _push(closed, S[S_NCLOSED], OT[s, O_OID], 0)
    if S[S_NCLOSED] > S[S_MAXCLOSED]:  # forget the lowest closed order id
        oid = closed[0, 0]
        S[S_NCLOSED] = _pop(closed, S[S_NCLOSED])
        r = intmap.get(omap, oid)
        if r >= 0:
            if OT[r, O_COID]:
                gone[S[S_NGONE]] = oid
                S[S_NGONE] += 1
            intmap.delete(omap, oid)
            OT[r, O_STATUS] = FREE
            ofree[S[S_NOFREE]] = r
            S[S_NOFREE] += 1


@_nj
def apply(OT: np.ndarray, omap: np.ndarray, ofree: np.ndarray, LS: np.ndarray, lmap: np.ndarray, lfree: np.ndarray,
          closed: np.ndarray, fheap: np.ndarray, FC: np.ndarray, S: np.ndarray, accs: np.ndarray, OC: np.ndarray,
          newacc: np.ndarray, gone: np.ndarray, ev: np.ndarray, args: np.ndarray, coidx: np.ndarray,
          marks: np.ndarray, cap: np.ndarray) -> None:
    """(reference `ExchangeState.apply`, `_event`) Apply one class's events ``ev[lo:hi]`` in order.

    ``args``: lo, hi, the class's index, its hold fee (bps), how many of ``coidx`` and of
    ``marks`` count (one array: each argument of a jitted call costs its dispatch time).
    ``coidx``: the events (ascending) that accepted an order whose command carried a client order
    id.  ``marks``: rows ``(event index, kind, key)``, ascending: after that event, copy the row
    of the order ``key`` (kind 0) or of the class's lease ``key`` (kind 1) into ``cap`` (its last
    column 1 if found, 0 if not): what a command's first answer is made from, as it stood right
    after the command's events, with one call for the whole run of events."""
    # (borrowed: no reference counts for the helpers' calls, orderbook/borrow.py)
    OT, omap, ofree, LS, lmap, lfree = borrow(OT), borrow(omap), borrow(ofree), borrow(LS), borrow(lmap), borrow(lfree)
    closed, fheap, FC, S, accs, OC = borrow(closed), borrow(fheap), borrow(FC), borrow(S), borrow(accs), borrow(OC)
    newacc, gone, ev, coidx = borrow(newacc), borrow(gone), borrow(ev), borrow(coidx)
    marks, cap = borrow(marks), borrow(cap)
    lo, hi, book, fee_bps, ncoid, nmarks = args[0], args[1], args[2], args[3], args[4], args[5]
    R = S[S_RETENTION]
    ci = 0
    while ci < ncoid and coidx[ci] < lo:
        ci += 1
    mi = 0
    while mi < nmarks and marks[mi, 0] < lo:
        mi += 1
    for i in range(lo, hi):
        e = ev[i]
        t = e["type"]
        if t == EV_TRADE:  # (reference `_trade`)
            s = _new_row(S, S_LHW, S_NLFREE, lfree)
            tid = e["trade_id"]
            gpus = np.int64(e["gpus"])
            LS[s, L_BOOK] = book
            LS[s, L_TID] = tid
            LS[s, L_BID] = e["oid"]
            LS[s, L_ASK] = e["oid2"]
            LS[s, L_BUYER] = e["account"]
            LS[s, L_PROV] = e["account2"]
            LS[s, L_KIND] = e["kind"]
            LS[s, L_GPUS] = gpus
            LS[s, L_START] = e["start"]
            LS[s, L_END] = e["end"]
            LS[s, L_PRICE] = e["price"]
            LS[s, L_TIME] = e["time"]
            LS[s, L_RESALE] = e["lease_id"]
            LS[s, L_ENDED] = 0
            LS[s, L_COST] = _lease_value(gpus, e["price"], e["end"] - e["start"])
            S[S_ORD] += 1
            LS[s, L_ORD] = S[S_ORD]
            intmap.put(lmap, lease_key(book, tid), s)
            FC[book] = _push(fheap, FC[book], e["end"] + R, tid)
            b = intmap.get(omap, e["oid"])
            if b >= 0:
                OT[b, O_FILLED] += gpus
                OT[b, O_REM] = e["remaining"]
                OT[b, O_HOLD] = OT[b, O_REM] * OT[b, O_HPG]
                if OT[b, O_REM] == 0:
                    _close(OT, omap, ofree, closed, S, accs, OC, gone, b, FILLED, 0)
            a = intmap.get(omap, e["oid2"])
            if a >= 0:
                OT[a, O_FILLED] += gpus
        elif t == EV_ACCEPTED:  # (reference `_accepted`)
            s = _new_row(S, S_OHW, S_NOFREE, ofree)
            oid = e["oid"]
            acc = e["account"]
            OT[s, O_OID] = oid
            OT[s, O_BOOK] = book
            OT[s, O_ACCOUNT] = acc
            OT[s, O_SIDE] = e["side"]
            OT[s, O_GPUS] = e["gpus"]
            OT[s, O_PRICE] = e["price"]
            OT[s, O_TIME] = e["time"]
            OT[s, O_STATUS] = OPEN
            OT[s, O_FILLED] = 0
            OT[s, O_START] = e["start"]
            OT[s, O_END] = e["end"]
            OT[s, O_EXPIRE] = e["expire_at"]
            OT[s, O_REASON] = 0
            if ci < ncoid and coidx[ci] == i:
                OT[s, O_COID] = 1
                ci += 1
            else:
                OT[s, O_COID] = 0
            if e["side"] == SIDE_BID:
                hpg = _hold_per_gpu(np.int64(e["hours"]), e["price"], fee_bps)
                OT[s, O_REM] = e["remaining"]
                OT[s, O_KIND] = e["kind"]
                OT[s, O_TIF] = e["tif"]
                OT[s, O_HOURS] = e["hours"]
                OT[s, O_BLOCK] = e["block"]
                OT[s, O_SPOT] = 0
                OT[s, O_MINH] = 1
                OT[s, O_LEASE] = 0
                OT[s, O_HPG] = hpg
                OT[s, O_HOLD] = OT[s, O_REM] * hpg
            else:
                OT[s, O_REM] = e["gpus"]
                OT[s, O_KIND] = 0
                OT[s, O_TIF] = 0
                OT[s, O_HOURS] = 0
                OT[s, O_BLOCK] = 1
                OT[s, O_SPOT] = e["price2"]
                OT[s, O_MINH] = e["min_hours"]
                OT[s, O_LEASE] = e["lease_id"]
                OT[s, O_HPG] = 0
                OT[s, O_HOLD] = 0
            intmap.put(omap, oid, s)
            k = intmap.get(accs, acc)
            if k < 0:
                k = S[S_NACC]
                S[S_NACC] += 1
                intmap.put(accs, acc, k)
                newacc[S[S_NNEW]] = acc
                S[S_NNEW] += 1
            _link(OT, OC, k, s)
        elif t == EV_CANCELLED or t == EV_EXPIRED:
            s = intmap.get(omap, e["oid"])
            if s >= 0:
                if OT[s, O_SIDE] == SIDE_BID:
                    OT[s, O_REM] = e["remaining"]
                _close(OT, omap, ofree, closed, S, accs, OC, gone, s, CANCELLED if t == EV_CANCELLED else EXPIRED,
                       np.int64(e["reason"]))
        elif t == EV_AMENDED:
            s = intmap.get(omap, e["oid"])
            if s >= 0:
                OT[s, O_GPUS] = e["gpus"]
                if OT[s, O_SIDE] == SIDE_BID:
                    OT[s, O_REM] = e["remaining"]
                    OT[s, O_HOLD] = OT[s, O_REM] * OT[s, O_HPG]
                else:
                    OT[s, O_REM] = e["gpus"]
        elif t == EV_PREEMPTED or t == EV_RELEASED:
            tid = e["trade_id"]
            s = intmap.get(lmap, lease_key(book, tid))
            if s >= 0:
                LS[s, L_END] = e["end"]
                LS[s, L_ENDED] = 1 if t == EV_PREEMPTED else 2
                LS[s, L_COST] = _lease_value(LS[s, L_GPUS], LS[s, L_PRICE], e["end"] - LS[s, L_START])
                FC[book] = _push(fheap, FC[book], e["end"] + R, tid)
        # EV_REJECTED changes nothing (R8)
        while mi < nmarks and marks[mi, 0] == i:
            r = intmap.get(omap, marks[mi, 2]) if marks[mi, 1] == 0 else intmap.get(lmap, lease_key(book, marks[mi, 2]))
            if r < 0:
                cap[mi, -1] = 0
            elif marks[mi, 1] == 0:
                cap[mi, :NO] = OT[r]
                cap[mi, -1] = 1
            else:
                cap[mi, :NLS] = LS[r]
                cap[mi, -1] = 1
            mi += 1


@_nj
def prune(LS: np.ndarray, lmap: np.ndarray, lfree: np.ndarray, fheap: np.ndarray, FC: np.ndarray, S: np.ndarray,
          book: int, now: int) -> int:
    """(reference `prune`) Forget the class's leases that ended the retention or more before ``now``."""
    LS, lmap, lfree, fheap, FC, S = borrow(LS), borrow(lmap), borrow(lfree), borrow(fheap), borrow(FC), borrow(S)
    R = S[S_RETENTION]
    n = 0
    while FC[book] and fheap[0, 0] <= now:
        tid = fheap[0, 1]
        FC[book] = _pop(fheap, FC[book])
        key = lease_key(book, tid)
        s = intmap.get(lmap, key)
        if s < 0 or LS[s, L_END] + R > now:
            continue  # forgotten already, or its end moved (a newer entry is on the heap)
        intmap.delete(lmap, key)
        LS[s, L_ORD] = 0
        lfree[S[S_NLFREE]] = s
        S[S_NLFREE] += 1
        n += 1
    return n


@_nj
def rebuild(OT: np.ndarray, omap: np.ndarray, ofree: np.ndarray, LS: np.ndarray, lmap: np.ndarray, lfree: np.ndarray,
            S: np.ndarray, accs: np.ndarray, OC: np.ndarray, newacc: np.ndarray) -> None:
    """The maps, free lists and open counts of restored rows (a snapshot keeps the rows only)."""
    S[S_NOFREE] = 0
    for s in range(S[S_OHW]):
        if OT[s, O_STATUS] == FREE:
            ofree[S[S_NOFREE]] = s
            S[S_NOFREE] += 1
        else:
            intmap.put(omap, OT[s, O_OID], s)
            if OT[s, O_STATUS] == OPEN:
                acc = OT[s, O_ACCOUNT]
                k = intmap.get(accs, acc)
                if k < 0:
                    k = S[S_NACC]
                    S[S_NACC] += 1
                    intmap.put(accs, acc, k)
                    newacc[k] = acc
                _link(OT, OC, k, s)
    S[S_NLFREE] = 0
    for s in range(S[S_LHW]):
        if LS[s, L_ORD] == 0:
            lfree[S[S_NLFREE]] = s
            S[S_NLFREE] += 1
        else:
            intmap.put(lmap, lease_key(LS[s, L_BOOK], LS[s, L_TID]), s)
