"""The settlement state machine: the exchange's events in, ledger transfers out.  No I/O.

    engine = SettlementEngine(SettlementConfig(fees={"H100": (0, 25)}))
    transfers = engine.apply("H100", events)       # Events (or an EVENT_DTYPE array), in seq order
    transfers += engine.tick(now)                    # meter ready leases, end those whose end passed
    transfers += engine.mark_ready("H100", 7, t)     # provisioning's answers (R18)
    engine.take_changes()                            # what changed since last time, for the store

Per class it keeps the open bids (their escrow per GPU and remaining GPUs), the live leases,
the last event seq applied and a clock.  Events of a class must come in seq order without a
gap (`SequenceGap`); an event at or below the last seq was applied already and is skipped,
which is what makes a replayed batch change nothing.  The clock of a class is the latest of
its events' times and the times given to `tick`; before an event later than the clock, the
class's leases are advanced to the event's time (so ready leases are metered and ended at
the same points however the events were batched: a replay gives an identical ledger).

The per-event work runs jitted over columnar state (`clearing.core`); the rules are those of
`clearing.reference`, the plain-Python engine written for clarity, which the tests run
beside this one on the same events and require the same transfers and state from.  Leases
and bids are read out as `Lease` / `Bid` objects (`lease`, `ClassState.leases`, `take_changes`).

Transfers come out as the ledger's rows, an int64 array of ``(ref, sub, debit, credit, amount,
time)`` (`join_transfers` puts several together; the ledger stores them as a page): the id
as two integers (`clearing.ids`, with the class's code in the ledger's ``id_classes``:
``class_code``, which the store connects to the ledger file) and accounts as ``owner << 3 | kind``.

What each event does to money (R17, R19) is written out in `clearing/reference.py`, the
plain-Python engine this one is tested against, and in docs/settlement.md.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import msgspec
import numpy as np

from clearing import core, ids, intmap, money
from clearing.events import as_events
from clearing.leases import FAILED, PENDING, PROVISIONING, READY, STATUSES, Lease
from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    SIDE_BID,
    Event,
)


class Record(NamedTuple):
    """The fields of an event that settlement reads, in the order of the int64 rows `clearing.core`
    takes (one row per event that moves money); `records(rows)` reads rows back as Records."""

    seq: int
    time: int
    oid: int
    oid2: int
    trade_id: int
    account: int
    account2: int
    price: int
    start: int
    end: int
    lease_id: int
    gpus: int
    remaining: int
    hours: int
    type: int
    kind: int
    maker: int


RECORD = Record._fields
_R = {name: i for i, name in enumerate(RECORD)}  # column of each field in the rows
R_OID, R_TID, R_PRICE, R_START, R_END, R_GPUS, R_REM, R_HOURS = (
    _R[k] for k in ("oid", "trade_id", "price", "start", "end", "gpus", "remaining", "hours"))
# clearing.core copies these columns as literals
_CORE_COLUMNS = {name: getattr(core, "R_" + col) for name, col in zip(RECORD, (
    "SEQ", "TIME", "OID", "OID2", "TID", "ACC", "ACC2", "PRICE", "START", "END", "LEASE", "GPUS", "REM", "HOURS",
    "TYPE", "KIND", "MAKER"), strict=True)}
if _CORE_COLUMNS != _R:
    raise ImportError("clearing.core's event record columns (R_*) differ from clearing.engine.Record")
_as_record = partial(tuple.__new__, Record)


def records(rows: np.ndarray) -> list[Record]:
    """Rows of RECORD columns (int64) as Records."""
    return list(map(_as_record, rows.tolist()))


_record = operator.attrgetter(*RECORD)  # an Event -> a RECORD tuple
MONEY_LIMIT = 2 ** 62  # lease values and holds at or above this are refused (int64 arithmetic in clearing.core)
_REASONS = {core.REASON_TIMEOUT: "provision timeout", core.REASON_NOT_READY: "not ready by its end"}
_REASON_CODES = {text: code for code, text in _REASONS.items()}
_STATUS_CODES = {name: code for code, name in enumerate(STATUSES)}
_ENDED_BY = {0: "", core.RELEASED: STATUSES[core.RELEASED], core.PREEMPTED: STATUSES[core.PREEMPTED]}
_ENDED_BY_CODES = {name: code for code, name in _ENDED_BY.items()}


@dataclass(frozen=True)
class SettlementConfig:
    """How settlement settles.

    fees: per class, (maker_bps, taker_bps) (R19; a class not named has no fees).
    auto_ready: a lease is ready at its start (metering from the start), for exchanges without
      providers' agents (``[settlement] provisioning = "auto"``); with agents it is off and
      provisioning calls `mark_ready` when an agent answers (R18).
    provision_timeout_s: a lease not ready this long after its start fails (R18); 0 = only
      when its end passes.
    meter_interval_s: ready metered leases move their earnings to the provider at multiples
      of this (and at the end); what is earned is per second either way.
    """

    fees: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    auto_ready: bool = True
    provision_timeout_s: int = 0
    meter_interval_s: int = 86_400

    def __post_init__(self) -> None:
        if self.meter_interval_s < 1:
            raise ValueError("meter_interval_s must be at least 1")
        for cls, (mk, tk) in self.fees.items():
            if not (0 <= mk <= 10_000 and 0 <= tk <= 10_000):
                raise ValueError(f"fees of {cls}: basis points must be within 0..10000, not {(mk, tk)}")


def fees_from_instruments(instruments: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{class: (maker_bps, taker_bps)}`` from the exchange's instruments (exchange.config.Instrument)."""
    return {name: (int(i.maker_fee_bps), int(i.taker_fee_bps)) for name, i in instruments.items()}


class SequenceGap(RuntimeError):
    """Events of a class skipped a seq: settlement must be given the missing ones first."""

    def __init__(self, cls: str, expected: int, got: int) -> None:
        self.cls, self.expected, self.got = cls, expected, got
        super().__init__(f"{cls}: expected event seq {expected}, got {got}; the events between are missing "
                         "(replay them from the exchange's journal)")


class LeaseStateError(RuntimeError):
    """A provisioning answer that does not fit the lease's state (e.g. failing a ready lease)."""


class Bid(msgspec.Struct, array_like=True, gc=False):
    """An open bid's escrow: ``remaining × hpg`` µ$ held."""

    account: int
    hpg: int  # hold per GPU (money.hold_per_gpu)
    remaining: int


@dataclass
class Changes:
    """What changed since the last `take_changes`, per class: the rows the store must write."""

    bids: dict[str, dict[int, Bid | None]] = field(default_factory=dict)  # None: closed
    leases: dict[str, list[Lease]] = field(default_factory=dict)
    cursors: set[str] = field(default_factory=set)


class ClassState:
    """Everything settlement keeps for one GPU class: `clearing.core`'s arrays."""

    def __init__(self, name: str, seq: int = 0, clock: int = 0, fees: tuple[int, int] = (0, 0), code: int = 1,
                 config: SettlementConfig | None = None, capacity: int = 1024) -> None:
        cfg = config or SettlementConfig()
        self.name = name
        self.code = code  # in transfer ids (clearing.ids)
        self.fees = fees  # (maker_bps, taker_bps)
        self.K = np.zeros(core.NK, np.int64)
        self.K[core.K_MAKER_BPS], self.K[core.K_TAKER_BPS] = fees
        self.K[core.K_HOLD_BPS] = money.hold_fee_bps(*fees)  # the fee rate escrow covers (R17)
        self.K[core.K_AUTO_READY] = int(cfg.auto_ready)
        self.K[core.K_TIMEOUT] = cfg.provision_timeout_s
        self.K[core.K_STEP] = cfg.meter_interval_s
        self.K[core.K_ORDER_REF] = ids.class_base(ids.ORDER, code)
        self.K[core.K_TRADE_REF] = ids.class_base(ids.TRADE, code)
        self.K[core.K_LEASE_REF] = ids.class_base(ids.LEASE, code)
        self.S = np.zeros(core.NS, np.int64)
        self.S[core.S_SEQ], self.S[core.S_CLOCK] = seq, clock
        self.lmap = intmap.new()  # trade id -> row of L
        self.bmap = intmap.new()  # order id -> row of B
        self.L = np.zeros((0, core.NL), np.int64)
        self.B = np.zeros((0, core.NB), np.int64)
        self.lfree = self.dl = self.gl = self.stack = self.bfree = self.db = self.gb = np.zeros(0, np.int64)
        self.heap = np.zeros((capacity, 2), np.int64)
        self._grow_leases(capacity)
        self._grow_bids(capacity)
        self.reasons: dict[int, str] = {}  # trade id -> failed reason given by a provider's agent
        self.dirty = False  # seq or clock moved

    # ------------------------------------------------------------------ scalars
    @property
    def seq(self) -> int:
        """The last event seq applied."""
        return int(self.S[core.S_SEQ])

    @seq.setter
    def seq(self, v: int) -> None:
        self.S[core.S_SEQ] = v

    @property
    def clock(self) -> int:
        return int(self.S[core.S_CLOCK])

    @clock.setter
    def clock(self, v: int) -> None:
        self.S[core.S_CLOCK] = v

    # ------------------------------------------------------------------ room
    def _grow(self, table: str, free: str, free_at: int, lists: tuple[str, ...], extra: int) -> int:
        """Room for at least ``extra`` more rows in ``table`` (half as many again at least): the
        new rows go on its free list (lowest first) and its per-row lists grow with it."""
        rows = getattr(self, table)
        old = rows.shape[0]
        new = old + max(extra, old // 2, 1024)
        grown = np.zeros((new, rows.shape[1]), np.int64)
        grown[:old] = rows
        setattr(self, table, grown)
        n = int(self.S[free_at])
        slots = np.empty(new, np.int64)
        slots[:n] = getattr(self, free)[:n]
        slots[n:n + new - old] = np.arange(new - 1, old - 1, -1)
        setattr(self, free, slots)
        self.S[free_at] = n + new - old
        for name in lists:
            a = np.empty(new, np.int64)
            a[:old] = getattr(self, name)[:old]
            setattr(self, name, a)
        return new

    def _grow_leases(self, extra: int) -> None:
        self.stack = np.empty(self._grow("L", "lfree", core.S_LFREE, ("dl", "gl"), extra) + 1, np.int64)

    def _grow_bids(self, extra: int) -> None:
        self._grow("B", "bfree", core.S_BFREE, ("db", "gb"), extra)

    def reserve(self, n: int) -> None:
        """Room for ``n`` more events: a lease or bid each (rows and map entries), and the
        timetable's pushes."""
        self.lmap = intmap.room(self.lmap, n)
        self.bmap = intmap.room(self.bmap, n)
        if self.S[core.S_LFREE] < n:
            self._grow_leases(n)
        if self.S[core.S_BFREE] < n:
            self._grow_bids(n)
        live = int(self.S[core.S_LIVE])
        size = int(self.S[core.S_NHEAP])
        if size > 4 * live + 4096:  # mostly stale entries: rebuild from the leases' due times
            self._compact_heap()
            size = int(self.S[core.S_NHEAP])
        need = size + 2 * n + live + 64
        if need > len(self.heap):
            heap = np.empty((max(need, 2 * len(self.heap)), 2), np.int64)
            heap[:size] = self.heap[:size]
            self.heap = heap

    def live_slots(self) -> np.ndarray:
        """The rows of the leases in the engine (live, or ended until their end passed)."""
        return np.flatnonzero(self.L[:, core.LFLAGS] & core.LIVE)

    def _compact_heap(self) -> None:
        slots = self.live_slots()
        due = self.L[slots, core.DUE]
        on = due >= 0
        due, tid = due[on], self.L[slots[on], core.TID]
        order = np.lexsort((tid, due))  # sorted is a heap
        self.heap[:len(order), 0] = due[order]
        self.heap[:len(order), 1] = tid[order]
        self.S[core.S_NHEAP] = len(order)

    # ------------------------------------------------------------------ reading out
    def slot(self, trade_id: int) -> int:
        return intmap.get(self.lmap, trade_id)

    def reason(self, code: int, arg: int, trade_id: int) -> str:
        if code == core.REASON_PARENT:
            return f"parent lease {self.name}-{arg} failed"
        if code == core.REASON_CUSTOM:
            return self.reasons.get(trade_id, "")
        return _REASONS.get(code, "")

    def lease_from_row(self, r: list[int], arg: int) -> Lease:
        """A `Lease` from a row's first LEASE_FIELDS columns (as a list) and its reason's argument."""
        return Lease(self.name, *r[:core.STATUS], STATUSES[r[core.STATUS]], r[core.READY_AT], r[core.METERED_TO],
                     _ENDED_BY[r[core.ENDED_BY]], self.reason(r[core.FAILED_CODE], arg, r[core.TID]),
                     *r[core.COST_PAID:core.LEASE_FIELDS])

    def lease(self, s: int) -> Lease:
        return self.lease_from_row(self.L[s, :core.LEASE_FIELDS].tolist(), int(self.L[s, core.FAIL_ARG]))

    def find(self, provider: int | None = None, status: str | None = None) -> list[Lease]:
        """Live leases (and ended ones until their end passed) of ``provider`` and/or in ``status``,
        by trade id: a mask over the rows, only the matches read out."""
        L = self.L
        slots = self.live_slots()
        if provider is not None:
            slots = slots[L[slots, core.PROVIDER] == provider]
        if status is not None:
            slots = slots[L[slots, core.STATUS] == _STATUS_CODES[status]]
        slots = slots[np.argsort(L[slots, core.TID], kind="stable")]
        return [self.lease(int(s)) for s in slots]

    @property
    def leases(self) -> Mapping[int, Lease]:
        """Live leases (and ended ones until their end passed), by trade id, as `Lease` copies."""
        return _Leases(self)

    @property
    def bids(self) -> Mapping[int, Bid]:
        """Open bids by oid, as `Bid` copies."""
        return _Bids(self)

    @property
    def due(self) -> dict[int, int]:
        """Trade id -> when the lease next needs advancing (leases on the timetable)."""
        slots = self.live_slots()
        due = self.L[slots, core.DUE]
        on = due >= 0
        return dict(zip(self.L[slots[on], core.TID].tolist(), due[on].tolist(), strict=True))


class _Leases(Mapping[int, Lease]):
    def __init__(self, c: ClassState) -> None:
        self.c = c

    def __getitem__(self, tid: int) -> Lease:
        s = self.c.slot(tid)
        if s < 0:
            raise KeyError(tid)
        return self.c.lease(s)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.c.L[self.c.live_slots(), core.TID].tolist()))

    def __len__(self) -> int:
        return len(self.c.live_slots())


class _Bids(Mapping[int, Bid]):
    def __init__(self, c: ClassState) -> None:
        self.c = c

    def __getitem__(self, oid: int) -> Bid:
        s = intmap.get(self.c.bmap, oid)
        if s < 0:
            raise KeyError(oid)
        _, account, hpg, rem, _ = self.c.B[s].tolist()
        return Bid(account, hpg, rem)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(intmap.items(self.c.bmap)[0].tolist()))

    def __len__(self) -> int:
        return intmap.size(self.c.bmap)


class SettlementEngine:
    def __init__(self, config: SettlementConfig | None = None) -> None:
        self.config = config or SettlementConfig()
        self.classes: dict[str, ClassState] = {}
        self.events_applied = 0
        self.events_skipped = 0
        self.trades = 0
        # a class's code in transfer ids: the store sets this to the ledger's (id_classes);
        # alone, the engine numbers classes in the order it meets them
        self.class_code: Callable[[str], int] = self._local_code
        self._codes: dict[str, int] = {}
        self._out = np.empty((4096, 6), np.int64)  # transfers of one call (core grows it)

    def _local_code(self, cls: str) -> int:
        return self._codes.setdefault(cls, len(self._codes) + 1)

    # ------------------------------------------------------------------ state
    def _new_state(self, cls: str, seq: int = 0, clock: int = 0) -> ClassState:
        return ClassState(cls, seq, clock, tuple(self.config.fees.get(cls, (0, 0))), self.class_code(cls),
                          self.config)

    def state(self, cls: str) -> ClassState:
        c = self.classes.get(cls)
        if c is None:
            c = self.classes[cls] = self._new_state(cls)
        return c

    def last_seq(self, cls: str) -> int:
        c = self.classes.get(cls)
        return c.seq if c is not None else 0

    def lease(self, cls: str, trade_id: int) -> Lease | None:
        c = self.classes.get(cls)
        if c is None:
            return None
        s = c.slot(trade_id)
        return c.lease(s) if s >= 0 else None

    def take_changes(self) -> Changes:
        ch = Changes()
        for name, c in self.classes.items():
            if c.S[core.S_NDB] or c.S[core.S_NGB]:
                up, gone = core.take_bids(c.B, c.bfree, c.S, c.db, c.gb)
                if len(up) or len(gone):
                    bids: dict[int, Bid | None] = {oid: Bid(a, h, r) for oid, a, h, r in up.tolist()}
                    for oid in gone.tolist():
                        bids[oid] = None
                    ch.bids[name] = bids
            if c.S[core.S_NDL] or c.S[core.S_NGL]:
                rows = core.take_leases(c.L, c.lfree, c.S, c.dl, c.gl)
                if len(rows):
                    make = c.lease_from_row
                    ch.leases[name] = [make(r, r[core.LEASE_FIELDS]) for r in rows.tolist()]
                    if c.reasons:  # forget the reasons of leases that left
                        for x in ch.leases[name]:
                            if x.trade_id in c.reasons and c.slot(x.trade_id) < 0:
                                del c.reasons[x.trade_id]
            if c.dirty:
                ch.cursors.add(name)
            c.dirty = False
        return ch

    def drop_changes(self, cls: str) -> None:
        """Forget what changed in ``cls`` since the last take, for an engine that keeps no store
        (the core's money): the slots of closed bids and ended leases are free again, so the
        tables hold the live ones, not every bid and lease there ever was."""
        c = self.classes.get(cls)
        if c is None:
            return
        if c.S[core.S_NDB] or c.S[core.S_NGB]:
            core.take_bids(c.B, c.bfree, c.S, c.db, c.gb)
        if c.S[core.S_NDL] or c.S[core.S_NGL]:
            core.take_leases(c.L, c.lfree, c.S, c.dl, c.gl)
            if c.reasons:  # forget the reasons of leases that left
                for tid in [t for t in c.reasons if c.slot(t) < 0]:
                    del c.reasons[tid]
        c.dirty = False

    def exposure(self) -> dict[int, int]:
        """Escrow that the open bids hold, per account (what the ledger's escrow balances must be)."""
        out: dict[int, int] = {}
        for c in self.classes.values():
            for b in c.bids.values():
                if b.remaining:
                    out[b.account] = out.get(b.account, 0) + b.remaining * b.hpg
        return out

    def prepaid(self) -> dict[int, int]:
        """What the buyers' leases hold in lease_prepaid, per buyer."""
        out: dict[int, int] = {}
        for c in self.classes.values():
            for lease in c.leases.values():
                if lease.prepaid:
                    out[lease.buyer] = out.get(lease.buyer, 0) + lease.prepaid
        return out

    # ------------------------------------------------------------------ calling the core
    def _transfers(self, c: ClassState, out: np.ndarray) -> np.ndarray:
        self._out = out
        n = int(c.S[core.S_NOUT])
        c.S[core.S_NOUT] = 0
        return out[:n].copy() if n else NO_TRANSFERS

    def _begin(self, c: ClassState, n: int) -> None:
        c.reserve(n)
        c.S[core.S_NOUT] = 0

    # ------------------------------------------------------------------ events
    def apply(self, cls: str, events: np.ndarray | Iterable[Any]) -> np.ndarray:
        """Apply one class's events (an EVENT_DTYPE array, or Events, or anything
        `clearing.events.as_events` reads, in seq order); returns the transfers.  Events at or
        below the last seq applied are skipped; a gap raises `SequenceGap` before anything changes."""
        c = self.state(cls)
        if isinstance(events, np.ndarray):
            rows, last_seq, last_time, skipped = _relevant_array(c, events)
        else:
            rows, last_seq, last_time, skipped = _relevant_tuples(c, as_events(events))
        self.events_skipped += skipped
        if not last_seq:
            return NO_TRANSFERS
        if not len(rows) and not (c.S[core.S_NHEAP] and c.heap[0, 0] <= last_time):
            # nothing that moves money, and no lease due by then: only the seq and clock move
            # (what core.apply would do, without its call)
            if last_time > c.clock:
                c.clock = last_time
            self.events_applied += last_seq - c.seq
            c.seq = last_seq
            c.dirty = True
            return NO_TRANSFERS
        self._begin(c, len(rows))
        trades0 = int(c.S[core.S_TRADES])
        out = core.apply(c.L, c.lmap, c.lfree, c.B, c.bmap, c.bfree, c.heap, c.S, c.K, c.dl, c.db, c.gl, c.gb,
                         c.stack, rows, last_time, self._out)
        self.trades += int(c.S[core.S_TRADES]) - trades0
        self.events_applied += last_seq - c.seq
        c.seq = last_seq
        c.dirty = True
        return self._transfers(c, out)

    # ------------------------------------------------------------------ time
    def tick(self, now: int, cls: str | None = None) -> np.ndarray:
        """Advance the clock of one class (or of every class) to ``now``: ready leases are
        metered, leases whose end passed end, auto-ready and timeouts apply."""
        out: list[np.ndarray] = []
        for c in [self.state(cls)] if cls is not None else list(self.classes.values()):
            if now > c.clock:
                self._begin(c, 0)
                arr = core.advance_class(c.L, c.lmap, c.heap, c.S, c.K, c.dl, c.gl, c.stack, now, self._out)
                c.clock = now
                c.dirty = True
                out.append(self._transfers(c, arr))
        return join_transfers(out)

    # ------------------------------------------------------------------ provisioning answers (R18)
    def _live_lease(self, cls: str, trade_id: int) -> tuple[ClassState, int, Lease]:
        c = self.classes.get(cls)
        s = c.slot(trade_id) if c is not None else -1
        if c is None or s < 0:
            raise LeaseStateError(f"no lease {cls}-{trade_id} in settlement (unknown, or ended and settled)")
        return c, s, c.lease(s)

    def _mark(self, c: ClassState, s: int, what: int, t: int = 0, reason: int = 0) -> np.ndarray:
        self._begin(c, 1)
        out = core.mark(c.L, c.lmap, c.heap, c.S, c.K, c.dl, c.gl, c.stack, s, what, t, reason, self._out)
        return self._transfers(c, out)

    def mark_provisioning(self, cls: str, trade_id: int) -> np.ndarray:
        c, s, lease = self._live_lease(cls, trade_id)
        return self._mark(c, s, core.PROVISIONING) if answer_applies(lease, PROVISIONING) else NO_TRANSFERS

    def mark_ready(self, cls: str, trade_id: int, t: int) -> np.ndarray:
        """The provider's agent reports the lease ready at ``t``: metering starts (R18).  A
        repeat is a no-op; ready after the lease's end, or for a failed lease, is refused."""
        c, s, lease = self._live_lease(cls, trade_id)
        return self._mark(c, s, core.READY, t) if answer_applies(lease, READY, t) else NO_TRANSFERS

    def mark_failed(self, cls: str, trade_id: int, t: int, reason: str = "provisioning failed") -> np.ndarray:
        """The lease could not be provisioned: the renter is refunded in full, the provider earns
        nothing (R18); its sub-leases not ready yet fail too.  A repeat is a no-op."""
        c, s, lease = self._live_lease(cls, trade_id)
        if not answer_applies(lease, FAILED):
            return NO_TRANSFERS
        code = _REASON_CODES.get(reason, core.REASON_CUSTOM)
        if code == core.REASON_CUSTOM:
            c.reasons[trade_id] = reason
        return self._mark(c, s, core.FAILED, t, code)

    # ------------------------------------------------------------------ restoring (store)
    def restore(self, cls: str, seq: int, clock: int, bids: Iterable[tuple[int, Bid]],
                leases: Iterable[Lease]) -> None:
        bids = list(bids)
        leases = sorted(leases, key=lambda x: x.trade_id)
        c = self.classes[cls] = self._new_state(cls, seq, clock)
        c.reserve(max(len(bids), len(leases)))
        if bids:  # each bid takes the top free slot, as a bid taken live does; rows and map at once
            top = int(c.S[core.S_BFREE])
            taken = c.bfree[top - len(bids):top][::-1].copy()
            c.S[core.S_BFREE] = top - len(bids)
            rows = np.array([(oid, b.account, b.hpg, b.remaining) for oid, b in bids], np.int64)
            c.B[taken, :4] = rows
            c.B[taken, 4:] = 0
            intmap.fill(c.bmap, rows[:, 0].copy(), taken)
        slots = np.empty(len(leases), np.int64)
        tail: dict[int, int] = {}  # parent trade id -> slot of its last sub-lease so far
        for i, x in enumerate(leases):
            s = int(c.lfree[c.S[core.S_LFREE] - 1])
            c.S[core.S_LFREE] -= 1
            code = _REASON_CODES.get(x.failed_reason, core.REASON_CUSTOM) if x.failed_reason else 0
            if code == core.REASON_CUSTOM:
                c.reasons[x.trade_id] = x.failed_reason
            row = [x.trade_id, x.buyer, x.provider, x.kind, x.gpus, x.price, x.start, x.end, x.booked_end, x.time,
                   x.bid_oid, x.ask_oid, x.resale_of, x.maker, x.buyer_fee_bps, x.provider_fee_bps,
                   _STATUS_CODES[x.status], x.ready_at, x.metered_to, _ENDED_BY_CODES[x.ended_by], code,
                   x.cost, x.buyer_fee, x.earned, x.provider_fee, x.refunded, -1, 0, 0, 0, 0, 0]
            c.L[s] = row
            intmap.put(c.lmap, x.trade_id, s)
            c.L[s, core.LFLAGS] = core.LIVE
            slots[i] = s
            parent = intmap.get(c.lmap, x.resale_of) if x.resale_of else -1
            if parent >= 0:
                prev = tail.get(x.resale_of)
                if prev is None:
                    c.L[parent, core.CHILD] = x.trade_id
                else:
                    c.L[prev, core.SIB] = x.trade_id
                tail[x.resale_of] = s
        c.S[core.S_LIVE] = len(leases)
        core.schedule_all(c.L, c.lmap, c.heap, c.S, c.K, c.gl, slots)


def answer_applies(lease: Lease, step: str, t: int = 0) -> bool:
    """Whether a provisioning step — ``provisioning``, ``ready`` at ``t`` or ``failed`` (R18) —
    changes ``lease`` (True), is a repeat that changes nothing (False), or cannot be
    (`LeaseStateError`): ready after the lease's end or once it failed, failed once it is ready
    or over.  Both engines (and so the reference) answer by this."""
    live = lease.status in (PENDING, PROVISIONING)
    if step == FAILED:
        if live:
            return True
        if lease.status == FAILED:
            return False
        raise LeaseStateError(f"lease {lease.ref} is {lease.status}: only a lease not ready yet can fail")
    if lease.status == FAILED:
        raise LeaseStateError(f"lease {lease.ref} failed already ({lease.failed_reason})")
    if step == PROVISIONING:
        return lease.status == PENDING
    if live and t >= lease.end:
        raise LeaseStateError(f"lease {lease.ref} cannot be ready at {t}: it ends at {lease.end}")
    return live


NO_TRANSFERS = np.zeros((0, 6), np.int64)
NO_TRANSFERS.flags.writeable = False


def join_transfers(parts: Iterable[np.ndarray | list]) -> np.ndarray:
    """One array of transfer rows from several (arrays from the engine, or lists of row tuples)."""
    arrays = [p if isinstance(p, np.ndarray) else np.array(p, np.int64).reshape(-1, 6) for p in parts if len(p)]
    if not arrays:
        return NO_TRANSFERS
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


_BID_TYPES = (EV_ACCEPTED, EV_CANCELLED, EV_EXPIRED, EV_AMENDED)
_NO_ROWS = np.zeros((0, len(RECORD)), np.int64)


def _check_money(c: ClassState, rows: np.ndarray) -> None:
    """Refuse events whose money could overflow the core's int64 arithmetic (no real lease comes near)."""
    if not len(rows):
        return
    f = rows.astype(np.float64)
    value = f[:, R_GPUS] * f[:, R_PRICE] * np.maximum(f[:, R_END] - f[:, R_START], 0.0)
    hold = f[:, R_HOURS] * f[:, R_PRICE] * 2.0 * np.maximum(f[:, R_REM], 1.0)
    if float(value.max()) >= MONEY_LIMIT or float(hold.max()) >= MONEY_LIMIT:
        raise ValueError(f"{c.name}: an event's lease value or hold is 2**62 µ$ or more and cannot be settled")


def _relevant_array(c: ClassState, events: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """The events of an array that move money (as RECORD rows of int64), the last seq and time,
    and how many were applied before; checks the seqs continue the class's without a gap."""
    if not len(events):
        return _NO_ROWS, 0, 0, 0
    seqs = events["seq"]
    skipped = 0
    if seqs[0] <= c.seq:
        skipped = int(np.searchsorted(seqs, c.seq, side="right"))
        events, seqs = events[skipped:], seqs[skipped:]
        if not len(events):
            return _NO_ROWS, 0, 0, skipped
    rows, last_seq, last_time, problem, at = core.select(events, c.seq, ids.ID_LIMIT, float(MONEY_LIMIT))
    if problem == 1:
        prev = int(seqs[at - 1]) if at else c.seq
        raise SequenceGap(c.name, prev + 1, int(seqs[at]))
    if problem == 2:
        raise ValueError(f"{c.name}: an order or trade id of 2**48 or more cannot be settled (clearing.ids)")
    if problem == 3:
        raise ValueError(f"{c.name}: an event's lease value or hold is 2**62 µ$ or more and cannot be settled")
    return rows, int(last_seq), int(last_time), skipped


def _relevant_tuples(c: ClassState, events: Iterable[Event]) -> tuple[np.ndarray, int, int, int]:
    """`_relevant_array` for Events."""
    rows = []
    seq = c.seq
    skipped = 0
    last_time = 0
    for ev in events:
        s = ev.seq
        if s <= seq:
            skipped += 1
            continue
        if s != seq + 1:
            raise SequenceGap(c.name, seq + 1, s)
        seq = s
        t = ev.type
        if t == EV_TRADE or t == EV_PREEMPTED or t == EV_RELEASED or (ev.side == SIDE_BID and t in _BID_TYPES):
            if ev.oid >= ids.ID_LIMIT or ev.trade_id >= ids.ID_LIMIT:
                raise ValueError(f"{c.name}: an order or trade id of 2**48 or more cannot be settled (clearing.ids)")
            rows.append(_record(ev))
        if ev.time > last_time:
            last_time = ev.time
    try:
        arr = np.array(rows, dtype=np.int64).reshape(len(rows), len(RECORD)) if rows else _NO_ROWS
    except OverflowError:
        raise ValueError(f"{c.name}: an event has a field beyond int64 and cannot be settled") from None
    _check_money(c, arr)
    return arr, (seq if seq > c.seq else 0), last_time, skipped


__all__ = ["RECORD", "Bid", "Changes", "ClassState", "LeaseStateError", "SequenceGap", "SettlementConfig",
           "SettlementEngine", "answer_applies", "fees_from_instruments", "join_transfers"]
