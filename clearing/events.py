"""The exchange's events as settlement reads them: `orderbook.types.Event` tuples.

Events reach settlement as EVENT_DTYPE arrays (embedded: `Published.events`) or as the JSON
objects of `orderbook.codec.events_to_json` (distributed: the ``event`` field of each Redis
stream entry).  Both become the same Event tuples (`orderbook.types.events` of an array), so the
engine has one code path.  `from_json` is `codec.event_from_json(d)` without a numpy record per
event (the tests check that they agree on every event type).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import numpy as np

from orderbook import reasons as R
from orderbook.types import (
    CMD_NAMES,
    END_NAMES,
    EV_NAMES,
    EV_REJECTED,
    EVENT_DTYPE,
    KIND_NAMES,
    SIDE_NAMES,
    TIF_NAMES,
    Event,
    as_event,
    events,
)

FIELDS = Event._fields
# JSON keys that are not the record's field name (orderbook/codec.py layouts)
_RENAMED = {"bid_oid": "oid", "ask_oid": "oid2", "buyer": "account", "provider": "account2", "limit": "price",
            "spot_price": "price2", "preempted_by": "lease_id"}
_FIELD = {name: name for name in FIELDS} | _RENAMED


def _codes(names: dict[int, str]) -> dict[str, int]:
    return {name: code for code, name in names.items()}


_ENUMS: dict[str, dict[str, int]] = {
    "type": _codes(EV_NAMES), "side": _codes(SIDE_NAMES), "maker": _codes(SIDE_NAMES), "kind": _codes(KIND_NAMES),
    "tif": _codes(TIF_NAMES), "cmd": _codes(CMD_NAMES),
}
_END_CODES = _codes(END_NAMES)
_REASON_CODES = {name: code for code, (name, _) in R.REASONS.items()}


def from_json(d: dict[str, Any]) -> Event:
    """One event as `events_to_json` wrote it -> its Event; raises ValueError."""
    fields: dict[str, int] = {}
    ev_type = d.get("type")
    for key, v in d.items():
        name = _FIELD.get(key)
        if name is None:
            if key == "message":
                continue
            raise ValueError(f"unknown event field {key!r} in {d!r}")
        if type(v) is str:
            if name == "reason":
                table = _REASON_CODES if ev_type == "rejected" or ev_type == EV_REJECTED else _END_CODES
            else:
                table = _ENUMS.get(name)
            code = table.get(v) if table is not None else None
            if code is None:
                raise ValueError(f"unknown value {v!r} of event field {key!r}")
            v = code
        fields[name] = v
    return Event(**fields)


_decoder = msgspec.json.Decoder()


def from_json_bytes(raw: bytes | str) -> Event:
    """One JSON-encoded event (a Redis stream entry's ``event`` field) -> its Event."""
    return from_json(_decoder.decode(raw))


def as_events(given: np.ndarray | Sequence[Any] | Iterable[Any]) -> list[Event]:
    """Events in any of the forms settlement accepts -> Events, in order."""
    if isinstance(given, np.ndarray):
        if given.dtype != EVENT_DTYPE:
            raise TypeError(f"events must have EVENT_DTYPE, not {given.dtype}")
        return events(given)
    out = []
    for e in given:
        if isinstance(e, Event):
            out.append(e)
        elif isinstance(e, dict):
            out.append(from_json(e))
        elif isinstance(e, tuple):
            out.append(as_event(e))
        elif isinstance(e, (bytes, str)):
            out.append(from_json_bytes(e))
        elif isinstance(e, np.void):
            out.append(as_event(e.tolist()))
        else:
            raise TypeError(f"cannot read an event from {type(e).__name__}")
    return out
