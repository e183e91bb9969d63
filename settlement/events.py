"""The exchange's events as settlement reads them: tuples in EVENT_DTYPE field order.

Events reach settlement as EVENT_DTYPE arrays (embedded: `Published.events`) or as the JSON
objects of `orderbook.codec.events_to_json` (distributed: the ``event`` field of each Redis
stream entry).  Both become the same tuples (``array.tolist()`` gives them directly), so the
engine has one code path.  `from_json` is `codec.event_from_json(d).tolist()` without a
numpy record per event (the tests check that they agree on every event type).
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
)

FIELDS = EVENT_DTYPE.names
(SEQ, TIME, OID, OID2, TID, ACC, ACC2, PRICE, PRICE2, START, END, EXP, LEASE, GPUS, REM, HOURS, BLOCK, MINH,
 REASON, TYPE, KIND, SIDE, TIF, MAKER, CMD) = range(len(FIELDS))
assert FIELDS[SEQ] == "seq" and FIELDS[LEASE] == "lease_id" and FIELDS[TYPE] == "type" and FIELDS[CMD] == "cmd", \
    "settlement/events.py: EVENT_DTYPE changed; update the field positions"

# JSON keys that are not the record's field name (orderbook/codec.py layouts)
_RENAMED = {"bid_oid": OID, "ask_oid": OID2, "buyer": ACC, "provider": ACC2, "limit": PRICE,
            "spot_price": PRICE2, "preempted_by": LEASE}
_INDEX = {name: i for i, name in enumerate(FIELDS)} | _RENAMED


def _codes(names: dict[int, str]) -> dict[str, int]:
    return {name: code for code, name in names.items()}


_ENUMS: dict[int, dict[str, int]] = {
    TYPE: _codes(EV_NAMES), SIDE: _codes(SIDE_NAMES), MAKER: _codes(SIDE_NAMES), KIND: _codes(KIND_NAMES),
    TIF: _codes(TIF_NAMES), CMD: _codes(CMD_NAMES),
}
_END_CODES = _codes(END_NAMES)
_REASON_CODES = {name: code for code, (name, _) in R.REASONS.items()}
_N = len(FIELDS)


def from_json(d: dict[str, Any]) -> tuple:
    """One event as `events_to_json` wrote it -> its record tuple; raises ValueError."""
    values = [0] * _N
    ev_type = d.get("type")
    for key, v in d.items():
        i = _INDEX.get(key)
        if i is None:
            if key == "message":
                continue
            raise ValueError(f"unknown event field {key!r} in {d!r}")
        if type(v) is str:
            if i == REASON:
                table = _REASON_CODES if ev_type == "rejected" or ev_type == EV_REJECTED else _END_CODES
            else:
                table = _ENUMS.get(i)
            code = table.get(v) if table is not None else None
            if code is None:
                raise ValueError(f"unknown value {v!r} of event field {key!r}")
            v = code
        values[i] = v
    return tuple(values)


_decoder = msgspec.json.Decoder()


def from_json_bytes(raw: bytes | str) -> tuple:
    """One JSON-encoded event (a Redis stream entry's ``event`` field) -> its record tuple."""
    return from_json(_decoder.decode(raw))


def as_tuples(events: np.ndarray | Sequence[Any] | Iterable[Any]) -> list[tuple]:
    """Events in any of the forms settlement accepts -> record tuples, in order."""
    if isinstance(events, np.ndarray):
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"events must have EVENT_DTYPE, not {events.dtype}")
        return events.tolist()
    out = []
    for e in events:
        if isinstance(e, dict):
            out.append(from_json(e))
        elif isinstance(e, tuple):
            out.append(e)
        elif isinstance(e, (bytes, str)):
            out.append(from_json_bytes(e))
        elif isinstance(e, np.void):
            out.append(e.tolist())
        else:
            raise TypeError(f"cannot read an event from {type(e).__name__}")
    return out
