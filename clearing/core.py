"""The settlement engine's per-event work, jitted: columnar state, transfers out as int64 rows.

`clearing.engine.SettlementEngine` keeps, per class, its open bids and live leases here, in
numpy arrays that these functions change in place (the book does the same, `orderbook/fast.py`):

* ``L`` — one row of ``NL`` int64 per lease (the `Lease` fields in order, strings as codes,
  then the timetable and bookkeeping columns below); ``lmap`` — trade id -> row (a
  `clearing.intmap`, like ``bmap``);
* ``B`` — one row per open bid (oid, account, hold per GPU, remaining GPUs, flags); ``bmap`` —
  order id -> row;
* ``heap`` — the timetable, rows ``(due, trade id)`` (lazily invalidated: an entry counts only
  while its lease's ``DUE`` column still says that time);
* ``S`` — the class's scalars (seq, clock, counters, list lengths); ``K`` — its constants
  (fees, config, the transfer refs of its orders, trades and leases).

Transfers come out as rows ``(ref, sub, debit, credit, amount, time)`` in an int64 array that
the functions return (grown when full).  The rules are those of `clearing.reference` (the
plain-Python engine, kept as the specification and checked against this one event for event
by the tests); comments name the function of the reference each one follows.

Integer arithmetic is int64 here: `engine` refuses events whose lease value could overflow
(gpus × price × seconds ≥ 2**62) before any of them is applied.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit

from clearing import ids, intmap, leases, money
from orderbook import jitcache
from orderbook import types as book_types
from orderbook.borrow import borrow

jitcache.use(__name__)  # numba's cache for the functions below: keyed by the sources they are compiled from

# Constants of other modules, copied as literals (each checked against its source below):
# account kinds (settlement.ledger) and event types / kinds (orderbook.types)
AVAILABLE, ESCROW, PREPAID, RECEIVABLE, FEES = 1, 2, 3, 4, 5
ACCOUNT_SHIFT = 3  # an account is owner << ACCOUNT_SHIFT | kind
FEES_ACCOUNT = 0 << ACCOUNT_SHIFT | FEES
EV_ACCEPTED, EV_TRADE, EV_PREEMPTED, EV_CANCELLED, EV_EXPIRED, EV_AMENDED, EV_RELEASED = 1, 3, 4, 5, 6, 7, 8
RESERVED = 2
SIDE_BID = 1
PARAM_SHIFT = 8
# transfer legs and causes (clearing.ids)
HOLD, RELEASE, AMEND = 1, 2, 3
COST, BUYER_FEE, TRADE_RELEASE, TOP_UP = 1, 2, 3, 4
C_READY, C_METER, C_PREEMPTED, C_RELEASED, C_FAILED, C_END = 1 << 4, 2 << 4, 3 << 4, 4 << 4, 5 << 4, 6 << 4
REFUND, FEE_REFUND, EARN, PROVIDER_FEE = 1, 2, 3, 4

# lease statuses (clearing.leases.STATUSES, in order)
PENDING, PROVISIONING, READY, ENDED, RELEASED, PREEMPTED, FAILED = range(7)
# failed reasons: 0 none, and these (REASON_CUSTOM: the engine keeps the text by trade id)
REASON_TIMEOUT, REASON_NOT_READY, REASON_PARENT, REASON_CUSTOM = 1, 2, 3, 4

# lease columns: the Lease fields after ``cls``, in order ...
(TID, BUYER, PROVIDER, KIND, GPUS, PRICE, START, END, BOOKED_END, TIME, BID, ASK, RESALE, MAKER, BBPS, PBPS,
 STATUS, READY_AT, METERED_TO, ENDED_BY, FAILED_CODE, COST_PAID, BUYER_FEE_PAID, EARNED, PROVIDER_FEE_PAID,
 REFUNDED) = range(26)
LEASE_FIELDS = 26
# ... then: when it next needs advancing (-1: not on the timetable), first child and next
# sibling (trade ids of sub-leases, R16; 0: none), flags, the failed reason's argument
DUE, CHILD, SIB, LFLAGS, FAIL_ARG = range(26, 31)
NL = 32
# bid columns
B_OID, B_ACCOUNT, B_HPG, B_REM, B_FLAGS = range(5)
NB = 5
# flags
DIRTY, NEW, GONE = 1, 2, 4  # changed since the last take / opened since / closed or dropped (row freed at take)
LIVE = 8  # a lease row in use (in lmap): the Python side finds leases by a mask over this

# scalars
(S_SEQ, S_CLOCK, S_NHEAP, S_NOUT, S_LFREE, S_BFREE, S_NDL, S_NDB, S_NGL, S_NGB, S_TRADES, S_LIVE) = range(12)
NS = 16
# constants
(K_MAKER_BPS, K_TAKER_BPS, K_HOLD_BPS, K_AUTO_READY, K_TIMEOUT, K_STEP, K_ORDER_REF, K_TRADE_REF,
 K_LEASE_REF) = range(9)
NK = 9

# event record columns (clearing.engine.RECORD)
(R_SEQ, R_TIME, R_OID, R_OID2, R_TID, R_ACC, R_ACC2, R_PRICE, R_START, R_END, R_LEASE, R_GPUS, R_REM, R_HOURS,
 R_TYPE, R_KIND, R_MAKER) = range(17)

# The copies above against their sources (a differing one would compile in a wrong code).
_COPIES = [(f"{name} ({module.__name__}.{name})", globals()[name], getattr(module, name)) for module, names in (
    (money, "AVAILABLE ESCROW PREPAID RECEIVABLE FEES ACCOUNT_SHIFT"),
    (book_types, "EV_ACCEPTED EV_TRADE EV_PREEMPTED EV_CANCELLED EV_EXPIRED EV_AMENDED EV_RELEASED RESERVED SIDE_BID"),
    (ids, "PARAM_SHIFT HOLD RELEASE AMEND COST BUYER_FEE TRADE_RELEASE TOP_UP REFUND FEE_REFUND EARN PROVIDER_FEE"),
) for name in names.split()]
_COPIES += [
    ("FEES_ACCOUNT (the exchange's fees account)", FEES_ACCOUNT,
     money.EXCHANGE << money.ACCOUNT_SHIFT | money.FEES),
    *((f"C_{c} (ids.cause(ids.{c}))", globals()[f"C_{c}"], ids.cause(getattr(ids, c)))
      for c in ("READY", "METER", "PREEMPTED", "RELEASED", "FAILED", "END")),
    *((f"{st.upper()} (its place in leases.STATUSES)", globals()[st.upper()], leases.STATUSES.index(st))
      for st in leases.STATUSES),
    ("LEASE_FIELDS (the Lease fields after cls)", LEASE_FIELDS, len(leases.Lease.__struct_fields__) - 1),
    *((f"{col} (the place of Lease.{field} after cls)", globals()[col], leases.Lease.__struct_fields__.index(field) - 1)
      for col, field in (pair.split("=") for pair in (
          "TID=trade_id BUYER=buyer PROVIDER=provider KIND=kind GPUS=gpus PRICE=price START=start END=end "
          "BOOKED_END=booked_end TIME=time BID=bid_oid ASK=ask_oid RESALE=resale_of MAKER=maker BBPS=buyer_fee_bps "
          "PBPS=provider_fee_bps STATUS=status READY_AT=ready_at METERED_TO=metered_to ENDED_BY=ended_by "
          "FAILED_CODE=failed_reason COST_PAID=cost BUYER_FEE_PAID=buyer_fee EARNED=earned "
          "PROVIDER_FEE_PAID=provider_fee REFUNDED=refunded").split())),
]
for _name, _copy, _source in _COPIES:
    if _copy != _source:
        raise AssertionError(f"clearing.core: {_name} is {_source}, but the literal here is {_copy}")
del _COPIES, _name, _copy, _source

_nj = njit(cache=True, nogil=True)


def _jitted(module: types.ModuleType, *names: str) -> tuple:
    """Jitted twins of pure functions of ``module``, compiled from their one source: each twin
    runs the function's own code with globals where the others are twins too (jitted code can
    call only jitted functions)."""
    ns = dict(vars(module))
    for name in names:
        f = ns[name]
        ns[name] = _nj(types.FunctionType(f.__code__, ns, name, f.__defaults__, f.__closure__))
    return tuple(ns[name] for name in names)


# the money rules (R17, R19): Python ints there, int64 here (`engine` refuses events whose
# amounts could overflow before any of them is applied)
_fee, _hold_per_gpu, _lease_value = _jitted(money, "fee", "hold_per_gpu", "lease_value")


# ---------------------------------------------------------------------- small pieces
@_nj
def _grown(out: np.ndarray, n: int) -> np.ndarray:
    """``out`` with twice the rows (element by element: a slice copy costs seconds of compile time)."""
    grown = np.empty((out.shape[0] * 2 + 64, 6), np.int64)
    for i in range(n):
        for j in range(6):
            grown[i, j] = out[i, j]
    return grown


@_nj
def _emit(out: np.ndarray, S: np.ndarray, ref: int, sub: int, debit: int, credit: int, amount: int,
          time: int) -> np.ndarray:
    n = S[S_NOUT]
    if n >= out.shape[0]:
        out = _grown(out, n)
    out[n, 0] = ref
    out[n, 1] = sub
    out[n, 2] = debit
    out[n, 3] = credit
    out[n, 4] = amount
    out[n, 5] = time
    S[S_NOUT] = n + 1
    return out


@_nj
def _move(out: np.ndarray, S: np.ndarray, ref: int, sub: int, debit: int, credit: int, amount: int,
          time: int) -> np.ndarray:
    if amount > 0:
        return _emit(out, S, ref, sub, debit, credit, amount, time)
    return _emit(out, S, ref, sub, credit, debit, -amount, time)


@_nj
def _hpush(heap: np.ndarray, S: np.ndarray, due: int, tid: int) -> None:
    """The timetable is a binary min-heap of (due, trade id) rows (a packed key would not fit 64 bits)."""
    n = S[S_NHEAP]
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if heap[p, 0] < due or (heap[p, 0] == due and heap[p, 1] <= tid):
            break
        heap[i, 0] = heap[p, 0]
        heap[i, 1] = heap[p, 1]
        i = p
    heap[i, 0] = due
    heap[i, 1] = tid
    S[S_NHEAP] = n + 1


@_nj
def _hpop(heap: np.ndarray, S: np.ndarray) -> None:
    """Remove the top row (read it first)."""
    n = S[S_NHEAP] - 1
    due, tid = heap[n, 0], heap[n, 1]
    S[S_NHEAP] = n
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (heap[c + 1, 0] < heap[c, 0]
                          or (heap[c + 1, 0] == heap[c, 0] and heap[c + 1, 1] < heap[c, 1])):
            c += 1
        if heap[c, 0] > due or (heap[c, 0] == due and heap[c, 1] >= tid):
            break
        heap[i, 0] = heap[c, 0]
        heap[i, 1] = heap[c, 1]
        i = c
    if n > 0:
        heap[i, 0] = due
        heap[i, 1] = tid


@_nj
def _dirty(T: np.ndarray, flags: int, S: np.ndarray, count: int, changed: np.ndarray, s: int) -> None:
    """Row ``s`` of ``T`` (leases or bids) changed: listed once until the next take."""
    if not T[s, flags] & DIRTY:
        T[s, flags] |= DIRTY
        changed[S[count]] = s
        S[count] += 1


@_nj
def _dirty_lease(L: np.ndarray, S: np.ndarray, dl: np.ndarray, s: int) -> None:
    _dirty(L, LFLAGS, S, S_NDL, dl, s)


@_nj
def _dirty_bid(B: np.ndarray, S: np.ndarray, db: np.ndarray, s: int) -> None:
    _dirty(B, B_FLAGS, S, S_NDB, db, s)


# ---------------------------------------------------------------------- money of one lease (leases.settle)
@_nj
def settle(L: np.ndarray, s: int, ref: int, cause: int, time: int, out: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Bring the ledger to the lease's targets (`clearing.leases.settle`)."""
    start, end = L[s, START], L[s, END]
    gpus, price = L[s, GPUS], L[s, PRICE]
    st = L[s, STATUS]
    if st == FAILED:
        cap = 0
        earned = 0
    elif not L[s, READY_AT]:
        cap = _lease_value(gpus, price, end - start)
        earned = 0
    elif L[s, KIND] == RESERVED:
        cap = _lease_value(gpus, price, end - start)
        earned = cap
    else:
        rf = L[s, READY_AT] if L[s, READY_AT] > start else start
        cap = _lease_value(gpus, price, end - rf)
        m = L[s, METERED_TO] if L[s, METERED_TO] < end else end
        earned = _lease_value(gpus, price, m - rf)
    refund = L[s, COST_PAID] - cap - L[s, REFUNDED]
    buyer_fee = _fee(cap, L[s, BBPS])
    bps = L[s, PBPS]
    before = L[s, EARNED]
    terminal = st >= ENDED
    if bps:
        fee_now = _fee(earned, bps)
        net = earned - fee_now - (before - _fee(before, bps))
        provider_fee = fee_now if terminal else 0
    else:
        net = earned - before
        provider_fee = 0
    d_fee_refund = L[s, BUYER_FEE_PAID] - buyer_fee
    d_provider_fee = provider_fee - L[s, PROVIDER_FEE_PAID]
    if not (refund or d_fee_refund or net or d_provider_fee):
        L[s, EARNED] = earned
        return out
    prepaid = L[s, BUYER] << ACCOUNT_SHIFT | PREPAID
    available = L[s, BUYER] << ACCOUNT_SHIFT | AVAILABLE
    if refund:
        out = _move(out, S, ref, cause | REFUND, prepaid, available, refund, time)
    if d_fee_refund:
        out = _move(out, S, ref, cause | FEE_REFUND, FEES_ACCOUNT, available, d_fee_refund, time)
    if net > 0:
        out = _emit(out, S, ref, cause | EARN, prepaid, L[s, PROVIDER] << ACCOUNT_SHIFT | RECEIVABLE, net, time)
    elif net:
        out = _emit(out, S, ref, cause | EARN, L[s, PROVIDER] << ACCOUNT_SHIFT | RECEIVABLE, prepaid, -net, time)
    if d_provider_fee:
        out = _move(out, S, ref, cause | PROVIDER_FEE, prepaid, FEES_ACCOUNT, d_provider_fee, time)
    L[s, REFUNDED] += refund
    L[s, BUYER_FEE_PAID] = buyer_fee
    L[s, EARNED] = earned
    L[s, PROVIDER_FEE_PAID] = provider_fee
    return out


@_nj
def settle_earnings(L: np.ndarray, s: int, ref: int, cause: int, time: int, out: np.ndarray,
                    S: np.ndarray) -> np.ndarray:
    """A ready metered lease at a metering point or its end (`clearing.leases.settle_earnings`)."""
    start, end = L[s, START], L[s, END]
    gpus, price = L[s, GPUS], L[s, PRICE]
    rf = L[s, READY_AT] if L[s, READY_AT] > start else start
    if L[s, COST_PAID] - L[s, REFUNDED] != _lease_value(gpus, price, end - rf) or not L[s, READY_AT]:
        return settle(L, s, ref, cause, time, out, S)
    m = L[s, METERED_TO] if L[s, METERED_TO] < end else end
    earned = _lease_value(gpus, price, m - rf)
    bps = L[s, PBPS]
    before = L[s, EARNED]
    if bps:
        fee_now = _fee(earned, bps)
        net = earned - fee_now - before + _fee(before, bps)
        provider_fee = fee_now if L[s, STATUS] >= ENDED else 0
    else:
        net = earned - before
        provider_fee = 0
    prepaid = L[s, BUYER] << ACCOUNT_SHIFT | PREPAID
    if net > 0:
        out = _emit(out, S, ref, cause | EARN, prepaid, L[s, PROVIDER] << ACCOUNT_SHIFT | RECEIVABLE, net, time)
    elif net:
        out = _emit(out, S, ref, cause | EARN, L[s, PROVIDER] << ACCOUNT_SHIFT | RECEIVABLE, prepaid, -net, time)
    if provider_fee != L[s, PROVIDER_FEE_PAID]:
        out = _move(out, S, ref, cause | PROVIDER_FEE, prepaid, FEES_ACCOUNT, provider_fee - L[s, PROVIDER_FEE_PAID],
                    time)
        L[s, PROVIDER_FEE_PAID] = provider_fee
    L[s, EARNED] = earned
    return out


# ---------------------------------------------------------------------- the timetable
@_nj
def _drop(L: np.ndarray, lmap: np.ndarray, S: np.ndarray, gl: np.ndarray, s: int) -> None:
    """(reference `_drop`) The lease leaves the engine; its row is freed at the next take."""
    tid = L[s, TID]
    if intmap.get(lmap, tid) == s:
        intmap.delete(lmap, tid)
    L[s, DUE] = -1
    L[s, CHILD] = 0
    parent = L[s, RESALE]
    if parent:
        p = intmap.get(lmap, parent)
        if p >= 0:  # unlink from the parent's sub-leases
            prev = -1
            c = L[p, CHILD]
            while c:
                cs = intmap.get(lmap, c)
                nxt = L[cs, SIB] if cs >= 0 else 0
                if c == tid:
                    if prev < 0:
                        L[p, CHILD] = nxt
                    else:
                        L[prev, SIB] = nxt
                    break
                prev = cs
                c = nxt
    L[s, LFLAGS] = (L[s, LFLAGS] | GONE) & ~LIVE
    gl[S[S_NGL]] = s
    S[S_NGL] += 1
    S[S_LIVE] -= 1


@_nj
def _schedule_next(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, gl: np.ndarray,
                   s: int, now: int) -> None:
    """(reference `_schedule_next`) Put the lease on the timetable for its next transition (or drop it)."""
    st = L[s, STATUS]
    start, end = L[s, START], L[s, END]
    if st == READY:
        due = end
        if L[s, KIND] != RESERVED:
            step = K[K_STEP]
            base = L[s, METERED_TO] if L[s, METERED_TO] > L[s, READY_AT] else L[s, READY_AT]
            base = base if base > start else start
            point = base - base % step + step
            if point < due:
                due = point
    elif st == PENDING or st == PROVISIONING:
        due = end
        if K[K_AUTO_READY] and st == PENDING and start < due:
            due = start
        if K[K_TIMEOUT] and start + K[K_TIMEOUT] < due:
            due = start + K[K_TIMEOUT]
    else:  # ended: kept until its end passed (a late preemption or release may still name it)
        if now >= end:
            _drop(L, lmap, S, gl, s)
            return
        due = end
    if L[s, DUE] != due:
        L[s, DUE] = due
        _hpush(heap, S, due, L[s, TID])


@_nj
def _fail(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, dl: np.ndarray,
          gl: np.ndarray, stack: np.ndarray, s: int, reason: int, arg: int, time: int,
          out: np.ndarray) -> np.ndarray:
    """(reference `_fail`) The lease fails, refunded in full; its sub-leases not ready yet fail
    too (depth first, each then put on the timetable)."""
    lease_ref = K[K_LEASE_REF]
    stack[0] = s
    n = 1
    done = 0
    while n > done:
        x = stack[done]
        done += 1
        if x != s:  # a sub-lease: only if still pending or provisioning
            if L[x, STATUS] != PENDING and L[x, STATUS] != PROVISIONING:
                continue
            L[x, FAILED_CODE] = REASON_PARENT
            L[x, FAIL_ARG] = L[x, RESALE]
        else:
            L[x, FAILED_CODE] = reason
            L[x, FAIL_ARG] = arg
        L[x, STATUS] = FAILED
        out = settle(L, x, lease_ref | L[x, TID], C_FAILED, time, out, S)
        _dirty_lease(L, S, dl, x)
        c = L[x, CHILD]
        while c:
            cs = intmap.get(lmap, c)
            if cs < 0:
                break
            stack[n] = cs
            n += 1
            c = L[cs, SIB]
    for i in range(1, n):  # the failed sub-leases go on the timetable (reference: `_advance(child)`)
        x = stack[i]
        if L[x, STATUS] == FAILED and not L[x, LFLAGS] & GONE:
            _schedule_next(L, lmap, heap, S, K, gl, x, S[S_CLOCK])
    return out


@_nj
def _meter(L: np.ndarray, lmap: np.ndarray, S: np.ndarray, K: np.ndarray, gl: np.ndarray, s: int, now: int,
           earnings_only: bool, out: np.ndarray) -> tuple[np.ndarray, int]:
    """(reference: the READY part of `_advance`, and its copy in `_advance_class`) A ready lease's
    metering points up to ``now`` (metered kinds), then its end if that passed (status from how
    it ended; the lease is dropped).  ``earnings_only``: `settle_earnings` (its cap is settled)
    instead of `settle`.  Returns the transfers and the next metering point."""
    start, end = L[s, START], L[s, END]
    ref = K[K_LEASE_REF] | L[s, TID]
    point = end
    if L[s, KIND] != RESERVED:
        step = K[K_STEP]
        rf = L[s, READY_AT] if L[s, READY_AT] > start else start
        base = L[s, METERED_TO] if L[s, METERED_TO] > rf else rf
        point = base - base % step + step
        while point <= now and point < end:
            L[s, METERED_TO] = point
            cause = point << PARAM_SHIFT | C_METER
            if earnings_only:
                out = settle_earnings(L, s, ref, cause, point, out, S)
            else:
                out = settle(L, s, ref, cause, point, out, S)
            point += step
    if now >= end:
        L[s, METERED_TO] = end
        L[s, STATUS] = L[s, ENDED_BY] if L[s, ENDED_BY] else ENDED
        if earnings_only:
            out = settle_earnings(L, s, ref, C_END, end, out, S)
        else:
            out = settle(L, s, ref, C_END, end, out, S)
        _drop(L, lmap, S, gl, s)
    return out, point


@_nj
def _advance(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, dl: np.ndarray,
             gl: np.ndarray, stack: np.ndarray, s: int, now: int, out: np.ndarray) -> np.ndarray:
    """(reference `_advance`) Every transition of the lease due at or before ``now``, each at
    its own time; then schedule the next one."""
    st = L[s, STATUS]
    start, end = L[s, START], L[s, END]
    ref = K[K_LEASE_REF] | L[s, TID]
    if st == PENDING or st == PROVISIONING:
        if K[K_AUTO_READY] and st == PENDING and now >= start and start < end:
            L[s, STATUS] = st = READY
            L[s, READY_AT] = start
            if L[s, KIND] == RESERVED:
                out = settle(L, s, ref, C_READY, start, out, S)
        else:
            timeout = start + K[K_TIMEOUT] if K[K_TIMEOUT] else end
            if now >= end or now >= timeout:
                at = end if end < timeout else timeout
                out = _fail(L, lmap, heap, S, K, dl, gl, stack, s, REASON_TIMEOUT if at < end else REASON_NOT_READY,
                            0, at, out)
                st = FAILED
    if st == READY:
        out, _ = _meter(L, lmap, S, K, gl, s, now, False, out)
        if now >= end:
            return out
    _schedule_next(L, lmap, heap, S, K, gl, s, now)
    return out


@_nj
def advance_class(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, dl: np.ndarray,
                  gl: np.ndarray, stack: np.ndarray, now: int, owned: np.ndarray) -> np.ndarray:
    """(reference `_advance_class`) Every lease due at or before ``now``."""
    L, lmap, heap, S, K, dl, gl, stack = borrow(L), borrow(lmap), borrow(heap), borrow(S), borrow(K), borrow(dl), \
        borrow(gl), borrow(stack)
    out = borrow(owned)  # (grown: a new array, owned, which replaces it: `apply`)
    while S[S_NHEAP] and heap[0, 0] <= now:
        due, tid = heap[0, 0], heap[0, 1]
        _hpop(heap, S)
        s = intmap.get(lmap, tid)
        if s < 0 or L[s, DUE] != due:
            continue  # stale entry
        L[s, DUE] = -1
        _dirty_lease(L, S, dl, s)
        if L[s, STATUS] != READY or L[s, KIND] == RESERVED:
            out = _advance(L, lmap, heap, S, K, dl, gl, stack, s, now, out)
            continue
        # a ready metered lease (most of them): its cap is settled, only earnings move; then
        # its next due time is the next metering point (`_schedule_next`, inlined)
        end = L[s, END]
        out, point = _meter(L, lmap, S, K, gl, s, now, True, out)
        if now < end:
            due = point if point < end else end
            L[s, DUE] = due
            _hpush(heap, S, due, tid)
        if out.shape[0] != owned.shape[0]:
            owned = out
            out = borrow(owned)
    return owned if out.shape[0] == owned.shape[0] else out


# ---------------------------------------------------------------------- events
@_nj
def _close_bid(B: np.ndarray, bmap: np.ndarray, S: np.ndarray, db: np.ndarray, gb: np.ndarray, s: int) -> None:
    """(reference `_forget_bid`) The bid left: its row is deleted at the next take unless it
    was opened since the last one; its slot is freed then."""
    intmap.delete(bmap, B[s, B_OID])
    B[s, B_FLAGS] |= GONE
    _dirty_bid(B, S, db, s)
    gb[S[S_NGB]] = s
    S[S_NGB] += 1


@_nj
def _new_bid_slot(B: np.ndarray, bmap: np.ndarray, bfree: np.ndarray, S: np.ndarray, oid: int) -> int:
    s = intmap.get(bmap, oid)
    if s >= 0:
        return s
    S[S_BFREE] -= 1
    s = bfree[S[S_BFREE]]
    intmap.put(bmap, oid, s)
    B[s, B_FLAGS] = 0
    return s


@_nj
def _trade(L: np.ndarray, lmap: np.ndarray, lfree: np.ndarray, B: np.ndarray, bmap: np.ndarray, heap: np.ndarray,
           S: np.ndarray, K: np.ndarray, dl: np.ndarray, db: np.ndarray, gl: np.ndarray, gb: np.ndarray,
           stack: np.ndarray, ev: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(reference `_trade`) A fill: the buyer's escrow pays the lease (and fee); a pending lease."""
    t, oid, tid, buyer, price = ev[R_TIME], ev[R_OID], ev[R_TID], ev[R_ACC], ev[R_PRICE]
    start, end, gpus, rem, kind, maker = ev[R_START], ev[R_END], ev[R_GPUS], ev[R_REM], ev[R_KIND], ev[R_MAKER]
    cost = _lease_value(gpus, price, end - start)
    if maker == SIDE_BID:
        brate, prate = K[K_MAKER_BPS], K[K_TAKER_BPS]
    else:
        brate, prate = K[K_TAKER_BPS], K[K_MAKER_BPS]
    buyer_fee = _fee(cost, brate)
    ref = K[K_TRADE_REF] | tid
    b = buyer << ACCOUNT_SHIFT
    src = b | AVAILABLE
    bs = intmap.get(bmap, oid)
    if bs >= 0:
        src = b | ESCROW
        rest = gpus * B[bs, B_HPG] - cost - buyer_fee
        B[bs, B_REM] = rem
        if rem <= 0:
            _close_bid(B, bmap, S, db, gb, bs)
        else:
            _dirty_bid(B, S, db, bs)
        if rest > 0:
            out = _emit(out, S, ref, TRADE_RELEASE, src, b | AVAILABLE, rest, t)
        elif rest < 0:  # the fee rate rose since the bid was accepted: the difference from available
            out = _emit(out, S, ref, TOP_UP, b | AVAILABLE, src, -rest, t)
    if cost:
        out = _emit(out, S, ref, COST, src, b | PREPAID, cost, t)
    if buyer_fee:
        out = _emit(out, S, ref, BUYER_FEE, src, FEES_ACCOUNT, buyer_fee, t)
    S[S_LFREE] -= 1
    s = lfree[S[S_LFREE]]
    for j in range(NL):  # (loops, not slice assignments, here: those cost seconds of compile time)
        L[s, j] = 0
    L[s, TID] = tid
    L[s, BUYER] = buyer
    L[s, PROVIDER] = ev[R_ACC2]
    L[s, KIND] = kind
    L[s, GPUS] = gpus
    L[s, PRICE] = price
    L[s, START] = start
    L[s, END] = end
    L[s, BOOKED_END] = end
    L[s, TIME] = t
    L[s, BID] = oid
    L[s, ASK] = ev[R_OID2]
    L[s, RESALE] = ev[R_LEASE]
    L[s, MAKER] = maker
    L[s, BBPS] = brate
    L[s, PBPS] = prate
    L[s, COST_PAID] = cost
    L[s, BUYER_FEE_PAID] = buyer_fee
    L[s, DUE] = -1
    L[s, LFLAGS] = LIVE
    intmap.put(lmap, tid, s)
    S[S_LIVE] += 1
    parent = ev[R_LEASE]
    if parent:  # a sub-lease (R16): last among its parent's
        p = intmap.get(lmap, parent)
        if p >= 0:
            c = L[p, CHILD]
            if not c:
                L[p, CHILD] = tid
            else:
                while True:
                    cs = intmap.get(lmap, c)
                    if cs < 0 or not L[cs, SIB]:
                        break
                    c = L[cs, SIB]
                if cs >= 0:
                    L[cs, SIB] = tid
    S[S_TRADES] += 1
    _dirty_lease(L, S, dl, s)
    now = S[S_CLOCK]
    if K[K_AUTO_READY] and kind != RESERVED and start <= now < end:
        # the common case, without the general `_advance`: ready at its start, nothing to
        # move yet; next due at the first metering point or its end
        L[s, STATUS] = READY
        L[s, READY_AT] = start
        step = K[K_STEP]
        point = start - start % step + step
        if point > now:
            due = point if point < end else end
            L[s, DUE] = due
            _hpush(heap, S, due, tid)
            return out
    return _advance(L, lmap, heap, S, K, dl, gl, stack, s, now, out)


@_nj
def apply(L: np.ndarray, lmap: np.ndarray, lfree: np.ndarray, B: np.ndarray, bmap: np.ndarray, bfree: np.ndarray,
          heap: np.ndarray, S: np.ndarray, K: np.ndarray, dl: np.ndarray, db: np.ndarray, gl: np.ndarray,
          gb: np.ndarray, stack: np.ndarray, rows: np.ndarray, last_time: int, owned: np.ndarray) -> np.ndarray:
    """(reference `SettlementEngine.apply`, after the events were checked and filtered) Apply
    one class's event records in order; the caller made room in every array for them but the
    transfers' ``owned``, which grows when full (a new array, returned)."""
    # (borrowed: the helpers below take a dozen arrays each, and a counted one costs two atomic
    # adds per call; orderbook/borrow.py).  The transfers too, each event's helpers write into
    # ``out``, borrowed; one that fills it returns a grown array, counted, which is then owned.
    out = borrow(owned)
    L, lmap, lfree, B, bmap, bfree = borrow(L), borrow(lmap), borrow(lfree), borrow(B), borrow(bmap), borrow(bfree)
    heap, S, K, dl, db, gl = borrow(heap), borrow(S), borrow(K), borrow(dl), borrow(db), borrow(gl)
    gb, stack, rows = borrow(gb), borrow(stack), borrow(rows)
    for i in range(rows.shape[0]):
        ev = rows[i]
        t = ev[R_TIME]
        if t > S[S_CLOCK]:
            if S[S_NHEAP] and heap[0, 0] <= t:
                out = advance_class(L, lmap, heap, S, K, dl, gl, stack, t, out)
            S[S_CLOCK] = t
        typ = ev[R_TYPE]
        if typ == EV_TRADE:
            out = _trade(L, lmap, lfree, B, bmap, heap, S, K, dl, db, gl, gb, stack, ev, out)
        elif typ == EV_ACCEPTED:  # (reference `_accepted_bid`)
            hpg = _hold_per_gpu(ev[R_HOURS], ev[R_PRICE], K[K_HOLD_BPS])
            oid = ev[R_OID]
            s = _new_bid_slot(B, bmap, bfree, S, oid)
            B[s, B_OID] = oid
            B[s, B_ACCOUNT] = ev[R_ACC]
            B[s, B_HPG] = hpg
            B[s, B_REM] = ev[R_REM]
            _dirty_bid(B, S, db, s)
            B[s, B_FLAGS] |= NEW
            hold = ev[R_REM] * hpg
            if hold:
                a = ev[R_ACC] << ACCOUNT_SHIFT
                out = _emit(out, S, K[K_ORDER_REF] | oid, HOLD, a | AVAILABLE, a | ESCROW, hold, t)
        elif typ == EV_CANCELLED or typ == EV_EXPIRED:  # (reference `_bid_closed`)
            s = intmap.get(bmap, ev[R_OID])
            if s >= 0:
                _close_bid(B, bmap, S, db, gb, s)
                if B[s, B_REM]:
                    a = B[s, B_ACCOUNT] << ACCOUNT_SHIFT
                    out = _emit(out, S, K[K_ORDER_REF] | ev[R_OID], RELEASE, a | ESCROW, a | AVAILABLE,
                                B[s, B_REM] * B[s, B_HPG], S[S_CLOCK])
        elif typ == EV_AMENDED:  # (reference `_bid_amended`)
            s = intmap.get(bmap, ev[R_OID])
            if s >= 0:
                freed = (B[s, B_REM] - ev[R_REM]) * B[s, B_HPG]
                B[s, B_REM] = ev[R_REM]
                _dirty_bid(B, S, db, s)
                if freed > 0:
                    a = B[s, B_ACCOUNT] << ACCOUNT_SHIFT
                    out = _emit(out, S, K[K_ORDER_REF] | ev[R_OID], ev[R_SEQ] << PARAM_SHIFT | AMEND, a | ESCROW,
                                a | AVAILABLE, freed, t)
        else:  # EV_PREEMPTED, EV_RELEASED (reference `_cut`): the lease now ends at the event's end
            s = intmap.get(lmap, ev[R_TID])
            if s >= 0:
                new_end = ev[R_END] if ev[R_END] < L[s, END] else L[s, END]
                if new_end < L[s, START]:
                    new_end = L[s, START]
                preempted = typ == EV_PREEMPTED
                L[s, ENDED_BY] = PREEMPTED if preempted else RELEASED
                L[s, END] = new_end
                if L[s, STATUS] <= READY:
                    why = ev[R_SEQ] << PARAM_SHIFT | (C_PREEMPTED if preempted else C_RELEASED)
                    out = settle(L, s, K[K_LEASE_REF] | L[s, TID], why, t, out, S)
                out = _advance(L, lmap, heap, S, K, dl, gl, stack, s, S[S_CLOCK], out)
                _dirty_lease(L, S, dl, s)
        if out.shape[0] != owned.shape[0]:
            owned = out
            out = borrow(owned)
    if last_time > S[S_CLOCK]:
        if S[S_NHEAP] and heap[0, 0] <= last_time:
            out = advance_class(L, lmap, heap, S, K, dl, gl, stack, last_time, out)
        S[S_CLOCK] = last_time
    return owned if out.shape[0] == owned.shape[0] else out


# ---------------------------------------------------------------------- provisioning answers (R18)
@_nj
def mark(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, dl: np.ndarray,
         gl: np.ndarray, stack: np.ndarray, s: int, what: int, t: int, reason: int, out: np.ndarray) -> np.ndarray:
    """(reference `mark_provisioning` / `mark_ready` / `mark_failed`, once the Python side checked
    the lease's state) ``what``: PROVISIONING, READY or FAILED."""
    if what == PROVISIONING:
        L[s, STATUS] = PROVISIONING
        _dirty_lease(L, S, dl, s)
        return _advance(L, lmap, heap, S, K, dl, gl, stack, s, S[S_CLOCK], out)
    if what == READY:
        L[s, STATUS] = READY
        L[s, READY_AT] = t if t > 1 else 1
        out = settle(L, s, K[K_LEASE_REF] | L[s, TID], C_READY, t, out, S)
        out = _advance(L, lmap, heap, S, K, dl, gl, stack, s, S[S_CLOCK], out)
        _dirty_lease(L, S, dl, s)
        return out
    out = _fail(L, lmap, heap, S, K, dl, gl, stack, s, reason, 0, t, out)
    return _advance(L, lmap, heap, S, K, dl, gl, stack, s, S[S_CLOCK], out)


@_nj
def schedule_all(L: np.ndarray, lmap: np.ndarray, heap: np.ndarray, S: np.ndarray, K: np.ndarray, gl: np.ndarray,
                 slots: np.ndarray) -> None:
    """(reference `restore`) Put restored leases on the timetable, in trade id order."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if not L[s, LFLAGS] & GONE:
            _schedule_next(L, lmap, heap, S, K, gl, s, S[S_CLOCK])


# ---------------------------------------------------------------------- what changed (the store's rows)
@_nj
def take_leases(L: np.ndarray, lfree: np.ndarray, S: np.ndarray, dl: np.ndarray, gl: np.ndarray) -> np.ndarray:
    """The rows (first LEASE_FIELDS columns) of the leases changed since the last take; then the
    slots of dropped leases are free again."""
    n = S[S_NDL]
    rows = np.empty((n, LEASE_FIELDS + 1), np.int64)
    for i in range(n):
        s = dl[i]
        for j in range(LEASE_FIELDS):
            rows[i, j] = L[s, j]
        rows[i, LEASE_FIELDS] = L[s, FAIL_ARG]
        L[s, LFLAGS] &= ~DIRTY
    S[S_NDL] = 0
    _free_gone(L, LFLAGS, lfree, S, S_LFREE, gl, S_NGL)
    return rows


@_nj
def _free_gone(T: np.ndarray, flags: int, free: np.ndarray, S: np.ndarray, nfree: int, gone: np.ndarray,
               ngone: int) -> None:
    """The rows listed in gone[:S[ngone]] (closed since the last take) back on the free list."""
    for i in range(S[ngone]):
        s = gone[i]
        T[s, flags] = 0
        free[S[nfree]] = s
        S[nfree] += 1
    S[ngone] = 0


@_nj
def take_bids(B: np.ndarray, bfree: np.ndarray, S: np.ndarray, db: np.ndarray,
              gb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(open bids changed: oid, account, hpg, remaining; closed bids' oids to delete) since the
    last take; a bid opened and closed in between needs neither.  Then closed slots are free."""
    n = S[S_NDB]
    up = np.empty((n, 4), np.int64)
    gone = np.empty(n, np.int64)
    nu = 0
    ng = 0
    for i in range(n):
        s = db[i]
        f = B[s, B_FLAGS]
        if f & GONE:
            if not f & NEW:
                gone[ng] = B[s, B_OID]
                ng += 1
        else:
            up[nu, 0] = B[s, B_OID]
            up[nu, 1] = B[s, B_ACCOUNT]
            up[nu, 2] = B[s, B_HPG]
            up[nu, 3] = B[s, B_REM]
            nu += 1
            B[s, B_FLAGS] = 0
    S[S_NDB] = 0
    _free_gone(B, B_FLAGS, bfree, S, S_BFREE, gb, S_NGB)
    return up[:nu], gone[:ng]


@_nj
def select(events: np.ndarray, after: int, id_limit: int, money_limit: float) -> tuple:
    """(reference: `engine._relevant_array`) One pass over a class's events (EVENT_DTYPE, seqs
    from ``after + 1``): the rows of those that move money, in RECORD columns, the last seq and
    the latest time, and a verdict: ``(rows, last_seq, last_time, problem, at)`` where problem is
    0 (none), 1 (a gap: the event at ``at`` does not follow its predecessor), 2 (an order or trade
    id of ``id_limit`` or more at ``at``) or 3 (a lease value or hold of ``money_limit`` µ$ or more
    at ``at``; float bounds, so the int64 arithmetic of the rest cannot overflow)."""
    n = len(events)
    rows = np.empty((n, 17), np.int64)
    k = 0
    expect = after + 1
    for i in range(n):  # the seqs first: a gap is the answer whatever else is wrong
        if events[i]["seq"] != expect:
            return rows[:0], 0, 0, 1, i
        expect += 1
    last_time = 0
    for i in range(n):
        e = events[i]
        if e["time"] > last_time:
            last_time = e["time"]
        t = e["type"]
        if t == EV_TRADE or t == EV_PREEMPTED or t == EV_RELEASED:
            pass
        elif e["side"] == SIDE_BID and (t == EV_ACCEPTED or t == EV_CANCELLED or t == EV_EXPIRED or t == EV_AMENDED):
            pass
        else:
            continue
        if e["oid"] >= id_limit or e["trade_id"] >= id_limit:
            return rows[:0], 0, 0, 2, i
        span = e["end"] - e["start"]
        value = float(e["gpus"]) * float(e["price"]) * float(span if span > 0 else 0)
        rem = e["remaining"] if e["remaining"] > 1 else 1
        hold = float(e["hours"]) * float(e["price"]) * 2.0 * float(rem)
        if value >= money_limit or hold >= money_limit:
            return rows[:0], 0, 0, 3, i
        r = rows[k]
        r[R_SEQ], r[R_TIME], r[R_OID], r[R_OID2], r[R_TID] = e["seq"], e["time"], e["oid"], e["oid2"], e["trade_id"]
        r[R_ACC], r[R_ACC2], r[R_PRICE] = e["account"], e["account2"], e["price"]
        r[R_START], r[R_END] = e["start"], e["end"]
        r[R_LEASE], r[R_GPUS], r[R_REM], r[R_HOURS] = e["lease_id"], e["gpus"], e["remaining"], e["hours"]
        r[R_TYPE], r[R_KIND], r[R_MAKER] = e["type"], e["kind"], e["maker"]
        k += 1
    return rows[:k], expect - 1, last_time, 0, 0


@_nj
def net_moves(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each account's net change over transfer rows (debit column 2, credit 3, amount 4): the
    accounts any row names, in increasing order (a net of 0 included), and their nets.  Account
    keys of a market are few and close together, so they are summed in an array over their range;
    keys far apart are summed after a sort."""
    n = rows.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo = min(rows[0, 2], rows[0, 3])
    hi = max(rows[0, 2], rows[0, 3])
    for i in range(n):
        for c in (2, 3):
            k = rows[i, c]
            if k < lo:
                lo = k
            elif k > hi:
                hi = k
    if hi - lo < 8 * n + 4096:
        span = hi - lo + 1
        net = np.zeros(span, np.int64)
        seen = np.zeros(span, np.bool_)
        for i in range(n):
            a = rows[i, 2] - lo
            b = rows[i, 3] - lo
            net[a] -= rows[i, 4]
            net[b] += rows[i, 4]
            seen[a] = True
            seen[b] = True
        m = 0
        for j in range(span):
            if seen[j]:
                m += 1
        keys = np.empty(m, np.int64)
        out = np.empty(m, np.int64)
        m = 0
        for j in range(span):
            if seen[j]:
                keys[m] = j + lo
                out[m] = net[j]
                m += 1
        return keys, out
    flat = np.empty(2 * n, np.int64)
    moves = np.empty(2 * n, np.int64)
    for i in range(n):
        flat[2 * i], moves[2 * i] = rows[i, 2], -rows[i, 4]
        flat[2 * i + 1], moves[2 * i + 1] = rows[i, 3], rows[i, 4]
    order = np.argsort(flat, kind="mergesort")
    keys = np.empty(2 * n, np.int64)
    out = np.empty(2 * n, np.int64)
    m = -1
    for j in range(2 * n):
        k = flat[order[j]]
        if m < 0 or keys[m] != k:
            m += 1
            keys[m] = k
            out[m] = 0
        out[m] += moves[order[j]]
    return keys[:m + 1].copy(), out[:m + 1].copy()
