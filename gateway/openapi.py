"""The OpenAPI 3.1 document of the REST API (/v1/openapi.json).

Request bodies and the query of /v1/quote come from the msgspec Structs of gateway.wire, the
leases of a statement from settlement's Lease Struct (so the document cannot drift from what
the gateway decodes or settlement stores); every answer's shape from gateway/shapes.py, whose
tables tests/test_api_shapes.py holds real answers to.  Every operation lists every answer it
gives: its success, the error shape (``default``: ``{"error": {"code", "message"}}``, with
``Retry-After`` on 429 and 503), and 503 of /healthz in its own shape.  tests/
test_openapi_conformance.py runs schemathesis against a live server with this document.

The WebSocket endpoints (/v1/ws, /v1/feeds, /v1/replay) are GETs that upgrade: the document
says so as OpenAPI can — the handshake's headers are required parameters, the answer to a good
handshake is 101 (Switching Protocols; what follows is WebSocket, docs/api.md and
docs/feeds.md), a request that is no WebSocket handshake gets 400 MALFORMED in the error shape —
and marks them ``x-websocket: true``.  What is said over the socket is in those docs, not here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from gateway.shapes import schemas
from gateway.wire import (
    AmendRequest,
    AskRequest,
    CreateAccountRequest,
    DepositRequest,
    HaltRequest,
    KillRequest,
    ProvisionAnswer,
    QuoteRequest,
    SshKeyRequest,
)
from orderbook.types import KIND_NAMES

SIGNED = [{"gpuxKey": [], "gpuxTimestamp": [], "gpuxSignature": []}]
JSON = "application/json"
I63 = 2**63 - 1
ERROR = {"description": "refused: a stable code and a sentence (docs/api.md, Errors)",
         "headers": {"Retry-After": {"description": "seconds to wait (RATE_LIMITED 429, UNAVAILABLE 503)",
                                     "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
         "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, *, body: str | None = None, signed: bool = True, params: list[dict] | None = None,
        ok: str = "200", roles: str = "", answer: str | dict[str, Any] | None = None,
        media: str = JSON, more: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = _ref(answer) if isinstance(answer, str) else answer or {"type": "object"}
    success: dict[str, Any] = {"description": "OK", "content": {media: {"schema": schema}}}
    op: dict[str, Any] = {"summary": summary, "responses": {ok: success, **(more or {}), "default": ERROR}}
    if roles:
        op["description"] = f"Roles: {roles}."
    if body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(body)}}}
    if signed:
        op["security"] = SIGNED
    if params:
        op["parameters"] = params
    return op


def _p(name: str, where: str = "path", typ: str = "string", required: bool = True, description: str = "",
       **bounds: Any) -> dict[str, Any]:
    p = {"name": name, "in": where, "required": required, "schema": {"type": typ, **bounds}}
    return {**p, "description": description} if description else p


def _cls() -> dict[str, Any]:
    return {**_p("cls", description="a GPU class (GET /v1/instruments)"), "example": "H100"}


def _id(name: str) -> dict[str, Any]:
    """An order or trade id in the path: an integer that fits 63 bits."""
    return _p(name, typ="integer", minimum=0, maximum=I63)


def _history_params(cursor: bool) -> list[dict[str, Any]]:
    """The query of GET /v1/trades (``cursor``) and GET /v1/candles (feeds/service.py decodes it)."""
    # the feeds' own constants (feeds/model.py, feeds/service.py) sit a layer above the gateway;
    # the conformance run (tests/test_openapi_conformance.py) holds these to what feeds decodes
    kinds, intervals, trades_max, candles_max = [KIND_NAMES[k] for k in sorted(KIND_NAMES)], ["1m", "1h"], 1000, 5000
    when = "UTC seconds (an ISO 8601 time is taken too); from after to is BAD_RANGE"
    out = [{**_p("class", "query", description="a GPU class (GET /v1/instruments)", minLength=1), "example": "H100"},
           _p("kind", "query", required=False, enum=kinds, description="only trades of this kind"),
           _p("from", "query", "integer", False, description=when, minimum=0, maximum=I63),
           _p("to", "query", "integer", False, description=when, minimum=0, maximum=I63)]
    if cursor:
        return [*out, _p("cursor", "query", "integer", False, minimum=0, maximum=2**62,
                         description="the previous page's next (BAD_CURSOR otherwise)"),
                _p("limit", "query", "integer", False, minimum=1, maximum=trades_max)]
    return [*out, _p("interval", "query", required=False, enum=intervals),
            _p("limit", "query", "integer", False, minimum=1, maximum=candles_max)]


def _struct_params(struct: type, components: dict[str, Any]) -> list[dict[str, Any]]:
    """Query parameters from a Struct's fields (GET /v1/quote: the Struct the gateway decodes)."""
    s = components[struct.__name__]
    return [{"name": name, "in": "query", "required": name in s.get("required", []),
             "schema": {k: v for k, v in prop.items() if k != "description"},
             **({"description": prop["description"]} if "description" in prop else {})}
            for name, prop in s["properties"].items()]


def _settled_lease() -> dict[str, Any]:
    """A lease as a statement lists it: settlement's Lease Struct (clearing/leases.py) as
    ``Lease.view`` writes it — ``cls`` as ``class``, kind and maker by name, its ``lease`` name
    and what was ``paid``."""
    from clearing.leases import Lease

    props: dict[str, Any] = {}
    for f in msgspec.structs.fields(Lease):
        name = "class" if f.name == "cls" else f.name
        props[name] = {"type": "string" if f.type is str or f.name in ("kind", "maker") else "integer"}
    props["lease"] = {"type": "string", "description": "CLASS-TRADE_ID"}
    props["paid"] = {"type": "integer", "description": "µ$ the buyer paid: cost - refunded + buyer_fee"}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False,
            "description": "settlement's record of a lease (clearing/leases.py; docs/settlement.md)"}


def _websocket(summary: str, doc: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A GET that upgrades to WebSocket (see the module docstring)."""
    handshake = [
        {"name": "Upgrade", "in": "header", "required": True, "schema": {"type": "string", "enum": ["websocket"]}},
        {"name": "Connection", "in": "header", "required": True, "schema": {"type": "string", "enum": ["Upgrade"]}},
        {"name": "Sec-WebSocket-Version", "in": "header", "required": True,
         "schema": {"type": "string", "enum": ["13"]}},
        {"name": "Sec-WebSocket-Key", "in": "header", "required": True, "description": "16 random bytes, base64",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"}},
    ]
    return {"summary": summary, "x-websocket": True,
            "description": f"A WebSocket endpoint ({doc}): a GET with the upgrade handshake, answered 101 and then "
                           "spoken over WebSocket; a request that is no handshake gets 400 MALFORMED.",
            "parameters": handshake + (params or []),
            "responses": {"101": {"description": "Switching Protocols: the connection is a WebSocket from here on",
                                  "headers": {"Upgrade": {"required": True, "schema": {"type": "string"}},
                                              "Sec-WebSocket-Accept": {"required": True,
                                                                       "schema": {"type": "string"}}}},
                          "default": ERROR}}


@cache
def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [AskRequest, AmendRequest, HaltRequest, KillRequest, CreateAccountRequest, DepositRequest, SshKeyRequest,
         ProvisionAnswer, QuoteRequest],
        ref_template="#/components/schemas/{name}")
    components.update(schemas())  # every answer's shape (gateway/shapes.py)
    components["SettledLease"] = _settled_lease()
    components["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
        "error": {"type": "object", "additionalProperties": False, "properties": {
            "code": {"type": "string", "description": "stable, machine-readable (docs/api.md, Errors)"},
            "message": {"type": "string", "description": "one sentence for a person"},
            "retry_after_ms": {"type": "integer", "description": "RATE_LIMITED: when to retry"}},
            "required": ["code", "message"]}}}
    # a ready answer carries connection details (the gateway refuses one without: MALFORMED)
    components["ProvisionAnswer"]["if"] = {"properties": {"status": {"const": "ready"}}}
    components["ProvisionAnswer"]["then"] = {"required": ["connection"], "properties": {
        "connection": {"type": "object", "minProperties": 1}}}
    quote = _struct_params(QuoteRequest, components)
    example = {"class": "H100", "kind": "on_demand", "gpus": 1, "hours": 1}
    quote = [{**q, "example": example[q["name"]]} if q["name"] in example else q for q in quote]
    del components["QuoteRequest"]  # a query, not a body
    health = {"description": "not serving, or a part is not ok (checks says which)",
              "content": {JSON: {"schema": _ref("Health")}}}
    paths = {
        "/healthz": {"get": _op("liveness and the journal position", signed=False, answer="Health",
                                more={"503": health})},
        "/metrics": {"get": _op("Prometheus metrics (text exposition format)", signed=False, media="text/plain",
                                answer={"type": "string"})},
        "/v1/openapi.json": {"get": _op("this document", signed=False)},
        "/v1/instruments": {"get": _op("GPU classes and their bounds, ticks, fees", signed=False,
                                       answer="InstrumentList")},
        "/v1/book/{cls}": {"get": _op("public order book of a class (level 2, R20)", signed=False, answer="Book",
                                      params=[_cls(),
                                              _p("depth", "query", "integer", False, minimum=1, maximum=1000)])},
        "/v1/dashboard/{cls}": {"get": _op("capacity calendar, utilisation and open leases of a class (docs/demo.md)",
                                           signed=False, answer="Dashboard",
                                           params=[_cls(),
                                                   _p("hours", "query", "integer", False, minimum=1,
                                                      maximum=24 * 14)])},
        "/v1/feeds": {"get": _websocket("market data: public and private channels", "docs/feeds.md")},
        "/v1/replay": {"get": _websocket(
            "replay of a recording, live-feed format", "docs/feeds.md",
            [_p("from", "query", "integer", False, description="UTC seconds (an ISO 8601 time is taken too)"),
             _p("to", "query", "integer", False, description="UTC seconds (an ISO 8601 time is taken too)"),
             _p("speed", "query", "number", False, minimum=0), _p("class", "query", required=False),
             _p("delay", "query", "number", False, minimum=0, maximum=60)])},
        "/v1/trades": {"get": _op("trade history of a class from the recording, oldest first, in cursor pages that "
                                  "join without gaps or repeats (docs/feeds.md, History over REST)", signed=False,
                                  params=_history_params(cursor=True), answer="TradePage")},
        "/v1/candles": {"get": _op("OHLCV candles of a class, or of one kind, over a range of the recording "
                                   "(docs/feeds.md, History over REST)", signed=False,
                                   params=_history_params(cursor=False), answer="CandlePage")},
        "/v1/forward": {"get": _op("the forward curve of a class: by start day, the price a reserved bid would fill "
                                   "at now and the reserved trades' price (docs/feeds.md, Forward curve)",
                                   signed=False, answer="ForwardCurve", params=[
                                       {**_p("class", "query", description="a GPU class (GET /v1/instruments)",
                                             minLength=1), "example": "H100"},
                                       _p("days", "query", "integer", False, minimum=1, maximum=90),
                                       _p("gpus", "query", "integer", False, minimum=1, maximum=2**31 - 1,
                                          description="GPUs of the quoted bid (default 1; over the class's "
                                                      "max_gpus: BAD_GPUS)"),
                                       _p("hours", "query", "integer", False, minimum=1, maximum=2**31 - 1,
                                          description="hours of the quoted bid (default 24; over the class's "
                                                      "max_hours: BAD_HOURS)")])},
        "/v1/products": {"get": _op("the executable book of each product of a class (kind, hours, block, start): asks "
                                    "a bid of the product could fill now, its resting bids (docs/feeds.md, Products)",
                                    signed=False, answer="ProductBooks", params=[
                                        {**_p("class", "query", description="a GPU class (GET /v1/instruments)",
                                              minLength=1), "example": "H100"},
                                        {**_p("product", "query", required=False,
                                              description="one product (UNKNOWN_PRODUCT otherwise)"),
                                         "example": "on_demand:24h:x1"},
                                        _p("depth", "query", "integer", False, minimum=1, maximum=1000)])},
        "/v1/quote": {"get": _op("what N GPUs x H hours of a kind would cost now, or why it cannot fill",
                                 signed=False, params=quote, answer="Quote")},
        "/v1/account": {"get": _op("own balances from the ledger: available, escrow, lease_prepaid, receivable; "
                                   "deposited, open orders, SSH key", answer="Account")},
        "/v1/account/statement": {"get": _op("balances, ledger transfers with running balances, leases "
                                             "(admin, analyst: ?account=N)", answer="Statement",
                                             params=[_p("account", "query", "integer", False, minimum=0,
                                                        maximum=I63)])},
        "/v1/account/ssh-key": {"put": _op("set the SSH public key leases are provisioned with (R18)",
                                           body="SshKeyRequest", answer="SshKeyAnswer")},
        "/v1/provisioning": {"get": _op("provisioning tasks waiting for this account's agent (R18)",
                                        roles="provider, trader (resale)", answer="TaskList")},
        "/v1/provisioning/{lease}": {"post": _op("the agent's answer: ready with connection details, or failed",
                                                 body="ProvisionAnswer", roles="the lease's provider",
                                                 params=[_p("lease", description="CLASS-TRADE_ID, e.g. H100-7",
                                                            pattern="^[^/]+-0*[1-9][0-9]{0,17}$")],
                                                 answer="ProvisionResult")},
        "/v1/asks": {"post": _op("post an ask (R5); traders may post resale asks with lease_id (R16)",
                                 body="AskRequest", ok="201", roles="provider, trader (resale), admin",
                                 answer="OrderAnswer"),
                     "get": _op("own open asks", answer="AskList")},
        "/v1/asks/{oid}": {"delete": _op("cancel an ask (R7)", params=[_id("oid")], answer="OrderAnswer"),
                           "patch": _op("reduce an ask's GPUs, keeping priority (R7)", body="AmendRequest",
                                        params=[_id("oid")], answer="OrderAnswer")},
        "/v1/orders": {"get": _op("own open orders (bids and asks)", answer="OrderList")},
        "/v1/orders/{oid}": {"get": _op("one own order, open or recently closed", params=[_id("oid")],
                                        answer="Order"),
                             "delete": _op("cancel an own order", params=[_id("oid")], answer="OrderAnswer")},
        "/v1/leases": {"get": _op("own leases, as buyer or provider", answer="LeaseList")},
        "/v1/leases/{cls}/{trade_id}/release": {"post": _op(
            "release an on-demand or spot lease early (R16)", roles="trader",
            params=[_cls(), _p("trade_id", typ="integer", minimum=1, maximum=I63)], answer="ReleaseAnswer")},
        "/v1/admin/halt": {"post": _op("halt trading in a class", body="HaltRequest", roles="admin",
                                       answer="HaltAnswer")},
        "/v1/admin/resume": {"post": _op("resume trading in a class", body="HaltRequest", roles="admin",
                                         answer="HaltAnswer")},
        "/v1/admin/kill": {"post": _op("cancel every open order of an account", body="KillRequest", roles="admin",
                                       answer="KillAnswer")},
        "/v1/admin/accounts": {"post": _op("create an account and its first key; deposit in integer µ$",
                                           body="CreateAccountRequest", ok="201", roles="admin",
                                           answer="CreatedAccount")},
        "/v1/admin/deposit": {"post": _op("credit an account (journaled); amount in integer µ$", body="DepositRequest",
                                          roles="admin", answer="DepositAnswer")},
        "/v1/admin/withdraw": {"post": _op("debit an account's available balance (journaled; INSUFFICIENT_FUNDS "
                                           "beyond it); amount in integer µ$", body="DepositRequest", roles="admin",
                                           answer="WithdrawAnswer")},
        "/v1/admin/state": {"get": _op("journal position, books' state hashes", roles="admin, analyst",
                                       answer="AdminState")},
        "/v1/admin/snapshot": {"post": _op("take a snapshot now", roles="admin", answer="SnapshotAnswer")},
        "/v1/admin/journal": {"get": _op(
            "the durable journal entries after a seq, raw, as one binary chunk (docs/api.md)", roles="admin",
            media="application/octet-stream", answer={"type": "string", "format": "binary"},
            params=[_p("after", "query", "integer", minimum=0, maximum=I63),
                    _p("limit", "query", "integer", False, minimum=1, maximum=10_000)])},
        "/v1/ws": {"get": _websocket("trader session: auth, bid, cancel, amend, status, release", "docs/api.md")},
    }
    paths["/v1/admin/journal"]["get"]["responses"]["200"]["headers"] = {
        "GPUX-Journal-Durable": {"required": True, "description": "the last durable seq",
                                 "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpux", "version": "1", "description":
                 "An exchange for GPU-hours. Money is integer µ$ (1 USD = 1,000,000 µ$) everywhere on the "
                 "wire, deposits included; prices are integer µ$ per GPU-hour, times integer UTC seconds. "
                 "Signed requests carry GPUX-Key, GPUX-Timestamp (ms) and GPUX-Signature: hex "
                 "HMAC-SHA256 of timestamp + METHOD + path(with query) + body (docs/auth.md). "
                 "A request the schemas allow may still be refused by a market rule that depends on the "
                 "instrument or the time (BAD_PRICE, OFF_TICK, BAD_WINDOW...: 400) or by the account's "
                 "money (INSUFFICIENT_FUNDS: 402); never as MALFORMED."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "gpuxKey": {"type": "apiKey", "in": "header", "name": "GPUX-Key"},
            "gpuxTimestamp": {"type": "apiKey", "in": "header", "name": "GPUX-Timestamp"},
            "gpuxSignature": {"type": "apiKey", "in": "header", "name": "GPUX-Signature"}}},
    }
