"""Background tasks that cannot die unnoticed: each long-running asyncio task of the exchange is
started through `supervise`, which logs why it ended (the exception with its traceback, or that it
returned or was cancelled while it should have been running), and `task_health` turns a task that
ended into the sentence /healthz shows (the part is then unhealthy, never half-alive).

    self._task = supervise(asyncio.create_task(self._run(), name="key-revocations"), "the key revocation watch",
                           stopping=lambda: self._stopping)
    ...
    def health(self) -> str:
        return task_health(self._task, "the key revocation watch", self._stopping)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gpux.supervise")


def _why(task: asyncio.Task) -> tuple[str, BaseException | None]:
    if task.cancelled():
        return "was cancelled", None
    exc = task.exception()
    if exc is None:
        return "returned", None
    return f"died: {exc!r}", exc


def supervise(task: asyncio.Task, what: str, stopping: Callable[[], bool] = lambda: False) -> asyncio.Task:
    """Log (CRITICAL, with the traceback) when ``task`` ends while ``stopping()`` is false."""

    def ended(t: asyncio.Task) -> None:
        if stopping():
            return
        why, exc = _why(t)
        log.critical("%s %s; the process reports unhealthy until it is restarted", what, why, exc_info=exc,
                     extra={"task": t.get_name()})

    task.add_done_callback(ended)
    return task


def task_health(task: asyncio.Task | None, what: str, stopping: bool = False) -> str:
    """"ok" while ``task`` runs (or was never started, or is being stopped), else what happened to it."""
    if task is None or stopping or not task.done():
        return "ok"
    return f"{what} {_why(task)[0]}"


async def stop_tasks(tasks: list[asyncio.Task], *clients: Any) -> None:
    """Cancel ``tasks`` and wait for them, then close ``clients`` (redis.asyncio clients; None skipped)."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        if c is not None:
            await c.aclose()
