"""The OpenAPI 3.1 document of the REST API (/v1/openapi.json).

Request bodies come from the msgspec Structs of gateway.wire (so the document cannot drift
from what the gateway decodes); the paths and their answers are listed here.
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
    SshKeyRequest,
)

SIGNED = [{"gpuxKey": [], "gpuxTimestamp": [], "gpuxSignature": []}]


def _op(summary: str, *, body: str | None = None, signed: bool = True, params: list[dict] | None = None,
        ok: str = "200", roles: str = "", answer: str | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{answer}"}} if answer else {}
    op: dict[str, Any] = {"summary": summary,
                          "responses": {ok: {"description": "OK", "content": {"application/json": content}},
                                        "default": {"description": "error",
                                                    "content": {"application/json": {
                                                        "schema": {"$ref": "#/components/schemas/Error"}}}}}}
    if roles:
        op["description"] = f"Roles: {roles}."
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if signed:
        op["security"] = SIGNED
    if params:
        op["parameters"] = params
    return op


def _p(name: str, where: str = "path", typ: str = "string", required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": typ}}


@cache
def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [AskRequest, AmendRequest, HaltRequest, KillRequest, CreateAccountRequest, DepositRequest, SshKeyRequest,
         ProvisionAnswer],
        ref_template="#/components/schemas/{name}")
    components.update(schemas())  # every answer's shape (gateway/shapes.py)
    components["Error"] = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "retry_after_ms": {"type": "integer"}},
        "required": ["code", "message"]}}}
    q = [_p("class", "query"), _p("kind", "query"), _p("gpus", "query", "integer"), _p("hours", "query", "integer"),
         _p("start", "query", "integer", False), _p("block", "query", "integer", False),
         _p("limit", "query", "integer", False)]
    paths = {
        "/healthz": {"get": _op("liveness and the journal position", signed=False)},
        "/metrics": {"get": _op("Prometheus metrics (text format)", signed=False)},
        "/v1/instruments": {"get": _op("GPU classes and their bounds, ticks, fees", signed=False,
                                       answer="InstrumentList")},
        "/v1/book/{cls}": {"get": _op("public order book of a class", signed=False,
                                      params=[_p("cls"), _p("depth", "query", "integer", False)])},
        "/v1/dashboard/{cls}": {"get": _op("capacity calendar, utilisation and open leases of a class (docs/demo.md)",
                                           signed=False, params=[_p("cls"), _p("hours", "query", "integer", False)])},
        "/v1/feeds": {"get": _op("market data WebSocket: public and private channels (docs/feeds.md)", signed=False)},
        "/v1/replay": {"get": _op("WebSocket replay of a recording, live-feed format (docs/feeds.md)", signed=False)},
        "/v1/trades": {"get": _op("trade history of a class from the recording, oldest first, in cursor pages that "
                                  "join without gaps or repeats (docs/feeds.md, History over REST)", signed=False,
                                  params=[_p("class", "query"), _p("kind", "query", required=False),
                                          _p("from", "query", required=False), _p("to", "query", required=False),
                                          _p("cursor", "query", required=False),
                                          _p("limit", "query", "integer", False)], answer="TradePage")},
        "/v1/candles": {"get": _op("OHLCV candles of a class, or of one kind, over a range of the recording "
                                   "(docs/feeds.md, History over REST)", signed=False,
                                   params=[_p("class", "query"), _p("kind", "query", required=False),
                                           _p("interval", "query", required=False),
                                           _p("from", "query", required=False), _p("to", "query", required=False),
                                           _p("limit", "query", "integer", False)], answer="CandlePage")},
        "/v1/quote": {"get": _op("what N GPUs x H hours of a kind would cost now, or why it cannot fill",
                                 signed=False, params=q, answer="Quote")},
        "/v1/account": {"get": _op("own balances from the ledger: available, escrow, lease_prepaid, receivable; "
                                   "deposited, open orders, SSH key", answer="Account")},
        "/v1/account/statement": {"get": _op("balances, ledger transfers with running balances, leases "
                                             "(admin, analyst: ?account=N)",
                                             params=[_p("account", "query", "integer", False)])},
        "/v1/account/ssh-key": {"put": _op("set the SSH public key leases are provisioned with (R18)",
                                           body="SshKeyRequest")},
        "/v1/provisioning": {"get": _op("provisioning tasks waiting for this account's agent (R18)",
                                        roles="provider, trader (resale)", answer="TaskList")},
        "/v1/provisioning/{lease}": {"post": _op("the agent's answer: ready with connection details, or failed",
                                                 body="ProvisionAnswer", roles="the lease's provider",
                                                 params=[_p("lease")])},
        "/v1/asks": {"post": _op("post an ask (R5); traders may post resale asks with lease_id (R16)",
                                 body="AskRequest", ok="201", roles="provider, trader (resale), admin",
                                 answer="OrderAnswer"),
                     "get": _op("own open asks", answer="AskList")},
        "/v1/asks/{oid}": {"delete": _op("cancel an ask (R7)", params=[_p("oid", typ="integer")],
                                         answer="OrderAnswer"),
                           "patch": _op("reduce an ask's GPUs, keeping priority (R7)", body="AmendRequest",
                                        params=[_p("oid", typ="integer")], answer="OrderAnswer")},
        "/v1/orders": {"get": _op("own open orders (bids and asks)", answer="OrderList")},
        "/v1/orders/{oid}": {"get": _op("one own order, open or recently closed", params=[_p("oid", typ="integer")],
                                        answer="Order"),
                             "delete": _op("cancel an own order", params=[_p("oid", typ="integer")],
                                           answer="OrderAnswer")},
        "/v1/leases": {"get": _op("own leases, as buyer or provider", answer="LeaseList")},
        "/v1/leases/{cls}/{trade_id}/release": {"post": _op(
            "release an on-demand or spot lease early (R16)", roles="trader",
            params=[_p("cls"), _p("trade_id", typ="integer")], answer="ReleaseAnswer")},
        "/v1/admin/halt": {"post": _op("halt trading in a class", body="HaltRequest", roles="admin")},
        "/v1/admin/resume": {"post": _op("resume trading in a class", body="HaltRequest", roles="admin")},
        "/v1/admin/kill": {"post": _op("cancel every open order of an account", body="KillRequest", roles="admin")},
        "/v1/admin/accounts": {"post": _op("create an account and its first key; deposit in integer µ$",
                                           body="CreateAccountRequest", ok="201", roles="admin",
                                           answer="CreatedAccount")},
        "/v1/admin/deposit": {"post": _op("credit an account (journaled); amount in integer µ$", body="DepositRequest",
                                          roles="admin", answer="DepositAnswer")},
        "/v1/admin/withdraw": {"post": _op("debit an account's available balance (journaled; INSUFFICIENT_FUNDS "
                                           "beyond it); amount in integer µ$", body="DepositRequest", roles="admin",
                                           answer="WithdrawAnswer")},
        "/v1/admin/state": {"get": _op("journal position, books' state hashes", roles="admin, analyst")},
        "/v1/admin/snapshot": {"post": _op("take a snapshot now", roles="admin")},
        "/v1/ws": {"get": _op("WebSocket for traders (docs/api.md): auth, bid, cancel, amend, status, release",
                              signed=False)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpux", "version": "1", "description":
                 "An exchange for GPU-hours. Money is integer µ$ (1 USD = 1,000,000 µ$) everywhere on the "
                 "wire, deposits included; prices are integer µ$ per GPU-hour, times integer UTC seconds. "
                 "Signed requests carry GPUX-Key, GPUX-Timestamp (ms) and GPUX-Signature: hex "
                 "HMAC-SHA256 of timestamp + METHOD + path(with query) + body (docs/auth.md)."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "gpuxKey": {"type": "apiKey", "in": "header", "name": "GPUX-Key"},
            "gpuxTimestamp": {"type": "apiKey", "in": "header", "name": "GPUX-Timestamp"},
            "gpuxSignature": {"type": "apiKey", "in": "header", "name": "GPUX-Signature"}}},
    }
