"""Wire types of the gateway: REST bodies and WebSocket messages, as msgspec Structs.

Decoding *is* validation (R8): a message that does not fit is refused with ``MALFORMED``
and msgspec's sentence, which names the field (wrong type, unknown or missing field, a number
that does not fit 64 bits).  The fields the market rules bound (gpus, hours, limit, block,
price, spot_price, min_hours, end) decode as any 64-bit integer here, so that their bounds are
checked by `orderbook.rules` with the book's own reason codes (``BAD_GPUS``, ``BAD_PRICE``...,
`gateway.explain` says why in a sentence) before anything reaches the sequencer.  A WebSocket
message that does not decode is still answered with its ``id`` when the id can be read
(`request_id`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from exchange.errors import ApiError
from orderbook.types import FOK, GTC, GTD, IOC, ON_DEMAND, RESERVED, SPOT

MAX_I64 = 2**62
MAX_I32 = 2**31 - 1
Int64 = Annotated[int, msgspec.Meta(ge=0, le=MAX_I64)]
PosInt64 = Annotated[int, msgspec.Meta(ge=1, le=MAX_I64)]
Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_I32)]
# a field whose bounds are a market rule (R8): any 64-bit integer decodes, the rule check gives the code
Ruled = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1, description=(
    "bounded by the class's instrument settings (GET /v1/instruments); out of bounds gets the book's "
    "code (BAD_GPUS, BAD_HOURS, BAD_PRICE, OFF_TICK, BAD_BLOCK, BAD_SPOT_PRICE, BAD_MIN_HOURS, BAD_WINDOW, "
    "BAD_AMEND)"))]
ClassName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, examples=["H100"])]
ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
RequestId = int | Annotated[str, msgspec.Meta(max_length=64)] | None
KindName = Literal["spot", "on_demand", "reserved"]
TifName = Literal["GTC", "IOC", "FOK", "GTD"]

KINDS = {"spot": SPOT, "on_demand": ON_DEMAND, "reserved": RESERVED}
TIFS = {"GTC": GTC, "IOC": IOC, "FOK": FOK, "GTD": GTD}


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# --- REST bodies -------------------------------------------------------------------------
class AskRequest(_Strict, kw_only=True):
    """POST /v1/asks — a provider's ask (R5); prices in µ$ per GPU-hour, times in UTC seconds."""

    gpu_class: ClassName = msgspec.field(name="class")
    gpus: Ruled
    price: Ruled
    spot_price: Ruled = 0
    start: Int64 = 0
    end: Ruled
    min_hours: Ruled = 1
    post_only: bool = False
    lease_id: Int64 = 0
    client_order_id: ClientOrderId | None = None


class AmendRequest(_Strict, kw_only=True):
    """PATCH /v1/asks/{oid} — reduce an ask's GPUs (R7; keeps priority)."""

    gpus: Ruled


class QuoteRequest(_Strict, kw_only=True):
    """GET /v1/quote?class=&kind=&gpus=&hours=[&start=&block=&limit=]"""

    gpu_class: ClassName = msgspec.field(name="class")
    kind: KindName
    gpus: Ruled
    hours: Ruled
    start: Int64 = 0
    block: Ruled = 1
    limit: Ruled = 0


class HaltRequest(_Strict, kw_only=True):
    gpu_class: ClassName = msgspec.field(name="class")


class KillRequest(_Strict, kw_only=True):
    account: PosInt64


class CreateAccountRequest(_Strict, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: Literal["trader", "provider", "analyst", "admin"]
    deposit: Annotated[int, msgspec.Meta(ge=0, le=MAX_I64, description=(
        "initial deposit in integer µ$ (1 USD = 1,000,000 µ$), as every amount on the wire; the command "
        "line takes dollars"))] = 0
    ssh_public_key: Annotated[str, msgspec.Meta(max_length=16384)] | None = None


class DepositRequest(_Strict, kw_only=True):
    account: PosInt64
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_I64, description="integer µ$ (1 USD = 1,000,000 µ$)")]


class SshKeyRequest(_Strict, kw_only=True):
    """PUT /v1/account/ssh-key: the OpenSSH public key leases are provisioned with (R18)."""

    ssh_public_key: Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]


ConnValue = Annotated[str, msgspec.Meta(max_length=1024)] | Int64


class ProvisionAnswer(_Strict, kw_only=True):
    """POST /v1/provisioning/{lease}: the provider's agent answers a task (R18)."""

    status: Literal["ready", "failed"]
    connection: Annotated[dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], ConnValue],
                          msgspec.Meta(max_length=32)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


# --- WebSocket messages (client -> server) ---------------------------------------------------
class _Op(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    id: RequestId = None


class AuthOp(_Op, tag="auth", kw_only=True):
    key: Annotated[str, msgspec.Meta(max_length=64)]
    ts: Int64
    sig: Annotated[str, msgspec.Meta(max_length=128)]
    cancel_on_disconnect: bool = False


class BidOp(_Op, tag="bid", kw_only=True):
    """A trader's bid (R6)."""

    gpu_class: ClassName = msgspec.field(name="class")
    kind: KindName
    gpus: Ruled
    hours: Ruled
    limit: Ruled
    block: Ruled = 1
    tif: TifName = "GTC"
    start: Int64 = 0
    expire_at: Int64 = 0
    client_order_id: ClientOrderId | None = None


class CancelOp(_Op, tag="cancel", kw_only=True):
    oid: PosInt64 | None = None
    client_order_id: ClientOrderId | None = None


class AmendOp(_Op, tag="amend", kw_only=True):
    oid: PosInt64
    gpus: Ruled


class StatusOp(_Op, tag="status", kw_only=True):
    oid: PosInt64 | None = None
    client_order_id: ClientOrderId | None = None


class ReleaseOp(_Op, tag="release", kw_only=True):
    gpu_class: ClassName = msgspec.field(name="class")
    lease_id: PosInt64


class OrdersOp(_Op, tag="orders", kw_only=True):
    pass


class PingOp(_Op, tag="ping", kw_only=True):
    pass


WsOp = AuthOp | BidOp | CancelOp | AmendOp | StatusOp | ReleaseOp | OrdersOp | PingOp

_ws_decoder = msgspec.json.Decoder(WsOp)


class _IdOnly(msgspec.Struct):
    id: RequestId = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def request_id(data: bytes | str) -> int | str | None:
    """The ``id`` of a WebSocket message that does not decode as an op, if it can be read: the
    message is a JSON object whose ``id`` is an integer or a string of at most 64 characters."""
    try:
        return _id_decoder.decode(data).id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_ws(data: bytes | str) -> WsOp:
    """One WebSocket text frame -> an op; raises ApiError(MALFORMED) naming the field."""
    try:
        return _ws_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ApiError("MALFORMED", str(e)) from None


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode_body(body: bytes, cls: type) -> Any:
    """A REST body -> the Struct ``cls``; raises ApiError(MALFORMED)."""
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.json.Decoder(cls)
    try:
        return dec.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ApiError("MALFORMED", str(e)) from None


def decode_query(query: dict[str, str], cls: type) -> Any:
    """Query parameters -> the Struct ``cls`` (strings become ints); raises ApiError(MALFORMED)."""
    try:
        return msgspec.convert(dict(query), cls, strict=False)
    except msgspec.ValidationError as e:
        raise ApiError("MALFORMED", str(e)) from None
