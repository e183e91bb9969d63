"""The gateway: REST for providers and everyone's reads, WebSocket for traders (aiohttp).

    gw = Gateway(cfg, engine, sequencer, accounts, verifier, ledger, provisioning, bus, ...)
    gw.add_routes(app.router)
    ...
    await gw.close_sessions()       # at shutdown: every session gets 1001

Handlers are thin: decode (msgspec, R8), authenticate (HMAC, gateway.auth), check the
role and the rate limit, precheck the market rules (orderbook.rules, R8), then hand a Request to
the sequencer and answer once it is durable.  docs/api.md is the reference; the same
routes are described by the OpenAPI document at /v1/openapi.json.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from exchange.bus import Bus
from exchange.clock import WALL, Clock
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Fund
from exchange.errors import ApiError, book_error
from exchange.journal import JournalError
from exchange.money import WITHDRAW
from exchange.sequencer import Request, Sequencer
from exchange.views import event_push, lease_view, order_view
from gateway.accounts import AccountError, AccountStore
from gateway.auth import AuthError, RateLimiter, Verifier, require_role
from gateway.deposits import DepositInbox
from gateway.explain import amend_error, rule_error
from gateway.sendbuffer import CLOSE_GRACE_S, SendBuffer, Sender, ws_frame
from gateway.wire import (
    KINDS,
    TIFS,
    AmendOp,
    AmendRequest,
    AskRequest,
    AuthOp,
    BidOp,
    CancelOp,
    CreateAccountRequest,
    DepositRequest,
    HaltRequest,
    KillRequest,
    OrdersOp,
    PingOp,
    ProvisionAnswer,
    QuoteRequest,
    ReleaseOp,
    SshKeyRequest,
    StatusOp,
    decode_body,
    decode_query,
    decode_ws,
    request_id,
)
from orderbook import reasons as R
from orderbook.rules import ask_code, bid_code
from orderbook.types import EV_REJECTED, amend_command, ask_command, bid_command, cancel_command, release_command

log = logging.getLogger("gpux.gateway")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
SEND_BUFFER_LIMIT = 8 << 20  # bytes waiting for a slow WebSocket client before it is cut off
SEND_GRACE_S = CLOSE_GRACE_S  # then its socket is aborted if it has not gone within this long
AUTH_TIMEOUT_S = 10
I63 = 2**63 - 1  # ids and seqs in queries fit a signed 64-bit integer


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(data), status=status, content_type="application/json")


def _error(e: ApiError) -> web.Response:
    headers = {}
    if "retry_after_ms" in e.extra:
        headers["Retry-After"] = str(max(1, -(-int(e.extra["retry_after_ms"]) // 1000)))
    return web.Response(body=_enc.encode(e.body()), status=e.status, content_type="application/json",
                        headers=headers)


def _query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int | None) -> int:
    """An integer query parameter in [lo, hi] (required when ``default`` is None), or MALFORMED."""
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise ApiError("MALFORMED", f"the query parameter {name} is required")
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError("MALFORMED", f"the query parameter {name} must be an integer, not {raw[:40]!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise ApiError("MALFORMED", f"the query parameter {name} must be between {lo} and {hi or 'any'}, not {v}")
    return v


def _auth_error(e: AuthError) -> ApiError:
    return ApiError(e.code, e.message, e.status)


class Session(SendBuffer):
    """One authenticated WebSocket connection.

    It is a send buffer of `gateway.sendbuffer` (as a market-data subscriber is): messages for
    it are framed as they are sent and go out together once per loop turn, one socket write
    per session per batch however many acks and events the batch holds, from one callback for
    all sessions (`Gateway.sends`).  A client that does not read (its socket's write buffer
    passes SEND_BUFFER_LIMIT) is cut off by the one slow-client policy: close code 1008 with a
    reason, nothing more queued for it, the socket aborted if it has not gone within
    SEND_GRACE_S; so it cannot hold memory or slow anyone else.
    """

    __slots__ = ("account", "role", "key_id", "cancel_on_disconnect", "orders")

    def __init__(self, sender: Sender, ws: web.WebSocketResponse, transport: Any, peer: str = "") -> None:
        super().__init__(sender, ws, transport, peer)
        self.account = 0
        self.role = ""
        self.key_id = ""
        self.cancel_on_disconnect = False
        self.orders: set[tuple[str, int]] = set()  # (class, oid) placed through this session

    def send(self, msg: dict[str, Any] | bytes) -> None:
        """Queue one message: a dict, or its JSON encoding (`SendBuffer.push`, inlined: one call
        fewer per message on the order path)."""
        if self.closed:
            return
        self.out.append(ws_frame(msg if isinstance(msg, bytes) else _enc.encode(msg)))
        self.sent += 1
        if not self.dirty:
            self.dirty = True
            self.sender.mark(self)


class Counters(dict[str, int]):
    """The gateway's counters for /metrics: ``errors_total{code="..."}``, ``orders_total{...}``..."""

    def count(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


def book_view(engine: Engine, name: str, query: Any,
              level2: Callable[[str], tuple[int, dict[str, list]] | None] | None) -> dict[str, Any]:
    """``GET /v1/book/{class}?depth=N``: the class's engine time, resting orders and, from the
    market-data model, level 2 (R20): free GPUs now per ask price (firm and spot ladders),
    remaining GPUs per bid limit (firm and spot bids); see docs/feeds.md."""
    if name not in engine.books:
        raise ApiError("UNKNOWN_CLASS", f"no GPU class {name!r}; classes: {', '.join(engine.books)}")
    try:
        depth = int(query.get("depth", "50"))
    except ValueError:
        raise ApiError("MALFORMED", "depth must be an integer") from None
    if not 1 <= depth <= 1000:
        raise ApiError("MALFORMED", "depth must be between 1 and 1000")
    d: dict[str, Any] = {"class": name, "time": engine.book_time(name),
                         "resting_orders": engine.books[name].resting_orders()}
    l2 = level2(name) if level2 is not None else None
    if l2 is not None:
        d["seq"], sides = l2
        for side, rows in sides.items():
            d[side] = rows[:depth]
    return d


def instruments_view(cfg: ServerConfig, engine: Engine) -> list[dict[str, Any]]:
    """``GET /v1/instruments``: each class's settings, whether it is halted and its engine time."""
    out = []
    for name, inst in cfg.instruments.items():
        d = inst.to_dict()
        d["halted"] = name in engine.state.halted
        d["time"] = engine.book_time(name)
        out.append(d)
    return out


def errors_middleware(counters: Counters, max_body: int) -> Any:
    """The one error format of every route (docs/api.md): an ApiError or AuthError raised by a
    handler becomes its JSON body and status; anything else is INTERNAL (and logged)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            counters.count(f"errors_total{{code=\"{e.code}\"}}")
            return _error(e)
        except AuthError as e:
            counters.count(f"errors_total{{code=\"{e.code}\"}}")
            return _error(_auth_error(e))
        except web.HTTPRequestEntityTooLarge:
            counters.count("errors_total{code=\"TOO_LARGE\"}")
            return _error(ApiError("TOO_LARGE", f"the body is larger than {max_body} bytes"))
        except web.HTTPNotFound:
            return _error(ApiError("NOT_FOUND", f"no such resource: {request.method} {request.path}"))
        except web.HTTPMethodNotAllowed as e:  # the methods the path takes, in Allow (RFC 9110)
            allowed = ", ".join(sorted(e.allowed_methods))
            response = _error(ApiError("METHOD_NOT_ALLOWED", f"{request.path} does not accept {request.method}; "
                                                             f"it takes {allowed}"))
            response.headers["Allow"] = allowed
            return response
        except web.HTTPException:
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(ApiError("INTERNAL"))

    return middleware


class Gateway:
    """The REST and trader WebSocket routes over the parts they use: the core (``engine``, read
    only — its money too —, and ``sequencer``, the way in), ``accounts`` and ``verifier`` (keys),
    ``ledger`` (settlement's projection: statements), ``provisioning`` (R18), ``bus`` (the events
    pushed to sessions), ``deposits`` (the account store's deposit requests into the journal)
    and, once the feeds run, ``level2(class)`` for /v1/book."""

    def __init__(self, cfg: ServerConfig, engine: Engine, sequencer: Sequencer, accounts: AccountStore,
                 verifier: Verifier, ledger: Any, provisioning: Any, bus: Bus, deposits: DepositInbox | None = None,
                 *, counters: Counters | None = None,
                 level2: Callable[[str], tuple[int, dict[str, list]] | None] | None = None,
                 metrics: Callable[[], str] | None = None, health: Callable[[], dict[str, Any]] | None = None,
                 clock: Clock = WALL, journal_tail: Any = None) -> None:
        self.cfg = cfg
        self.journal_tail = journal_tail  # exchange.stream.JournalTail: GET /v1/admin/journal
        self.engine = engine
        self.state = engine.state
        self.sequencer = sequencer
        self.accounts = accounts
        self.verifier = verifier
        self.ledger = ledger
        self.deposits = deposits
        self.provisioning = provisioning
        self.level2 = level2
        self.render_metrics = metrics
        self.health = health
        self.clock = clock
        self.limiter = RateLimiter(cfg.rate_per_s, cfg.rate_burst, clock=clock.monotonic)
        self.sessions: dict[int, set[Session]] = {}
        self.all_sessions: set[Session] = set()
        self.metrics = counters if counters is not None else Counters()
        # the sessions' send buffers: one write per session per turn, cut off past SEND_BUFFER_LIMIT
        self.sends = Sender(SEND_BUFFER_LIMIT, SEND_GRACE_S, clock, stats=self.metrics, stat="ws_cut_off_total",
                            log=log, label="trader session")
        self.metrics.setdefault("ws_cut_off_total", 0)  # on /metrics from the start
        self._unsubscribe = bus.subscribe(self._on_batch)

    def _count(self, name: str, n: int = 1) -> None:
        self.metrics.count(name, n)

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        """/metrics samples: open sessions, and every counter."""
        out: list[tuple[str, float, str, str]] = [("gpux_ws_sessions", len(self.all_sessions),
                                                   "open WebSocket sessions", "gauge")]
        out += [(f"gpux_{name}", n, "", "counter") for name, n in sorted(self.metrics.items())]
        return out

    async def _auth(self, request: web.Request, *roles: str) -> Any:
        """Verify the request's signature and role, and take a token; returns the ApiKey."""
        body = await request.read()
        h = request.headers
        key = self.verifier.verify(h.get("GPUX-Key"), h.get("GPUX-Timestamp"), h.get("GPUX-Signature"),
                                   request.method, request.raw_path, body)
        self._rate(key.key_id)
        if roles:
            require_role(key, *roles)
        return key

    def _rate(self, bucket: str) -> None:
        wait = self.limiter.take(bucket)
        if wait > 0:
            raise ApiError("RATE_LIMITED", retry_after_ms=int(wait * 1000) + 1)

    def _public(self, request: web.Request) -> None:
        peer = request.remote or "?"
        self._rate(f"ip:{peer}")

    def public_rate(self, request: web.Request) -> None:
        """The public routes' rate limit, per client address (RATE_LIMITED)."""
        self._public(request)

    def _book(self, name: str) -> Any:
        engine = self.engine
        if name not in engine.books:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {name!r}; classes: {', '.join(engine.books)}")
        return engine.books[name]

    async def _submit(self, req: Request) -> dict[str, Any]:
        seq = self.sequencer
        if not seq.running:
            raise ApiError("UNAVAILABLE")
        return await seq.submit(req)

    @staticmethod
    def _result(ans: dict[str, Any]) -> dict[str, Any]:
        if not ans.get("ok", True):
            err = ans["error"]
            raise ApiError(err["code"], err["message"], book_error(_code_of(err["code"])).status)
        return ans

    # ------------------------------------------------------------------ routes
    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics_text)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/instruments", self.instruments)
        r.add_get("/v1/book/{cls}", self.book)
        r.add_get("/v1/quote", self.quote)
        r.add_get("/v1/account", self.account)
        r.add_get("/v1/account/statement", self.statement)
        r.add_put("/v1/account/ssh-key", self.set_ssh_key)
        r.add_get("/v1/provisioning", self.provisioning_tasks)
        r.add_post("/v1/provisioning/{lease}", self.provisioning_answer)
        r.add_post("/v1/asks", self.post_ask)
        r.add_get("/v1/asks", self.list_asks)
        r.add_delete("/v1/asks/{oid}", self.cancel_ask)
        r.add_patch("/v1/asks/{oid}", self.amend_ask)
        r.add_get("/v1/orders", self.list_orders)
        r.add_get("/v1/orders/{oid}", self.get_order)
        r.add_delete("/v1/orders/{oid}", self.cancel_order)
        r.add_get("/v1/leases", self.list_leases)
        r.add_post("/v1/leases/{cls}/{trade_id}/release", self.release_lease)
        r.add_post("/v1/admin/halt", self.halt)
        r.add_post("/v1/admin/resume", self.resume)
        r.add_post("/v1/admin/kill", self.kill)
        r.add_post("/v1/admin/accounts", self.create_account)
        r.add_post("/v1/admin/deposit", self.deposit)
        r.add_post("/v1/admin/withdraw", self.withdraw)
        r.add_get("/v1/admin/state", self.admin_state)
        r.add_post("/v1/admin/snapshot", self.admin_snapshot)
        r.add_get("/v1/admin/journal", self.admin_journal)
        r.add_get("/v1/ws", self.websocket)

    # --- public -------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every part runs (the sequencer takes orders, no background task died), else
        503; ``checks`` names each part and what is wrong with it."""
        checks = self.health() if self.health is not None else {}
        ok = self.sequencer.running and all(v == "ok" for v in checks.values())
        engine = self.engine
        return _json({"ok": ok, "seq": engine.seq, "classes": list(engine.books),
                      "halted": sorted(engine.state.halted), "checks": checks}, 200 if ok else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        text = self.render_metrics() if self.render_metrics is not None else ""
        return web.Response(text=text, content_type="text/plain")

    async def openapi(self, request: web.Request) -> web.Response:
        from gateway.openapi import document

        return _json(document())

    async def instruments(self, request: web.Request) -> web.Response:
        self._public(request)
        return _json({"instruments": instruments_view(self.cfg, self.engine)})

    async def book(self, request: web.Request) -> web.Response:
        self._public(request)
        return _json(book_view(self.engine, request.match_info["cls"], request.query, self.level2))

    async def quote(self, request: web.Request) -> web.Response:
        self._public(request)
        q = decode_query(request.query, QuoteRequest)
        book = self._book(q.gpu_class)
        cfg = self.cfg.instruments[q.gpu_class].book
        now = self.engine.book_time(q.gpu_class)
        kind = KINDS[q.kind]
        code = bid_code(cfg, now, kind, 0, q.gpus, q.hours, q.limit or cfg.max_price, q.block, q.start, 0)
        if code:
            raise rule_error(code, cfg, now, gpus=q.gpus, hours=q.hours, limit=q.limit, block=q.block, start=q.start)
        res = book.quote(kind, q.gpus, q.hours, start=q.start, block=q.block, limit=q.limit)

        return _json({
            "class": q.gpu_class, "kind": q.kind, "gpus": q.gpus, "hours": q.hours, "time": now,
            "window": list(res.window), "filled": res.filled, "cost": res.cost, "complete": res.complete,
            "average_price": res.cost // (res.filled * q.hours) if res.filled else None,
            "reason": R.reason_name(res.reason) if res.reason else None,
            "message": R.reason_text(res.reason) if res.reason else None,
            "fills": [{"ask_oid": f.ask_oid, "provider": f.provider, "gpus": f.gpus, "price": f.price}
                      for f in res.fills],
        })

    # --- accounts -----------------------------------------------------------------------
    async def account(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        a = key.account_id
        acc = self.accounts.account(a)
        b = self.engine.money.of(a)  # the core's: every command answered so far is in it
        return _json({"account": a, "name": acc.name if acc else "", "role": key.role,
                      "deposited": self.accounts.deposits().get(a, 0), "available": b.get("available", 0),
                      "escrow": b.get("escrow", 0), "lease_prepaid": b.get("lease_prepaid", 0),
                      "receivable": b.get("receivable", 0), "open_orders": self.state.open_count(a),
                      "ssh_public_key": self.accounts.ssh_key(a)})

    async def statement(self, request: web.Request) -> web.Response:
        """The account's ledger: balances, every transfer with running balances, its leases
        (an admin or analyst may ask for any account with ?account=N)."""
        key = await self._auth(request)
        a = key.account_id
        if "account" in request.query:
            if key.role not in ("admin", "analyst"):
                raise ApiError("FORBIDDEN", "only admin and analyst keys may read another account's statement")
            a = _query_int(request, "account", None, 0, I63)
            if self.accounts.account(a) is None:
                raise ApiError("NOT_FOUND", f"no account {a}")
        await self.ledger.synced()
        return _json(self.ledger.statement(a))

    async def set_ssh_key(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        m = decode_body(await request.read(), SshKeyRequest)
        try:
            self.accounts.set_ssh_key(key.account_id, m.ssh_public_key)
        except AccountError as e:
            raise ApiError(e.code, e.message, 400) from None
        return _json({"ok": True, "account": key.account_id, "ssh_public_key": self.accounts.ssh_key(key.account_id)})

    # --- provisioning (R18; the provider's agent) ---------------------------------------------
    async def provisioning_tasks(self, request: web.Request) -> web.Response:
        key = await self._auth(request, "provider", "trader")
        await self.ledger.synced()
        return _json({"tasks": self.provisioning.outstanding(key.account_id)})

    async def provisioning_answer(self, request: web.Request) -> web.Response:
        key = await self._auth(request, "provider", "trader")
        m = decode_body(await request.read(), ProvisionAnswer)
        if m.status == "ready" and not m.connection:
            raise ApiError("MALFORMED", "a ready answer needs connection details (host, port, user...)")
        view = await self.provisioning.answer(key.account_id, request.match_info["lease"], m.status,
                                                m.connection, m.reason)
        return _json({"ok": True, "lease": request.match_info["lease"], "settlement": view})

    # --- asks (providers; traders for resale, R16) ------------------------------------------
    async def post_ask(self, request: web.Request) -> web.Response:
        key = await self._auth(request, "provider", "trader")
        m = decode_body(await request.read(), AskRequest)
        if key.role == "trader" and not m.lease_id:
            raise ApiError("FORBIDDEN", "traders may only post resale asks (with lease_id); "
                                        "posting capacity needs a provider key")
        self._book(m.gpu_class)
        cfg = self.cfg.instruments[m.gpu_class].book
        engine = self.engine
        # a client order id already answered gets its first answer from the sequencer, even when
        # the request would no longer pass the checks at today's time (a retry after a lost answer)
        known = m.client_order_id is not None and (key.account_id, m.client_order_id) in engine.state.coids
        now = engine.book_time(m.gpu_class)
        code = 0 if known else ask_code(cfg, now, m.gpus, m.price, m.spot_price, m.start, m.end, m.min_hours)
        if code:
            raise rule_error(code, cfg, now, gpus=m.gpus, price=m.price, spot_price=m.spot_price, start=m.start,
                             end=m.end, min_hours=m.min_hours)
        rec = ask_command(key.account_id, m.gpus, m.price, m.end, spot_price=m.spot_price, start=m.start,
                          min_hours=m.min_hours, lease_id=m.lease_id, post_only=int(m.post_only))
        ans = self._result(await self._submit(Request(m.gpu_class, rec, key.account_id,
                                                      m.client_order_id or "")))
        self._count("orders_total{side=\"ask\"}")
        return _json(ans, 201)

    async def list_asks(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        return _json({"asks": [order_view(o) for o in self.state.open_orders(key.account_id) if o.side == "ask"]})

    def _owned(self, key: Any, oid_text: str) -> Any:
        try:
            oid = int(oid_text)
        except ValueError:
            raise ApiError("MALFORMED", "the order id must be an integer") from None
        o = self.state.orders.get(oid)
        if o is None:
            raise book_error(_code_of("UNKNOWN_ORDER"))
        if o.account != key.account_id and key.role != "admin":
            raise book_error(_code_of("NOT_OWNER"))
        return o

    async def cancel_ask(self, request: web.Request) -> web.Response:
        return await self.cancel_order(request)

    async def cancel_order(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        o = self._owned(key, request.match_info["oid"])
        ans = self._result(await self._submit(Request(o.book, cancel_command(o.account, o.oid),
                                                      o.account)))
        return _json(ans)

    async def amend_ask(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        m = decode_body(await request.read(), AmendRequest)
        o = self._owned(key, request.match_info["oid"])
        if (bad := amend_error(m.gpus)) is not None:
            raise bad
        ans = self._result(await self._submit(Request(o.book, amend_command(o.account, o.oid, m.gpus), o.account)))
        return _json(ans)

    async def list_orders(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        return _json({"orders": [order_view(o) for o in self.state.open_orders(key.account_id)]})

    async def get_order(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        return _json(order_view(self._owned(key, request.match_info["oid"])))

    # --- leases -------------------------------------------------------------------------
    async def list_leases(self, request: web.Request) -> web.Response:
        key = await self._auth(request)
        engine = self.engine
        prov = self.provisioning
        await self.ledger.synced()
        out = [{**lease_view(lease, engine.book_time(lease.book)), "settlement": prov.view(lease.ref)}
               for lease in self.state.account_leases(key.account_id)]
        return _json({"leases": out})

    async def release_lease(self, request: web.Request) -> web.Response:
        key = await self._auth(request, "trader")
        name = request.match_info["cls"]
        self._book(name)
        try:
            tid = int(request.match_info["trade_id"])
        except ValueError:
            raise ApiError("MALFORMED", "the lease's trade id must be an integer") from None
        if not 0 < tid < 2**63:
            raise ApiError("MALFORMED", "the lease's trade id must be from 1 to 2**63 - 1")
        rec = release_command(key.account_id, tid)
        ans = self._result(await self._submit(Request(name, rec, key.account_id)))
        return _json(ans)

    # --- admin --------------------------------------------------------------------------
    async def halt(self, request: web.Request) -> web.Response:
        return await self._halt(request, "halt")

    async def resume(self, request: web.Request) -> web.Response:
        return await self._halt(request, "resume")

    async def _halt(self, request: web.Request, op: str) -> web.Response:
        await self._auth(request, "admin")
        m = decode_body(await request.read(), HaltRequest)
        self._book(m.gpu_class)
        await self._submit(Request(m.gpu_class, None, 0, admin=op))
        log.warning("trading %s", "halted" if op == "halt" else "resumed", extra={"class": m.gpu_class})
        return _json({"ok": True, "class": m.gpu_class, "halted": m.gpu_class in self.state.halted})

    async def kill(self, request: web.Request) -> web.Response:
        await self._auth(request, "admin")
        m = decode_body(await request.read(), KillRequest)
        cancelled = await self.cancel_all(m.account)
        log.warning("kill switch", extra={"account": m.account, "cancelled": cancelled})
        return _json({"ok": True, "account": m.account, "cancelled": cancelled})

    async def cancel_all(self, account: int, only: set[tuple[str, int]] | None = None) -> int:
        """Cancel every open order of an account (or those in ``only``); how many were cancelled."""
        seq = self.sequencer
        if not seq.running:
            return 0
        futs = []
        for o in self.state.open_orders(account):
            if only is None or (o.book, o.oid) in only:
                futs.append(seq.submit(Request(o.book, cancel_command(account, o.oid), account)))
        results = await asyncio.gather(*futs, return_exceptions=True)
        return sum(1 for r in results if isinstance(r, dict) and r.get("ok"))

    async def create_account(self, request: web.Request) -> web.Response:
        await self._auth(request, "admin")
        m = decode_body(await request.read(), CreateAccountRequest)
        try:
            acc, key_id, secret = self.accounts.create_account(m.name, m.role, m.deposit, m.ssh_public_key)
        except AccountError as e:
            raise ApiError(e.code, e.message, 409 if e.code == "NAME_TAKEN" else 400) from None
        await self._journal_deposits()
        return _json({"account_id": acc.id, "name": acc.name, "role": acc.role, "key_id": key_id,
                      "secret": secret}, 201)

    async def deposit(self, request: web.Request) -> web.Response:
        await self._auth(request, "admin")
        m = decode_body(await request.read(), DepositRequest)
        if self.accounts.account(m.account) is None:
            raise ApiError("NOT_FOUND", f"no account {m.account}")
        try:
            total = self.accounts.deposit(m.account, m.amount, "admin deposit")
        except AccountError as e:
            raise ApiError(e.code, e.message, 400) from None
        await self._journal_deposits()
        return _json({"ok": True, "account": m.account, "deposited": total,
                      "available": self.engine.money.available(m.account)})

    async def withdraw(self, request: web.Request) -> web.Response:
        """Money out of an account's available balance (a journaled entry, checked by the sequencer)."""
        await self._auth(request, "admin")
        m = decode_body(await request.read(), DepositRequest)
        if self.accounts.account(m.account) is None:
            raise ApiError("NOT_FOUND", f"no account {m.account}")
        fund = Fund(WITHDRAW, m.account, m.amount, "", 0)
        res = await self.sequencer.submit(Request("", None, m.account, fund=fund))
        return _json({"ok": True, "account": m.account, "withdrawn": m.amount, "available": res["available"]})

    async def _journal_deposits(self) -> None:
        """Journal the account store's new deposit requests now (instead of at the next tick)."""
        if self.deposits is not None:
            await asyncio.gather(*self.deposits.poll())

    async def admin_state(self, request: web.Request) -> web.Response:
        await self._auth(request, "admin", "analyst")
        engine = self.engine
        return _json({"seq": engine.seq, "last_oid": engine.last_oid,
                      "state_hashes": {k: str(v) for k, v in engine.state_hashes().items()},
                      "money_hash": str(engine.money.state_hash()),
                      "times": {k: engine.book_time(k) for k in engine.books},
                      "digest": engine.state.digest(), "halted": sorted(engine.state.halted)})

    async def admin_snapshot(self, request: web.Request) -> web.Response:
        await self._auth(request, "admin")
        self.sequencer.request_snapshot()
        return _json({"ok": True})

    async def admin_journal(self, request: web.Request) -> web.Response:
        """``GET /v1/admin/journal?after=SEQ&limit=N``: the durable journal entries after SEQ, raw,
        as one chunk (`exchange.stream`: magic, first seq, count, length-prefixed payloads) —
        what replicas such as `gpux settle` backfill a gap from."""
        await self._auth(request, "admin")
        tail = self.journal_tail
        if tail is None:
            raise ApiError("NOT_FOUND", "this exchange does not serve its journal")
        after = _query_int(request, "after", None, 0, I63)
        limit = _query_int(request, "limit", 1000, 1, tail.MAX_LIMIT)
        try:
            blob = await asyncio.get_running_loop().run_in_executor(None, tail.chunk, after, limit)
        except JournalError as e:
            raise ApiError("NOT_FOUND", f"the journal does not hold seq {after + 1}: {e}") from None
        return web.Response(body=blob, content_type="application/octet-stream",
                            headers={"GPUX-Journal-Durable": str(tail.durable)})

    # ------------------------------------------------------------------ WebSocket
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.cfg.heartbeat_s, max_msg_size=self.cfg.max_message_bytes,
                                   autoping=True)
        if not ws.can_prepare(request).ok:  # else prepare() raises a plain-text 400
            raise ApiError("MALFORMED", "/v1/ws is the WebSocket endpoint: connect with a WebSocket upgrade")
        await ws.prepare(request)
        s = Session(self.sends, ws, request.transport, request.remote or "")
        self.all_sessions.add(s)
        self._count("ws_connections_total")
        try:
            await self._ws_loop(request, s)
        finally:
            self.all_sessions.discard(s)
            if s.account:
                peers = self.sessions.get(s.account)
                if peers is not None:
                    peers.discard(s)
                    if not peers:
                        del self.sessions[s.account]
                if s.cancel_on_disconnect and s.orders:
                    n = await self.cancel_all(s.account, s.orders)
                    log.info("cancel on disconnect", extra={"account": s.account, "cancelled": n})
            s.closed = True
        return ws

    async def _ws_loop(self, request: web.Request, s: Session) -> None:
        ws = s.ws
        try:
            first = await ws.receive(timeout=AUTH_TIMEOUT_S)
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no auth message")
            return
        if not await self._ws_auth(s, first):
            await asyncio.sleep(0)  # let the writer send the error
            await _drain(s)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication failed")
            return
        async for msg in ws:
            if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                if s.closed:  # cut off as too slow: it gets no more answers, so it may do nothing more
                    continue
                self._ws_message(s, msg.data)
            elif msg.type == WSMsgType.ERROR:
                # aiohttp closes the connection: 1009 for an oversized frame, 1002/1007 otherwise
                too_big = getattr(ws.exception(), "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                self._count(f"errors_total{{code=\"{'TOO_LARGE' if too_big else 'WS_PROTOCOL'}\"}}")
                break

    async def _ws_auth(self, s: Session, msg: Any) -> bool:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        try:
            op = decode_ws(msg.data)
            if not isinstance(op, AuthOp):
                raise ApiError("NOT_AUTHENTICATED")
            key = self.verifier.verify(op.key, op.ts, op.sig, "GET", "/v1/ws", b"")
            self._rate(key.key_id)
        except ApiError as e:
            s.send(e.ws(request_id(msg.data)))
            return False
        except AuthError as e:
            s.send(_auth_error(e).ws(request_id(msg.data)))
            return False
        s.account = key.account_id
        s.role = key.role
        s.key_id = key.key_id
        s.cancel_on_disconnect = op.cancel_on_disconnect
        self.sessions.setdefault(s.account, set()).add(s)
        s.send({"type": "authenticated", "id": op.id, "account": s.account, "role": s.role,
                "cancel_on_disconnect": s.cancel_on_disconnect})
        return True

    def _ws_message(self, s: Session, data: str | bytes) -> None:
        rid = None
        try:
            op = decode_ws(data)
            rid = op.id
            wait = self.limiter.take(s.key_id)
            if wait > 0:
                raise ApiError("RATE_LIMITED", retry_after_ms=int(wait * 1000) + 1)
            t = type(op)
            if t is BidOp:
                self._ws_bid(s, op)
            elif t is CancelOp:
                self._ws_cancel(s, op)
            elif t is AmendOp:
                self._ws_amend(s, op)
            elif t is StatusOp:
                o = self._ws_find(s, op.oid, op.client_order_id)
                s.send({"type": "status", "id": rid, "order": order_view(o)})
            elif t is ReleaseOp:
                self._ws_release(s, op)
            elif t is OrdersOp:
                s.send({"type": "orders", "id": rid,
                        "orders": [order_view(o) for o in self.state.open_orders(s.account)]})
            elif t is PingOp:
                s.send({"type": "pong", "id": rid, "time": self.clock.time()})
            else:
                raise ApiError("DUPLICATE_SESSION_OP")
        except ApiError as e:
            self._count(f"errors_total{{code=\"{e.code}\"}}")
            s.send(e.ws(rid if rid is not None else request_id(data)))  # the id, also of what did not decode
        except AuthError as e:
            s.send(_auth_error(e).ws(rid))

    def _require(self, s: Session, *roles: str) -> None:
        if s.role != "admin" and s.role not in roles:
            raise ApiError("FORBIDDEN", f"this needs a {' or '.join(roles)} key; this key is {s.role}")

    @staticmethod
    def _replier(s: Session, rid: Any, track: str | None = None) -> Any:
        """The reply callback of a WebSocket request: an ack or an error to its session."""

        def reply(ans: Any) -> None:
            if isinstance(ans, BaseException):
                err = ans if isinstance(ans, ApiError) else ApiError("INTERNAL")
                s.send(err.ws(rid))
                return
            if not ans.get("ok", True):
                err = ans["error"]
                s.send({"type": "error", "id": rid, "code": err["code"], "message": err["message"]})
                return
            if track and ans.get("order") and ans["order"]["status"] == "open":
                s.orders.add((track, ans["oid"]))
            s.send({"type": "ack", "id": rid, **ans})

        return reply

    def _ws_bid(self, s: Session, op: BidOp) -> None:
        self._require(s, "trader")
        engine = self.engine
        inst = self.cfg.instruments.get(op.gpu_class)
        if inst is None:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {op.gpu_class!r}; classes: {', '.join(engine.books)}")
        kind, tif = KINDS[op.kind], TIFS[op.tif]
        now = self.sequencer.times[op.gpu_class]
        known = op.client_order_id is not None and (s.account, op.client_order_id) in engine.state.coids
        code = 0 if known else bid_code(inst.book, now, kind, tif, op.gpus, op.hours, op.limit, op.block,
                                            op.start, op.expire_at)  # known: as post_ask
        if code:
            raise rule_error(code, inst.book, now, gpus=op.gpus, hours=op.hours, limit=op.limit, block=op.block,
                             start=op.start, expire_at=op.expire_at)
        rec = bid_command(s.account, kind, op.gpus, op.hours, op.limit, op.block, tif, op.start, op.expire_at)
        self._post(Request(op.gpu_class, rec, s.account, op.client_order_id or "", origin=s,
                           reply=self._replier(s, op.id, op.gpu_class)))  # the sequencer works out the escrow
        self._count("orders_total{side=\"bid\"}")

    def _post(self, req: Request) -> None:
        seq = self.sequencer
        if not seq.running:
            raise ApiError("UNAVAILABLE")
        seq.post(req)

    def _ws_find(self, s: Session, oid: int | None, coid: str | None) -> Any:
        st = self.state
        if oid is None and coid is None:
            raise ApiError("MALFORMED", "give oid or client_order_id")
        if oid is None:
            ans = st.coids.get((s.account, coid))
            if ans is None:
                raise ApiError("UNKNOWN_ORDER", f"no order with client_order_id {coid!r}", 404)
            oid = _dec.decode(ans).get("oid")
        o = st.orders.get(oid) if oid is not None else None
        if o is None:
            raise book_error(_code_of("UNKNOWN_ORDER"))
        if o.account != s.account and s.role != "admin":
            raise book_error(_code_of("NOT_OWNER"))
        return o

    def _ws_cancel(self, s: Session, op: CancelOp) -> None:
        o = self._ws_find(s, op.oid, op.client_order_id)
        self._post(Request(o.book, cancel_command(o.account, o.oid), o.account, origin=s,
                           reply=self._replier(s, op.id)))

    def _ws_amend(self, s: Session, op: AmendOp) -> None:
        o = self._ws_find(s, op.oid, None)
        if (bad := amend_error(op.gpus)) is not None:
            raise bad
        self._post(Request(o.book, amend_command(o.account, o.oid, op.gpus), o.account,
                           origin=s, reply=self._replier(s, op.id)))

    def _ws_release(self, s: Session, op: ReleaseOp) -> None:
        self._require(s, "trader")
        if op.gpu_class not in self.cfg.instruments:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {op.gpu_class!r}")
        self._post(Request(op.gpu_class, release_command(s.account, op.lease_id),
                           s.account, origin=s, reply=self._replier(s, op.id)))

    # ------------------------------------------------------------------ private pushes
    def _on_batch(self, batch: Any) -> None:
        """Events reach the sessions of the accounts they concern, except the session whose
        command produced them (it has them in its ack)."""
        if not self.sessions:
            return
        sessions = self.sessions
        for res, origin in zip(batch.results, batch.origins, strict=True):
            if not res.events:
                continue
            for ev in res.events:
                if ev.type == EV_REJECTED:
                    continue
                targets = []
                for acc in (ev.account, ev.account2):
                    for sess in sessions.get(acc, ()):
                        if sess is not origin:
                            targets.append(sess)
                if targets:
                    frame = ws_frame(_enc.encode(event_push(res.book, ev)))
                    for sess in set(targets):
                        sess.push(frame)

    def revoke(self, key_id: str) -> int:
        """Close (1008, with the reason) every trader session authenticated with a revoked key;
        its cancel-on-disconnect applies as on any disconnect."""
        gone = [s for s in self.all_sessions if s.key_id == key_id and not s.closed]
        for s in gone:
            self.sends.cut(s, "the API key was revoked", slow=False)
        return len(gone)

    async def close_sessions(self) -> None:
        """Graceful shutdown: every WebSocket gets close code 1001 (going away); one cut off as
        too slow (it has its 1008 already) is aborted now rather than at the end of its grace."""
        sessions = list(self.all_sessions)
        for s in sessions:
            s.cancel_on_disconnect = False  # the orders rest; the exchange comes back with them
        self.sends.abort_cut()
        for s in sessions:
            if s.closed:
                continue
            await _drain(s)
            await s.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _drain(s: Session) -> None:
    for _ in range(50):
        if not s.out:
            return
        await asyncio.sleep(0.01)


def _code_of(name: str) -> int:
    return R.NAME_TO_CODE.get(name, R.BAD_COMMAND)


