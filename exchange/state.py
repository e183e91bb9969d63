"""What the exchange knows beyond the books: orders by account (with what each bid holds in
escrow), leases, client order ids, halted classes.  The money itself is the core's
(`exchange.money`).  All of it follows from the journaled commands and the events the books
answered with, so it is rebuilt exactly by replaying the journal (R21).

`ReferenceState` here is the specification, in plain Python records and dicts; the core runs
`exchange.tables.ExchangeState`, the same rules over int64 tables changed by jitted code, and
tests/test_state_tables.py checks the two against each other.

    state = ReferenceState(instruments)
    spans = state.apply(book, part, commands, events, coids)   # the same call live and on replay

Nothing here decides whether a command may enter the journal (that is the sequencer's
prechecks, live only): this module only applies what the books said.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import msgspec
import numpy as np

from clearing.money import hold_fee_bps, hold_per_gpu, lease_value
from exchange.config import Instrument
from exchange.records import LeaseInfo, OrderInfo, lease_ref
from exchange.views import encode_answer
from orderbook import types as T
from orderbook.types import (
    CMD_CLOCK,
    END_NAMES,
    END_USER,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_RELEASED,
    EV_TRADE,
    KIND_NAMES,
    SIDE_BID,
    TIF_NAMES,
    Command,
    Event,
)

MAX_CLOSED_ORDERS = 200_000  # closed orders remembered for status queries (the lowest order ids forgotten first)
MAX_COIDS = 1_000_000  # client order ids remembered for idempotent retries (oldest forgotten first)
# an ended lease is remembered (GET /v1/leases, the private leases channel, answers) this long
# after its end, by its class's engine time; the ledger keeps every lease's money for good
LEASE_RETENTION_S = 7 * 86_400
# records msgpack-encoded per call when a snapshot is encoded in a worker thread: each call holds
# the GIL for about a millisecond, then the thread lets the event loop run
ENCODE_CHUNK = 2_000
_encoder = msgspec.msgpack.Encoder()


class StateData(msgspec.Struct, kw_only=True):
    """The snapshot form of ExchangeState."""

    orders: list[OrderInfo]
    closed: list[int]
    leases: list[LeaseInfo]
    coids: list[tuple[int, str, bytes]]
    halted: list[str]


def split_events(commands: list[Command], events: list[Event]) -> list[tuple[int, int]]:
    """Which events each command produced: [(first, end)] per command, in order.

    Every command but a clock produces exactly one *leading* event first (accepted,
    rejected, amended, released, or a user cancel) and nothing else does; a clock command
    produces none.  Commands are stamped with their book's time (only clock commands move
    it), so no expiry precedes a command's leading event.  A clock after another command
    cannot be told apart (its events would go to that command), so only the first command
    may be a clock: Engine.apply starts a new book call at every clock.
    """
    spans: list[tuple[int, int]] = []
    n = len(events)
    p = 0
    for c in commands:
        start = p
        if c.type != CMD_CLOCK:
            if p >= n or not _leading(events[p]):
                raise AssertionError(f"command {c} has no leading event at {p}")
            p += 1
        while p < n and not _leading(events[p]):
            p += 1
        spans.append((start, p))
    if p != n:
        raise AssertionError("events left over after the last command")
    return spans


def _leading(ev: Event) -> bool:
    t = ev.type
    return (t == EV_ACCEPTED or t == EV_REJECTED or t == EV_AMENDED or t == EV_RELEASED
            or (t == EV_CANCELLED and ev.reason == END_USER))


class FirstAnswers:
    """The first answer to each client order id (idempotent retries, R15), kept the same way by
    both states: ``coids`` maps (account, client_order_id) to it, the oldest forgotten first past
    MAX_COIDS.  Needs ``orders`` and ``leases`` mappings (the answers are made from them)."""

    coids: dict[tuple[int, str], bytes]
    _pending_coids: list[tuple[int, tuple[int, str], bytes]]
    orders: Any
    leases: Any

    def _first_answer(self, book: str, command: Command, events: list[Event], coid: str, place: int | None,
                      orders: Any = None, leases: Any = None) -> None:
        """The answer to a command that carried ``coid``, if it is the first: remembered now, or
        set aside for `flush_coids` (``place``: the command's place in the journal).  Made from
        the state's orders and leases, or from ``orders`` and ``leases`` as they stood then."""
        key = (command.account, coid)
        if key not in self.coids:
            answer = encode_answer(book, command, events, self.orders if orders is None else orders,
                                   self.leases if leases is None else leases)
            if place is None:
                self._remember_coid(key, answer)
            else:  # remembered in journal order by `flush_coids`
                self._pending_coids.append((place, key, answer))

    def flush_coids(self) -> None:
        """Remember the first answers `apply` set aside (``order``: the command's place in the
        journal), in journal order.  One `Engine.apply` handles its entries book by book, so this
        keeps the order in which client order ids are forgotten (the oldest first, past
        MAX_COIDS) the same whatever the batches were (live, or a replay's chunks)."""
        pending, self._pending_coids = self._pending_coids, []
        pending.sort(key=lambda p: p[0])
        for _, key, answer in pending:
            if key not in self.coids:
                self._remember_coid(key, answer)

    def _remember_coid(self, key: tuple[int, str], answer: bytes) -> None:
        self.coids[key] = answer
        if len(self.coids) > MAX_COIDS:
            del self.coids[next(iter(self.coids))]


class ReferenceState(FirstAnswers):
    """Orders, leases, client order ids and escrow, kept from the books' events."""

    def __init__(self, instruments: dict[str, Instrument]) -> None:
        self.instruments = instruments
        self.orders: dict[int, OrderInfo] = {}
        self.open_by_account: dict[int, set[int]] = {}
        # closed orders remembered for status queries: a min-heap of their ids, so the oldest orders
        # are forgotten first whatever order they closed in (a replay in other batches closes the
        # orders of different classes in another order, and must remember the same ones)
        self.closed: list[int] = []
        self.leases: dict[str, LeaseInfo] = {}
        self.leases_by_account: dict[int, dict[str, None]] = {}  # refs, in trade order
        self._forget_at: dict[str, list[tuple[int, int]]] = {}  # per class: heap of (end + retention, trade id)
        self.coids: dict[tuple[int, str], bytes] = {}  # (account, client_order_id) -> first answer
        self._pending_coids: list[tuple[int, tuple[int, str], bytes]] = []  # (journal place, key, answer)
        self.halted: set[str] = set()
        self._fee_bps = {name: hold_fee_bps(i.maker_fee_bps, i.taker_fee_bps) for name, i in instruments.items()}

    # ------------------------------------------------------------------ queries
    def open_orders(self, account: int) -> list[OrderInfo]:
        return [self.orders[o] for o in sorted(self.open_by_account.get(account, ()))]

    def open_records(self, book: str | None = None) -> list[OrderInfo]:
        """Every open order (of class ``book``), by order id."""
        return sorted((self.orders[o] for oids in self.open_by_account.values() for o in oids
                       if book is None or self.orders[o].book == book), key=lambda o: o.oid)

    def open_count(self, account: int) -> int:
        return len(self.open_by_account.get(account, ()))

    def account_leases(self, account: int) -> list[LeaseInfo]:
        return [self.leases[r] for r in self.leases_by_account.get(account, ())]

    def orders_of(self, oids: list[int]) -> dict[int, OrderInfo]:
        """The records of those of ``oids`` remembered."""
        return {oid: o for oid in oids if (o := self.orders.get(oid)) is not None}

    def prune(self, book: str, now: int) -> int:
        """Forget the class's leases that ended ``LEASE_RETENTION_S`` or more before ``now`` (its
        engine time after a clock command: the same on replay).  Returns how many."""
        heap = self._forget_at.get(book)
        n = 0
        while heap and heap[0][0] <= now:
            _, tid = heapq.heappop(heap)
            ref = lease_ref(book, tid)
            lease = self.leases.get(ref)
            if lease is None or lease.end + LEASE_RETENTION_S > now:
                continue  # forgotten already, or its end moved (a newer entry is on the heap)
            del self.leases[ref]
            for acc in (lease.buyer, lease.provider):
                refs = self.leases_by_account.get(acc)
                if refs is not None:
                    refs.pop(ref, None)
                    if not refs:
                        del self.leases_by_account[acc]
            n += 1
        return n

    def _remember(self, lease: LeaseInfo) -> None:
        heapq.heappush(self._forget_at.setdefault(lease.book, []), (lease.end + LEASE_RETENTION_S, lease.trade_id))

    def hold_for(self, book: str, gpus: int, hours: int, limit: int) -> int:
        return gpus * hold_per_gpu(hours, limit, self._fee_bps.get(book, 0))

    # ------------------------------------------------------------------ applying events
    def apply(self, book: str, part: np.ndarray | None, commands: list[Command] | None = None,
              events: list[Event] | None = None, coids: list[str] | None = None,
              spans: list[tuple[int, int]] | None = None,
              order: list[int] | None = None) -> list[tuple[int, int]] | None:
        """Apply one book's commands and the events they produced; returns the spans of
        `split_events` (or ``spans``, when the caller has them: the book's ``firsts``).
        ``coids[i]`` is the client order id command i carried ('' none); the first answer to
        each is remembered by `answer_of` for idempotent retries.  ``commands`` may be None
        when ``spans`` are given and no command carries a client order id."""
        if events is None:
            events = T.events(part)  # type: ignore[arg-type]
        if spans is None and commands is not None:
            spans = split_events(commands, events)
        inst = self.instruments[book]
        if not coids or not any(coids):  # events in order; no answers to remember
            event = self._event
            for ev in events:
                event(book, inst, ev, "")
            return spans
        assert commands is not None and spans is not None
        for i, (a, b) in enumerate(spans):
            coid = coids[i] if coids else ""
            for ev in events[a:b]:
                self._event(book, inst, ev, coid if ev is events[a] else "")
            if coid:
                self._first_answer(book, commands[i], events[a:b], coid, None if order is None else order[i])
        return spans

    def _event(self, book: str, inst: Instrument, ev: Event, coid: str) -> None:
        t = ev.type
        if t == EV_TRADE:
            self._trade(book, inst, ev)
        elif t == EV_ACCEPTED:
            self._accepted(book, ev, coid)
        elif t == EV_CANCELLED or t == EV_EXPIRED:
            o = self.orders.get(ev.oid)
            if o is not None:
                o.remaining = ev.remaining if o.side == "bid" else o.remaining
                self._close(o, "cancelled" if t == EV_CANCELLED else "expired", END_NAMES.get(ev.reason, ""))
        elif t == EV_AMENDED:
            o = self.orders.get(ev.oid)
            if o is not None:
                o.gpus = ev.gpus
                if o.side == "bid":
                    o.remaining = ev.remaining
                    self._set_hold(o, o.remaining * o.hold_per_gpu)
                else:
                    o.remaining = ev.gpus
        elif t == EV_PREEMPTED or t == EV_RELEASED:
            ref = lease_ref(book, ev.trade_id)
            lease = self.leases.get(ref)
            if lease is not None:  # a new record, not changed in place: a capture() may share the old one
                self.leases[ref] = lease = msgspec.structs.replace(
                    lease, end=ev.end, ended_by="preempted" if t == EV_PREEMPTED else "released",
                    cost=lease_value(lease.gpus, lease.price, ev.end - lease.start))
                self._remember(lease)
        # EV_REJECTED changes nothing (R8)

    def _accepted(self, book: str, ev: Event, coid: str) -> None:
        if ev.side == SIDE_BID:
            o = OrderInfo(oid=ev.oid, book=book, account=ev.account, side="bid", gpus=ev.gpus,
                          price=ev.price, time=ev.time, remaining=ev.remaining,
                          kind=KIND_NAMES[ev.kind], tif=TIF_NAMES[ev.tif], hours=ev.hours,
                          block=ev.block, start=ev.start, end=ev.end, expire_at=ev.expire_at,
                          client_order_id=coid,
                          hold_per_gpu=hold_per_gpu(ev.hours, ev.price, self._fee_bps.get(book, 0)))
            self._set_hold(o, o.remaining * o.hold_per_gpu)
        else:
            o = OrderInfo(oid=ev.oid, book=book, account=ev.account, side="ask", gpus=ev.gpus,
                          price=ev.price, time=ev.time, remaining=ev.gpus,
                          spot_price=ev.price2, start=ev.start, end=ev.end,
                          min_hours=ev.min_hours, expire_at=ev.expire_at, lease_id=ev.lease_id,
                          client_order_id=coid)
        self.orders[o.oid] = o
        self.open_by_account.setdefault(o.account, set()).add(o.oid)

    def _trade(self, book: str, inst: Instrument, ev: Event) -> None:
        gpus, price = ev.gpus, ev.price
        buyer, provider = ev.account, ev.account2
        lease = LeaseInfo(book=book, trade_id=ev.trade_id, bid_oid=ev.oid, ask_oid=ev.oid2, buyer=buyer,
                          provider=provider, kind=KIND_NAMES[ev.kind], gpus=gpus, start=ev.start,
                          end=ev.end, price=price, time=ev.time, resale_of=ev.lease_id,
                          cost=lease_value(gpus, price, ev.end - ev.start))
        ref = lease.ref
        self.leases[ref] = lease
        self.leases_by_account.setdefault(buyer, {})[ref] = None
        if provider != buyer:
            self.leases_by_account.setdefault(provider, {})[ref] = None
        self._remember(lease)
        b = self.orders.get(ev.oid)
        if b is not None:
            b.filled += gpus
            b.remaining = ev.remaining
            self._set_hold(b, b.remaining * b.hold_per_gpu)
            if b.remaining == 0:
                self._close(b, "filled", "")
        a = self.orders.get(ev.oid2)
        if a is not None:
            a.filled += gpus

    def _set_hold(self, o: OrderInfo, amount: int) -> None:
        o.hold = amount  # what the bid holds in escrow now (settlement's ledger holds the money)

    def _close(self, o: OrderInfo, status: str, reason: str) -> None:
        if o.status != "open":
            return
        o.status = status
        o.reason = reason
        if o.side == "bid":
            self._set_hold(o, 0)
        s = self.open_by_account.get(o.account)
        if s is not None:
            s.discard(o.oid)
            if not s:
                del self.open_by_account[o.account]
        heapq.heappush(self.closed, o.oid)
        if len(self.closed) > MAX_CLOSED_ORDERS:
            self.orders.pop(heapq.heappop(self.closed), None)

    # ------------------------------------------------------------------ snapshots
    def to_data(self) -> StateData:
        return StateData(
            orders=list(self.orders.values()),
            closed=list(self.closed),
            leases=list(self.leases.values()),
            coids=[(acc, coid, ans) for (acc, coid), ans in self.coids.items()],
            halted=sorted(self.halted),
        )

    def capture(self) -> Callable[[], StateData]:
        """The state now, for a snapshot taken off the event loop.  Here (cheap): lists of the
        containers' records, and the field values of the open orders (the only records that
        change in place) as they are now; leases are replaced, never changed, and closed orders
        never change, so the lists can share them.  Returns a function that makes the
        `to_data()` of this moment in a worker thread, its lists msgpack-encoded a chunk at a
        time (`Encoded` pieces; `exchange.snapshots.encode_snapshot_parts` writes the same bytes
        as for `to_data()`), letting the event loop run between chunks."""
        orders_now = self.orders
        now = list(map(msgspec.structs.astuple, [orders_now[oid] for oids in self.open_by_account.values()
                                                 for oid in oids]))
        orders = list(orders_now.values())
        closed = list(self.closed)
        leases = list(self.leases.values())
        coids = list(self.coids.items())
        halted = sorted(self.halted)

        def data() -> StateData:
            fields = OrderInfo.__struct_fields__
            get = {values[0]: OrderInfo(**dict(zip(fields, values, strict=True))) for values in now}.get
            return StateData(
                orders=_encode_array((get(o.oid) or o for o in orders), len(orders)),  # type: ignore[arg-type]
                closed=_encode_array(closed, len(closed)),  # type: ignore[arg-type]
                leases=_encode_array(leases, len(leases)),  # type: ignore[arg-type]
                coids=_encode_array(((acc, coid, ans) for (acc, coid), ans in coids),  # type: ignore[arg-type]
                                    len(coids)),
                halted=halted)

        return data

    def load_data(self, data: StateData) -> None:
        self.orders = {o.oid: o for o in data.orders}
        self.open_by_account = {}
        for o in data.orders:
            if o.status == "open":
                self.open_by_account.setdefault(o.account, set()).add(o.oid)
        self.closed = list(data.closed)
        heapq.heapify(self.closed)
        self.leases = {}
        self.leases_by_account = {}
        self._forget_at = {}
        for lease in data.leases:
            self.leases[lease.ref] = lease
            self.leases_by_account.setdefault(lease.buyer, {})[lease.ref] = None
            if lease.provider != lease.buyer:
                self.leases_by_account.setdefault(lease.provider, {})[lease.ref] = None
            self._forget_at.setdefault(lease.book, []).append((lease.end + LEASE_RETENTION_S, lease.trade_id))
        for heap in self._forget_at.values():
            heapq.heapify(heap)
        self.coids = {(acc, coid): ans for acc, coid, ans in data.coids}
        self.halted = set(data.halted)

    def digest(self) -> dict[str, Any]:
        """Aggregates that two equal states share (the crash test compares them)."""
        return {
            "orders_open": sum(len(s) for s in self.open_by_account.values()),
            "leases": len(self.leases),
            "held": sum(self.orders[o].hold for s in self.open_by_account.values() for o in s),
            "cost": sum(x.cost for x in self.leases.values()),
        }


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of n items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class Encoded(list):
    """The msgpack encoding of one value, as a list of byte pieces in order (not joined: a
    snapshot writes them one after another; `exchange.snapshots.encode_snapshot_parts`)."""


def _encode_array(items: Iterable[Any], n: int, pause: Callable[[float], None] = time.sleep) -> Encoded:
    """msgpack of ``list(items)`` (n items) in pieces, encoded ENCODE_CHUNK items per call with a
    pause (which releases the GIL) after each: the same bytes as one call, without holding the
    GIL for the whole of it."""
    parts = Encoded([_array_header(n)])
    it: Iterator[Any] = iter(items)
    done = 0
    while done < n:
        chunk = list(islice(it, ENCODE_CHUNK))
        if not chunk:
            break
        blob = _encoder.encode(chunk)
        parts.append(memoryview(blob)[len(_array_header(len(chunk))):])
        done += len(chunk)
        pause(0)
    if done != n:
        raise RuntimeError(f"{done} items where {n} were expected (changed while encoding)")
    return parts
