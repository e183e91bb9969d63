"""Hostile and malformed input against a running exchange (R8: anything malformed, out of
bounds, off-tick, unaligned or past the gate is refused with a stable code and changes no
state; docs/auth.md: signing, roles and the one error format).

One exchange serves the whole module, on its own event loop in a background thread, so that
every hostile message hits the same long-lived server: each case sends one message over a
real socket and checks

* the exact stable code, and for REST the HTTP status and the ``{"error": {"code", "message"}}``
  format (the WebSocket's ``{"type": "error", "id", "code", "message"}``);
* that nothing changed: orders, open orders, leases, funds, client order ids, halted classes,
  every book's resting count, the account store's deposits and accounts, and the journal
  position (engine seq minus clock entries).  The few refusals only the book can decide
  (BAD_AMEND, UNKNOWN_LEASE, POST_ONLY_WOULD_TRADE...) are journaled as commands whose only
  event is REJECTED; their state is unchanged all the same;
* that the server keeps serving: the hostile WebSocket (unless closed by design) still answers a
  ping, and two other accounts' ask/bid round trip still trades.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest

from gateway.auth import Signer, sign
from orderbook.types import CMD_CLOCK, EV_REJECTED
from tests.exchange_helpers import USD, Running, run, running_exchange

HOUR = 3600
DAY = 86_400
BIG = 70_000  # bytes: over the 64 KiB message limit
DROP = object()  # a field left out of a message


class RawText(bytes):
    """Bytes sent as a WebSocket *text* frame, valid UTF-8 or not."""

# name -> (role, deposit)
ACCOUNTS = {
    "prov": ("provider", 0),
    "trader": ("trader", 10_000 * USD),
    "trader2": ("trader", 10_000 * USD),
    "poor": ("trader", 1 * USD),
    "analyst": ("analyst", 0),
    "admin": ("admin", 0),
    "byprov": ("provider", 0),
    "bytrader": ("trader", 1_000_000 * USD),
}


@dataclass
class Ctx:
    """What the cases refer to: the baseline orders and leases (made once per module)."""

    ids: dict[str, int]  # account name -> account id
    ask: int = 0  # prov's resting H100 ask (3 $/h, 8 GPUs)
    bid: int = 0  # trader's resting H100 on_demand bid (1 $/h)
    bid2: int = 0  # trader2's resting H100 spot bid (1 $/h)
    lease2: int = 0  # trade id of trader2's H100 on_demand lease

    @property
    def now(self) -> int:
        return int(time.time())


class Server:
    """A running exchange on its own loop in a thread; `call` runs a function on that loop."""

    def __init__(self, data_dir: Any) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="gpux-hostile-server", daemon=True)
        self.ex: Running
        self.signers: dict[str, Signer] = {}
        self.clocks = 0
        self.seq0 = 0
        self.journaled: list[tuple[Any, list[tuple]]] = []  # non-clock (command, events) since the start
        self.ctx: Ctx

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the exchange did not start")
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to the test thread
            self.error = e
            self.ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        async with running_exchange(self.data_dir, fsync="off") as ex:
            self.ex = ex
            self._stop = asyncio.Event()
            ex.exchange.bus.subscribe(self._on_batch)
            while ex.exchange.sequencer.busy:  # count from a point where every applied batch is published
                await asyncio.sleep(0.001)
            self.seq0 = ex.exchange.engine.seq
            self.clocks = 0
            self.journaled.clear()
            for name, (role, deposit) in ACCOUNTS.items():
                _, key, secret = ex.account(name, role, deposit)
                self.signers[name] = Signer(key, secret)
            self.ready.set()
            await self._stop.wait()

    def _on_batch(self, batch: Any) -> None:
        for r in batch.results:
            if r.command is not None and r.command.type == CMD_CLOCK:
                self.clocks += 1
            else:
                self.journaled.append((r.command, r.events))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(60)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrap() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(10)

    @property
    def url(self) -> str:
        return self.ex.url

    def key(self, name: str) -> tuple[int, str, str]:
        return self.ex.keys[name]

    def state(self) -> dict[str, Any]:
        """Everything a refused message must leave as it was, read on the server's loop between
        batches (a batch's entries are applied before it is published on the bus), after the
        ledger committed every published batch."""
        asyncio.run_coroutine_threadsafe(self.ex.exchange.settlement.synced(), self.loop).result(10)

        def read() -> dict[str, Any]:
            x = self.ex.exchange
            engine = x.engine
            st = engine.state
            return {
                "orders": {k: msgspec.to_builtins(v) for k, v in st.orders.items()},
                "open": {k: sorted(v) for k, v in st.open_by_account.items()},
                "leases": {k: msgspec.to_builtins(v) for k, v in st.leases.items()},
                "coids": dict(st.coids),
                "ledger": x.settlement.settlement.ledger.balances(),
                "halted": sorted(st.halted),
                "resting": {name: b.resting_orders() for name, b in engine.books.items()},
                "deposits": x.store.deposits(),
                "accounts": [(a.id, a.name, a.role) for a in x.store.accounts()],
                "journal": engine.seq - self.seq0 - self.clocks,  # the journal position, clocks aside
                "last_oid": engine.last_oid,
                "journaled": len(self.journaled),
            }

        async def settled() -> dict[str, Any]:
            for _ in range(500):
                d = read()
                if d["journal"] == d["journaled"]:  # no batch between apply and publish
                    return d
                await asyncio.sleep(0.005)
            raise AssertionError("the sequencer did not settle")

        return asyncio.run_coroutine_threadsafe(settled(), self.loop).result(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("hostile")
    srv = Server(data)
    srv.start()
    srv.ctx = Ctx(ids={name: srv.key(name)[0] for name in ACCOUNTS})
    try:
        run(_baseline(srv))
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(data / "snapshots", ignore_errors=True)  # the numba books' snapshot is large
    if srv.error is not None:
        raise srv.error


async def _baseline(srv: Server) -> None:
    ctx = srv.ctx
    async with aiohttp.ClientSession() as http:
        out = await _rest(srv, http, "prov", "POST", "/v1/asks",
                          {"class": "H100", "gpus": 8, "price": 3_000_000, "end": ctx.now + 2 * DAY})
        ctx.ask = out[1]["oid"]
        async with _Ws(srv, http, "trader") as ws:
            ctx.bid = (await ws.call({"op": "bid", "class": "H100", "kind": "on_demand", "gpus": 1, "hours": 1,
                                      "limit": 1_000_000}))["oid"]
        async with _Ws(srv, http, "trader2") as ws:
            ctx.bid2 = (await ws.call({"op": "bid", "class": "H100", "kind": "spot", "gpus": 1, "hours": 1,
                                       "limit": 1_000_000}))["oid"]
            ack = await ws.call({"op": "bid", "class": "H100", "kind": "on_demand", "gpus": 1, "hours": 4,
                                 "limit": 3_000_000, "tif": "IOC"})
            ctx.lease2 = ack["trades"][0]["trade_id"]


# ---------------------------------------------------------------------- plumbing
def _encode(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


async def _rest(srv: Server, http: aiohttp.ClientSession, who: str, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    data = _encode(body)
    if headers is None:
        headers = srv.signers[who].headers(method, path, data)
    headers = {"Content-Type": "application/json", **headers}
    async with http.request(method, srv.url + path, data=data or None, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.headers)


class _Ws:
    """A raw WebSocket (any frame can be sent), authenticated as ``who`` unless ``auth`` is False."""

    def __init__(self, srv: Server, http: aiohttp.ClientSession, who: str, auth: bool = True) -> None:
        self.srv, self.http, self.who, self.auth = srv, http, who, auth
        self.ws: aiohttp.ClientWebSocketResponse

    async def __aenter__(self) -> _Ws:
        self.ws = await self.http.ws_connect(self.srv.url.replace("http://", "ws://") + "/v1/ws", max_msg_size=0)
        if self.auth:
            await self.ws.send_json(self.srv.signers[self.who].ws_auth())
            first = await self.recv()
            assert first["type"] == "authenticated", first
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next answer (pushed events are skipped)."""
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return {"type": "closed", "msg_type": msg.type, "code": self.ws.close_code}
            m = json.loads(msg.data)
            if m.get("type") != "event":
                return m

    async def send(self, payload: Any) -> None:
        if isinstance(payload, RawText):
            await self.ws.send_frame(payload, aiohttp.WSMsgType.TEXT)
        elif isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        elif isinstance(payload, str):
            await self.ws.send_str(payload)
        else:
            await self.ws.send_str(json.dumps(payload))

    async def call(self, op: dict[str, Any]) -> dict[str, Any]:
        await self.send(op)
        m = await self.recv()
        assert m["type"] == "ack", m
        return m


_round = 0


async def _round_trip(srv: Server, http: aiohttp.ClientSession) -> None:
    """Two bystanders still trade: an ask over REST and an IOC bid over a WebSocket fill."""
    global _round
    _round += 1
    now = int(time.time())
    status, ask, _ = await _rest(srv, http, "byprov", "POST", "/v1/asks",
                                 {"class": "H100", "gpus": 1, "price": 2_000_000, "end": now + 2 * HOUR,
                                  "client_order_id": f"by-{_round}-{now}"})
    assert status == 201 and ask["ok"], ask
    async with _Ws(srv, http, "bytrader") as ws:
        ack = await ws.call({"op": "bid", "class": "H100", "kind": "on_demand", "gpus": 1, "hours": 1,
                             "limit": 2_000_000, "tif": "IOC", "id": "rt"})
    assert [t["ask_oid"] for t in ack["trades"]] == [ask["oid"]], ack


def _check_unchanged(srv: Server, before: dict[str, Any], journaled: bool) -> None:
    after = srv.state()
    if journaled:
        # the book refused it: journaled, but its only event is REJECTED (R8, R15)
        new = srv.call(lambda: list(srv.journaled[before["journaled"]:]))
        assert len(new) == 1, new
        _, events = new[0]
        assert events and all(ev.type == EV_REJECTED for ev in events), events
        for k in ("journal", "journaled", "last_oid"):
            after.pop(k)
            before = {**before}
            before.pop(k)
    assert after == before


def _error_body(out: Any, code: str) -> None:
    assert isinstance(out, dict) and set(out) == {"error"}, out
    err = out["error"]
    assert err["code"] == code, out
    assert isinstance(err["message"], str) and err["message"], out


# ---------------------------------------------------------------------- REST cases
Body = Any  # bytes | str | dict | list | Callable[[Ctx], Any]


@dataclass(frozen=True)
class Rest:
    id: str
    code: str
    status: int
    body: Body = None
    who: str = "prov"
    method: str = "POST"
    path: str | Callable[[Ctx], str] = "/v1/asks"
    tamper: str = ""  # how the signature is spoiled
    journaled: bool = False  # refused by the book (so journaled as a REJECTED command)


def ask(**kw: Any) -> Callable[[Ctx], dict[str, Any]]:
    """A valid ask body (8 GPUs at 5 $/h for a day) with ``kw`` changed (DROP: removed)."""

    def build(c: Ctx) -> dict[str, Any]:
        body: dict[str, Any] = {"class": "H100", "gpus": 8, "price": 5_000_000, "end": c.now + DAY}
        for k, v in kw.items():
            if v is DROP:
                body.pop(k, None)
            else:
                body[k] = v(c) if callable(v) else v
        return body

    return build


REST_CASES = [
    # not JSON, or not an object
    Rest("invalid-json", "MALFORMED", 400, b'{"class": "H100", "gpus":'),
    Rest("json-array", "MALFORMED", 400, [1, 2, 3]),
    Rest("json-string", "MALFORMED", 400, '"H100"'),
    Rest("json-null", "MALFORMED", 400, "null"),
    Rest("empty-body", "MALFORMED", 400, b""),
    Rest("binary-garbage", "MALFORMED", 400, bytes(range(256)) * 4),
    Rest("nested-garbage", "MALFORMED", 400, b"[" * 5000),
    # wrong types and impossible numbers (R3: integers only)
    Rest("gpus-string", "MALFORMED", 400, ask(gpus="8")),
    Rest("gpus-negative", "BAD_GPUS", 400, ask(gpus=-8)),
    Rest("gpus-zero", "BAD_GPUS", 400, ask(gpus=0)),
    Rest("gpus-2**63", "MALFORMED", 400, ask(gpus=2**63)),
    Rest("gpus-bool", "MALFORMED", 400, ask(gpus=True)),
    Rest("price-10**30", "MALFORMED", 400, ask(price=10**30)),
    Rest("price-float", "MALFORMED", 400, ask(price=2_000_000.5)),
    Rest("price-null", "MALFORMED", 400, ask(price=None)),
    Rest("price-zero", "BAD_PRICE", 400, ask(price=0)),
    Rest("end-negative", "BAD_WINDOW", 400, ask(end=-1)),
    Rest("min-hours-zero", "BAD_MIN_HOURS", 400, ask(min_hours=0)),
    Rest("post-only-string", "MALFORMED", 400, ask(post_only="yes")),
    Rest("class-too-long", "MALFORMED", 400, ask(**{"class": "H" * 33})),
    Rest("coid-bad-chars", "MALFORMED", 400, ask(client_order_id="a b;c")),
    Rest("unknown-field", "MALFORMED", 400, ask(colour="green")),
    Rest("missing-end", "MALFORMED", 400, ask(end=DROP)),
    Rest("missing-class", "MALFORMED", 400, ask(**{"class": DROP})),
    # market rules (R3, R5, R8)
    Rest("unknown-class", "UNKNOWN_CLASS", 404, ask(**{"class": "Z80"})),
    Rest("off-tick-price", "OFF_TICK", 400, ask(price=2_000_500)),
    Rest("price-below-min", "BAD_PRICE", 400, ask(price=9_000)),
    Rest("price-above-max", "BAD_PRICE", 400, ask(price=50_001_000)),
    Rest("spot-above-price", "BAD_SPOT_PRICE", 400, ask(spot_price=5_001_000)),
    Rest("spot-off-tick", "OFF_TICK", 400, ask(spot_price=1_000_001)),
    Rest("gpus-above-max", "BAD_GPUS", 400, ask(gpus=16_385)),
    Rest("window-shorter-than-min-hours", "BAD_WINDOW", 400, ask(min_hours=3, end=lambda c: c.now + 2 * HOUR)),
    Rest("end-in-the-past", "BAD_WINDOW", 400, ask(end=lambda c: c.now - HOUR)),
    Rest("window-too-long", "BAD_WINDOW", 400, ask(end=lambda c: c.now + 8785 * HOUR)),
    Rest("post-only-would-trade", "POST_ONLY_WOULD_TRADE", 409, ask(price=1_000_000, post_only=True),
         journaled=True),
    Rest("resale-of-unknown-lease", "UNKNOWN_LEASE", 404, ask(lease_id=999_999, gpus=1), who="trader",
         journaled=True),
    Rest("oversized-body", "TOO_LARGE", 413, ask(colour="x" * BIG)),
    # roles (docs/auth.md)
    Rest("trader-posts-capacity", "FORBIDDEN", 403, ask(), who="trader"),
    Rest("analyst-posts-ask", "FORBIDDEN", 403, ask(), who="analyst"),
    Rest("trader-halts", "FORBIDDEN", 403, {"class": "H100"}, who="trader", path="/v1/admin/halt"),
    Rest("analyst-kills", "FORBIDDEN", 403, lambda c: {"account": c.ids["trader"]}, who="analyst",
         path="/v1/admin/kill"),
    Rest("trader-deposits-to-itself", "FORBIDDEN", 403, lambda c: {"account": c.ids["trader"], "amount": 10**12},
         who="trader", path="/v1/admin/deposit"),
    Rest("provider-creates-account", "FORBIDDEN", 403, {"name": "mallory", "role": "admin"},
         path="/v1/admin/accounts"),
    Rest("provider-releases-lease", "FORBIDDEN", 403, None, path=lambda c: f"/v1/leases/H100/{c.lease2}/release"),
    # signatures (docs/auth.md: the documented 401 codes)
    Rest("no-auth-headers", "MISSING_AUTH", 401, ask(), tamper="none"),
    Rest("empty-signature", "MISSING_AUTH", 401, ask(), tamper="empty-sig"),
    Rest("wrong-secret", "BAD_SIGNATURE", 401, ask(), tamper="secret"),
    Rest("altered-body", "BAD_SIGNATURE", 401, ask(), tamper="body"),
    Rest("signed-other-path", "BAD_SIGNATURE", 401, ask(), tamper="path"),
    Rest("signature-not-hex", "BAD_SIGNATURE", 401, ask(), tamper="not-hex"),
    Rest("stale-timestamp", "STALE_TIMESTAMP", 401, ask(), tamper="stale"),
    Rest("future-timestamp", "STALE_TIMESTAMP", 401, ask(), tamper="future"),
    Rest("timestamp-not-integer", "STALE_TIMESTAMP", 401, ask(), tamper="ts-text"),
    Rest("unknown-key", "UNKNOWN_KEY", 401, ask(), tamper="unknown-key"),
    Rest("replayed-signature", "REPLAYED", 401, ask(price=4_000_000, gpus=1), tamper="replay"),
    # other people's and unknown things
    Rest("cancel-someone-elses-order", "NOT_OWNER", 403, None, method="DELETE",
         path=lambda c: f"/v1/orders/{c.bid2}"),
    Rest("cancel-unknown-order", "UNKNOWN_ORDER", 404, None, method="DELETE", path="/v1/orders/999999999"),
    Rest("cancel-negative-order", "UNKNOWN_ORDER", 404, None, method="DELETE", path="/v1/orders/-1"),
    Rest("cancel-non-integer-order", "MALFORMED", 400, None, method="DELETE", path="/v1/orders/abc"),
    Rest("status-someone-elses-order", "NOT_OWNER", 403, None, method="GET", path=lambda c: f"/v1/orders/{c.bid}"),
    Rest("amend-someone-elses-ask", "NOT_OWNER", 403, {"gpus": 1}, who="trader", method="PATCH",
         path=lambda c: f"/v1/asks/{c.ask}"),
    Rest("amend-ask-up", "BAD_AMEND", 400, {"gpus": 9}, method="PATCH", path=lambda c: f"/v1/asks/{c.ask}",
         journaled=True),
    Rest("amend-ask-to-zero", "BAD_AMEND", 400, {"gpus": 0}, method="PATCH", path=lambda c: f"/v1/asks/{c.ask}"),
    Rest("amend-ask-not-object", "MALFORMED", 400, [7], method="PATCH", path=lambda c: f"/v1/asks/{c.ask}"),
    Rest("release-someone-elses-lease", "NOT_LEASE_HOLDER", 403, None, who="trader",
         path=lambda c: f"/v1/leases/H100/{c.lease2}/release", journaled=True),
    Rest("release-unknown-lease", "UNKNOWN_LEASE", 404, None, who="trader", path="/v1/leases/H100/999999/release",
         journaled=True),
    Rest("release-non-integer-lease", "MALFORMED", 400, None, who="trader", path="/v1/leases/H100/x1/release"),
    Rest("release-unknown-class", "UNKNOWN_CLASS", 404, None, who="trader", path="/v1/leases/Z80/1/release"),
    # admin bodies
    Rest("halt-unknown-class", "UNKNOWN_CLASS", 404, {"class": "Z80"}, who="admin", path="/v1/admin/halt"),
    Rest("halt-no-class", "MALFORMED", 400, {}, who="admin", path="/v1/admin/halt"),
    Rest("kill-account-zero", "MALFORMED", 400, {"account": 0}, who="admin", path="/v1/admin/kill"),
    Rest("deposit-negative", "MALFORMED", 400, lambda c: {"account": c.ids["poor"], "amount": -5 * USD},
         who="admin", path="/v1/admin/deposit"),
    Rest("deposit-unknown-account", "NOT_FOUND", 404, {"account": 999_999, "amount": USD}, who="admin",
         path="/v1/admin/deposit"),
    Rest("create-account-bad-role", "MALFORMED", 400, {"name": "eve", "role": "god"}, who="admin",
         path="/v1/admin/accounts"),
    # statements, SSH keys, provisioning answers (R18)
    Rest("statement-account-not-integer", "MALFORMED", 400, None, who="admin", method="GET",
         path="/v1/account/statement?account=abc"),
    Rest("statement-of-another-by-trader", "FORBIDDEN", 403, None, who="trader", method="GET",
         path=lambda c: f"/v1/account/statement?account={c.ids['poor']}"),
    Rest("statement-unknown-account", "NOT_FOUND", 404, None, who="analyst", method="GET",
         path="/v1/account/statement?account=999999"),
    Rest("ssh-key-not-a-key", "BAD_SSH_KEY", 400, {"ssh_public_key": "hunter2"}, who="trader", method="PUT",
         path="/v1/account/ssh-key"),
    Rest("ssh-key-empty", "MALFORMED", 400, {"ssh_public_key": ""}, who="trader", method="PUT",
         path="/v1/account/ssh-key"),
    Rest("ssh-key-missing", "MALFORMED", 400, {}, who="trader", method="PUT", path="/v1/account/ssh-key"),
    Rest("ssh-key-too-long", "MALFORMED", 400, {"ssh_public_key": "ssh-ed25519 " + "A" * 20_000}, who="trader",
         method="PUT", path="/v1/account/ssh-key"),
    Rest("provision-unknown-lease", "UNKNOWN_LEASE", 404, {"status": "failed"}, path="/v1/provisioning/H100-999999"),
    Rest("provision-unknown-class", "UNKNOWN_LEASE", 404, {"status": "failed"}, path="/v1/provisioning/Z80-1"),
    Rest("provision-bad-ref", "MALFORMED", 400, {"status": "failed"}, path="/v1/provisioning/H100"),
    Rest("provision-bad-status", "MALFORMED", 400, {"status": "done"}, path="/v1/provisioning/H100-1"),
    Rest("provision-ready-without-connection", "MALFORMED", 400, {"status": "ready"}, path="/v1/provisioning/H100-1"),
    Rest("provision-connection-float", "MALFORMED", 400, {"status": "ready", "connection": {"port": 22.5}},
         path="/v1/provisioning/H100-1"),
    Rest("provision-connection-nested", "MALFORMED", 400, {"status": "ready", "connection": {"host": {"a": 1}}},
         path="/v1/provisioning/H100-1"),
    Rest("provision-connection-too-many-keys", "MALFORMED", 400,
         {"status": "ready", "connection": {f"k{i}": i for i in range(40)}}, path="/v1/provisioning/H100-1"),
    Rest("provision-reason-too-long", "MALFORMED", 400, {"status": "failed", "reason": "x" * 600},
         path="/v1/provisioning/H100-1"),
    Rest("provision-by-analyst", "FORBIDDEN", 403, {"status": "failed"}, who="analyst",
         path="/v1/provisioning/H100-1"),
    # routes and public reads
    Rest("unknown-route", "NOT_FOUND", 404, None, method="GET", path="/v1/nothing-here"),
    Rest("plain-get-of-ws-endpoint", "MALFORMED", 400, None, method="GET", path="/v1/ws"),
    Rest("wrong-method", "METHOD_NOT_ALLOWED", 405, ask(), method="PUT"),
    Rest("book-unknown-class", "UNKNOWN_CLASS", 404, None, method="GET", path="/v1/book/Z80"),
    Rest("book-depth-not-integer", "MALFORMED", 400, None, method="GET", path="/v1/book/H100?depth=abc"),
    Rest("book-depth-zero", "MALFORMED", 400, None, method="GET", path="/v1/book/H100?depth=0"),
    Rest("quote-negative-gpus", "BAD_GPUS", 400, None, method="GET",
         path="/v1/quote?class=H100&kind=spot&gpus=-1&hours=1"),
    Rest("quote-unknown-kind", "MALFORMED", 400, None, method="GET",
         path="/v1/quote?class=H100&kind=cheap&gpus=1&hours=1"),
    Rest("quote-off-tick-limit", "OFF_TICK", 400, None, method="GET",
         path="/v1/quote?class=H100&kind=spot&gpus=1&hours=1&limit=1000001"),
]


def _headers(srv: Server, case: Rest, method: str, path: str, data: bytes) -> tuple[dict[str, str], bytes]:
    """The signed headers of the case (spoiled as its ``tamper`` says) and the bytes to send."""
    signer = srv.signers[case.who]
    _, key, secret = srv.key(case.who)
    now_ms = time.time_ns() // 1_000_000
    t = case.tamper
    if t == "none":
        return {}, data
    if t == "secret":
        return Signer(key, secret[::-1]).headers(method, path, data), data
    if t == "body":
        return signer.headers(method, path, data), data.replace(b'"gpus": 8', b'"gpus": 1')
    if t == "path":
        return signer.headers(method, "/v1/orders", data), data
    if t == "unknown-key":
        return Signer("gk_" + "Q" * 16, secret).headers(method, path, data), data
    h = signer.headers(method, path, data)
    if t == "empty-sig":
        h["GPUX-Signature"] = ""
    elif t == "not-hex":
        h["GPUX-Signature"] = "z" * 64
    elif t in ("stale", "future"):
        ts = now_ms + (-31_000 if t == "stale" else 31_000)
        h = {"GPUX-Key": key, "GPUX-Timestamp": str(ts), "GPUX-Signature": sign(secret, ts, method, path, data)}
    elif t == "ts-text":
        h["GPUX-Timestamp"] = f"{now_ms}.5"
    return h, data


@pytest.mark.parametrize("case", REST_CASES, ids=[c.id for c in REST_CASES])
def test_rest_hostile_request_is_refused_and_changes_nothing(server, case):
    """R8 and docs/auth.md over REST: the exact code and HTTP status in the one error format;
    no state changes; the server keeps serving (another pair of accounts still trades)."""
    srv = server
    ctx = srv.ctx
    assert len({c.id for c in REST_CASES}) == len(REST_CASES) >= 40

    async def scenario():
        async with aiohttp.ClientSession() as http:
            path = case.path(ctx) if callable(case.path) else case.path
            body = case.body(ctx) if callable(case.body) else case.body
            data = _encode(body)
            if case.id == "oversized-body":
                assert len(data) > srv.ex.exchange.cfg.max_message_bytes
            headers, data = _headers(srv, case, case.method, path, data)
            if case.tamper == "replay":  # the first use goes through
                status, out, _ = await _rest(srv, http, case.who, case.method, path, data, headers)
                assert status == 201 and out["ok"], out
            before = srv.state()
            status, out, resp_headers = await _rest(srv, http, case.who, case.method, path, data, headers)
            assert status == case.status, (status, out)
            _error_body(out, case.code)
            assert resp_headers["Content-Type"].startswith("application/json")
            _check_unchanged(srv, before, case.journaled)
            await _round_trip(srv, http)

    run(scenario())


# ---------------------------------------------------------------------- WebSocket cases
@dataclass(frozen=True)
class Ws:
    id: str
    code: str | None  # None: no error message, the connection is closed (close)
    msg: Any  # dict | str | bytes | Callable[[Ctx], ...]
    who: str = "trader"
    close: int | None = None  # the close code expected (by design) after the error, if any
    journaled: bool = False


def bid(**kw: Any) -> Callable[[Ctx], dict[str, Any]]:
    """A valid bid op (on_demand, 1 GPU for 1 hour at 1.5 $/h, rests) with ``kw`` changed (DROP: removed)."""

    def build(c: Ctx) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "bid", "id": "h1", "class": "H100", "kind": "on_demand", "gpus": 1,
                              "hours": 1, "limit": 1_500_000}
        for k, v in kw.items():
            if v is DROP:
                op.pop(k, None)
            else:
                op[k] = v(c) if callable(v) else v
        return op

    return build


def _next_hour(c: Ctx, hours: int = 2) -> int:
    return (c.now // HOUR + hours) * HOUR


WS_CASES = [
    # not JSON, or not an op
    Ws("invalid-json", "MALFORMED", '{"op": "bid", "class": '),
    Ws("json-array", "MALFORMED", "[]"),
    Ws("json-number", "MALFORMED", "42"),
    Ws("json-null", "MALFORMED", "null"),
    Ws("empty-text", "MALFORMED", ""),
    Ws("binary-garbage", "MALFORMED", bytes(range(256))),
    Ws("unknown-op", "MALFORMED", {"op": "launch_missiles", "id": 1}),
    Ws("missing-op", "MALFORMED", {"id": 1, "class": "H100"}),
    Ws("id-is-an-object", "MALFORMED", {"op": "ping", "id": {"a": 1}}),
    # wrong types and impossible numbers (R3, R6)
    Ws("gpus-string", "MALFORMED", bid(gpus="1")),
    Ws("gpus-negative", "BAD_GPUS", bid(gpus=-4)),
    Ws("gpus-zero", "BAD_GPUS", bid(gpus=0)),
    Ws("gpus-2**63", "MALFORMED", bid(gpus=2**63)),
    Ws("limit-10**30", "MALFORMED", bid(limit=10**30)),
    Ws("limit-float", "MALFORMED", bid(limit=1.5e6)),
    Ws("limit-string", "MALFORMED", bid(limit="1500000")),
    Ws("hours-zero", "BAD_HOURS", bid(hours=0)),
    Ws("limit-zero", "BAD_PRICE", bid(limit=0)),
    Ws("limit-negative", "BAD_PRICE", bid(limit=-1_000)),
    Ws("block-zero", "BAD_BLOCK", bid(block=0)),
    Ws("unknown-kind", "MALFORMED", bid(kind="preemptible")),
    Ws("unknown-tif", "MALFORMED", bid(tif="DAY")),
    Ws("empty-class", "MALFORMED", bid(**{"class": ""})),
    Ws("unknown-field", "MALFORMED", bid(leverage=100)),
    Ws("missing-limit", "MALFORMED", bid(limit=DROP)),
    Ws("coid-too-long", "MALFORMED", bid(client_order_id="x" * 65)),
    # market rules (R3, R6, R8, R14)
    Ws("unknown-class", "UNKNOWN_CLASS", bid(**{"class": "Z80"})),
    Ws("gpus-above-max", "BAD_GPUS", bid(gpus=16_385)),
    Ws("hours-above-max", "BAD_HOURS", bid(hours=8_785)),
    Ws("off-tick-limit", "OFF_TICK", bid(limit=1_500_500)),
    Ws("limit-below-min", "BAD_PRICE", bid(limit=9_000)),
    Ws("limit-above-max", "BAD_PRICE", bid(limit=50_001_000)),
    Ws("block-not-dividing-gpus", "BAD_BLOCK", bid(gpus=6, block=4)),
    Ws("block-above-gpus", "BAD_BLOCK", bid(gpus=2, block=4)),
    Ws("reserved-unaligned-start", "UNALIGNED_START", bid(kind="reserved", start=lambda c: _next_hour(c) + 1800)),
    Ws("reserved-start-past-gate", "PAST_GATE", bid(kind="reserved", start=lambda c: c.now // HOUR * HOUR)),
    Ws("reserved-without-start", "PAST_GATE", bid(kind="reserved")),
    Ws("gtd-without-expire-at", "BAD_EXPIRY", bid(tif="GTD")),
    Ws("gtd-expire-at-in-the-past", "BAD_EXPIRY", bid(tif="GTD", expire_at=lambda c: c.now - 60)),
    Ws("insufficient-funds", "INSUFFICIENT_FUNDS", bid(limit=2_000_000), who="poor"),  # R17
    # roles
    Ws("provider-bids", "FORBIDDEN", bid(), who="prov"),
    Ws("analyst-bids", "FORBIDDEN", bid(), who="analyst"),
    Ws("provider-releases", "FORBIDDEN", lambda c: {"op": "release", "class": "H100", "lease_id": c.lease2},
       who="prov"),
    # other people's and unknown things (R7, R16)
    Ws("cancel-someone-elses-order", "NOT_OWNER", lambda c: {"op": "cancel", "id": 5, "oid": c.bid2}),
    Ws("cancel-unknown-order", "UNKNOWN_ORDER", {"op": "cancel", "id": 5, "oid": 10**9}),
    Ws("cancel-unknown-client-order-id", "UNKNOWN_ORDER", {"op": "cancel", "id": 5, "client_order_id": "nope"}),
    Ws("cancel-without-id", "MALFORMED", {"op": "cancel", "id": 5}),
    Ws("cancel-oid-zero", "MALFORMED", {"op": "cancel", "id": 5, "oid": 0}),
    Ws("amend-someone-elses-order", "NOT_OWNER", lambda c: {"op": "amend", "id": 6, "oid": c.bid2, "gpus": 1}),
    Ws("amend-bid-up", "BAD_AMEND", lambda c: {"op": "amend", "id": 6, "oid": c.bid, "gpus": 2}, journaled=True),
    Ws("amend-bid-to-zero", "BAD_AMEND", lambda c: {"op": "amend", "id": 6, "oid": c.bid, "gpus": 0}),
    Ws("status-someone-elses-order", "NOT_OWNER", lambda c: {"op": "status", "id": 7, "oid": c.bid2}),
    Ws("status-unknown-order", "UNKNOWN_ORDER", {"op": "status", "id": 7, "oid": 10**9}),
    Ws("release-someone-elses-lease", "NOT_LEASE_HOLDER",
       lambda c: {"op": "release", "id": 8, "class": "H100", "lease_id": c.lease2}, journaled=True),
    Ws("release-unknown-lease", "UNKNOWN_LEASE", {"op": "release", "id": 8, "class": "H100", "lease_id": 999_999},
       journaled=True),
    Ws("release-unknown-class", "UNKNOWN_CLASS", {"op": "release", "id": 8, "class": "Z80", "lease_id": 1}),
    Ws("second-auth", "DUPLICATE_SESSION_OP", {"op": "auth", "id": 9, "key": "gk_x", "ts": 1, "sig": "0"}),
    # closed by design: a text frame that is not UTF-8 (1007), frames over the 64 KiB limit (1009)
    Ws("text-frame-not-utf8", None, RawText(b'{"op": "ping", "id": "\xff\xfe"}'), close=1007),
    Ws("oversized-text-frame", None, lambda c: {"op": "ping", "id": "x" * BIG}, close=1009),
    Ws("oversized-binary-frame", None, b"\x00" * BIG, close=1009),
]


@pytest.mark.parametrize("case", WS_CASES, ids=[c.id for c in WS_CASES])
def test_ws_hostile_message_is_refused_and_changes_nothing(server, case):
    """R8 and docs/auth.md over an authenticated WebSocket: the exact code in the WebSocket
    error format (the request id echoed when there is one); no state changes; the connection
    still answers a ping (unless closed by design: 1009 for oversized frames); another pair of
    accounts still trades."""
    srv = server
    ctx = srv.ctx
    assert len({c.id for c in WS_CASES}) == len(WS_CASES) >= 40

    async def scenario():
        async with aiohttp.ClientSession() as http, _Ws(srv, http, case.who) as ws:
            msg = case.msg(ctx) if callable(case.msg) else case.msg
            before = srv.state()
            await ws.send(msg)
            answer = await ws.recv()
            if case.code is None:
                assert answer["type"] == "closed" and answer["code"] == case.close, answer
            else:
                assert answer["type"] == "error" and answer["code"] == case.code, answer
                assert set(answer) == {"type", "id", "code", "message"} and answer["message"], answer
                # the request id is echoed whenever it can be read: a JSON object with an integer
                # or string id, whether or not the rest of the message decodes (docs/api.md)
                readable = isinstance(msg, dict) and isinstance(msg.get("id"), int | str)
                assert answer["id"] == (msg["id"] if readable else None), answer
            _check_unchanged(srv, before, case.journaled)
            if case.close is None:
                await ws.send({"op": "ping", "id": "still-there"})
                pong = await ws.recv()
                assert pong["type"] == "pong" and pong["id"] == "still-there", pong
            else:
                assert ws.ws.closed
            await _round_trip(srv, http)

    run(scenario())


# ---------------------------------------------------------------------- the first WebSocket message
@dataclass(frozen=True)
class First:
    id: str
    code: str
    msg: Callable[[Server, Ctx], Any]  # the first message, in place of a valid auth


def _auth(srv: Server, who: str = "trader", ts_shift_ms: int = 0, secret: str | None = None,
          path: str = "/v1/ws", **extra: Any) -> dict[str, Any]:
    _, key, real = srv.key(who)
    ts = time.time_ns() // 1_000_000 + ts_shift_ms
    return {"op": "auth", "key": key, "ts": ts, "sig": sign(secret or real, ts, "GET", path), **extra}


_used_auth: dict[str, Any] = {}


def _replayed_auth(srv: Server, c: Ctx) -> dict[str, Any]:
    return _used_auth["msg"]


FIRST_CASES = [
    First("bid-before-auth", "NOT_AUTHENTICATED", lambda s, c: bid()(c)),
    First("ping-before-auth", "NOT_AUTHENTICATED", lambda s, c: {"op": "ping", "id": 1}),
    First("cancel-before-auth", "NOT_AUTHENTICATED", lambda s, c: {"op": "cancel", "oid": c.bid}),
    First("invalid-json", "MALFORMED", lambda s, c: '{"op": "auth", '),
    First("binary-garbage", "MALFORMED", lambda s, c: b"\xff\xfe\x00\x01garbage"),
    First("auth-ts-as-string", "MALFORMED", lambda s, c: {**_auth(s), "ts": str(time.time_ns() // 10**6)}),
    First("auth-unknown-field", "MALFORMED", lambda s, c: _auth(s, role="admin")),
    First("auth-wrong-secret", "BAD_SIGNATURE", lambda s, c: _auth(s, secret="guess")),
    First("auth-signed-other-path", "BAD_SIGNATURE", lambda s, c: _auth(s, path="/v1/orders")),
    First("auth-stale-timestamp", "STALE_TIMESTAMP", lambda s, c: _auth(s, ts_shift_ms=-31_000)),
    First("auth-future-timestamp", "STALE_TIMESTAMP", lambda s, c: _auth(s, ts_shift_ms=31_000)),
    First("auth-unknown-key", "UNKNOWN_KEY", lambda s, c: {**_auth(s), "key": "gk_" + "Z" * 16}),
    First("auth-empty-signature", "MISSING_AUTH", lambda s, c: {**_auth(s), "sig": ""}),
    First("auth-replayed", "REPLAYED", _replayed_auth),
]


@pytest.mark.parametrize("case", FIRST_CASES, ids=[c.id for c in FIRST_CASES])
def test_ws_first_message_must_authenticate(server, case):
    """docs/auth.md WebSocket authentication: anything but a valid auth message as the first
    message is answered with the documented code, then the connection is closed (1008, policy
    violation); nothing changes and the server keeps serving."""
    srv = server
    ctx = srv.ctx

    async def scenario():
        async with aiohttp.ClientSession() as http:
            if case.id == "auth-replayed":  # a valid auth message, used once
                _used_auth["msg"] = _auth(srv)
                async with _Ws(srv, http, "trader", auth=False) as ws:
                    await ws.send(_used_auth["msg"])
                    assert (await ws.recv())["type"] == "authenticated"
            msg = case.msg(srv, ctx)
            before = srv.state()
            async with _Ws(srv, http, "trader", auth=False) as ws:
                await ws.send(msg)
                answer = await ws.recv()
                assert answer["type"] == "error" and answer["code"] == case.code, answer
                assert answer["message"] and "secret" not in answer["message"].lower()
                closed = await ws.recv()
                assert closed["type"] == "closed" and closed["code"] == 1008, closed
            _check_unchanged(srv, before, False)
            await _round_trip(srv, http)

    run(scenario())


def test_all_hostile_cases_together_left_the_baseline_intact(server):
    """After every hostile message above, the baseline orders and lease are as they were made
    (R8): the resting ask, the two resting bids, the lease; nothing is halted."""
    srv = server
    ctx = srv.ctx
    state = srv.state()
    for oid in (ctx.ask, ctx.bid, ctx.bid2):
        assert state["orders"][oid]["status"] == "open"
    assert state["orders"][ctx.ask]["gpus"] == 8 and state["orders"][ctx.bid]["gpus"] == 1
    assert state["leases"][f"H100-{ctx.lease2}"]["ended_by"] == ""
    assert state["halted"] == []
    assert state["deposits"][ctx.ids["poor"]] == 1 * USD
