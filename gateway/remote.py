"""The way in to a core in another process: what an order gateway (``gpux gateway``) uses as its
sequencer (issue 15).

    remote = RemoteSequencer(url, prefix, engine)      # engine: the gateway's replica (exchange.follow)
    follower.origins = remote.origins                  # pushes skip the session a command came from
    bus.subscribe(remote.on_batch)                     # answers wait until the replica has their seq
    await remote.start()
    fut = remote.submit(Request(...))                  # as with the core's own sequencer

`post`/`submit` append the request to ``{prefix}:requests`` (`exchange.inbox`; several per round
trip); a reader follows this gateway's reply stream ``{prefix}:replies:{id}``.  An answer carries
the journal seq the core stood at; it is handed to the client only once the gateway's own replica
of the journal has reached that seq, so the orders, balances and pushes it shows afterwards
include what was answered.  A request the core does not answer within `TIMEOUT_S` (the core died
and its standby is taking over, Redis unreachable) gets UNAVAILABLE: the client sends it again
with the same client order id, which the exchange answers once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from exchange.entries import Cmd
from exchange.errors import ApiError
from exchange.inbox import decode_answer, encode_request, replies_key, requests_key
from exchange.sequencer import submit_through
from exchange.supervise import stop_tasks, supervise
from orderbook.types import CMD_ASK, CMD_BID, COMMAND_DTYPE

log = logging.getLogger("gpux.gateway")
TIMEOUT_S = 10.0
LEADER_POLL_S = 0.2
MAX_ENDED = 200_000  # ended leases whose settlement side an order gateway remembers
REQUESTS_MAXLEN = 100_000


def core_key(prefix: str) -> str:
    """Where the core that serves says its URL is (for what an order gateway forwards to it)."""
    return f"{prefix}:core-url"


def command_key(account: int, rec: bytes, coid: str) -> tuple[int, Any]:
    """What ties a journaled command to the request it came from: the client order id, else the
    record without what the core stamps (its time, and a new order's id)."""
    if coid:
        return account, coid
    a = np.frombuffer(rec, dtype=COMMAND_DTYPE).copy()
    a["time"] = 0
    if int(a["type"][0]) in (CMD_BID, CMD_ASK):
        a["oid"] = 0
    return account, a.tobytes()


class _BookTimes(Mapping[str, int]):
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getitem__(self, name: str) -> int:
        return self.engine.book_time(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.engine.books)

    def __len__(self) -> int:
        return len(self.engine.books)


class RemoteSequencer:
    """A sequencer's `post`, `submit`, `running` and `times`, over Redis to the core."""

    def __init__(self, url: str, prefix: str, engine: Any, *, timeout_s: float = TIMEOUT_S,
                 block_ms: int = 1000) -> None:
        self.url = url
        self.prefix = prefix
        self.engine = engine
        self.id = uuid.uuid4().hex[:16]
        self.requests = requests_key(prefix)
        self.replies = replies_key(prefix, self.id)
        self.timeout_s = timeout_s
        self.block_ms = block_ms
        self._next = 0
        self._pending: dict[bytes, tuple[Any, float, tuple[int, Any] | None]] = {}  # id -> (request, sent, key)
        self._by_key: dict[tuple[int, Any], Any] = {}  # command key -> origin session
        self._out: list[tuple[bytes, bytes]] = []
        self._wake = asyncio.Event()
        self._held: list[tuple[int, int, bytes, Any]] = []  # (seq, n, id, answer): waiting for the replica
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._redis: Any = None
        self._reader: Any = None
        self.connected = False
        self.sent = 0
        self.answered = 0
        self.timeouts = 0
        self.failovers = 0  # leader changes seen
        self.resent = 0  # requests sent again after one
        self.errors = 0
        self.last_error = ""
        self.lag_s = 0.0  # the last answer's round trip

    # ------------------------------------------------------------------ as a sequencer
    @property
    def running(self) -> bool:
        return not self._closing and self.connected

    @property
    def times(self) -> Mapping[str, int]:
        """Each class's engine time, as the replica has it (read per bid: no copy)."""
        return _BookTimes(self.engine)

    def request_snapshot(self) -> None:
        raise ApiError("CORE_ONLY")

    def submit(self, req: Any) -> asyncio.Future:
        return submit_through(self.post, req)

    def post(self, req: Any) -> None:
        if not self.running:
            raise ApiError("UNAVAILABLE", "this gateway cannot reach the core (Redis unreachable); retry shortly")
        self._next += 1
        rid = str(self._next).encode()
        key = command_key(req.account, np.array([req.cmd], dtype=COMMAND_DTYPE).tobytes(), req.coid) \
            if req.cmd is not None else None
        self._pending[rid] = (req, time.monotonic(), key)
        if key is not None and req.origin is not None:
            self._by_key[key] = req.origin
        self._out.append((rid, encode_request(req)))
        self._wake.set()

    # ------------------------------------------------------------------ the replica's side
    def origins(self, entries: list[Any]) -> list[Any]:
        """The session each journal entry came from, if it came through this gateway (else None)."""
        out: list[Any] = []
        by_key = self._by_key
        for e in entries:
            if type(e) is Cmd and by_key:
                account = int(np.frombuffer(e.rec, dtype=COMMAND_DTYPE)["account"][0])
                out.append(by_key.pop(command_key(account, e.rec, e.coid), None))
            else:
                out.append(None)
        return out

    def on_batch(self, _batch: Any) -> None:
        """The replica applied a batch: answers it now holds go out."""
        self._release()

    def _release(self) -> None:
        seq = self.engine.seq
        held = self._held
        while held and held[0][0] <= seq:
            _, _, rid, answer = heapq.heappop(held)
            self._resolve(rid, answer)

    def _resolve(self, rid: bytes, answer: Any) -> None:
        got = self._pending.pop(rid, None)
        if got is None:
            return  # timed out already
        req, sent, key = got
        if key is not None:
            self._by_key.pop(key, None)
        self.answered += 1
        self.lag_s = time.monotonic() - sent
        req.resolve(answer)

    # ------------------------------------------------------------------ the loops
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
        self._reader = aioredis.from_url(self.url, socket_timeout=self.block_ms / 1000 + 5, socket_connect_timeout=2)
        try:
            await self._redis.ping()
            self.connected = True
        except Exception as e:  # noqa: BLE001 - retried by the sender
            self._failed(e)
        stopping = lambda: self._closing  # noqa: E731
        self._tasks = [supervise(asyncio.create_task(self._send(), name="request-sender"), "the request sender",
                                 stopping),
                       supervise(asyncio.create_task(self._read(), name="reply-reader"), "the reply reader", stopping),
                       supervise(asyncio.create_task(self._expire(), name="request-timeouts"), "the request timeouts",
                                 stopping),
                       supervise(asyncio.create_task(self._watch_leader(), name="leader-watch"), "the leader watch",
                                 stopping)]

    async def _send(self) -> None:
        import redis as redis_lib

        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            out, self._out = self._out, []
            if not out:
                continue
            now = str(int(time.time() * 1000))
            try:
                pipe = self._redis.pipeline(transaction=False)
                for rid, blob in out:
                    pipe.xadd(self.requests, {"g": self.id, "i": rid, "t": now, "r": blob},
                              maxlen=REQUESTS_MAXLEN, approximate=True)
                await pipe.execute()
                self.sent += len(out)
                self.connected = True
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                self._failed(e)
                for rid, _ in out:  # not sent: answered now, the client retries
                    self._resolve(rid, ApiError("UNAVAILABLE", "this gateway cannot reach the core (Redis "
                                                               "unreachable); retry with the same client_order_id"))

    async def _read(self) -> None:
        import redis as redis_lib

        last = "0-0"
        backoff = 0.1
        while not self._closing:
            try:
                reply = await self._reader.xread({self.replies: last}, count=512, block=self.block_ms)
                self.connected = True
                backoff = 0.1
            except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
                self._failed(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    seq = int(fields[b"s"])
                    answer = decode_answer(fields)
                    if seq <= self.engine.seq:
                        self._resolve(fields[b"i"], answer)
                    else:
                        heapq.heappush(self._held, (seq, self.answered + len(self._held), fields[b"i"], answer))
            self._release()

    async def _expire(self) -> None:
        while not self._closing:
            await asyncio.sleep(0.5)
            cutoff = time.monotonic() - self.timeout_s
            late = [rid for rid, (_, sent, _) in self._pending.items() if sent < cutoff]
            for rid in late:
                self.timeouts += 1
                self._resolve(rid, ApiError("UNAVAILABLE", f"the core did not answer within {self.timeout_s:g} s "
                                                           "(a failover?); retry with the same client_order_id"))

    async def _watch_leader(self) -> None:
        """When another core takes the leader's lease (exchange.lease), what is in flight may have
        been read by the old one and never answered: requests with a client order id are sent
        again (the exchange answers one once), the others are answered UNAVAILABLE."""
        from exchange.lease import leader_key

        key = leader_key(self.prefix)
        leader = None
        while not self._closing:
            await asyncio.sleep(LEADER_POLL_S)
            try:
                got = await self._redis.get(key)
            except Exception:  # noqa: BLE001 - Redis down: the sender and reader report it
                continue
            if got is None:
                continue
            if leader is not None and got != leader:
                self.failovers += 1
                log.warning("the core's leader changed (%s): in-flight requests sent again", got.decode())
                self._resend()
            leader = got

    def _resend(self) -> None:
        now = time.monotonic()
        for rid, (req, _, key) in list(self._pending.items()):
            if req.coid:
                self._pending[rid] = (req, now, key)
                self._out.append((rid, encode_request(req)))
                self.resent += 1
            else:
                self._resolve(rid, ApiError("UNAVAILABLE", "the core failed over while this request was in flight: "
                                                           "it may or may not have been applied (look at your "
                                                           "orders; a client_order_id makes a request safe to send "
                                                           "again)"))
        self._wake.set()

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        self.connected = False
        if repr(e) != self.last_error:
            log.error("order gateway: Redis unreachable (%s); retrying", e)
        self.last_error = repr(e)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await stop_tasks(self._tasks, self._redis, self._reader)
        for rid in list(self._pending):
            self._resolve(rid, ApiError("UNAVAILABLE"))

    # ------------------------------------------------------------------ reporting
    def health(self) -> str:
        for t in self._tasks:
            if t.done() and not self._closing:
                return f"the order gateway's {t.get_name()} task stopped"
        if not self.connected:
            return f"cannot reach the core's Redis: {self.last_error}"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_remote_requests_total", self.sent, "requests sent to the core", "counter"),
                ("gpux_remote_answers_total", self.answered, "answers handed to clients", "counter"),
                ("gpux_remote_timeouts_total", self.timeouts, "requests the core did not answer in time", "counter"),
                ("gpux_remote_failovers_total", self.failovers, "changes of the core's leader seen", "counter"),
                ("gpux_remote_resent_total", self.resent, "requests sent again after a failover", "counter"),
                ("gpux_remote_pending", len(self._pending), "requests waiting for the core", "gauge"),
                ("gpux_remote_held", len(self._held), "answers waiting for the replica to reach their seq", "gauge"),
                ("gpux_remote_last_answer_seconds", round(self.lag_s, 6), "the last answer's round trip", "gauge"),
                ("gpux_remote_errors_total", self.errors, "Redis errors", "counter")]


class ReplicaLeases:
    """Settlement's side of each lease (``GET /v1/leases``) in an order gateway, from its replica's
    money (the core's clearing state: status, ready time, what was paid) and the provider agents'
    connection details seen in the journal (``Prov`` entries: at start, in the replica's own
    journal; then on its bus)."""

    def __init__(self, engine: Any, bus: Any, journal_dir: Any, agents: bool = True) -> None:
        from exchange.entries import Prov, decode_entry
        from exchange.journal import read

        self.engine = engine
        self.agents = agents  # provisioning by providers' agents: a pending lease whose start came is provisioning
        self.connections: dict[str, Any] = {}
        # the last state of leases that left the replica's money (ended, failed): the core's ledger keeps
        # them, the money does not; those that ended before this process started are not known here
        self.ended: OrderedDict[str, Any] = OrderedDict()
        engine.money.on_changes = self._changes
        for _, payload in read(journal_dir):
            e = decode_entry(payload)
            if type(e) is Prov:
                self._answer(e)
        bus.subscribe(self._on_batch)

    def _changes(self, changes: Any) -> None:
        money = self.engine.money.engine
        for cls, leases in changes.leases.items():
            for x in leases:
                if money.lease(cls, x.trade_id) is None:
                    self.ended[x.ref] = x
                    if len(self.ended) > MAX_ENDED:
                        self.ended.popitem(last=False)

    def _answer(self, a: Any) -> None:
        if a.connection:
            import msgspec

            self.connections[f"{a.book}-{a.trade_id}"] = msgspec.json.decode(a.connection)

    def _on_batch(self, batch: Any) -> None:
        for a in batch.answers:
            self._answer(a)

    async def synced(self) -> None:
        return None  # the replica has what was answered through this gateway (answers wait for it)

    def view(self, ref: str) -> dict[str, Any]:
        cls, _, tid = ref.rpartition("-")
        x = self.engine.money.engine.lease(cls, int(tid)) or self.ended.get(ref)
        if x is None:
            return {"status": "unknown"}
        v = x.view()
        status = v["status"]
        if status == "pending" and self.agents and x.start <= self.engine.book_time(cls):
            status = "provisioning"  # as the core's provisioning marks it when it hands the task out
        return {"status": status, "ready_at": v["ready_at"], "failed_reason": v["failed_reason"],
                "connection": self.connections.get(ref), "paid": v["paid"], "fee": v["buyer_fee"],
                "refunded": v["refunded"], "earned": v["earned"]}
