"""The one bus interface every part publishes and subscribes through (docs/architecture.md).

In process by default: subscribers are called with each durable batch, in order, on the
event loop.  `RedisBus` also appends every event to a Redis stream per class
(``{prefix}:events:{CLASS}``, the streams settlement's consumer group reads) and the
lease-making ones — trades, preemptions, releases — to ``{prefix}:trades:{CLASS}``, so that
other processes can follow the market.  Redis is a transport, not the system of record:
the journal is; a Redis outage never blocks the engine (the backlog is bounded and logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from orderbook.codec import events_to_json
from orderbook.types import CMD_CLOCK, EV_PREEMPTED, EV_RELEASED, EV_TRADE

log = logging.getLogger("gpux.bus")


@dataclass
class Published:
    """One durable batch: a Result per journal entry (exchange.engine.Result), the events
    array of each class that produced events, and the session each entry came from."""

    results: list[Any]
    events: dict[str, np.ndarray]
    origins: list[Any]
    answers: list[Any] = field(default_factory=list)  # exchange.entries.Prov entries (provisioning, R18)
    funds: list[Any] = field(default_factory=list)  # exchange.entries.Fund entries (deposits, withdrawals)


Subscriber = Callable[[Published], None]


class Bus:
    """In-process fan-out of durable batches."""

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subs.append(fn)
        return lambda: self._subs.remove(fn) if fn in self._subs else None

    def publish(self, batch: Published) -> None:
        for fn in list(self._subs):
            try:
                fn(batch)
            except Exception:  # one broken subscriber must not stop the engine or the others
                log.exception("bus subscriber %r failed", fn)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> str:
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return []


LEASE_EVENTS = (EV_TRADE, EV_PREEMPTED, EV_RELEASED)
_enc = msgspec.json.Encoder()


class RedisBus(Bus):
    """In process, and also to Redis Streams (XADD, approximate MAXLEN)."""

    def __init__(self, url: str, prefix: str = "gpux", maxlen: int = 1_000_000, backlog: int = 10_000) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self._queue: asyncio.Queue[tuple[dict[str, np.ndarray], list[Any], list[tuple], list[tuple]]] = \
            asyncio.Queue(maxsize=backlog)
        # the last event seq of each book sent so far: a clock command is streamed as "time T
        # after event seq X" (the server sets this from the recovered books before start)
        self.book_seqs: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._redis: Any = None
        self.dropped = 0
        self.sent = 0

    def events_key(self, book: str) -> str:
        return f"{self.prefix}:events:{book}"

    def trades_key(self, book: str) -> str:
        return f"{self.prefix}:trades:{book}"

    def deposits_key(self) -> str:
        return f"{self.prefix}:deposits"

    async def deposits_sent(self) -> int:
        """The last account store deposit row sent to `{prefix}:deposits` (0: none): a restarted
        exchange sends only the rows after it."""
        v = await self._redis.get(self.deposits_key() + ":last")
        return int(v) if v else 0

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.url)
        await self._redis.ping()
        self._task = asyncio.create_task(self._pump(), name="redis-bus")

    def publish(self, batch: Published) -> None:
        super().publish(batch)
        deposits = [(int(f.ref.split(":")[1]), f.account, f.amount, f.time * 1000) for f in batch.funds
                    if f.op == "deposit" and f.ref.startswith("accounts:")]
        if deposits:  # settlement's consumer group applies each once, by its row
            self.publish_deposits(deposits)
        clocks = self._clocks(batch)
        if batch.events or batch.answers or clocks:
            self._put((batch.events, batch.answers, [], clocks))

    def _clocks(self, batch: Published) -> list[tuple[str, int, int]]:
        """(book, time, after) of the batch's clock commands: settlement's consumer moves the
        class's clock to ``time`` right after event ``after`` (metering, lease ends and
        provisioning timeouts happen between events, as in the exchange's own ledger)."""
        seqs = self.book_seqs
        out: list[tuple[str, int, int]] = []
        for r in batch.results:
            if r is None:
                continue
            if r.events:
                seqs[r.book] = r.events[-1].seq
            if r.command is not None and r.command.type == CMD_CLOCK:
                out.append((r.book, r.command.time, seqs.get(r.book, 0)))
        return out

    def publish_deposits(self, rows: list[tuple[int, int, int, int]]) -> None:
        """Deposits the exchange journaled (account store rows: id, account, µ$, time ms),
        for settlement's consumer group (`{prefix}:deposits`; applied once each by its id)."""
        if rows:
            self._put(({}, [], rows, []))

    def _put(self, item: tuple[dict[str, np.ndarray], list[Any], list[tuple], list[tuple]]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("redis bus backlog full: a batch was not sent to Redis "
                      "(the journal has it; followers must catch up from it)")

    async def _pump(self) -> None:
        while True:
            events, answers, deposits, clocks = await self._queue.get()
            try:
                pipe = self._redis.pipeline(transaction=False)
                for book, arr in events.items():
                    for d in events_to_json(arr):
                        fields = {"seq": d["seq"], "type": d["type"], "event": _enc.encode(d)}
                        pipe.xadd(self.events_key(book), fields, maxlen=self.maxlen, approximate=True)
                        if d["type"] in ("trade", "preempted", "released"):
                            pipe.xadd(self.trades_key(book), fields, maxlen=self.maxlen, approximate=True)
                # a provisioning answer goes to its class's stream right after the event it
                # follows (``after``): settlement applies it between that event and the next
                for a in answers:
                    d = {"book": a.book, "trade_id": a.trade_id, "ready": a.ready, "time": a.time, "after": a.after,
                         "connection": a.connection, "reason": a.reason}
                    pipe.xadd(self.events_key(a.book), {"seq": a.after, "type": "provisioned", "event": _enc.encode(d)},
                              maxlen=self.maxlen, approximate=True)
                for book, t, after in clocks:
                    pipe.xadd(self.events_key(book), {"seq": after, "type": "clock",
                                                      "event": _enc.encode({"book": book, "time": t, "after": after})},
                              maxlen=self.maxlen, approximate=True)
                for row, account, amount, created_ms in deposits:
                    pipe.xadd(self.deposits_key(), {"id": f"accounts:{row}", "account": account, "amount": amount,
                                                    "time": created_ms // 1000}, maxlen=self.maxlen, approximate=True)
                if deposits:  # rows come in order: the last one sent (deposits_sent)
                    pipe.set(self.deposits_key() + ":last", deposits[-1][0])
                await pipe.execute()
                self.sent += sum(len(a) for a in events.values())
            except Exception:
                log.exception("redis bus: could not send a batch of events")
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        await self._queue.join()

    def health(self) -> str:
        """"ok" while the task sending to Redis runs."""
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            return f"the Redis sender stopped: {exc!r}"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_redis_sent_events_total", self.sent, "events sent to Redis streams", "counter"),
                ("gpux_redis_dropped_batches_total", self.dropped, "batches not sent to Redis (backlog full)",
                 "counter"),
                ("gpux_redis_queued_batches", self._queue.qsize(), "batches waiting to be sent to Redis", "gauge")]

    async def close(self) -> None:
        if self._task is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout=5)
            except TimeoutError:
                log.error("redis bus: %d batches not sent at shutdown", self._queue.qsize())
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
