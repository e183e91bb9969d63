"""A process that follows the core: the journal stream into a journal and an engine of its own (issue 15).

    follower = Follower(cfg, redis_url, backfill=HttpJournal(url, signer.headers))
    engine, bus = follower.open()          # recovered from the follower's own data directory
    await follower.start()                 # then: the stream after engine.seq, applied as it comes
    ...
    await follower.close()

The market-data processes (``gpux feeds --redis URL``) are built on it: every chunk of journal
entries read from the stream ``{prefix}:journal`` (`exchange.stream`) is appended to the
follower's own journal (fsynced), applied with the same `Engine.apply` as the core's, and the
batch is published on a bus of its own, as the core publishes its batches — so whatever the core
builds from its bus (the feeds, their recording) is built the same way here.  Its cursor is its
journal's last seq; a restart recovers from its own snapshots and journal and goes on from there.
A gap (the stream trimmed past it, Redis restarted empty) is backfilled from the exchange's
journal-tail endpoint or journal files, logged and counted; Redis errors are retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from exchange.bus import Bus, Published
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Fund, Prov, decode_entries
from exchange.journal import Journal
from exchange.recovery import recover
from exchange.sequencer import open_journal
from exchange.snapshots import write_snapshot
from exchange.stream import FIELD, BackfillError, JournalSource, decode_chunk, id_seq, stream_id, stream_key
from exchange.supervise import supervise

log = logging.getLogger("gpux.follow")
SNAPSHOT_EVERY = 50_000  # entries between the follower's snapshots (a restart replays at most this many)


class Follower:
    """The core's journal, followed into this process's own journal, engine and bus."""

    def __init__(self, cfg: ServerConfig, redis_url: str, *, backfill: JournalSource | None = None,
                 block_ms: int = 1000, count: int = 64, snapshot_every: int = SNAPSHOT_EVERY,
                 backoff_max_s: float = 5.0, durable: bool = False) -> None:
        self.cfg = cfg
        self.redis_url = redis_url
        self.key = stream_key(cfg.redis_prefix)
        self.backfill_source = backfill
        self.block_ms = block_ms
        self.count = count
        self.snapshot_every = snapshot_every
        self.backoff_max_s = backoff_max_s
        # fsync each chunk?  A follower's journal is a cache of the stream (what a power cut takes
        # from it is read again from the stream or backfilled), so by default it is not synced:
        # a kill -9 loses nothing of it (the page cache survives the process), and an answer that
        # waits for a gateway's replica does not wait for a disk too
        self.durable = durable
        self.journal: Journal | None = None
        self.engine: Engine | None = None
        self.bus = Bus()
        # the origin of each entry (the session a command came from), for those who push events to
        # sessions (an order gateway: gateway.remote); None: no origins
        self.origins: Callable[[list[Any]], list[Any]] | None = None
        self.snapshot_seq = 0
        self.stream_seq = 0  # the last seq seen in the stream
        self.applied = 0
        self.gaps = 0
        self.backfilled = 0
        self.errors = 0
        self.last_error = ""
        self.down_since: float | None = None
        self.failing = False
        self._task: asyncio.Task | None = None
        self._closing = False
        self._redis: Any = None

    def open(self) -> tuple[Engine, Bus]:
        """Open the follower's journal and recover its engine from its data directory (blocking)."""
        self.journal = open_journal(self.cfg.data_path, self.cfg)
        self.engine = recover(self.cfg)
        if self.engine.seq != self.journal.last_seq:
            raise RuntimeError(f"recovered to seq {self.engine.seq} but the journal ends at {self.journal.last_seq}")
        self.snapshot_seq = self.engine.seq
        return self.engine, self.bus

    @property
    def seq(self) -> int:
        return self.engine.seq if self.engine is not None else 0

    # ------------------------------------------------------------------ applying
    async def apply_chunk(self, first: int, payloads: list[bytes]) -> int:
        """Journal, apply and publish the entries the follower lacks; raises SequenceGap-like
        BackfillError if the chunk starts after its next seq (backfill first)."""
        assert self.journal is not None and self.engine is not None
        seq = self.engine.seq
        last = first + len(payloads) - 1
        if last <= seq:
            return 0
        if first > seq + 1:
            raise BackfillError(f"journal entries from seq {first}, but the follower needs seq {seq + 1} first")
        payloads = payloads[seq + 1 - first:]
        journal = self.journal
        journal.append(payloads)
        if self.durable:
            await asyncio.to_thread(journal.sync)
        entries = decode_entries(payloads)
        results, arrays = self.engine.apply(entries)
        origins = self.origins(entries) if self.origins is not None else [None] * len(entries)
        self.bus.publish(Published(results, arrays, origins, [e for e in entries if type(e) is Prov],
                                   [e for e in entries if type(e) is Fund]))
        self.applied += len(payloads)
        if self.engine.seq - self.snapshot_seq >= self.snapshot_every:
            await self._snapshot()
        return len(payloads)

    async def _snapshot(self) -> None:
        assert self.engine is not None
        seq, blob = self.engine.seq, self.engine.snapshot()
        self.snapshot_seq = seq
        try:
            await asyncio.to_thread(write_snapshot, self.cfg.data_path, seq, blob)
        except OSError as e:  # (a full disk) a restart replays more: not fatal
            log.error("follower snapshot at seq %d failed: %s", seq, e)

    async def _backfill(self, first_available: int) -> None:
        after = self.seq
        self.gaps += 1
        src = self.backfill_source
        if src is None:
            raise BackfillError(f"gap after seq {after}, first available {first_available}: nothing to backfill from "
                                "(give --exchange URL with an admin key)")
        log.warning("gap after seq %d, first available %d: backfilling from %s", after, first_available, src.name)
        n = 0
        while self.seq < first_available - 1:
            seq = self.seq
            payloads = await asyncio.to_thread(src.fetch, seq, min(5000, first_available - 1 - seq))
            if not payloads:
                raise BackfillError(f"{src.name} has nothing after seq {seq}")
            n += await self.apply_chunk(seq + 1, payloads)
            self.backfilled += len(payloads)
        log.warning("backfilled %d entries (seq %d to %d) from %s", n, after + 1, self.seq, src.name)

    # ------------------------------------------------------------------ the loop
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.redis_url, socket_timeout=self.block_ms / 1000 + 5,
                                        socket_connect_timeout=2)
        self._task = supervise(asyncio.create_task(self._run(), name="follower"), "the journal follower",
                               lambda: self._closing)

    async def step(self) -> int:
        """One XREAD (blocking up to ``block_ms``) and what it brought; returns entries applied."""
        reply = await self._redis.xread({self.key: stream_id(self.seq)}, count=self.count, block=self.block_ms)
        n = 0
        for _, entries in reply or []:
            for entry_id, fields in entries:
                first, payloads = decode_chunk(fields[FIELD])
                self.stream_seq = max(self.stream_seq, id_seq(entry_id))
                if first > self.seq + 1:
                    await self._backfill(first)
                n += await self.apply_chunk(first, payloads)
        return n

    async def _run(self) -> None:
        import redis as redis_lib

        backoff = 0.1
        while not self._closing:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis down, a gap that cannot be filled: retried
                self.errors += 1
                down = isinstance(e, redis_lib.ConnectionError | redis_lib.TimeoutError | OSError)
                why = f"Redis unreachable ({e})" if down else str(e) or repr(e)
                if why != self.last_error:
                    log.error("%s; retrying in %.1f s", why, backoff)
                self.last_error = why
                self.failing = True
                if down and self.down_since is None:
                    self.down_since = time.monotonic()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            if self.failing:
                log.warning("following again from journal seq %d", self.seq + 1)
            self.failing = False
            self.down_since = None
            backoff = 0.1

    async def stop(self) -> None:
        """Stop following (the engine and journal stay open)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def close(self) -> None:
        """Stop, write a snapshot, close the journal and the engine."""
        await self.stop()
        if self.engine is not None and self.engine.seq > self.snapshot_seq:
            try:
                write_snapshot(self.cfg.data_path, self.engine.seq, self.engine.snapshot())
            except OSError as e:
                log.error("final follower snapshot failed: %s", e)
        if self.journal is not None:
            self.journal.close()
        if self.engine is not None:
            self.engine.close()

    # ------------------------------------------------------------------ reporting
    def health(self) -> str:
        if self._task is not None and self._task.done() and not self._closing:
            return "the journal follower stopped"
        if self.down_since is not None:
            return f"Redis unreachable for {time.monotonic() - self.down_since:.0f} s: {self.last_error}"
        if self.failing:
            return f"no progress: {self.last_error}"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [
            ("gpux_follow_journal_seq", self.seq, "last journal seq this process applied", "gauge"),
            ("gpux_follow_lag_seq", max(0, self.stream_seq - self.seq), "journal entries in the stream not applied yet",
             "gauge"),
            ("gpux_follow_entries_total", self.applied, "journal entries applied since start", "counter"),
            ("gpux_follow_gaps_total", self.gaps, "gaps found in the stream (backfilled)", "counter"),
            ("gpux_follow_backfilled_entries_total", self.backfilled, "journal entries taken from the backfill source",
             "counter"),
            ("gpux_follow_errors_total", self.errors, "errors (Redis unreachable, backfill failed)", "counter"),
            ("gpux_follow_healthy", int(self.health() == "ok"), "0 while the follower cannot make progress", "gauge")]
