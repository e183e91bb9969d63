"""The JSON-lines format of commands and events (docs/formats.md).

One JSON object per line.  Commands are decoded by msgspec Structs, one per command
type, tagged by ``"type"``: decoding *is* validation (R8), and a message that cannot be
decoded is refused with reason ``MALFORMED`` and msgspec's sentence, which names the
field (``Expected `int` >= 0 - at `$.gpus```).  The codec checks only what a record can
hold (types, names, non-negative integers that fit); the market rules themselves (tick,
bounds, windows, gate) are the book's, which answers with their own reason codes.

    dec = CommandDecoder()
    rec = dec.decode(b'{"type":"clock","time":3600}')      # a COMMAND_DTYPE record
    for item in read_commands(sys.stdin.buffer, batch=4096):
        ...   # np.ndarray of commands, or a LineError, in input order

Events go the other way: ``event_to_json(rec)`` gives a compact dict with only the fields
that mean something for that event type (enums by name), and ``event_from_json`` takes it
back to the identical record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from orderbook import reasons as R
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_NAMES,
    CMD_RELEASE,
    COMMAND_DTYPE,
    END_NAMES,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_NAMES,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_RELEASED,
    EV_TRADE,
    EVENT_DTYPE,
    KIND_NAMES,
    SIDE_BID,
    SIDE_NAMES,
    TIF_NAMES,
    Command,
    Event,
    as_event,
    events,
)

# --- bounds: what a record can hold ------------------------------------------------------
# int64 fields stop at 2**62 so that sums such as start + hours * 3600 cannot overflow.
MAX_I64 = 2**62
MAX_I32 = 2**31 - 1

Int64 = Annotated[int, msgspec.Meta(ge=0, le=MAX_I64)]
Int32 = Annotated[int, msgspec.Meta(ge=0, le=MAX_I32)]
Count32 = Annotated[int, msgspec.Meta(ge=1, le=MAX_I32)]  # min_hours, block: 0 is the record's "default"

KindName = Literal["spot", "on_demand", "reserved"]
TifName = Literal["GTC", "IOC", "FOK", "GTD"]

KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
TIF_CODES = {name: code for code, name in TIF_NAMES.items()}
SIDE_CODES = {name: code for code, name in SIDE_NAMES.items()}
END_CODES = {name: code for code, name in END_NAMES.items()}
CMD_CODES = {name: code for code, name in CMD_NAMES.items()}
EV_CODES = {name: code for code, name in EV_NAMES.items()}


class CodecError(ValueError):
    """A message that cannot become a record: a reason code (R8) and a sentence."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def reason_name(self) -> str:
        return R.reason_name(self.reason)


@dataclass(frozen=True)
class LineError:
    """A line of a JSON-lines stream that was refused, with its 1-based line number."""

    line: int
    reason: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "error", "line": self.line, "reason": R.reason_name(self.reason),
                "message": self.message}


# --- command wire types ----------------------------------------------------------------------
ClassName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")]
ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class _Command(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Fields every command may carry.  A missing ``time`` is the book's current time.  ``class``
    and ``client_order_id`` are not part of the record: `gpux simulate` routes the command to that
    class's book and tags its events with both (docs/formats.md)."""

    time: Int64 | None = None
    gpu_class: ClassName | None = msgspec.field(name="class", default=None)
    client_order_id: ClientOrderId | None = None


class AskMsg(_Command, tag="ask", kw_only=True):
    """A provider's ask (R5).  ``oid`` missing: the next order id."""

    oid: Int64 | None = None
    account: Int64
    gpus: Int32
    price: Int64  # µ$ per GPU-hour, firm
    spot_price: Int64 = 0  # 0 = not offered to spot
    start: Int64 = 0  # 0 = now
    end: Int64
    min_hours: Count32 = 1
    post_only: bool = False
    lease_id: Int64 = 0  # resale of this lease (R16)


class BidMsg(_Command, tag="bid", kw_only=True):
    """A trader's bid (R6).  ``oid`` missing: the next order id."""

    oid: Int64 | None = None
    account: Int64
    kind: KindName
    gpus: Int32
    hours: Int32
    limit: Int64  # µ$ per GPU-hour, the highest price accepted
    block: Count32 = 1
    tif: TifName = "GTC"
    start: Int64 = 0  # reserved bids: window start, on an hour boundary
    expire_at: Int64 = 0  # GTD bids


class CancelMsg(_Command, tag="cancel", kw_only=True):
    oid: Int64
    account: Int64


class AmendMsg(_Command, tag="amend", kw_only=True):
    oid: Int64
    account: Int64
    gpus: Int32  # the new, smaller number of GPUs


class ClockMsg(_Command, tag="clock", kw_only=True):
    time: Int64  # required: a clock command without a time means nothing


class ReleaseMsg(_Command, tag="release", kw_only=True):
    account: Int64
    lease_id: Int64


CommandMsg = AskMsg | BidMsg | CancelMsg | AmendMsg | ClockMsg | ReleaseMsg

_command_decoder = msgspec.json.Decoder(CommandMsg)
_json_encoder = msgspec.json.Encoder()


class CommandDecoder:
    """Decodes JSON command lines into records, filling what the line left out.

    It remembers the latest time seen (a command without ``time`` gets it, as the
    sequencer would stamp it) and the highest order id seen on an ask or bid (an ask or
    bid without ``oid`` gets the next one).  A line that fails to decode changes neither.
    """

    def __init__(self, time: int = 0, last_oid: int = 0, default_class: str = "") -> None:
        self.last_oid = last_oid
        self.default_class = default_class
        self.times: dict[str, int] = {default_class: time}  # latest time per class (lines with "class")

    @property
    def time(self) -> int:
        """The latest time seen for the default class."""
        return self.times.get(self.default_class, 0)

    @time.setter
    def time(self, value: int) -> None:
        self.times[self.default_class] = value

    def decode_tuple(self, line: bytes | str) -> Command:
        """One line -> the fields of a COMMAND_DTYPE record."""
        return self.decode_line(line)[0]

    def decode_line(self, line: bytes | str) -> tuple[Command, str | None, str | None]:
        """One line -> (the fields of a COMMAND_DTYPE record, its ``class`` or None, its
        ``client_order_id`` or None).  Times are kept per class: a line without ``time`` takes
        the latest time seen on an earlier line of its class (no ``class``: the default one), or
        for a class's first line the latest time of any class."""
        try:
            msg = _command_decoder.decode(line)
        except msgspec.ValidationError as e:
            raise CodecError(R.MALFORMED, str(e)) from None
        except msgspec.DecodeError as e:
            raise CodecError(R.MALFORMED, str(e)) from None
        key = self.default_class if msg.gpu_class is None else msg.gpu_class
        latest = self.times.get(key)
        if latest is None:  # a class's first line: the latest time of any class
            latest = max(self.times.values(), default=0)
        time = latest if msg.time is None else msg.time
        if isinstance(msg, AskMsg):
            rec = Command(time=time, oid=self._next_oid(msg.oid), account=msg.account, price=msg.price,
                          spot_price=msg.spot_price, start=msg.start, end=msg.end, lease_id=msg.lease_id,
                          gpus=msg.gpus, min_hours=msg.min_hours, type=CMD_ASK, post_only=int(msg.post_only))
        elif isinstance(msg, BidMsg):
            rec = Command(time=time, oid=self._next_oid(msg.oid), account=msg.account, price=msg.limit,
                          start=msg.start, expire_at=msg.expire_at, gpus=msg.gpus, hours=msg.hours,
                          block=msg.block, type=CMD_BID, kind=KIND_CODES[msg.kind], tif=TIF_CODES[msg.tif])
        elif isinstance(msg, CancelMsg):
            rec = Command(time=time, oid=msg.oid, account=msg.account, type=CMD_CANCEL)
        elif isinstance(msg, AmendMsg):
            rec = Command(time=time, oid=msg.oid, account=msg.account, gpus=msg.gpus, type=CMD_AMEND)
        elif isinstance(msg, ClockMsg):
            rec = Command(time=time, type=CMD_CLOCK)
        else:
            rec = Command(time=time, account=msg.account, lease_id=msg.lease_id, type=CMD_RELEASE)
        self.times[key] = max(latest, time)
        return rec, msg.gpu_class, msg.client_order_id

    def decode(self, line: bytes | str) -> np.void:
        """One line -> a COMMAND_DTYPE record; raises CodecError."""
        return np.array([self.decode_tuple(line)], dtype=COMMAND_DTYPE)[0]

    def _next_oid(self, oid: int | None) -> int:
        if oid is None:
            oid = self.last_oid + 1
        self.last_oid = max(self.last_oid, oid)
        return oid


def decode_command(line: bytes | str, decoder: CommandDecoder | None = None) -> np.void:
    """One JSON command -> a COMMAND_DTYPE record, or raise CodecError(MALFORMED, sentence).

    Pass the same ``decoder`` for every line of a stream so that missing times and order
    ids are filled from the lines before.
    """
    return (decoder or CommandDecoder()).decode(line)


def read_commands(lines: Iterable[bytes | str | None], batch: int = 4096,
                  decoder: CommandDecoder | None = None) -> Iterator[np.ndarray | LineError]:
    """Stream JSON lines into batches of at most ``batch`` command records.

    Yields arrays of commands and LineErrors in input order: a refused line ends the
    batch before it, so whoever prints results keeps them in line order.  Blank lines are
    skipped but counted.  A ``None`` item in ``lines`` means "no more input for now": the
    commands read so far go out as a batch at once (interactive use, pipes that pause).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    decoder = decoder or CommandDecoder()
    pending: list[tuple[int, ...]] = []
    number = 0
    for line in lines:
        if line is None:
            if pending:
                yield np.array(pending, dtype=COMMAND_DTYPE)
                pending = []
            continue
        number += 1
        if not line.strip():
            continue
        try:
            pending.append(decoder.decode_tuple(line))
        except CodecError as e:
            if pending:
                yield np.array(pending, dtype=COMMAND_DTYPE)
                pending = []
            yield LineError(number, e.reason, e.message)
            continue
        if len(pending) >= batch:
            yield np.array(pending, dtype=COMMAND_DTYPE)
            pending = []
    if pending:
        yield np.array(pending, dtype=COMMAND_DTYPE)


def commands_from_jsonl(lines: Iterable[bytes | str],
                        decoder: CommandDecoder | None = None) -> tuple[np.ndarray, list[LineError]]:
    """All commands of a JSON-lines stream as one array, and the lines that were refused."""
    chunks: list[np.ndarray] = []
    errors: list[LineError] = []
    for item in read_commands(lines, batch=1 << 16, decoder=decoder):
        if isinstance(item, LineError):
            errors.append(item)
        else:
            chunks.append(item)
    commands = np.concatenate(chunks) if chunks else np.zeros(0, dtype=COMMAND_DTYPE)
    return commands, errors


def command_to_json(rec: np.void) -> dict[str, Any]:
    """A command record as its JSON object; fields at their default are left out.

    ``decode_command(json)`` of the result gives the record back (0 in ``min_hours`` and
    ``block``, the record's "default", comes back as the explicit default 1).
    """
    c = {name: int(rec[name]) for name in COMMAND_DTYPE.names}
    t = c["type"]
    if t == CMD_ASK:
        d: dict[str, Any] = {"type": "ask", "time": c["time"], "oid": c["oid"], "account": c["account"],
                             "gpus": c["gpus"], "price": c["price"]}
        _put(d, "spot_price", c["spot_price"], 0)
        _put(d, "start", c["start"], 0)
        d["end"] = c["end"]
        _put(d, "min_hours", c["min_hours"] or 1, 1)
        if c["post_only"]:
            d["post_only"] = True
        _put(d, "lease_id", c["lease_id"], 0)
        return d
    if t == CMD_BID:
        d = {"type": "bid", "time": c["time"], "oid": c["oid"], "account": c["account"],
             "kind": _name(KIND_NAMES, c["kind"]), "gpus": c["gpus"], "hours": c["hours"],
             "limit": c["price"]}
        _put(d, "block", c["block"] or 1, 1)
        _put(d, "tif", _name(TIF_NAMES, c["tif"]), "GTC")
        _put(d, "start", c["start"], 0)
        _put(d, "expire_at", c["expire_at"], 0)
        return d
    if t == CMD_CANCEL:
        return {"type": "cancel", "time": c["time"], "oid": c["oid"], "account": c["account"]}
    if t == CMD_AMEND:
        return {"type": "amend", "time": c["time"], "oid": c["oid"], "account": c["account"],
                "gpus": c["gpus"]}
    if t == CMD_CLOCK:
        return {"type": "clock", "time": c["time"]}
    if t == CMD_RELEASE:
        return {"type": "release", "time": c["time"], "account": c["account"], "lease_id": c["lease_id"]}
    raise CodecError(R.BAD_COMMAND, f"unknown command type {t}")


def _put(d: dict[str, Any], key: str, value: Any, default: Any) -> None:
    if value != default:
        d[key] = value


def _name(names: dict[int, str], code: int) -> str | int:
    return names.get(code, code)


# --- events ------------------------------------------------------------------------------------
# How each event type is written: (json key, record field, enum table or None, always).
# Fields marked always=False are left out when 0.  A record field that is not in the
# layout but non-zero is written under its own name as a plain integer, so that any record
# round-trips; a book that fills such a field shows it instead of hiding it.
_Spec = tuple[str, str, dict[int, str] | None, bool]

_HEAD: list[_Spec] = [("seq", "seq", None, True), ("time", "time", None, True)]
_ORDER: list[_Spec] = [("oid", "oid", None, True), ("account", "account", None, True),
                       ("side", "side", SIDE_NAMES, True)]
_LEASE: list[_Spec] = [
    ("trade_id", "trade_id", None, True),
    ("bid_oid", "oid", None, True),
    ("ask_oid", "oid2", None, True),
    ("buyer", "account", None, True),
    ("provider", "account2", None, True),
    ("kind", "kind", KIND_NAMES, True),
    ("gpus", "gpus", None, True),
]

_LAYOUTS: dict[tuple[int, bool], list[_Spec]] = {}  # (event type, is a bid) -> fields


def _layout(ev_type: int, *specs: list[_Spec], bid: bool | None = None) -> None:
    fields = _HEAD + [s for group in specs for s in group]
    for is_bid in (True, False) if bid is None else (bid,):
        _LAYOUTS[(ev_type, is_bid)] = fields


def _f(key: str, field: str | None = None, enum: dict[int, str] | None = None,
       always: bool = True) -> _Spec:
    return (key, field or key, enum, always)


_KIND = _f("kind", enum=KIND_NAMES)
_END_REASON = _f("reason", enum=END_NAMES)

_layout(EV_ACCEPTED, _ORDER, [_f("gpus"), _f("price"), _f("spot_price", "price2", always=False),
                              _f("start"), _f("end"), _f("min_hours"), _f("lease_id", always=False),
                              _f("expire_at", always=False)], bid=False)
_layout(EV_ACCEPTED, _ORDER, [_KIND, _f("tif", enum=TIF_NAMES), _f("gpus"), _f("remaining"), _f("hours"),
                              _f("limit", "price"), _f("block"), _f("start", always=False),
                              _f("end", always=False), _f("expire_at", always=False)], bid=True)
_layout(EV_REJECTED, [_f("cmd", enum=CMD_NAMES), _f("oid", always=False), _f("account", always=False),
                      _f("side", enum=SIDE_NAMES, always=False), _f("lease_id", always=False),
                      _f("reason", enum=R.REASONS)])
_layout(EV_TRADE, _LEASE, [_f("remaining"), _f("price"), _f("start"), _f("end"), _f("hours"),
                           _f("maker", enum=SIDE_NAMES), _f("lease_id", always=False)])
_layout(EV_PREEMPTED, _LEASE, [_f("price"), _f("start"), _f("end"), _f("preempted_by", "lease_id")])
_layout(EV_RELEASED, _LEASE, [_f("price"), _f("start"), _f("end")])
for _t in (EV_CANCELLED, EV_EXPIRED):
    _layout(_t, _ORDER, [_END_REASON], bid=False)
    _layout(_t, _ORDER, [_KIND, _f("remaining"), _END_REASON], bid=True)
_layout(EV_AMENDED, _ORDER, [_f("gpus")], bid=False)
_layout(EV_AMENDED, _ORDER, [_KIND, _f("gpus"), _f("remaining")], bid=True)

_EV_FIELDS = Event._fields
_REASON_NAMES = {code: name for code, (name, _) in R.REASONS.items()}


def _enum_names(enum: dict[int, Any]) -> dict[int, str]:
    return _REASON_NAMES if enum is R.REASONS else enum


# compiled layouts: (key, field reader, enum names or None, always); the fields a layout does not
# name, written under their own names when non-zero
_COMPILED = {
    k: ([(key, attrgetter(field), _enum_names(enum) if enum is not None else None, always)
         for key, field, enum, always in specs],
        [(name, attrgetter(name)) for name in _EV_FIELDS if name not in {f for _, f, _, _ in specs} | {"type"}])
    for k, specs in _LAYOUTS.items()
}
_OTHER = [(name, attrgetter(name)) for name in _EV_FIELDS if name != "type"]


def event_enums(ev_type: int, is_bid: bool) -> dict[str, dict[int, str]]:
    """The enumerated record fields that mean something for an event type (a bid's or not), each
    with its names (code -> name), as `event_to_json` writes them: what the tables of `gpux replay`
    write by name (feeds/tables.py)."""
    return {field: _enum_names(enum) for _key, field, enum, _always in _LAYOUTS.get((ev_type, is_bid), ())
            if enum is not None}


def event_json(ev: Event) -> dict[str, Any]:
    """An event as a compact JSON-ready dict (docs/formats.md)."""
    ev_type = ev.type
    layout, rest = _COMPILED.get((ev_type, ev.side == SIDE_BID), ((), _OTHER))
    d: dict[str, Any] = {"type": EV_NAMES.get(ev_type, ev_type)}
    for key, get, names, always in layout:
        v = get(ev)
        if v or always:
            d[key] = names.get(v, v) if names is not None else v
    if ev_type == EV_REJECTED:
        d["message"] = R.reason_text(ev.reason)
    for name, get in rest:
        v = get(ev)
        if v:
            d[name] = v
    return d


def event_to_json(rec: np.void) -> dict[str, Any]:
    """An EVENT_DTYPE record as a compact JSON-ready dict (docs/formats.md)."""
    return event_json(as_event(rec.tolist()))


def events_to_json(records: np.ndarray) -> list[dict[str, Any]]:
    """Every event of an array, as `event_to_json` gives them."""
    return [event_json(ev) for ev in events(records)]


def events_to_jsonl(records: np.ndarray) -> bytes:
    """Events as JSON lines, each ending in a newline."""
    return b"".join(_json_encoder.encode(event_json(ev)) + b"\n" for ev in events(records))


def event_from_json(d: dict[str, Any]) -> np.void:
    """The EVENT_DTYPE record that `event_to_json` wrote as ``d``; raises CodecError."""
    ev_type = _decode_enum(d.get("type"), EV_NAMES, "type")
    fields: dict[str, int] = {"type": ev_type}
    side = _decode_enum(d.get("side", 0), SIDE_NAMES, "side")
    layout = {key: (field, enum) for key, field, enum, _ in _LAYOUTS.get((ev_type, side == SIDE_BID), ())}
    for key, value in d.items():
        if key == "type" or (key == "message" and ev_type == EV_REJECTED):
            continue
        if key in layout:
            field, enum = layout[key]
            fields[field] = (_decode_enum(value, _enum_names(enum), key) if enum is not None
                             else _decode_int(value, key))
        elif key in _EV_FIELDS:
            fields[key] = _decode_int(value, key)
        else:
            raise CodecError(R.MALFORMED, f"Object contains unknown field `{key}`")
    try:
        return np.array([Event(**fields)], dtype=EVENT_DTYPE)[0]
    except OverflowError as e:
        raise CodecError(R.MALFORMED, f"a field is out of range: {e}") from None


def event_from_jsonl(line: bytes | str) -> np.void:
    """One JSON event line -> its record."""
    try:
        d = msgspec.json.decode(line)
    except msgspec.DecodeError as e:
        raise CodecError(R.MALFORMED, str(e)) from None
    if not isinstance(d, dict):
        raise CodecError(R.MALFORMED, "an event must be a JSON object")
    return event_from_json(d)


def _decode_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(R.MALFORMED, f"Expected `int`, got `{type(value).__name__}` - at `$.{key}`")
    return value


def _decode_enum(value: Any, names: dict[int, str], key: str) -> int:
    if isinstance(value, str):
        for code, name in names.items():
            if name == value:
                return code
        raise CodecError(R.MALFORMED, f"Invalid enum value {value!r} - at `$.{key}`")
    return _decode_int(value, key)
