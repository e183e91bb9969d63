"""Every message shape a client sees, built in one place.

    order_view(o)                 an order (REST, WebSocket acks, the ``orders`` channel)
    lease_view(lease, now)        a lease (REST, the ``leases`` channel)
    trade_view(book, ev)          a trade in the answer to the bid or ask that made it
    fill_view(book, ev, side)     a fill on the ``fills`` channel, from one side's view
    event_push(book, ev)          an event pushed to a trader's WebSocket session
    private_update(...)           a message of a private feed channel
    answer(...)                   the answer to a command (R15: from all its events)

The shapes are documented in docs/api.md and docs/feeds.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from exchange.records import LeaseInfo, OrderInfo, lease_ref
from orderbook import reasons as R
from orderbook.codec import event_json
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_RELEASE,
    EV_REJECTED,
    EV_TRADE,
    KIND_NAMES,
    SIDE_BID,
    SIDE_NAMES,
    Command,
    Event,
)

_encoder = msgspec.json.Encoder()
_BID_ONLY = ("kind", "tif", "hours", "block", "hold")
_ASK_ONLY = ("spot_price", "min_hours", "lease_id")


def order_view(o: OrderInfo) -> dict[str, Any]:
    """An order as the API shows it."""
    d = msgspec.structs.asdict(o)
    d.pop("hold_per_gpu")
    d["class"] = d.pop("book")
    for k in _BID_ONLY if o.side == "ask" else _ASK_ONLY:
        d.pop(k)
    return d


def lease_view(lease: LeaseInfo, now: int) -> dict[str, Any]:
    """A lease as the API shows it, with its status at engine time ``now``."""
    d = msgspec.structs.asdict(lease)
    d["class"] = d.pop("book")
    d["lease"] = lease.ref
    d["status"] = lease.status(now)
    return d


def trade_view(book: str, ev: Event) -> dict[str, Any]:
    """A trade, as the answer to the order that made it lists it."""
    return {"lease": lease_ref(book, ev.trade_id), "trade_id": ev.trade_id, "bid_oid": ev.oid,
            "ask_oid": ev.oid2, "buyer": ev.account, "provider": ev.account2, "kind": KIND_NAMES[ev.kind],
            "gpus": ev.gpus, "price": ev.price, "start": ev.start, "end": ev.end,
            "maker": SIDE_NAMES[ev.maker], "seq": ev.seq, "time": ev.time}


def fill_view(book: str, ev: Event, side: str) -> dict[str, Any]:
    """A trade from one side's view (``side`` "buy" or "sell"), as the ``fills`` channel sends it."""
    maker_side = "buy" if ev.maker == SIDE_BID else "sell"
    return {"lease": lease_ref(book, ev.trade_id), "trade_id": ev.trade_id, "side": side,
            "kind": KIND_NAMES.get(ev.kind, ev.kind), "gpus": ev.gpus, "hours": ev.hours,
            "price": ev.price, "start": ev.start, "end": ev.end,
            "liquidity": "maker" if maker_side == side else "taker", "bid_oid": ev.oid, "ask_oid": ev.oid2,
            "seq": ev.seq, "time": ev.time}


def event_push(book: str, ev: Event) -> dict[str, Any]:
    """An event pushed to the WebSocket sessions of the accounts it concerns: the event's own
    type (trade, expired...) goes under "event" ("type" is "event", what clients tell pushes by)."""
    body = event_json(ev)
    return {"type": "event", "event": body.pop("type"), "class": book, **body}


def private_update(channel: str, account: int, book: str, seq: int, when: int, items: list[Any]) -> dict[str, Any]:
    """A private feed channel's update (orders, fills, leases, provisioning)."""
    return {"type": channel, "account": account, "class": book, "seq": seq, "time": when, "action": "update",
            channel: items}


def answer(book: str, command: Command, events: Iterable[Event], orders: Mapping[int, OrderInfo],
           leases: Mapping[str, LeaseInfo]) -> dict[str, Any]:
    """The answer to a command, from the events it produced (R15: all of them, in order) and the
    orders and leases as they stand after them.

    ``{"ok": true, ...}`` with the order's state after the command and the trades it made,
    or ``{"ok": false, "error": {"code", "message"}}`` when the book refused it.
    """
    events = list(events)
    lead = events[0] if events else None
    typ = command.type
    if lead is not None and lead.type == EV_REJECTED:
        code = lead.reason
        return {"ok": False, "error": {"code": R.reason_name(code), "message": R.reason_text(code)}}
    seq = lead.seq if lead else 0
    if typ == CMD_BID or typ == CMD_ASK:
        oid = command.oid
        trades = [trade_view(book, ev) for ev in events if ev.type == EV_TRADE and (ev.oid == oid or ev.oid2 == oid)]
        o = orders.get(oid)
        return {"ok": True, "oid": oid, "class": book, "seq": seq,
                "order": order_view(o) if o is not None else None, "trades": trades}
    if typ == CMD_CANCEL or typ == CMD_AMEND:
        o = orders.get(command.oid)
        return {"ok": True, "oid": command.oid, "class": book, "seq": seq,
                "order": order_view(o) if o is not None else None}
    if typ == CMD_RELEASE:
        lease = leases.get(lease_ref(book, command.lease_id))
        return {"ok": True, "class": book, "seq": seq,
                "lease": lease_view(lease, command.time) if lease is not None else None}
    return {"ok": True, "class": book}


def encode_answer(book: str, command: Command, events: list[Event], orders: Mapping[int, OrderInfo],
                  leases: Mapping[str, LeaseInfo]) -> bytes:
    return _encoder.encode(answer(book, command, events, orders, leases))
