"""The one bus interface every part publishes and subscribes through (ARCHITECTURE.md).

In process by default: subscribers are called with each durable batch, in order, on the
event loop.  `RedisBus` also appends every event to a Redis stream per class
(``{prefix}:events:{CLASS}``) and the lease-making ones — trades, preemptions, releases —
to ``{prefix}:trades:{CLASS}``, the stream settlement's consumer group reads, so that
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
from orderbook.types import EV_PREEMPTED, EV_RELEASED, EV_TRADE

log = logging.getLogger("gpux.bus")


@dataclass
class Published:
    """One durable batch: a Result per journal entry (exchange.engine.Result), the events
    array of each class that produced events, and the session each entry came from."""

    results: list[Any]
    events: dict[str, np.ndarray]
    origins: list[Any]
    answers: list[Any] = field(default_factory=list)  # exchange.engine.Prov entries (provisioning, R18)


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


LEASE_EVENTS = (EV_TRADE, EV_PREEMPTED, EV_RELEASED)
_enc = msgspec.json.Encoder()


class RedisBus(Bus):
    """In process, and also to Redis Streams (XADD, approximate MAXLEN)."""

    def __init__(self, url: str, prefix: str = "gpux", maxlen: int = 1_000_000, backlog: int = 10_000) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self._queue: asyncio.Queue[dict[str, np.ndarray]] = asyncio.Queue(maxsize=backlog)
        self._task: asyncio.Task | None = None
        self._redis: Any = None
        self.dropped = 0
        self.sent = 0

    def events_key(self, book: str) -> str:
        return f"{self.prefix}:events:{book}"

    def trades_key(self, book: str) -> str:
        return f"{self.prefix}:trades:{book}"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.url)
        await self._redis.ping()
        self._task = asyncio.create_task(self._pump(), name="redis-bus")

    def publish(self, batch: Published) -> None:
        super().publish(batch)
        if batch.events:
            try:
                self._queue.put_nowait(batch.events)
            except asyncio.QueueFull:
                self.dropped += 1
                log.error("redis bus backlog full: a batch of events was not sent to Redis "
                          "(the journal has it; followers must catch up from it)")

    async def _pump(self) -> None:
        while True:
            events = await self._queue.get()
            try:
                pipe = self._redis.pipeline(transaction=False)
                for book, arr in events.items():
                    for rec, d in zip(arr.tolist(), events_to_json(arr), strict=True):
                        fields = {"seq": d["seq"], "type": d["type"], "event": _enc.encode(d)}
                        pipe.xadd(self.events_key(book), fields, maxlen=self.maxlen, approximate=True)
                        if rec and d["type"] in ("trade", "preempted", "released"):
                            pipe.xadd(self.trades_key(book), fields, maxlen=self.maxlen, approximate=True)
                await pipe.execute()
                self.sent += sum(len(a) for a in events.values())
            except Exception:
                log.exception("redis bus: could not send a batch of events")
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        await self._queue.join()

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
