"""What the exchange knows beyond the books: orders by account (with what each bid holds in
escrow), leases, client order ids, halted classes.  The money itself is in settlement's
ledger (settlement.link).  All of it follows from the journaled commands and the events the
books answered with, so it is rebuilt exactly by replaying the journal (R21), and a
snapshot of it is a msgspec blob.

    state = ExchangeState(instruments)
    for book, cmd_slice, events in ...:
        state.apply(book, commands, events, spans, coids)   # the same call live and on replay

Nothing here decides whether a command may enter the journal (that is the sequencer's
prechecks, live only): this module only applies what the books said.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

from exchange.config import Instrument
from orderbook import reasons as R
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
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
    EVENT_DTYPE,
    HOUR,
    KIND_NAMES,
    SIDE_BID,
    SIDE_NAMES,
    TIF_NAMES,
)

# field positions in EVENT_DTYPE / COMMAND_DTYPE tuples (records as .tolist() gives them)
_E = {name: i for i, name in enumerate(EVENT_DTYPE.names)}
E_SEQ, E_TIME, E_OID, E_OID2, E_TID, E_ACC, E_ACC2 = (_E[k] for k in (
    "seq", "time", "oid", "oid2", "trade_id", "account", "account2"))
E_PRICE, E_PRICE2, E_START, E_END, E_EXP, E_LEASE = (_E[k] for k in (
    "price", "price2", "start", "end", "expire_at", "lease_id"))
E_GPUS, E_REM, E_HOURS, E_BLOCK, E_MINH, E_REASON = (_E[k] for k in (
    "gpus", "remaining", "hours", "block", "min_hours", "reason"))
E_TYPE, E_KIND, E_SIDE, E_TIF, E_MAKER, E_CMD = (_E[k] for k in ("type", "kind", "side", "tif", "maker", "cmd"))
_C = {name: i for i, name in enumerate(COMMAND_DTYPE.names)}
C_TIME, C_OID, C_ACC, C_LEASE, C_TYPE = (_C[k] for k in ("time", "oid", "account", "lease_id", "type"))

MAX_CLOSED_ORDERS = 200_000  # closed orders remembered for status queries (oldest forgotten first)
MAX_COIDS = 1_000_000  # client order ids remembered for idempotent retries (oldest forgotten first)


class OrderInfo(msgspec.Struct, kw_only=True, gc=False):  # ints and strs only: no cycles to collect
    """An order as its owner sees it."""

    oid: int
    book: str
    account: int
    side: str  # "bid" | "ask"
    gpus: int  # current size (after amends)
    price: int  # bid: limit; ask: firm price
    time: int  # engine time it was accepted
    status: str = "open"  # open | filled | cancelled | expired
    remaining: int = 0  # bid: GPUs still wanted; ask: gpus (its capacity)
    filled: int = 0  # GPUs traded (bid: bought; ask: sold, summed over leases)
    kind: str = ""  # bid kind
    tif: str = ""
    hours: int = 0
    block: int = 1
    spot_price: int = 0
    start: int = 0
    end: int = 0
    min_hours: int = 1
    expire_at: int = 0
    lease_id: int = 0  # resale ask: the lease resold
    reason: str = ""  # why it ended (user, ioc, fok, gtd, gate, window_end)
    client_order_id: str = ""
    hold: int = 0  # µ$ of escrow held for it now (bids)
    hold_per_gpu: int = 0


class LeaseInfo(msgspec.Struct, kw_only=True, gc=False):
    """A lease (R16): the trade that created it and how it ends."""

    book: str
    trade_id: int
    bid_oid: int
    ask_oid: int
    buyer: int
    provider: int
    kind: str
    gpus: int
    start: int
    end: int
    price: int
    time: int  # engine time of the trade
    resale_of: int = 0  # the parent lease, for a sub-lease sold by a reseller
    ended_by: str = ""  # "" | "preempted" | "released"
    cost: int = 0  # the lease's price × GPUs × hours it runs (µ$, before fees; settlement's ledger moves the money)

    @property
    def ref(self) -> str:
        return lease_ref(self.book, self.trade_id)

    def status(self, now: int) -> str:
        if now >= self.end:
            return self.ended_by or "ended"
        if self.ended_by:
            return f"{self.ended_by}_pending"  # ends at `end`, already decided
        return "running" if now >= self.start else "scheduled"


def lease_ref(book: str, trade_id: int) -> str:
    """A lease's id across the exchange: trade ids count per book (R16)."""
    return f"{book}-{trade_id}"


def hold_per_gpu(hours: int, limit: int, fee_bps: int) -> int:
    """Escrow per GPU of a bid: its whole price at the limit, plus the highest fee (rounded up)."""
    notional = hours * limit
    return notional + fee(notional, fee_bps)


def fee(amount: int, bps: int) -> int:
    """A fee of `bps` basis points on `amount` µ$, rounded up to the µ$."""
    return -(-amount * bps // 10_000)


class StateData(msgspec.Struct, kw_only=True):
    """The snapshot form of ExchangeState."""

    orders: list[OrderInfo]
    closed: list[int]
    leases: list[LeaseInfo]
    coids: list[tuple[int, str, bytes]]
    halted: list[str]


def split_events(commands: list[tuple], events: list[tuple]) -> list[tuple[int, int]]:
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
        if c[C_TYPE] != CMD_CLOCK:
            if p >= n or not _leading(events[p]):
                raise AssertionError(f"command {c} has no leading event at {p}")
            p += 1
        while p < n and not _leading(events[p]):
            p += 1
        spans.append((start, p))
    if p != n:
        raise AssertionError("events left over after the last command")
    return spans


def _leading(ev: tuple) -> bool:
    t = ev[E_TYPE]
    return (t == EV_ACCEPTED or t == EV_REJECTED or t == EV_AMENDED or t == EV_RELEASED
            or (t == EV_CANCELLED and ev[E_REASON] == END_USER))


class ExchangeState:
    """Orders, leases, client order ids and escrow, kept from the books' events."""

    def __init__(self, instruments: dict[str, Instrument]) -> None:
        self.instruments = instruments
        self.orders: dict[int, OrderInfo] = {}
        self.open_by_account: dict[int, set[int]] = {}
        self.closed: deque[int] = deque()
        self.leases: dict[str, LeaseInfo] = {}
        self.leases_by_account: dict[int, list[str]] = {}
        self.coids: dict[tuple[int, str], bytes] = {}  # (account, client_order_id) -> first answer
        self.halted: set[str] = set()
        self._fee_bps = {name: max(i.maker_fee_bps, i.taker_fee_bps) for name, i in instruments.items()}

    # ------------------------------------------------------------------ queries
    def open_orders(self, account: int) -> list[OrderInfo]:
        return [self.orders[o] for o in sorted(self.open_by_account.get(account, ()))]

    def open_count(self, account: int) -> int:
        return len(self.open_by_account.get(account, ()))

    def account_leases(self, account: int) -> list[LeaseInfo]:
        return [self.leases[r] for r in self.leases_by_account.get(account, ())]

    def hold_for(self, book: str, gpus: int, hours: int, limit: int) -> int:
        return gpus * hold_per_gpu(hours, limit, self._fee_bps.get(book, 0))

    # ------------------------------------------------------------------ applying events
    def apply(self, book: str, commands: list[tuple], events: list[tuple],
              coids: list[str] | None = None) -> list[tuple[int, int]]:
        """Apply one book's commands and the events they produced; returns the spans of
        `split_events`.  ``coids[i]`` is the client order id command i carried ('' none);
        the first answer to each is remembered by `answer_of` for idempotent retries."""
        spans = split_events(commands, events)
        inst = self.instruments[book]
        for i, (a, b) in enumerate(spans):
            coid = coids[i] if coids else ""
            for ev in events[a:b]:
                self._event(book, inst, ev, coid if ev is events[a] else "")
            if coid:
                key = (commands[i][C_ACC], coid)
                if key not in self.coids:
                    self.coids[key] = encode_answer(book, commands[i], events[a:b], self)
                    if len(self.coids) > MAX_COIDS:
                        del self.coids[next(iter(self.coids))]
        return spans

    def _event(self, book: str, inst: Instrument, ev: tuple, coid: str) -> None:
        t = ev[E_TYPE]
        if t == EV_TRADE:
            self._trade(book, inst, ev)
        elif t == EV_ACCEPTED:
            self._accepted(book, ev, coid)
        elif t == EV_CANCELLED or t == EV_EXPIRED:
            o = self.orders.get(ev[E_OID])
            if o is not None:
                o.remaining = ev[E_REM] if o.side == "bid" else o.remaining
                self._close(o, "cancelled" if t == EV_CANCELLED else "expired", END_NAMES.get(ev[E_REASON], ""))
        elif t == EV_AMENDED:
            o = self.orders.get(ev[E_OID])
            if o is not None:
                o.gpus = ev[E_GPUS]
                if o.side == "bid":
                    o.remaining = ev[E_REM]
                    self._set_hold(o, o.remaining * o.hold_per_gpu)
                else:
                    o.remaining = ev[E_GPUS]
        elif t == EV_PREEMPTED or t == EV_RELEASED:
            lease = self.leases.get(lease_ref(book, ev[E_TID]))
            if lease is not None:
                unused = (lease.end - ev[E_END]) * lease.gpus * lease.price // HOUR
                lease.end = ev[E_END]
                lease.ended_by = "preempted" if t == EV_PREEMPTED else "released"
                lease.cost -= unused
        # EV_REJECTED changes nothing (R8)

    def _accepted(self, book: str, ev: tuple, coid: str) -> None:
        side = ev[E_SIDE]
        if side == SIDE_BID:
            o = OrderInfo(oid=ev[E_OID], book=book, account=ev[E_ACC], side="bid", gpus=ev[E_GPUS],
                          price=ev[E_PRICE], time=ev[E_TIME], remaining=ev[E_REM],
                          kind=KIND_NAMES[ev[E_KIND]], tif=TIF_NAMES[ev[E_TIF]], hours=ev[E_HOURS],
                          block=ev[E_BLOCK], start=ev[E_START], end=ev[E_END], expire_at=ev[E_EXP],
                          client_order_id=coid,
                          hold_per_gpu=hold_per_gpu(ev[E_HOURS], ev[E_PRICE], self._fee_bps.get(book, 0)))
            self._set_hold(o, o.remaining * o.hold_per_gpu)
        else:
            o = OrderInfo(oid=ev[E_OID], book=book, account=ev[E_ACC], side="ask", gpus=ev[E_GPUS],
                          price=ev[E_PRICE], time=ev[E_TIME], remaining=ev[E_GPUS],
                          spot_price=ev[E_PRICE2], start=ev[E_START], end=ev[E_END],
                          min_hours=ev[E_MINH], expire_at=ev[E_EXP], lease_id=ev[E_LEASE],
                          client_order_id=coid)
        self.orders[o.oid] = o
        self.open_by_account.setdefault(o.account, set()).add(o.oid)

    def _trade(self, book: str, inst: Instrument, ev: tuple) -> None:
        gpus, price = ev[E_GPUS], ev[E_PRICE]
        buyer, provider = ev[E_ACC], ev[E_ACC2]
        cost = gpus * (ev[E_END] - ev[E_START]) * price // HOUR
        lease = LeaseInfo(book=book, trade_id=ev[E_TID], bid_oid=ev[E_OID], ask_oid=ev[E_OID2], buyer=buyer,
                          provider=provider, kind=KIND_NAMES[ev[E_KIND]], gpus=gpus, start=ev[E_START],
                          end=ev[E_END], price=price, time=ev[E_TIME], resale_of=ev[E_LEASE], cost=cost)
        ref = lease.ref
        self.leases[ref] = lease
        self.leases_by_account.setdefault(buyer, []).append(ref)
        if provider != buyer:
            self.leases_by_account.setdefault(provider, []).append(ref)
        b = self.orders.get(ev[E_OID])
        if b is not None:
            b.filled += gpus
            b.remaining = ev[E_REM]
            self._set_hold(b, b.remaining * b.hold_per_gpu)
            if b.remaining == 0:
                self._close(b, "filled", "")
        a = self.orders.get(ev[E_OID2])
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
        self.closed.append(o.oid)
        if len(self.closed) > MAX_CLOSED_ORDERS:
            self.orders.pop(self.closed.popleft(), None)

    # ------------------------------------------------------------------ snapshots
    def to_data(self) -> StateData:
        return StateData(
            orders=list(self.orders.values()),
            closed=list(self.closed),
            leases=list(self.leases.values()),
            coids=[(acc, coid, ans) for (acc, coid), ans in self.coids.items()],
            halted=sorted(self.halted),
        )

    def load_data(self, data: StateData) -> None:
        self.orders = {o.oid: o for o in data.orders}
        self.open_by_account = {}
        for o in data.orders:
            if o.status == "open":
                self.open_by_account.setdefault(o.account, set()).add(o.oid)
        self.closed = deque(data.closed)
        self.leases = {}
        self.leases_by_account = {}
        for lease in data.leases:
            self.leases[lease.ref] = lease
            self.leases_by_account.setdefault(lease.buyer, []).append(lease.ref)
            if lease.provider != lease.buyer:
                self.leases_by_account.setdefault(lease.provider, []).append(lease.ref)
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


# ---------------------------------------------------------------------- answers
def order_view(o: OrderInfo) -> dict[str, Any]:
    """An order as the API shows it."""
    d = msgspec.structs.asdict(o)
    d.pop("hold_per_gpu")
    d["class"] = d.pop("book")
    if o.side == "ask":
        for k in ("kind", "tif", "hours", "block", "hold"):
            d.pop(k)
    else:
        for k in ("spot_price", "min_hours", "lease_id"):
            d.pop(k)
    return d


def lease_view(lease: LeaseInfo, now: int) -> dict[str, Any]:
    d = msgspec.structs.asdict(lease)
    d["class"] = d.pop("book")
    d["lease"] = lease.ref
    d["status"] = lease.status(now)
    return d


def trade_view(book: str, ev: tuple) -> dict[str, Any]:
    return {"lease": lease_ref(book, ev[E_TID]), "trade_id": ev[E_TID], "bid_oid": ev[E_OID],
            "ask_oid": ev[E_OID2], "buyer": ev[E_ACC], "provider": ev[E_ACC2], "kind": KIND_NAMES[ev[E_KIND]],
            "gpus": ev[E_GPUS], "price": ev[E_PRICE], "start": ev[E_START], "end": ev[E_END],
            "maker": SIDE_NAMES[ev[E_MAKER]], "seq": ev[E_SEQ], "time": ev[E_TIME]}


_encoder = msgspec.json.Encoder()


def answer(book: str, command: tuple, events: Iterable[tuple], state: ExchangeState) -> dict[str, Any]:
    """The answer to a command, from the events it produced (R15: all of them, in order).

    ``{"ok": true, ...}`` with the order's state after the command and the trades it made,
    or ``{"ok": false, "error": {"code", "message"}}`` when the book refused it.
    """
    events = list(events)
    lead = events[0] if events else None
    typ = command[C_TYPE]
    if lead is not None and lead[E_TYPE] == EV_REJECTED:
        code = lead[E_REASON]
        return {"ok": False, "error": {"code": R.reason_name(code), "message": R.reason_text(code)}}
    if typ == CMD_BID or typ == CMD_ASK:
        oid = command[C_OID]
        trades = [trade_view(book, ev) for ev in events if ev[E_TYPE] == EV_TRADE
                  and (ev[E_OID] == oid or ev[E_OID2] == oid)]
        o = state.orders.get(oid)
        return {"ok": True, "oid": oid, "class": book, "seq": lead[E_SEQ] if lead else 0,
                "order": order_view(o) if o is not None else None, "trades": trades}
    if typ == CMD_CANCEL or typ == CMD_AMEND:
        o = state.orders.get(command[C_OID])
        return {"ok": True, "oid": command[C_OID], "class": book, "seq": lead[E_SEQ] if lead else 0,
                "order": order_view(o) if o is not None else None}
    if typ == CMD_RELEASE:
        lease = state.leases.get(lease_ref(book, command[C_LEASE]))
        return {"ok": True, "class": book, "seq": lead[E_SEQ] if lead else 0,
                "lease": lease_view(lease, command[C_TIME]) if lease is not None else None}
    return {"ok": True, "class": book}


def encode_answer(book: str, command: tuple, events: list[tuple], state: ExchangeState) -> bytes:
    return _encoder.encode(answer(book, command, events, state))

