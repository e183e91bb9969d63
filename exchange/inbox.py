"""Requests from order gateways in other processes, over Redis Streams (issue 15).

    inbox = RequestInbox(sequencer, engine, url, prefix)     # in the core (gpux serve --redis URL)
    await inbox.start(); ...; await inbox.close()

An order gateway (``gpux gateway --redis URL``, `gateway.remote`) authenticates and checks a
request at the edge and appends it to the stream ``{prefix}:requests``: fields ``g`` (the
gateway's id), ``i`` (its request id), ``t`` (when it was sent, ms) and ``r`` (the request,
`encode_request`).  The core reads that stream, hands each request to its sequencer like one of
its own sessions' and, once answered, appends the answer to the gateway's reply stream
``{prefix}:replies:{g}``: ``i``, ``s`` (the journal seq the exchange stood at: the gateway
answers its client only once its own replica of the journal has it, so that what it shows next
includes it) and ``a`` (the answer dict) or ``e`` (an error: code, sentence, status, extra).

The core remembers how far it read in ``{prefix}:requests:read`` (written before the requests
are handed on), so a core that takes over after a failover goes on with the requests the old one
never read; a request older than `MAX_AGE_MS` is dropped (its gateway has answered UNAVAILABLE
already, and the client retries it by its client order id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from exchange.entries import decode_entry, encode_entry
from exchange.errors import ApiError
from exchange.sequencer import Request
from exchange.supervise import stop_tasks, supervise
from orderbook.types import Command

log = logging.getLogger("gpux.inbox")
MAX_AGE_MS = 8_000  # requests older than this when read are dropped: their gateway gave up on them
REPLY_MAXLEN = 10_000
REPLY_TTL_S = 3600  # a gateway's reply stream is dropped an hour after its last reply
# SET KEYS[1] ARGV[1] (the inbox's cursor), unless ARGV[2] (a leader's token) is given and KEYS[2] (the
# lease) no longer holds it: returns 1 when set
_ADVANCE = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def requests_key(prefix: str) -> str:
    return f"{prefix}:requests"


def replies_key(prefix: str, gateway: str) -> str:
    return f"{prefix}:replies:{gateway}"


def encode_request(req: Any) -> bytes:
    """A sequencer `Request` (``exchange.sequencer.Request``) without its reply and origin."""
    return _enc.encode([req.book, list(req.cmd) if req.cmd is not None else None, req.account, req.coid, req.admin,
                        encode_entry(req.prov) if req.prov is not None else None,
                        encode_entry(req.fund) if req.fund is not None else None])


def decode_request(blob: bytes) -> dict[str, Any]:
    """The fields of a `Request` (keyword arguments), from `encode_request`'s bytes."""
    book, cmd, account, coid, admin, prov, fund = _dec.decode(blob)
    return {"book": book, "cmd": Command(*cmd) if cmd is not None else None, "account": account, "coid": coid,
            "admin": admin, "prov": decode_entry(prov) if prov is not None else None,
            "fund": decode_entry(fund) if fund is not None else None}


def encode_answer(value: Any) -> dict[str, bytes]:
    if isinstance(value, ApiError):
        return {"e": _enc.encode([value.code, value.message, value.status, value.extra])}
    if isinstance(value, BaseException):
        return {"e": _enc.encode(["INTERNAL", "internal error; the request may not have been applied", 500, {}])}
    return {"a": _enc.encode(value)}


def decode_answer(fields: dict[bytes, bytes]) -> Any:
    """The answer dict, or an ApiError."""
    if b"e" in fields:
        code, message, status, extra = _dec.decode(fields[b"e"])
        return ApiError(code, message, status, **extra)
    return _dec.decode(fields[b"a"])


class RequestInbox:
    """The core's side: ``{prefix}:requests`` into the sequencer, answers to each gateway's stream."""

    def __init__(self, sequencer: Any, engine: Any, url: str, prefix: str, *, block_ms: int = 1000,
                 count: int = 512, max_age_ms: int = MAX_AGE_MS, fence: tuple[str, str] | None = None) -> None:
        self.sequencer = sequencer
        self.engine = engine
        self.url = url
        self.prefix = prefix
        self.key = requests_key(prefix)
        self.cursor_key = f"{self.key}:read"
        self.block_ms = block_ms
        self.count = count
        self.max_age_ms = max_age_ms
        # (lease key, token) of a leader with a standby: it takes requests only while it holds the
        # lease (checked with the cursor's update, in Redis), so a deposed leader woken from a pause
        # cannot take requests away from the new one
        self.fence = fence
        self.deposed = False
        self.on_deposed: Any = None  # called once with why, when another core took the lease
        self.received = 0
        self.answered = 0
        self.dropped = 0  # too old when read
        self.errors = 0
        self.last_error = ""
        self._out: list[tuple[str, dict[str, Any]]] = []
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._redis: Any = None
        self._reader: Any = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
        self._reader = aioredis.from_url(self.url, socket_timeout=self.block_ms / 1000 + 5, socket_connect_timeout=2)
        self._advance = self._redis.register_script(_ADVANCE)
        stopping = lambda: self._closing or self.deposed  # noqa: E731
        self._tasks = [supervise(asyncio.create_task(self._read(), name="request-inbox"), "the request inbox",
                                 stopping),
                       supervise(asyncio.create_task(self._send(), name="reply-sender"), "the reply sender", stopping)]

    async def _read(self) -> None:
        import redis as redis_lib

        last = None
        backoff = 0.1
        while not self._closing:
            try:
                if last is None:
                    got = await self._redis.get(self.cursor_key)
                    last = got.decode() if got is not None else "$"
                reply = await self._reader.xread({self.key: last}, count=self.count, block=self.block_ms)
                backoff = 0.1
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                self._failed(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            last = entries[-1][0].decode()
            try:  # read: a core that takes over starts after it
                fence_key, token = self.fence or ("", "")
                taken = await self._advance(keys=[self.cursor_key, fence_key or self.cursor_key], args=[last, token])
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                self._failed(e)
                taken = 1
            if not taken:
                self.deposed = True
                why = "another core holds the leader's lease; the request inbox takes no more requests"
                log.error("request inbox: %s", why)
                if self.on_deposed is not None:
                    self.on_deposed(why)
                return
            now = int(time.time() * 1000)
            for _, fields in entries:
                self._take(fields, now)

    def _take(self, fields: dict[bytes, bytes], now_ms: int) -> None:
        gw, rid = fields[b"g"].decode(), fields[b"i"]
        self.received += 1
        if now_ms - int(fields.get(b"t", b"0")) > self.max_age_ms:
            self.dropped += 1
            return
        try:
            kw = decode_request(fields[b"r"])
        except Exception as e:  # noqa: BLE001 - a gateway of another version: say so to it
            self._reply(gw, rid, ApiError("MALFORMED", f"the core could not decode the request: {e}"))
            return
        req = Request(**kw, origin=("gateway", gw), reply=lambda v: self._reply(gw, rid, v))
        try:
            self.sequencer.post(req)
        except ApiError as e:
            self._reply(gw, rid, e)

    def _reply(self, gw: str, rid: bytes, value: Any) -> None:
        self._out.append((gw, {"i": rid, "s": self.engine.seq, **encode_answer(value)}))
        self._flush.set()

    async def _send(self) -> None:
        import redis as redis_lib

        while not self._closing:
            await self._flush.wait()
            self._flush.clear()
            out, self._out = self._out, []
            if not out:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for gw, fields in out:
                    key = replies_key(self.prefix, gw)
                    pipe.xadd(key, fields, maxlen=REPLY_MAXLEN, approximate=True)
                for gw in {gw for gw, _ in out}:
                    pipe.expire(replies_key(self.prefix, gw), REPLY_TTL_S)
                await pipe.execute()
                self.answered += len(out)
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                # answers lost: their gateways time out and answer UNAVAILABLE; clients retry by client order id
                self._failed(e)

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        if repr(e) != self.last_error:
            log.error("request inbox: Redis unreachable (%s); retrying", e)
        self.last_error = repr(e)

    async def close(self) -> None:
        self._closing = True
        self._flush.set()
        await stop_tasks(self._tasks, self._redis, self._reader)

    def health(self) -> str:
        for t in self._tasks:
            if t.done() and not self._closing:
                return f"the request inbox's {t.get_name()} task stopped"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_inbox_requests_total", self.received, "requests read from order gateways", "counter"),
                ("gpux_inbox_answers_total", self.answered, "answers sent to order gateways", "counter"),
                ("gpux_inbox_dropped_total", self.dropped, "requests too old when read (their gateway gave up)",
                 "counter"),
                ("gpux_inbox_errors_total", self.errors, "Redis errors", "counter")]
