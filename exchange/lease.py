"""The leader's lease in Redis: one core writes the journal, a hot standby takes over (issue 15).

    lease = LeaderLease(url, prefix, name="core-a", ttl_ms=3000)
    lease.acquire()              # True: this process leads (epoch and token set); False: another does
    lease.start(alive)           # a thread renews it every ttl/3 while ``alive()`` (the event loop ticks)
    lease.token                  # "<epoch>:<name>": what every append of this leader is fenced with
    lease.stop(); lease.release()

Two keys under the prefix: ``{prefix}:leader`` holds the leader's token and expires after
``ttl_ms`` unless renewed; ``{prefix}:epoch`` counts the leaders there have been.  Taking the
lease (a small Lua script) sets a new epoch only when the lease is free, so two standbys cannot
both win, and renewing it succeeds only for the token that holds it.

The lease gives liveness; safety comes from fencing: the journal publisher adds a chunk to the
stream only if ``{prefix}:leader`` still holds its token, checked in the same script as the
append (`exchange.stream`), and a leader in this mode answers a batch only once it is in the
stream.  A leader that was paused past its lease (SIGSTOP, a long GC, a partition) and wakes up
finds its appends refused, answers nothing more and stops: what it had made durable locally but
not in Redis was never acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gpux.lease")

TTL_MS = 3000

# KEYS: leader, epoch; ARGV: name, ttl_ms -> {1, token} when taken, {0, holder} when held
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local epoch = redis.call('INCR', KEYS[2])
local token = tostring(epoch) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token}
"""
# KEYS: leader; ARGV: token, ttl_ms -> 1 renewed, 0 not the holder
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: leader; ARGV: token -> 1 released
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def leader_key(prefix: str) -> str:
    return f"{prefix}:leader"


def epoch_key(prefix: str) -> str:
    return f"{prefix}:epoch"


class Deposed(RuntimeError):
    """This process no longer holds the leader's lease: another core leads."""


class LeaderLease:
    """The lease of the core that writes the journal (see the module docstring)."""

    def __init__(self, url: str, prefix: str, name: str, ttl_ms: int = TTL_MS,
                 redis_factory: Callable[[str], Any] | None = None) -> None:
        if ttl_ms < 300:
            raise ValueError("the lease must last at least 300 ms")
        self.url = url
        self.prefix = prefix
        self.key = leader_key(prefix)
        self.epoch_key = epoch_key(prefix)
        self.name = name
        self.ttl_ms = ttl_ms
        if redis_factory is None:
            import redis

            self.r = redis.Redis.from_url(url, socket_timeout=max(1.0, ttl_ms / 3000), socket_connect_timeout=1)
        else:
            self.r = redis_factory(url)
        self.token = ""
        self.epoch = 0
        self.deposed: str = ""  # why this process lost the lease ("" while it holds it, or never held it)
        self.renewals = 0
        self.errors = 0
        self.last_error = ""
        self.renewed_at = 0.0  # monotonic time of the last renewal that went through
        self.on_deposed: Callable[[str], None] | None = None
        self._acquire = self.r.register_script(_ACQUIRE)
        self._renew = self.r.register_script(_RENEW)
        self._release = self.r.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._alive: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ taking it
    def holder(self) -> str | None:
        """The token of whoever holds the lease now (None: free)."""
        got = self.r.get(self.key)
        return got.decode() if got is not None else None

    def acquire(self) -> bool:
        """Take the lease if it is free; True if this process now holds it."""
        ok, token = self._acquire(keys=[self.key, self.epoch_key], args=[self.name, self.ttl_ms])
        token = token.decode() if isinstance(token, bytes) else str(token)
        if not ok:
            return False
        self.token = token
        self.epoch = int(token.partition(":")[0])
        self.renewed_at = time.monotonic()
        self.deposed = ""
        log.warning("took the leader's lease", extra={"token": token, "ttl_ms": self.ttl_ms})
        return True

    # ------------------------------------------------------------------ keeping it
    def renew(self) -> bool:
        """Renew once; False (and deposed) if another process holds it now."""
        ok = self._renew(keys=[self.key], args=[self.token, self.ttl_ms])
        if ok:
            self.renewals += 1
            self.renewed_at = time.monotonic()
            return True
        self.lose(f"the leader's lease {self.key} is no longer {self.token} (held by {self.holder() or 'nobody'})")
        return False

    def lose(self, why: str) -> None:
        """This process is no longer the leader (once)."""
        if self.deposed:
            return
        self.deposed = why
        log.error("deposed: %s", why)
        if self.on_deposed is not None:
            self.on_deposed(why)

    def start(self, alive: Callable[[], bool] | None = None) -> None:
        """Renew every ttl/3 in a thread, while ``alive()`` (e.g. the event loop ticked lately: a
        wedged process lets its lease go instead of holding it without serving)."""
        self._alive = alive
        if self._thread is not None:
            return

        def run() -> None:
            every = self.ttl_ms / 3000
            while not self._stop.wait(every) and not self.deposed:
                alive = self._alive
                if alive is not None and not alive():
                    log.error("not renewing the leader's lease: the event loop has not run for a while")
                    continue
                try:
                    self.renew()
                except Exception as e:  # noqa: BLE001 - Redis unreachable: retried; fencing keeps it safe
                    self.errors += 1
                    self.last_error = repr(e)
                    if time.monotonic() - self.renewed_at > self.ttl_ms / 1000:
                        log.error("cannot renew the leader's lease (%s): it may have expired; a standby may "
                                  "lead now, and this process's appends would be refused", e)

        self._thread = threading.Thread(target=run, name="gpux-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def release(self) -> None:
        """Give the lease up (a clean stop: a standby takes over at once, not after the ttl)."""
        self.stop()
        if self.token and not self.deposed:
            try:
                self._release(keys=[self.key], args=[self.token])
            except Exception as e:  # noqa: BLE001 - it expires anyway
                log.warning("could not release the leader's lease (%s); it expires in %d ms", e, self.ttl_ms)

    def close(self) -> None:
        self.stop()
        try:
            self.r.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ reporting
    def health(self) -> str:
        if self.deposed:
            return f"deposed: {self.deposed}"
        age = time.monotonic() - self.renewed_at
        if self.token and age > self.ttl_ms / 1000:
            return f"the leader's lease was not renewed for {age:.1f} s ({self.last_error})"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_lease_epoch", self.epoch, "the leader epoch this process holds (0: none)", "gauge"),
                ("gpux_lease_leader", int(bool(self.token) and not self.deposed), "1 while this process leads",
                 "gauge"),
                ("gpux_lease_renewals_total", self.renewals, "lease renewals", "counter"),
                ("gpux_lease_errors_total", self.errors, "lease renewals that failed (Redis unreachable)",
                 "counter"),
                ("gpux_lease_age_seconds", round(time.monotonic() - self.renewed_at, 3) if self.token else 0,
                 "seconds since the lease was last renewed", "gauge")]
