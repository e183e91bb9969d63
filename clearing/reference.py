"""The settlement engine in plain Python, written for clarity: the specification that
`clearing.engine` (the same rules over columnar state, jitted in `clearing.core`) is
checked against, event for event, by the tests.  Same API as `clearing.engine.SettlementEngine`.

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

Transfers come out as the ledger's rows, ``(ref, sub, debit, credit, amount, time)``: the id
as two integers (`clearing.ids`, with the class's code in the ledger's ``id_classes``:
``class_code``, which the store connects to the ledger file) and accounts as ``owner << 3 | kind``.

Money per event (R17, R19; transfer ids in docs/settlement.md):

* bid accepted — hold ``remaining × hold_per_gpu`` from available to escrow;
* trade — from the bid's escrow for the filled GPUs: the lease's cost to lease_prepaid, the
  buyer's fee (maker or taker rate) to fees, the rest back to available; a lease, pending;
* bid amended / cancelled / expired — the released GPUs' hold back to available;
* preempted / released — the lease's end moves earlier and the part after it is refunded;
* asks and rejections move no money (a resale ask's fills pay the reseller, R16).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clearing import ids
from clearing.engine import (  # shared with the jitted engine
    Bid,
    LeaseStateError,
    Record,
    SettlementConfig,
    answer_applies,
    records,
)
from clearing.engine import _relevant_array as _engine_relevant_array
from clearing.engine import _relevant_tuples as _engine_relevant_tuples
from clearing.events import as_events
from clearing.ids import AMEND, BUYER_FEE, COST, HOLD, TOP_UP, TRADE_RELEASE
from clearing.ids import RELEASE as ORDER_RELEASE
from clearing.leases import (
    ENDED,
    FAILED,
    LIVE,
    PENDING,
    PREEMPTED,
    PROVISIONING,
    READY,
    RELEASED,
    Lease,
    settle,
    settle_earnings,
)
from clearing.money import AVAILABLE, ESCROW, EXCHANGE, FEES, PREPAID, fee, hold_fee_bps, hold_per_gpu, lease_value
from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_TRADE,
    RESERVED,
    SIDE_BID,
)

_FEES = EXCHANGE << 3 | FEES
_READY = ids.cause(ids.READY)
_END = ids.cause(ids.END)
_FAILED = ids.cause(ids.FAILED)
_METER = ids.cause(ids.METER)
DUE_SHIFT = 48  # a timetable entry is due << 48 | trade id (trade ids are below ids.ID_LIMIT)
TID_MASK = (1 << DUE_SHIFT) - 1
assert ids.ID_LIMIT == 1 << DUE_SHIFT


class ClassState:
    """Everything settlement keeps for one GPU class."""

    __slots__ = ("name", "code", "order_ref", "trade_ref", "lease_ref", "bids", "leases", "children", "heap", "due",
                 "seq", "clock", "fees", "hold_bps", "dirty_bids", "new_bids", "dirty_leases", "dirty")

    def __init__(self, name: str, seq: int = 0, clock: int = 0, fees: tuple[int, int] = (0, 0), code: int = 1) -> None:
        self.name = name
        self.code = code  # in transfer ids (clearing.ids); a ref is order_ref | oid, trade_ref | tid, ...
        self.order_ref = ids.class_base(ids.ORDER, code)
        self.trade_ref = ids.class_base(ids.TRADE, code)
        self.lease_ref = ids.class_base(ids.LEASE, code)
        self.fees = fees  # (maker_bps, taker_bps)
        self.hold_bps = hold_fee_bps(*fees)  # the fee rate escrow covers (R17)
        self.bids: dict[int, Bid] = {}  # open bids by oid
        self.leases: dict[int, Lease] = {}  # leases by trade id: live ones, and ended ones until their end passed
        self.children: dict[int, list[int]] = {}  # parent trade id -> sub-lease trade ids (R16)
        self.heap: list[int] = []  # due << DUE_SHIFT | trade id (faster than tuples), lazily invalidated
        self.due: dict[int, int] = {}  # trade id -> when it next needs advancing
        self.seq = seq  # last event seq applied
        self.clock = clock
        # changed since the last take_changes: what the store must write
        self.dirty_bids: dict[int, Bid | None] = {}  # None: closed
        self.new_bids: set[int] = set()  # opened since: closing one needs no write at all
        self.dirty_leases: dict[int, Lease] = {}
        self.dirty = False  # seq or clock moved


@dataclass
class Changes:
    """What changed since the last `take_changes`, per class: the rows the store must write."""

    bids: dict[str, dict[int, Bid | None]] = field(default_factory=dict)  # None: closed
    leases: dict[str, dict[int, Lease]] = field(default_factory=dict)
    cursors: set[str] = field(default_factory=set)


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

    def _local_code(self, cls: str) -> int:
        return self._codes.setdefault(cls, len(self._codes) + 1)

    # ------------------------------------------------------------------ state
    def state(self, cls: str) -> ClassState:
        c = self.classes.get(cls)
        if c is None:
            c = self.classes[cls] = ClassState(cls, fees=tuple(self.config.fees.get(cls, (0, 0))),
                                               code=self.class_code(cls))
        return c

    def last_seq(self, cls: str) -> int:
        c = self.classes.get(cls)
        return c.seq if c is not None else 0

    def lease(self, cls: str, trade_id: int) -> Lease | None:
        c = self.classes.get(cls)
        return c.leases.get(trade_id) if c is not None else None

    def take_changes(self) -> Changes:
        ch = Changes()
        for name, c in self.classes.items():
            if c.dirty_bids:
                ch.bids[name] = c.dirty_bids
            if c.dirty_leases:
                ch.leases[name] = c.dirty_leases
            if c.dirty:
                ch.cursors.add(name)
            c.dirty_bids = {}
            c.new_bids = set()
            c.dirty_leases = {}
            c.dirty = False
        return ch

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

    # ------------------------------------------------------------------ events
    def apply(self, cls: str, events: np.ndarray | Iterable[Any]) -> list[tuple]:
        """Apply one class's events (an EVENT_DTYPE array or Events, in seq order);
        returns the transfers.  Events at or below the last seq applied are skipped; a gap
        raises `SequenceGap` before anything changes."""
        c = self.state(cls)
        if isinstance(events, np.ndarray):
            rows, last_seq, last_time, skipped = _relevant_array(c, events)
        else:
            rows, last_seq, last_time, skipped = _relevant_tuples(c, events)
        self.events_skipped += skipped
        if not last_seq:
            return []
        out: list[tuple] = []
        heap = c.heap
        for ev in rows:
            t = ev.time
            if t > c.clock:
                if heap and heap[0] >> DUE_SHIFT <= t:
                    self._advance_class(c, t, out)
                c.clock = t
            typ = ev.type
            if typ == EV_TRADE:
                self._trade(c, ev, out)
            elif typ == EV_ACCEPTED:
                self._accepted_bid(c, ev, out)
            elif typ == EV_CANCELLED or typ == EV_EXPIRED:
                self._bid_closed(c, ev.oid, out)
            elif typ == EV_AMENDED:
                self._bid_amended(c, ev, out)
            else:  # EV_PREEMPTED, EV_RELEASED
                self._cut(c, ev, out)
        if last_time > c.clock:
            if heap and heap[0] >> DUE_SHIFT <= last_time:
                self._advance_class(c, last_time, out)
            c.clock = last_time
        self.events_applied += last_seq - c.seq
        c.seq = last_seq
        c.dirty = True
        return out

    def _accepted_bid(self, c: ClassState, ev: Record, out: list) -> None:
        hpg = hold_per_gpu(ev.hours, ev.price, c.hold_bps)
        oid = ev.oid
        bid = Bid(ev.account, hpg, ev.remaining)
        c.bids[oid] = bid
        c.dirty_bids[oid] = bid
        c.new_bids.add(oid)
        hold = bid.remaining * hpg
        if hold:
            a = bid.account << 3
            out.append((c.order_ref | oid, HOLD, a | AVAILABLE, a | ESCROW, hold, ev.time))

    def _bid_closed(self, c: ClassState, oid: int, out: list) -> None:
        bid = c.bids.pop(oid, None)
        if bid is None:
            return
        self._forget_bid(c, oid)
        if bid.remaining:
            a = bid.account << 3
            out.append((c.order_ref | oid, ORDER_RELEASE, a | ESCROW, a | AVAILABLE, bid.remaining * bid.hpg, c.clock))

    def _forget_bid(self, c: ClassState, oid: int) -> None:
        if oid in c.new_bids:  # opened and closed between two saves: nothing to write
            c.new_bids.discard(oid)
            del c.dirty_bids[oid]
        else:
            c.dirty_bids[oid] = None

    def _bid_amended(self, c: ClassState, ev: Record, out: list) -> None:
        bid = c.bids.get(ev.oid)
        if bid is None:
            return
        new = ev.remaining
        freed = (bid.remaining - new) * bid.hpg
        bid.remaining = new
        c.dirty_bids[ev.oid] = bid
        if freed > 0:
            a = bid.account << 3
            out.append((c.order_ref | ev.oid, ev.seq << ids.PARAM_SHIFT | AMEND, a | ESCROW, a | AVAILABLE, freed,
                        ev.time))

    def _trade(self, c: ClassState, ev: Record, out: list) -> None:
        _, t, oid, ask_oid, tid, buyer, provider, price, start, end, resale_of, gpus, rem, _, _, kind, maker = ev
        cost = lease_value(gpus, price, end - start)
        mk, tk = c.fees
        if maker == SIDE_BID:
            brate, prate = mk, tk
        else:
            brate, prate = tk, mk
        buyer_fee = fee(cost, brate)
        ref = c.trade_ref | tid
        b = buyer << 3
        bid = c.bids.get(oid)
        src = b | AVAILABLE
        if bid is not None:
            src = b | ESCROW
            rest = gpus * bid.hpg - cost - buyer_fee
            bid.remaining = rem
            if rem <= 0:
                del c.bids[oid]
                self._forget_bid(c, oid)
            else:
                c.dirty_bids[oid] = bid
            if rest > 0:
                out.append((ref, TRADE_RELEASE, src, b | AVAILABLE, rest, t))
            elif rest < 0:  # the fee rate rose since the bid was accepted: the difference from available
                out.append((ref, TOP_UP, b | AVAILABLE, src, -rest, t))
        if cost:
            out.append((ref, COST, src, b | PREPAID, cost, t))
        if buyer_fee:
            out.append((ref, BUYER_FEE, src, _FEES, buyer_fee, t))
        # Lease(cls, trade_id, buyer, provider, kind, gpus, price, start, end, booked_end, time, bid_oid, ask_oid,
        #       resale_of, maker, buyer_fee_bps, provider_fee_bps, status, ready_at, metered_to, ended_by,
        #       failed_reason, cost, buyer_fee)
        lease = Lease(c.name, tid, buyer, provider, kind, gpus, price, start, end, end, t, oid, ask_oid,
                      resale_of, maker, brate, prate, PENDING, 0, 0, "", "", cost, buyer_fee)
        c.leases[tid] = lease
        if resale_of:
            c.children.setdefault(resale_of, []).append(tid)
        self.trades += 1
        c.dirty_leases[tid] = lease
        now = c.clock
        cfg = self.config
        if cfg.auto_ready and kind != RESERVED and start <= now < end:
            # the common case, without the general `_advance`: ready at its start, nothing to
            # move yet; next due at the first metering point or its end
            lease.status = READY
            lease.ready_at = start
            step = cfg.meter_interval_s
            point = start - start % step + step
            if point > now:
                due = point if point < end else end
                c.due[tid] = due
                heapq.heappush(c.heap, due << DUE_SHIFT | tid)
                return
        self._advance(c, lease, now, out)

    def _cut(self, c: ClassState, ev: Record, out: list) -> None:
        """EV_PREEMPTED / EV_RELEASED: the lease now ends at ev's end (R12, R16)."""
        lease = c.leases.get(ev.trade_id)
        if lease is None:
            return
        new_end = max(min(ev.end, lease.end), lease.start)
        preempted = ev.type == EV_PREEMPTED
        lease.ended_by = PREEMPTED if preempted else RELEASED
        lease.end = new_end
        if lease.status in LIVE:
            why = ids.cause(ids.PREEMPTED if preempted else ids.RELEASED, ev.seq)
            settle(lease, c.lease_ref | lease.trade_id, why, ev.time, out)
        self._advance(c, lease, c.clock, out)
        c.dirty_leases[lease.trade_id] = lease

    # ------------------------------------------------------------------ time
    def tick(self, now: int, cls: str | None = None) -> list[tuple]:
        """Advance the clock of one class (or of every class) to ``now``: ready leases are
        metered, leases whose end passed end, auto-ready and timeouts apply."""
        out: list[tuple] = []
        for c in [self.state(cls)] if cls is not None else list(self.classes.values()):
            if now > c.clock:
                self._advance_class(c, now, out)
                c.clock = now
                c.dirty = True
        return out

    def _advance_class(self, c: ClassState, now: int, out: list) -> None:
        heap = c.heap
        dues = c.due
        leases = c.leases
        changed = c.dirty_leases
        step = self.config.meter_interval_s
        lease_ref = c.lease_ref
        pop, push = heapq.heappop, heapq.heappush
        limit = (now + 1) << DUE_SHIFT
        while heap and heap[0] < limit:
            entry = pop(heap)
            due, tid = entry >> DUE_SHIFT, entry & TID_MASK
            if dues.get(tid) != due:
                continue  # stale entry
            del dues[tid]
            lease = leases.get(tid)
            if lease is None:
                continue
            changed[tid] = lease
            if lease.status != READY or lease.kind == RESERVED:
                self._advance(c, lease, now, out)
                continue
            # a ready metered lease (most of them): `_advance` and `_schedule_next`, inlined
            end = lease.end
            rf = lease.ready_at if lease.ready_at > lease.start else lease.start
            base = lease.metered_to if lease.metered_to > rf else rf
            point = base - base % step + step
            ref = lease_ref | tid
            while point <= now and point < end:
                lease.metered_to = point
                settle_earnings(lease, ref, point << ids.PARAM_SHIFT | _METER, point, out)
                point += step
            if now >= end:
                lease.metered_to = end
                lease.status = lease.ended_by or ENDED
                settle_earnings(lease, ref, _END, end, out)
                self._drop(c, lease)
            else:
                due = point if point < end else end
                dues[tid] = due
                push(heap, due << DUE_SHIFT | tid)

    def _advance(self, c: ClassState, lease: Lease, now: int, out: list) -> None:
        """Every transition of ``lease`` due at or before ``now``, each at its own time (so the
        transfers do not depend on when the lease is advanced); then schedule the next one."""
        cfg = self.config
        st = lease.status
        start, end = lease.start, lease.end
        if st == PENDING or st == PROVISIONING:
            if cfg.auto_ready and st == PENDING and now >= start and start < end:
                lease.status = st = READY
                lease.ready_at = start
                if lease.kind == RESERVED:  # earned in full once delivered (metered leases: nothing moves yet)
                    settle(lease, c.lease_ref | lease.trade_id, _READY, start, out)
            else:
                timeout = start + cfg.provision_timeout_s if cfg.provision_timeout_s else end
                if now >= end or now >= timeout:
                    at = min(end, timeout)
                    self._fail(c, lease, "provision timeout" if at < end else "not ready by its end", at, out)
                    st = FAILED
        if st == READY:
            step = cfg.meter_interval_s
            if lease.kind != RESERVED:  # metered: at every multiple of the interval, then at the end
                rf = lease.ready_at if lease.ready_at > start else start
                base = lease.metered_to if lease.metered_to > rf else rf
                point = base - base % step + step
                while point <= now and point < end:
                    lease.metered_to = point
                    settle(lease, c.lease_ref | lease.trade_id, point << ids.PARAM_SHIFT | _METER, point, out)
                    point += step
            if now >= end:
                lease.metered_to = end
                lease.status = lease.ended_by or ENDED
                settle(lease, c.lease_ref | lease.trade_id, _END, end, out)
                self._drop(c, lease)
                return
        self._schedule_next(c, lease, now)

    def _schedule_next(self, c: ClassState, lease: Lease, now: int) -> None:
        """Put ``lease`` on its class's timetable for its next transition (or drop it)."""
        cfg = self.config
        st = lease.status
        start, end = lease.start, lease.end
        tid = lease.trade_id
        if st == READY:
            due = end
            if lease.kind != RESERVED:
                base = lease.metered_to if lease.metered_to > lease.ready_at else lease.ready_at
                base = base if base > start else start
                point = base - base % cfg.meter_interval_s + cfg.meter_interval_s
                if point < due:
                    due = point
        elif st == PENDING or st == PROVISIONING:
            due = end
            if cfg.auto_ready and st == PENDING and start < due:
                due = start
            if cfg.provision_timeout_s and start + cfg.provision_timeout_s < due:
                due = start + cfg.provision_timeout_s
        else:  # ended: kept until its end passed (a late preemption or release may still name it)
            if now >= end:
                self._drop(c, lease)
                return
            due = end
        if c.due.get(tid) != due:
            c.due[tid] = due
            heapq.heappush(c.heap, due << DUE_SHIFT | tid)

    def _drop(self, c: ClassState, lease: Lease) -> None:
        tid = lease.trade_id
        c.leases.pop(tid, None)
        c.due.pop(tid, None)
        c.children.pop(tid, None)
        if lease.resale_of:
            sibs = c.children.get(lease.resale_of)
            if sibs is not None and tid in sibs:
                sibs.remove(tid)

    def _fail(self, c: ClassState, lease: Lease, reason: str, time: int, out: list) -> None:
        lease.status = FAILED
        lease.failed_reason = reason
        settle(lease, c.lease_ref | lease.trade_id, _FAILED, time, out)
        c.dirty_leases[lease.trade_id] = lease
        for child_id in list(c.children.get(lease.trade_id, ())):  # sub-leases on the same hardware fail too
            child = c.leases.get(child_id)
            if child is not None and child.status in (PENDING, PROVISIONING):
                self._fail(c, child, f"parent lease {lease.ref} failed", time, out)
                self._advance(c, child, c.clock, out)

    # ------------------------------------------------------------------ provisioning answers (R18)
    def _live_lease(self, cls: str, trade_id: int) -> tuple[ClassState, Lease]:
        c = self.classes.get(cls)
        lease = c.leases.get(trade_id) if c is not None else None
        if c is None or lease is None:
            raise LeaseStateError(f"no lease {cls}-{trade_id} in settlement (unknown, or ended and settled)")
        return c, lease

    def mark_provisioning(self, cls: str, trade_id: int) -> list[tuple]:
        c, lease = self._live_lease(cls, trade_id)
        out: list[tuple] = []
        if answer_applies(lease, PROVISIONING):
            lease.status = PROVISIONING
            c.dirty_leases[trade_id] = lease
            self._advance(c, lease, c.clock, out)
        return out

    def mark_ready(self, cls: str, trade_id: int, t: int) -> list[tuple]:
        """The provider's agent reports the lease ready at ``t``: metering starts (R18).  A
        repeat is a no-op; ready after the lease's end, or for a failed lease, is refused."""
        c, lease = self._live_lease(cls, trade_id)
        out: list[tuple] = []
        if answer_applies(lease, READY, t):
            lease.status = READY
            lease.ready_at = max(t, 1)
            settle(lease, c.lease_ref | trade_id, _READY, t, out)
            self._advance(c, lease, c.clock, out)
            c.dirty_leases[trade_id] = lease
        return out

    def mark_failed(self, cls: str, trade_id: int, t: int, reason: str = "provisioning failed") -> list[tuple]:
        """The lease could not be provisioned: the renter is refunded in full, the provider earns
        nothing (R18); its sub-leases not ready yet fail too.  A repeat is a no-op."""
        c, lease = self._live_lease(cls, trade_id)
        out: list[tuple] = []
        if answer_applies(lease, FAILED):
            self._fail(c, lease, reason, t, out)
            self._advance(c, lease, c.clock, out)
        return out

    # ------------------------------------------------------------------ restoring (store)
    def restore(self, cls: str, seq: int, clock: int, bids: Iterable[tuple[int, Bid]],
                leases: Iterable[Lease]) -> None:
        c = self.classes[cls] = ClassState(cls, seq, clock, tuple(self.config.fees.get(cls, (0, 0))),
                                           self.class_code(cls))
        c.bids = dict(bids)
        for lease in sorted(leases, key=lambda x: x.trade_id):
            c.leases[lease.trade_id] = lease
            if lease.resale_of:
                c.children.setdefault(lease.resale_of, []).append(lease.trade_id)
        for lease in list(c.leases.values()):
            self._schedule_next(c, lease, clock)



def _relevant_array(c: ClassState, events: np.ndarray) -> tuple[list[Record], int, int, int]:
    rows, last_seq, last_time, skipped = _engine_relevant_array(c, events)  # type: ignore[arg-type]
    return records(rows), last_seq, last_time, skipped


def _relevant_tuples(c: ClassState, events: Iterable[Any]) -> tuple[list[Record], int, int, int]:
    rows, last_seq, last_time, skipped = _engine_relevant_tuples(c, as_events(events))  # type: ignore[arg-type]
    return records(rows), last_seq, last_time, skipped
