"""The Python client SDK (async): signed REST for everyone, a WebSocket session for traders.

    async with Client("http://127.0.0.1:8080", key_id, secret) as c:
        ask = await c.ask("H100", gpus=8, price=2_000_000, end=now + 86_400)     # provider
        async with await c.trader() as t:                                         # trader
            ack = await t.bid("H100", "on_demand", gpus=4, hours=2, limit=2_100_000)
            print(ack["trades"])
        print(await c.leases())

Every refusal raises ClientError with the exchange's stable code and sentence.  Prices are
µ$ per GPU-hour, money µ$, times UTC seconds (docs/api.md).

Nothing waits for ever: a REST call that gets no answer within ``timeout`` seconds raises
TimeoutError (aiohttp's), an unreachable server raises aiohttp's connection error (an OSError);
a WebSocket request raises ClientError ``TIMEOUT`` after ``timeout`` seconds, ``CLOSED`` when
the session closes first, and the server's error when it answers one without an ``id`` (which
it does only for a message whose id it cannot read).  A URL that is not http(s) raises
ClientError ``BAD_URL`` at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import msgspec

from gateway.auth import Signer

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
DEFAULT_TIMEOUT_S = 30.0


class ClientError(Exception):
    """The exchange refused a request: ``code`` (stable), ``message``, HTTP ``status`` (REST)."""

    def __init__(self, code: str, message: str, status: int = 0, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra or {}


def check_url(url: str) -> str:
    """The exchange's base URL without a trailing slash; ClientError BAD_URL unless it is
    ``http://host[:port]`` or ``https://...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        like = f"http://{url}" if url and "://" not in url and url[0].isalnum() else "http://127.0.0.1:8080"
        raise ClientError("BAD_URL", f"{url!r} is not an http(s) URL of the exchange; write it like {like}")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError:
        raise ClientError("BAD_URL", f"{url!r} has a bad port; write it like http://127.0.0.1:8080") from None
    return url.rstrip("/")


class Client:
    """``timeout``: seconds any one request may take (REST and WebSocket), None: no limit."""

    def __init__(self, url: str, key_id: str | None = None, secret: str | None = None,
                 session: aiohttp.ClientSession | None = None, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.url = check_url(url)
        self.signer = Signer(key_id, secret) if key_id and secret else None
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ REST
    async def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                      signed: bool = True) -> Any:
        """One REST call; returns the decoded JSON answer or raises ClientError."""
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        data = b"" if body is None else (body if isinstance(body, bytes) else _enc.encode(body))
        headers = {"Content-Type": "application/json"} if data else {}
        if signed:
            if self.signer is None:
                raise ClientError("MISSING_AUTH", "this call needs a key id and secret")
            headers.update(self.signer.headers(method, path, data))
        async with self.session.request(method, self.url + path, data=data or None, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
            raw = await resp.read()
            try:
                out = _dec.decode(raw) if raw else None
            except msgspec.DecodeError:
                raise ClientError("MALFORMED", f"the server answered {resp.status} with non-JSON",
                                  resp.status) from None
            if resp.status >= 400:
                err = (out or {}).get("error", {}) if isinstance(out, dict) else {}
                extra = {k: v for k, v in err.items() if k not in ("code", "message")}
                raise ClientError(err.get("code", "HTTP_ERROR"), err.get("message", f"HTTP {resp.status}"),
                                  resp.status, extra)
            return out

    # public
    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/healthz", signed=False)

    async def instruments(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/instruments", signed=False))["instruments"]

    async def book(self, gpu_class: str, depth: int = 50) -> dict[str, Any]:
        return await self.request("GET", f"/v1/book/{gpu_class}", query={"depth": depth}, signed=False)

    async def quote(self, gpu_class: str, kind: str, gpus: int, hours: int, start: int = 0, block: int = 1,
                    limit: int = 0) -> dict[str, Any]:
        return await self.request("GET", "/v1/quote", signed=False, query={
            "class": gpu_class, "kind": kind, "gpus": gpus, "hours": hours, "start": start or None,
            "block": block if block != 1 else None, "limit": limit or None})

    # own
    async def account(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/account")

    async def ask(self, gpu_class: str, gpus: int, price: int, end: int, spot_price: int = 0, start: int = 0,
                  min_hours: int = 1, post_only: bool = False, lease_id: int = 0,
                  client_order_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"class": gpu_class, "gpus": gpus, "price": price, "end": end}
        for k, v, default in (("spot_price", spot_price, 0), ("start", start, 0), ("min_hours", min_hours, 1),
                              ("post_only", post_only, False), ("lease_id", lease_id, 0),
                              ("client_order_id", client_order_id, None)):
            if v != default:
                body[k] = v
        return await self.request("POST", "/v1/asks", body)

    async def asks(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/asks"))["asks"]

    async def cancel(self, oid: int) -> dict[str, Any]:
        return await self.request("DELETE", f"/v1/orders/{oid}")

    async def amend_ask(self, oid: int, gpus: int) -> dict[str, Any]:
        return await self.request("PATCH", f"/v1/asks/{oid}", {"gpus": gpus})

    async def orders(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/orders"))["orders"]

    async def order(self, oid: int) -> dict[str, Any]:
        return await self.request("GET", f"/v1/orders/{oid}")

    async def leases(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/leases"))["leases"]

    async def release(self, gpu_class: str, trade_id: int) -> dict[str, Any]:
        return await self.request("POST", f"/v1/leases/{gpu_class}/{trade_id}/release")

    # admin
    async def halt(self, gpu_class: str) -> dict[str, Any]:
        return await self.request("POST", "/v1/admin/halt", {"class": gpu_class})

    async def resume(self, gpu_class: str) -> dict[str, Any]:
        return await self.request("POST", "/v1/admin/resume", {"class": gpu_class})

    async def kill(self, account: int) -> dict[str, Any]:
        return await self.request("POST", "/v1/admin/kill", {"account": account})

    async def create_account(self, name: str, role: str, deposit: int = 0,
                             ssh_public_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role, "deposit": deposit}
        if ssh_public_key:
            body["ssh_public_key"] = ssh_public_key
        return await self.request("POST", "/v1/admin/accounts", body)

    async def deposit(self, account: int, amount: int) -> dict[str, Any]:
        """Admin: ``amount`` µ$ into the account (journaled; the answer has its available balance)."""
        return await self.request("POST", "/v1/admin/deposit", {"account": account, "amount": amount})

    async def withdraw(self, account: int, amount: int) -> dict[str, Any]:
        """Admin: ``amount`` µ$ out of the account's available balance (INSUFFICIENT_FUNDS beyond it)."""
        return await self.request("POST", "/v1/admin/withdraw", {"account": account, "amount": amount})

    async def state(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/admin/state")

    # ------------------------------------------------------------------ WebSocket
    async def trader(self, cancel_on_disconnect: bool = False, heartbeat: float | None = 20.0) -> TraderSession:
        """An authenticated WebSocket session (traders: bids; anyone: order status and pushes)."""
        if self.signer is None:
            raise ClientError("MISSING_AUTH", "a WebSocket session needs a key id and secret")
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/ws"
        ws = await asyncio.wait_for(self.session.ws_connect(ws_url, heartbeat=heartbeat, max_msg_size=0),
                                    self.timeout)
        t = TraderSession(ws, self.timeout)
        auth = self.signer.ws_auth()
        auth["cancel_on_disconnect"] = cancel_on_disconnect
        try:
            await t._start(auth)
        except BaseException:
            await ws.close()
            raise
        return t


class TraderSession:
    """Requests are pipelined: each gets an ``id``; answers are matched by it.  Messages the
    server pushes on its own (fills of resting orders, expiries…) land in ``events``.  No request
    waits for ever: ``timeout`` seconds (None: no limit), the session's end, or an error the
    server could not give an id (every request still waiting gets it) raise ClientError."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self.ws = ws
        self.timeout = timeout
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.account = 0
        self.role = ""
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.close_code: int | None = None

    async def __aenter__(self) -> TraderSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self, auth: dict[str, Any]) -> None:
        await self.ws.send_bytes(_enc.encode(auth))
        try:
            msg = await self.ws.receive(timeout=self.timeout)
        except TimeoutError:
            raise ClientError("TIMEOUT", f"the exchange did not answer the WebSocket login within {self.timeout} s") \
                from None
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise ClientError("CLOSED", f"the server closed the session ({self.ws.close_code})")
        first = _dec.decode(msg.data)
        if first.get("type") != "authenticated":
            await self.ws.close()
            raise ClientError(first.get("code", "AUTH_FAILED"), first.get("message", "authentication failed"))
        self.account = first["account"]
        self.role = first["role"]
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                m = _dec.decode(msg.data)
                rid = m.get("id")
                fut = self._pending.pop(rid, None) if rid is not None else None
                if fut is not None and m.get("type") != "event":
                    if not fut.done():
                        fut.set_result(m)
                elif m.get("type") == "error" and rid is None:
                    # an answer to a message the server could not read the id of: whichever request
                    # it was, it will get no other answer, so none of those waiting may wait for ever
                    err = ClientError(m.get("code", "ERROR"), m.get("message", ""))
                    for f in self._pending.values():
                        if not f.done():
                            f.set_exception(err)
                    self._pending.clear()
                    self.events.put_nowait(m)
                else:
                    self.events.put_nowait(m)
        finally:
            self.close_code = self.ws.close_code
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ClientError("CLOSED", f"the session closed ({self.ws.close_code})"))
            self._pending.clear()

    def send(self, op: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        """Send one op without waiting; the awaitable gives the server's answer (raw dict)."""
        rid = op.setdefault("id", next(self._ids))
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        asyncio.ensure_future(self.ws.send_bytes(_enc.encode(op)))
        return fut

    async def call(self, op: dict[str, Any]) -> dict[str, Any]:
        """Send one op and return its answer; a refusal raises ClientError, and so do the session's
        end (CLOSED) and no answer within the timeout (TIMEOUT)."""
        if self.ws.closed:
            raise ClientError("CLOSED", "the session is closed")
        fut = self.send(op)
        try:
            m = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self._pending.pop(op.get("id"), None)
            raise ClientError("TIMEOUT", f"no answer to {op.get('op')} within {self.timeout} s") from None
        if m.get("type") == "error":
            raise ClientError(m["code"], m["message"], extra={k: v for k, v in m.items()
                                                              if k not in ("type", "id", "code", "message")})
        return m

    async def bid(self, gpu_class: str, kind: str, gpus: int, hours: int, limit: int, block: int = 1,
                  tif: str = "GTC", start: int = 0, expire_at: int = 0,
                  client_order_id: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "bid", "class": gpu_class, "kind": kind, "gpus": gpus, "hours": hours,
                              "limit": limit}
        for k, v, default in (("block", block, 1), ("tif", tif, "GTC"), ("start", start, 0),
                              ("expire_at", expire_at, 0), ("client_order_id", client_order_id, None)):
            if v != default:
                op[k] = v
        return await self.call(op)

    async def cancel(self, oid: int | None = None, client_order_id: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "cancel"}
        if oid is not None:
            op["oid"] = oid
        if client_order_id is not None:
            op["client_order_id"] = client_order_id
        return await self.call(op)

    async def amend(self, oid: int, gpus: int) -> dict[str, Any]:
        return await self.call({"op": "amend", "oid": oid, "gpus": gpus})

    async def status(self, oid: int | None = None, client_order_id: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "status"}
        if oid is not None:
            op["oid"] = oid
        if client_order_id is not None:
            op["client_order_id"] = client_order_id
        return (await self.call(op))["order"]

    async def release(self, gpu_class: str, lease_id: int) -> dict[str, Any]:
        return await self.call({"op": "release", "class": gpu_class, "lease_id": lease_id})

    async def orders(self) -> list[dict[str, Any]]:
        return (await self.call({"op": "orders"}))["orders"]

    async def ping(self) -> dict[str, Any]:
        return await self.call({"op": "ping"})

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
