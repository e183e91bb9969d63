"""Fan-out of market data to WebSocket subscribers (docs/feeds.md).

Every message is encoded once (msgspec) and framed once (one unmasked text frame); the same
bytes object is queued on every subscriber of its stream.  Each connection is a send buffer of
`gateway.sendbuffer` (as a trader's session is): queued frames go out in one ``transport.write``
per connection per event-loop turn, from one callback for all connections, and the one
slow-client policy applies with the feeds' parameters: a subscriber whose unsent bytes pass
``max_buffer`` (4 MiB) is cut off at once (unsubscribed from everything, close code 1008 with the
reason, the socket aborted if it does not go away within ``close_grace_s``), so a slow reader
costs at most ``max_buffer`` bytes of memory and nobody else notices it.  Client operations are
rate limited per connection by a `gateway.auth.RateLimiter` (``ops_per_s``, ``ops_burst``).

The protocol (client -> server, one JSON object per text frame)::

    {"op": "subscribe", "channel": "book", "class": "H100", "id": 1}
    {"op": "subscribe", "channel": "candles", "class": "H100", "interval": "1h"}
    {"op": "subscribe", "channel": "candles", "class": "H100", "kind": "spot"}   # one kind's candles
    {"op": "subscribe", "channel": "index", "class": "H100", "kind": "reserved"}
    {"op": "unsubscribe", "channel": "book", "class": "H100"}
    {"op": "auth", "key": "gk_...", "ts": 1767225600123, "sig": "<hex>"}   # private channels
    {"op": "subscribe", "channel": "orders"}                                # after auth
    {"op": "ping", "id": 9}

Subscribing again to a stream one already has gives a fresh snapshot (how a client recovers
from a gap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from aiohttp import WSMsgType, web

from exchange.clock import WALL, Clock
from exchange.supervise import supervise
from feeds.model import CHANNELS, KIND_CHANNELS, KINDS, ClassFeed, stream_name
from feeds.products import STREAMS as LIVE_CHANNELS
from feeds.products import ProductFeed
from gateway.auth import RateLimiter
from gateway.sendbuffer import CLOSE_GRACE_S, SendBuffer, Sender, ws_frame
from gateway.wire import request_id

log = logging.getLogger("gpux.feeds")
_enc = msgspec.json.Encoder()

PRIVATE_CHANNELS = ("orders", "fills", "leases", "provisioning")
MAX_BUFFER = 4 << 20  # unsent bytes per subscriber before it is cut off
MAX_SUBSCRIPTIONS = 256  # per connection
MAX_OP_BYTES = 4096
HEARTBEAT_S = 1.0
OPS_PER_S = 50  # client operations per connection, sustained
OPS_BURST = 500


# ---------------------------------------------------------------------- client operations
class _Op(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    id: int | str | None = None


class SubscribeOp(_Op, tag="subscribe", kw_only=True):
    channel: str
    gpu_class: str | None = msgspec.field(name="class", default=None)
    interval: str | None = None
    kind: str | None = None


class UnsubscribeOp(_Op, tag="unsubscribe", kw_only=True):
    channel: str
    gpu_class: str | None = msgspec.field(name="class", default=None)
    interval: str | None = None
    kind: str | None = None


class AuthOp(_Op, tag="auth", kw_only=True):
    key: str
    ts: int
    sig: str


class PingOp(_Op, tag="ping", kw_only=True):
    pass


_ops = msgspec.json.Decoder(SubscribeOp | UnsubscribeOp | AuthOp | PingOp)


class OpError(Exception):
    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class Private(Protocol):
    """What the hub needs for private channels (the live feed service provides it)."""

    def authenticate(self, op: AuthOp) -> tuple[int, str, str]:
        """(account, role, key id) of a signed auth op; raises OpError."""
        ...

    def private_snapshot(self, account: int, channel: str) -> dict[str, Any]: ...


class Conn(SendBuffer):
    """One subscriber connection: its send buffer (`gateway.sendbuffer.SendBuffer`: ``out``,
    ``closed``, ``transport``...), its subscriptions, and its key in the hub's operation limiter."""

    __slots__ = ("subs", "account", "role", "key", "key_id")

    def __init__(self, sender: Sender, ws: web.WebSocketResponse | None, transport: Any, peer: str = "",
                 key: int = 0) -> None:
        super().__init__(sender, ws, transport, peer)
        self.subs: set[tuple[Any, str]] = set()  # (class, stream) public, (account, channel) private
        self.account = 0
        self.role = ""
        self.key = key  # its bucket in Hub.ops
        self.key_id = ""  # the API key it authenticated with


class Hub:
    """Subscriptions, encode-once fan-out, bounded buffers, heartbeats."""

    def __init__(self, feeds: dict[str, ClassFeed], *, private: Private | None = None,
                 max_buffer: int = MAX_BUFFER, max_subscriptions: int = MAX_SUBSCRIPTIONS,
                 close_grace_s: float = CLOSE_GRACE_S, heartbeat_s: float = HEARTBEAT_S,
                 ops_per_s: float = OPS_PER_S, ops_burst: int = OPS_BURST,
                 hello: dict[str, Any] | None = None, clock: Clock = WALL) -> None:
        self.clock = clock
        self.feeds = feeds
        self.private = private
        self.max_subscriptions = max_subscriptions
        self.heartbeat_s = heartbeat_s
        self.hello = hello or {}
        self.subs: dict[tuple[str, str], set[Conn]] = {}  # (class, stream) -> subscribers
        self.by_class: dict[str, dict[Conn, int]] = {}  # class -> subscriber -> streams it has there
        self.psubs: dict[tuple[int, str], set[Conn]] = {}  # (account, channel) -> subscribers
        self.pu: dict[tuple[int, str], int] = {}  # private stream counters
        self.by_account: dict[int, dict[Conn, int]] = {}
        self.conns: set[Conn] = set()
        self._hb_task: asyncio.Task | None = None
        self._stopping_hb = False
        self.stats = {"messages": 0, "frames": 0, "bytes": 0, "cut_off": 0, "connections_total": 0}
        self.on_first_subscribe: Callable[[Conn], None] | None = None
        # the products' streams of each class (feeds.products), where the book itself is at hand
        # (a live exchange; not a replay), and what to call when someone subscribes to them
        self.live: dict[str, ProductFeed] = {}
        self.on_live: Callable[[str], None] | None = None
        # the subscribers' send buffers: one write per connection per turn, cut off past max_buffer
        self.sends = Sender(max_buffer, close_grace_s, clock, stats=self.stats, stat="cut_off", on_cut=self._drop,
                            log=log, label="feed subscriber")
        self.ops = RateLimiter(ops_per_s, ops_burst, clock=clock.monotonic)  # client operations, per connection

    @property
    def max_buffer(self) -> int:
        """Unsent bytes a subscriber may have before it is cut off."""
        return self.sends.limit

    @max_buffer.setter
    def max_buffer(self, n: int) -> None:
        self.sends.limit = int(n)

    @property
    def close_grace_s(self) -> float:
        """Seconds a cut-off subscriber has to go before its socket is aborted."""
        return self.sends.grace_s

    @close_grace_s.setter
    def close_grace_s(self, s: float) -> None:
        self.sends.grace_s = float(s)

    # ------------------------------------------------------------------ publishing
    def has(self, cls: str, stream: str) -> bool:
        return bool(self.subs.get((cls, stream)))

    def publish(self, cls: str, stream: str, msg: dict[str, Any]) -> None:
        """Encode ``msg`` once and queue it for every subscriber of (cls, stream)."""
        conns = self.subs.get((cls, stream))
        if conns:
            self._push_all(conns, self._frame(msg))

    def _frame(self, msg: dict[str, Any]) -> bytes:
        """One text frame of ``msg`` with ``ts_ms`` added: the wall-clock time (ms since the epoch)
        at which it is queued; queued frames are written in the same event-loop turn."""
        raw = _enc.encode(msg)
        return ws_frame(raw[:-1] + b',"ts_ms":%d}' % self.clock.time_ms())

    def _push_all(self, conns: Any, frame: bytes) -> None:
        self.sends.push_all(conns, frame)
        st = self.stats
        st["messages"] += len(conns)
        st["frames"] += 1
        st["bytes"] += len(frame) * len(conns)

    def _push(self, c: Conn, msg: dict[str, Any]) -> None:
        self._push_all((c,), self._frame(msg))

    def has_private(self, account: int, channel: str) -> bool:
        return bool(self.psubs.get((account, channel)))

    @property
    def any_private(self) -> bool:
        return bool(self.psubs)

    def publish_private(self, account: int, channel: str, msg: dict[str, Any]) -> None:
        """Number ``msg`` on the account's stream and queue it for its subscribers."""
        key = (account, channel)
        conns = self.psubs.get(key)
        if not conns:
            return
        u = self.pu.get(key, 0) + 1
        self.pu[key] = u
        msg["u"] = u
        self._push_all(conns, self._frame(msg))

    def flush(self) -> None:
        """Write what is queued now (it would go on this event-loop turn anyway)."""
        self.sends.flush()

    def cut(self, c: Conn, reason: str) -> None:
        """Disconnect a subscriber that fell behind (`gateway.sendbuffer.Sender.cut`): close
        frame 1008 with the reason, unsubscribed from everything, aborted after close_grace_s."""
        self.sends.cut(c, reason)

    # ------------------------------------------------------------------ subscriptions
    def subscribe(self, c: Conn, cls: str, stream: str) -> None:
        key = (cls, stream)
        s = self.subs.setdefault(key, set())
        if c not in s:
            s.add(c)
            c.subs.add(key)
            per = self.by_class.setdefault(cls, {})
            per[c] = per.get(c, 0) + 1

    def unsubscribe(self, c: Conn, cls: str, stream: str) -> bool:
        key = (cls, stream)
        s = self.subs.get(key)
        if s is None or c not in s:
            return False
        s.discard(c)
        if not s:
            del self.subs[key]
        c.subs.discard(key)
        per = self.by_class[cls]
        per[c] -= 1
        if not per[c]:
            del per[c]
            if not per:
                del self.by_class[cls]
        return True

    def subscribe_private(self, c: Conn, channel: str) -> None:
        key = (c.account, channel)
        s = self.psubs.setdefault(key, set())
        if c not in s:
            s.add(c)
            c.subs.add(key)
            per = self.by_account.setdefault(c.account, {})
            per[c] = per.get(c, 0) + 1

    def unsubscribe_private(self, c: Conn, channel: str) -> bool:
        key = (c.account, channel)
        s = self.psubs.get(key)
        if s is None or c not in s:
            return False
        s.discard(c)
        if not s:
            del self.psubs[key]
        c.subs.discard(key)
        per = self.by_account[c.account]
        per[c] -= 1
        if not per[c]:
            del per[c]
            if not per:
                del self.by_account[c.account]
        return True

    def _drop(self, c: Conn) -> None:
        for key in list(c.subs):
            if isinstance(key[0], str):
                self.unsubscribe(c, key[0], key[1])
            else:
                self.unsubscribe_private(c, key[1])
        c.out.clear()

    # ------------------------------------------------------------------ heartbeats
    def heartbeat(self) -> None:
        """Per class: seq, time and every stream's u, to the class's subscribers; per account:
        the private streams' u, to the account's private subscribers."""
        for cls, conns in self.by_class.items():
            feed = self.feeds.get(cls)
            if feed is not None and conns:
                hb = feed.heartbeat()
                live = self.live.get(cls)
                if live is not None:
                    hb["u"].update(live.u)
                self._push_all(list(conns), self._frame(hb))
        for acc, conns in self.by_account.items():
            if conns:
                u = {ch: self.pu.get((acc, ch), 0) for ch in PRIVATE_CHANNELS}
                self._push_all(list(conns), self._frame({"type": "heartbeat", "account": acc, "u": u}))

    async def _heartbeats(self) -> None:
        while True:
            await self.clock.sleep(self.heartbeat_s)
            try:
                self.heartbeat()
            except Exception:  # never let the timer die
                log.exception("feed heartbeat failed")

    @property
    def heartbeat_task(self) -> asyncio.Task | None:
        return self._hb_task

    def start(self) -> None:
        if self._hb_task is None:
            task = asyncio.get_running_loop().create_task(self._heartbeats(), name="feeds-heartbeat")
            self._hb_task = supervise(task, "the feeds' heartbeat task", lambda: self._stopping_hb)

    def revoke(self, key_id: str) -> int:
        """Close (1008, with the reason) every connection authenticated with a revoked key."""
        gone = [c for c in self.conns if c.key_id == key_id and not c.closed]
        for c in gone:
            self.sends.cut(c, "the API key was revoked", slow=False)
        return len(gone)

    async def close(self, code: int = 1001, reason: str = "server shutting down", timeout: float = 2.0) -> None:
        """Close every connection (``code``, e.g. 1001 at shutdown), all at once: at most
        ``timeout`` seconds in all, then whoever has not answered is aborted."""
        if self._hb_task is not None:
            self._stopping_hb = True
            self._hb_task.cancel()
            await asyncio.gather(self._hb_task, return_exceptions=True)
            self._hb_task = None
        self.flush()
        self.sends.abort_cut()  # those cut off as too slow have their 1008 already
        conns = [c for c in self.conns if c.ws is not None and not c.closed]
        for c in conns:
            c.closed = True
        if conns:
            closing = [asyncio.ensure_future(c.ws.close(code=code, message=reason.encode()))  # type: ignore[union-attr]
                       for c in conns]
            _, pending = await asyncio.wait(closing, timeout=timeout)
            for f in pending:
                f.cancel()
            for c in conns:
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.abort()
            await asyncio.gather(*closing, return_exceptions=True)

    # ------------------------------------------------------------------ the WebSocket endpoint
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler: one subscriber connection."""
        ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=MAX_OP_BYTES, autoping=True)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": {"code": "MALFORMED", "message":
                                                f"{request.path} is a WebSocket endpoint: connect with an upgrade"}},
                                     status=400)
        await ws.prepare(request)
        self.stats["connections_total"] += 1
        c = Conn(self.sends, ws, request.transport, request.remote or "", key=self.stats["connections_total"])
        self.conns.add(c)
        try:
            self._push(c, {"type": "hello", **self.hello, "classes": sorted(self.feeds),
                           "channels": list(CHANNELS) + (list(LIVE_CHANNELS) if self.live else []),
                           "private": list(PRIVATE_CHANNELS) if self.private else []})
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if c.closed:
                        continue
                    self.op(c, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.conns.discard(c)
            self._drop(c)
            c.closed = True
        return ws

    def op(self, c: Conn, data: str | bytes) -> None:
        """Handle one client operation (answers and snapshots are queued on ``c``)."""
        rid: Any = None
        try:
            try:
                op = _ops.decode(data)
            except msgspec.DecodeError as e:
                raise OpError("MALFORMED", str(e)) from None
            rid = op.id
            wait = self.ops.take(c.key)
            if wait > 0:
                ms = int(wait * 1000) + 1
                raise OpError("RATE_LIMITED", f"too many operations; retry in {ms} ms", retry_after_ms=ms)
            if isinstance(op, SubscribeOp):
                self._subscribe(c, op)
            elif isinstance(op, UnsubscribeOp):
                self._unsubscribe(c, op)
            elif isinstance(op, AuthOp):
                self._auth(c, op)
            else:
                self._push(c, {"type": "pong", "id": rid, "time": self.clock.time()})
        except OpError as e:
            if rid is None:  # the id of what did not decode, when it can be read (docs/api.md)
                rid = request_id(data)
            self._push(c, {"type": "error", "id": rid, "code": e.code, "message": e.message, **e.extra})

    def _target(self, op: SubscribeOp | UnsubscribeOp) -> tuple[str, str, bool]:
        """(class or '', stream or channel, private?) of a (un)subscribe, or OpError."""
        if op.channel in PRIVATE_CHANNELS:
            if self.private is None:
                raise OpError("UNKNOWN_CHANNEL", f"private channels are not served here ({op.channel})")
            if op.gpu_class is not None or op.interval is not None or op.kind is not None:
                raise OpError("MALFORMED", "private channels take no class, interval or kind: they cover the "
                                           "account's orders in every class")
            return "", op.channel, True
        if op.channel in LIVE_CHANNELS:
            if op.interval is not None or op.kind is not None:
                raise OpError("MALFORMED", f"{op.channel} takes no interval or kind")
            if not self.live:
                raise OpError("UNKNOWN_CHANNEL", f"{op.channel} is computed from the live book: it is not "
                                                 "replayed (docs/feeds.md, \"Products\")")
        stream = op.channel if op.channel in LIVE_CHANNELS else stream_name(op.channel, op.interval, op.kind)
        if stream is None:
            if op.channel in CHANNELS and op.kind is not None and op.channel not in KIND_CHANNELS:
                raise OpError("MALFORMED", f"{op.channel} takes no kind (only {' and '.join(KIND_CHANNELS)} do)")
            if op.channel in CHANNELS and op.kind is not None and op.kind not in KINDS:
                raise OpError("MALFORMED", f"kind {op.kind!r} is not one of {', '.join(KINDS)}")
            if op.channel in CHANNELS:
                raise OpError("MALFORMED", f"interval {op.interval!r} is not one of 1m, 1h"
                              if op.channel == "candles" else f"{op.channel} takes no interval")
            served = CHANNELS + (LIVE_CHANNELS if self.live else ()) + PRIVATE_CHANNELS
            raise OpError("UNKNOWN_CHANNEL", f"no channel {op.channel!r}; channels: {', '.join(served)}")
        if op.gpu_class is None:
            raise OpError("MALFORMED", f"channel {op.channel} needs a class")
        if op.gpu_class not in self.feeds:
            raise OpError("UNKNOWN_CLASS", f"no GPU class {op.gpu_class!r}; classes: {', '.join(sorted(self.feeds))}")
        return op.gpu_class, stream, False

    def _subscribe(self, c: Conn, op: SubscribeOp) -> None:
        cls, stream, private = self._target(op)
        first = not c.subs
        if private:
            if not c.account:
                raise OpError("NOT_AUTHENTICATED", "private channels need the auth message first "
                                                   "(the same signed message as /v1/ws)")
            if (c.account, stream) not in c.subs and len(c.subs) >= self.max_subscriptions:
                raise OpError("TOO_MANY_SUBSCRIPTIONS", f"at most {self.max_subscriptions} per connection")
            self.subscribe_private(c, stream)
            assert self.private is not None
            snap = self.private.private_snapshot(c.account, stream)
            snap["u"] = self.pu.get((c.account, stream), 0)
            self._push(c, {"type": "subscribed", "id": op.id, "channel": op.channel})
            self._push(c, snap)
        else:
            if (cls, stream) not in c.subs and len(c.subs) >= self.max_subscriptions:
                raise OpError("TOO_MANY_SUBSCRIPTIONS", f"at most {self.max_subscriptions} per connection")
            ack: dict[str, Any] = {"type": "subscribed", "id": op.id, "channel": op.channel, "class": cls}
            if op.channel == "candles":
                ack["interval"] = stream.split(":")[1]
            if op.kind is not None:
                ack["kind"] = op.kind
            if stream in LIVE_CHANNELS:
                self._subscribe_live(c, cls, stream, ack)
            else:
                self.subscribe(c, cls, stream)
                self._push(c, ack)
                self._push(c, self.feeds[cls].snapshot(stream))
        if first and self.on_first_subscribe is not None:
            self.on_first_subscribe(c)

    def _subscribe_live(self, c: Conn, cls: str, stream: str, ack: dict[str, Any]) -> None:
        """A products stream: its snapshot as last computed; never computed yet, the snapshot
        follows the first computation (`deliver_live`) and no update comes before it."""
        live = self.live[cls]
        self._push(c, ack)
        snap = live.snapshot(stream)
        if snap is None:
            if (c, stream) not in live.waiting:
                live.waiting.append((c, stream))
        else:
            self.subscribe(c, cls, stream)
            self._push(c, snap)
        if self.on_live is not None:
            self.on_live(cls)  # recomputed now if the book moved since

    def deliver_live(self, cls: str) -> None:
        """After a class's products were computed: the snapshots of those waiting for one."""
        live = self.live[cls]
        waiting, live.waiting = live.waiting, []
        for c, stream in waiting:
            if not c.closed:
                self.subscribe(c, cls, stream)
                self._push(c, live.snapshot(stream))  # type: ignore[arg-type]

    def _unsubscribe(self, c: Conn, op: UnsubscribeOp) -> None:
        cls, stream, private = self._target(op)
        done = self.unsubscribe_private(c, stream) if private else self.unsubscribe(c, cls, stream)
        live = self.live.get(cls)
        if live is not None and (c, stream) in live.waiting:
            live.waiting.remove((c, stream))
            done = True
        ack: dict[str, Any] = {"type": "unsubscribed", "id": op.id, "channel": op.channel, "was_subscribed": done}
        if not private:
            ack["class"] = cls
        self._push(c, ack)

    def _auth(self, c: Conn, op: AuthOp) -> None:
        if self.private is None:
            raise OpError("UNKNOWN_CHANNEL", "no private channels here")
        if c.account:
            raise OpError("ALREADY_AUTHENTICATED", "this connection is authenticated already")
        account, role, key_id = self.private.authenticate(op)
        c.account, c.role, c.key_id = account, role, key_id
        self._push(c, {"type": "authenticated", "id": op.id, "account": account, "role": role})
