"""Key revocation on every path within a second.

    watch = RevocationWatch(store, cache, [gateway.revoke, feeds.revoke], clock)
    watch.start()          # a task: polls the account store every POLL_S
    await watch.stop()

The gateway and the feeds remember the keys they have seen (`gateway.auth.KeyCache`), so a
revoked key (``gpux accounts revoke``, in this process or another) must be forgotten and its open
WebSocket sessions closed.  The watch asks the account store every `POLL_S` whether anything was
committed (SQLite's data_version: no query when nothing changed) and, if so, reads the revoked
keys: each new one is dropped from the cache (a signed REST call or a new login then fails with
UNKNOWN_KEY) and every session authenticated with it is closed with 1008 "the API key was revoked".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from exchange.clock import WALL, Clock
from exchange.supervise import supervise, task_health
from gateway.accounts import AccountStore
from gateway.auth import KeyCache

log = logging.getLogger("gpux.auth")
POLL_S = 0.25


class RevocationWatch:
    def __init__(self, store: AccountStore, cache: KeyCache, closers: Iterable[Callable[[str], int]],
                 clock: Clock = WALL, poll_s: float = POLL_S) -> None:
        self.store = store
        self.cache = cache
        self.closers = list(closers)
        self.clock = clock
        self.poll_s = poll_s
        self.known: set[str] = set()
        self._version: tuple[int, int] = (-1, -1)
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.revoked = 0  # keys revoked while running
        self.closed_sessions = 0
        self.errors = 0

    def start(self) -> None:
        self.check()  # the revoked keys as of now (nothing to close yet)
        self._task = supervise(asyncio.create_task(self._run(), name="key-revocations"), "the key revocation watch",
                               lambda: self._stopping)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.poll_s)
            try:
                self.check()
            except Exception:  # the store is busy or gone: counted, tried again
                self.errors += 1
                log.exception("could not read revoked keys")

    def check(self) -> int:
        """Apply the revocations committed since the last check; returns how many were new."""
        version = self.store.data_version()
        if version == self._version:
            return 0
        self._version = version
        revoked = self.store.revoked_keys()
        new = revoked - self.known
        self.known = revoked
        for key_id in sorted(new):
            self.cache.forget(key_id)
            for close in self.closers:
                self.closed_sessions += close(key_id)
            self.revoked += 1
            log.info("key revoked", extra={"key_id": key_id})
        return len(new)

    def health(self) -> str:
        return task_health(self._task, "the key revocation watch", self._stopping)

    def metric_samples(self) -> list[tuple[str, Any, str, str]]:
        return [("gpux_keys_revoked_total", self.revoked, "API keys revoked while the exchange runs", "counter"),
                ("gpux_revoked_sessions_closed_total", self.closed_sessions,
                 "WebSocket sessions closed because their key was revoked", "counter"),
                ("gpux_revocation_errors_total", self.errors, "failed reads of revoked keys", "counter")]
