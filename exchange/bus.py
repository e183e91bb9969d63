"""The one bus interface every part publishes and subscribes through (docs/architecture.md).

In process: subscribers are called with each durable batch, in order, on the event loop.
Other processes follow the journal itself, not the bus: `exchange.stream` (the Redis stream
``{prefix}:journal`` and the journal-tail endpoint), read from the journal files off the order
path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
