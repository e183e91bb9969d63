"""Time, injected: every part that reads the clock or waits on a timer takes a `Clock`.

    clock = WallClock()                     # production: the system's clock and asyncio's timers
    clock = SimClock(1_767_225_600)         # tests: time moves only when the test says so
    await clock.sleep(1.0)                  # a timer
    clock.call_later(0.025, fn)             # a callback timer
    sim.advance(3600)                       # runs every timer due within the hour, in order

Engine time is not this: it moves only by journaled clock commands (R4), which the sequencer
stamps with ``clock.time()``.  So a test that runs the whole exchange on a `SimClock` decides
when leases end, orders expire and metering happens, and nothing in it waits for real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the exchange needs of time."""

    def time(self) -> int:
        """Wall-clock seconds since the epoch (UTC), whole."""
        ...

    def time_ms(self) -> int:
        """Wall-clock milliseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, rate limits)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, fn: Callable[[], Any]) -> Timer: ...


class WallClock:
    """The system's clock; timers are asyncio's."""

    def time(self) -> int:
        return int(_time.time())

    def time_ms(self) -> int:
        return _time.time_ns() // 1_000_000

    monotonic = staticmethod(_time.monotonic)  # the builtin itself: rate limits call it per request

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, fn: Callable[[], Any]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, fn)


WALL = WallClock()


class _SimTimer:
    __slots__ = ("fn", "cancelled")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """A clock that moves only when told (`advance`, `set`); sleepers and timers due by then
    run in time order, each at its own time.  Wall time and monotonic time move together."""

    def __init__(self, start: float) -> None:
        self.now = float(start)
        self._timers: list[tuple[float, int, _SimTimer]] = []
        self._order = itertools.count()

    def time(self) -> int:
        return int(self.now)

    def time_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now

    def call_later(self, seconds: float, fn: Callable[[], Any]) -> Timer:
        t = _SimTimer(fn)
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._order), t))
        return t

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: fut.done() or fut.set_result(None))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running what falls due on the way: each timer at its
        own time, then the event loop turns until the tasks it woke have nothing left to do right
        now (they may set new timers, which run if they fall within the advance)."""
        await self.set(self.now + seconds)

    async def set(self, when: float) -> None:
        """Move time forward to ``when`` (as `advance`)."""
        while self._timers and self._timers[0][0] <= when:
            due, _, t = heapq.heappop(self._timers)
            self.now = max(self.now, due)
            if not t.cancelled:
                t.fn()
            await settle()
        self.now = max(self.now, when)
        await settle()

    def pending(self) -> int:
        """Timers not yet run (cancelled ones included until their time)."""
        return len(self._timers)


async def settle(turns: int = 20) -> None:
    """Let the event loop run what is ready now (a few turns; nothing here waits on real time)."""
    for _ in range(turns):
        await asyncio.sleep(0)
