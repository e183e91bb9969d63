"""`gpux settle`: settlement as a replica of the exchange, fed with its journal (issue 14).

    replica = Replica(cfg, "settle/ledger.db")          # its ledger, its own engine, its snapshots
    replica.apply_chunk(first_seq, payloads)            # journal entries, in order, from anywhere
    run_replica(cfg, "redis://...", "settle/ledger.db", backfill=HttpJournal(url, headers))

The replica keeps an `exchange.engine.Engine` of its own (the books and the exchange state) and
applies the journal's entries to it with the same `Engine.apply` as the exchange; the events
each entry produced, the provisioning answers (``Prov``), the deposits and withdrawals (``Fund``)
and the clock commands go to its SQLite ledger (`settlement.service.Settlement`) as they go to
the exchange's own, so the two ledgers end equal, transfer for transfer.  (Its engine keeps the
money too, `exchange.money`, as the exchange's does.)

Its cursor is the last journal seq its ledger holds, committed in the ledger's file in the same
transaction as the transfers (``settle_positions``, row ``_journal``).  To restart without
replaying the journal from seq 1 it writes snapshots of its engine (`exchange.snapshots`) next to
the ledger (``LEDGER-replica/snapshots``) every ``snapshot_every`` entries, and starts from the
newest one at or below the ledger's cursor (the entries between are applied to the engine only).
Delete the ledger and it is rebuilt, identical, from the journal.

`run_replica` reads the stream ``{prefix}:journal`` (`exchange.stream`) after its position.  A gap
— a chunk that starts after the next seq it needs: Redis restarted empty, the stream trimmed past
its cursor — is backfilled from the exchange's journal-tail endpoint (`HttpJournal`) or from the
journal files (`FileJournal`), logged ("gap after seq X, first available Y: backfilling from ...",
"backfilled N entries") and counted.  Redis connection errors are logged and retried with backoff.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clearing.engine import SequenceGap, SettlementConfig, join_transfers
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Fund, Prov, decode_entry
from exchange.money import DEPOSIT, settlement_config
from exchange.snapshots import SnapshotMismatch, snapshots, write_snapshot
from exchange.stream import (  # noqa: F401 - FileJournal, HttpJournal: where `gpux settle` finds them
    FIELD,
    BackfillError,
    FileJournal,
    HttpJournal,
    JournalSource,
    decode_chunk,
    id_seq,
    stream_id,
    stream_key,
)
from orderbook.types import CMD_CLOCK, EVENT_DTYPE
from settlement.ledger import AVAILABLE, EXCHANGE, EXTERNAL, LedgerError, Transfer
from settlement.service import Answer, Settlement

log = logging.getLogger("gpux.settle")
JOURNAL_POSITION = "_journal"  # settle_positions row: the last journal seq in the ledger
SNAPSHOT_EVERY = 50_000  # entries between the replica's snapshots
_NONE = np.zeros(0, dtype=EVENT_DTYPE)


class SimulatedCrash(BaseException):
    """Raised by test hooks to stop a replica as if its process died (not an Exception, so
    nothing on the way catches it)."""


class Replica:
    """Settlement's ledger kept from journal entries, through an engine of its own."""

    def __init__(self, cfg: ServerConfig, ledger_path: str | Path, config: SettlementConfig | None = None, *,
                 snapshot_dir: str | Path | None = None, snapshot_every: int = SNAPSHOT_EVERY,
                 synchronous: str = "NORMAL", hooks: dict[str, Callable[[], None]] | None = None) -> None:
        self.cfg = cfg
        self.ledger_path = Path(ledger_path)
        self.money_config = config or settlement_config(cfg)
        self.settlement = Settlement(ledger_path, self.money_config, synchronous=synchronous)
        # tests crash here: inside the ledger transaction before COMMIT, and right after COMMIT
        self.hooks = hooks or {}
        self.settlement.before_commit = self.hooks.get("before_commit")
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else Path(f"{ledger_path}-replica")
        self.snapshot_every = snapshot_every
        self.engine = self._restore()
        self.snapshot_seq = self.engine.seq
        self.applied = 0  # entries applied since start
        self.commits = 0
        self.snapshots_written = 0
        self.backlog: list[Callable[[Any], np.ndarray]] = []  # ledger steps refused, retried first
        self._backlog_last = 0
        # provisioning (R18, "agent" mode): leases whose start came are marked *provisioning*, as the
        # exchange's provisioning marks them (no money moves; the replica sends no tasks)
        self.mark_started = cfg.provisioning == "agent"
        self._starts: list[tuple[int, str, int]] | None = None  # (start, class, trade id) of pending leases
        # after each Engine.apply: (last journal seq, its events by class, the books' times before it)
        self.on_applied: Callable[[int, dict[str, np.ndarray], Any], None] | None = None

    def _times(self) -> dict[str, int] | None:
        return {n: self.engine.book_time(n) for n in self.engine.books} if self.on_applied is not None else None

    def close(self, engine: bool = True) -> None:
        """Close the ledger and (unless ``engine`` is False: it is handed on) the engine."""
        if engine:
            self.engine.close()
        self.settlement.close()

    @property
    def cursor(self) -> int:
        """The last journal seq whose money is in the ledger (committed)."""
        return int(self.settlement.positions().get(JOURNAL_POSITION, "0"))

    def _restore(self) -> Engine:
        """The engine at the newest replica snapshot at or below the ledger's cursor (else empty)."""
        cursor = self.cursor
        threads = self.cfg.book_threads or None
        for seq, path in reversed(snapshots(self.snapshot_dir)):
            if seq > cursor:
                continue
            try:
                engine = Engine(self.cfg.instruments, self.cfg.engine, threads, self.money_config)
                engine.load_snapshot(path.read_bytes())
            except (SnapshotMismatch, ValueError, OSError) as e:
                log.warning("replica snapshot %s not usable (%s); trying an older one", path, e)
                continue
            log.info("replica restored from snapshot %s (journal seq %d; ledger at %d)", path, seq, cursor)
            return engine
        if cursor:
            log.info("replica: no snapshot at or below the ledger's journal seq %d: replaying the journal from seq 1",
                     cursor)
        return Engine(self.cfg.instruments, self.cfg.engine, threads, self.money_config)

    # ------------------------------------------------------------------ applying
    def apply_chunk(self, first: int, payloads: list[bytes]) -> int:
        """Apply the entries ``first``, ``first + 1``, ... that the engine lacks; returns how many.
        A chunk that starts after the engine's next seq raises SequenceGap (backfill first)."""
        seq = self.engine.seq
        last = first + len(payloads) - 1
        if last <= seq:
            return 0
        if first > seq + 1:
            raise SequenceGap(f"journal entries from seq {first}, but the replica needs seq {seq + 1} first")
        payloads = payloads[seq + 1 - first:]
        entries = [decode_entry(p) for p in payloads]
        cursor = self.cursor
        if seq < cursor:  # the ledger has these already (replayed from an older snapshot): engine only
            k = min(cursor - seq, len(entries))
            before = self._times()
            _, arrays = self.engine.apply(entries[:k])
            if self.on_applied is not None:
                self.on_applied(self.engine.seq, arrays, before)
            entries = entries[k:]
        if entries:
            self._settle(entries)
        self.applied += len(payloads)
        if not self.backlog and self.engine.seq - self.snapshot_seq >= self.snapshot_every:
            self.write_snapshot()
        return len(payloads)

    def _settle(self, entries: list[Any]) -> None:
        """Apply entries to the engine and their money to the ledger, in one transaction."""
        engine = self.engine
        seqs = {n: engine.event_seq(n) for n in engine.books}
        before = self._times()
        results, arrays = engine.apply(entries)
        if self.on_applied is not None:
            self.on_applied(engine.seq, arrays, before)
        answers: dict[str, list[Answer]] = {}
        ticks: dict[str, list[tuple[int, int]]] = {}
        funds: list[Transfer] = []
        for e, r in zip(entries, results, strict=True):
            if type(e) is Fund:  # one transfer each, named by its ref (as the exchange's ledger has it)
                funds.append(Transfer(f"{e.op}:{e.ref}", EXCHANGE, EXTERNAL, e.account, AVAILABLE, e.amount, e.time)
                             if e.op == DEPOSIT else
                             Transfer(f"{e.op}:{e.ref}", e.account, AVAILABLE, EXCHANGE, EXTERNAL, e.amount, e.time))
                continue
            if type(e) is Prov:
                answers.setdefault(e.book, []).append(Answer(e.book, e.trade_id, e.ready, e.time, e.after,
                                                             e.connection, e.reason))
                continue
            if r is None:
                continue
            if r.events:
                seqs[r.book] = r.events[-1].seq
            if r.command is not None and r.command.type == CMD_CLOCK:
                # the class's clock moves right after the clock command's own events (expiries)
                ticks.setdefault(r.book, []).append((seqs[r.book], r.command.time))
        s = self.settlement
        classes = [c for c in engine.books if c in arrays or c in answers or c in ticks]
        now = {n: engine.book_time(n) for n in engine.books}

        def step(eng: Any) -> np.ndarray:
            if funds:  # before the events, as the core applies them; a transfer posted already is a no-op
                s.ledger.post(funds)
            out = []
            for cls in classes:
                transfers, _ = s.events_and_answers(eng, cls, arrays.get(cls, _NONE), answers.get(cls, []),
                                                    ticks.get(cls, []))
                out.append(transfers)
            if self.mark_started:
                self._mark_started(eng, arrays, now)
            return join_transfers(out)

        self.backlog.append(step)
        self._backlog_last = engine.seq
        self.retry()

    def retry(self) -> bool:
        """Commit the steps waiting (one transaction); raises if the ledger refused them (kept)."""
        if not self.backlog:
            return True
        steps = self.backlog

        def step(eng: Any) -> np.ndarray:
            return join_transfers([f(eng) for f in steps])

        try:
            self.settlement.run(step, {JOURNAL_POSITION: str(self._backlog_last)})
        except BaseException as e:
            self._starts = None  # settlement reloaded its state: rebuild the timetable from it
            if isinstance(e, (LedgerError, SequenceGap)):
                log.error("the ledger refused journal entries up to seq %d (kept, retried): %s", self._backlog_last, e)
            raise
        self.backlog = []
        self.commits += 1
        after = self.hooks.get("after_commit")
        if after is not None:
            after()
        return True

    def _mark_started(self, eng: Any, arrays: dict[str, np.ndarray], now: dict[str, int]) -> None:
        """Inside the ledger step: new leases into the timetable; those whose start came, provisioning."""
        import heapq

        from clearing.leases import PENDING
        from orderbook.types import EV_TRADE

        if self._starts is None:
            self._starts = [(x.start, c.name, x.trade_id) for c in eng.classes.values() for x in c.find(status=PENDING)]
            heapq.heapify(self._starts)
        starts = self._starts
        for cls, ev in arrays.items():
            trades = ev[ev["type"] == EV_TRADE]
            for tid, start in zip(trades["trade_id"].tolist(), trades["start"].tolist(), strict=True):
                heapq.heappush(starts, (start, cls, tid))
        while starts and starts[0][0] <= now.get(starts[0][1], 0):
            _, cls, tid = heapq.heappop(starts)
            lease = eng.lease(cls, tid)
            if lease is not None and lease.status == PENDING:
                eng.mark_provisioning(cls, tid)  # no money moves

    def write_snapshot(self) -> Path:
        """A snapshot of the replica's engine, at the ledger's cursor."""
        path = write_snapshot(self.snapshot_dir, self.engine.seq, self.engine.snapshot())
        self.snapshot_seq = self.engine.seq
        self.snapshots_written += 1
        log.info("replica snapshot at journal seq %d: %s", self.engine.seq, path)
        return path


class ReplicaRunner:
    """The loop of `gpux settle`: the Redis stream after the replica's seq, gaps backfilled.

    `step()` does one round (one XREAD, blocking up to ``block_ms``); `run()` loops."""

    def __init__(self, replica: Replica, redis: Any, prefix: str, *, backfill: JournalSource | None = None,
                 count: int = 64, block_ms: int = 1000, backoff_max_s: float = 5.0, backfill_limit: int = 5000) -> None:
        self.replica = replica
        self.r = redis
        self.key = stream_key(prefix)
        self.backfill_source = backfill
        self.count = count
        self.block_ms = block_ms
        self.backoff_max_s = backoff_max_s
        self.backfill_limit = backfill_limit
        self.gaps = 0
        self.backfilled = 0  # entries taken from the backfill source
        self.errors = 0
        self.last_error = ""
        self.down_since: float | None = None
        self.stream_seq = 0  # the last seq seen in the stream
        self._backoff = 0.1
        self._gap: tuple[int, int] | None = None
        self.failing = False

    # ------------------------------------------------------------------ one round
    def step(self) -> int:
        """Read what follows the replica's seq and apply it; returns the entries applied."""
        import redis as redis_lib

        try:
            n = self._step()
        except urllib.error.URLError as e:  # (an OSError: before the Redis ones)
            src = self.backfill_source.name if self.backfill_source is not None else "the backfill source"
            self._failed(f"backfill from {src} failed ({e.reason})")
            return 0
        except (BackfillError, LedgerError, SequenceGap) as e:
            self._failed(str(e))
            return 0
        except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as e:
            self._failed(f"Redis unreachable ({e})", redis_down=True)
            return 0
        if self.down_since is not None:
            log.warning("Redis reachable again after %.1f s; reading after journal seq %d",
                        time.monotonic() - self.down_since, self.replica.engine.seq)
            self.down_since = None
        self._backoff = 0.1
        self.failing = False
        return n

    def _failed(self, why: str, redis_down: bool = False) -> None:
        self.errors += 1
        self.failing = True
        if why != self.last_error or not redis_down or self.down_since is None:
            log.error("%s; retrying in %.1f s", why, self._backoff)
        self.last_error = why
        if redis_down and self.down_since is None:
            self.down_since = time.monotonic()
        time.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.backoff_max_s)

    def _step(self) -> int:
        rep = self.replica
        if rep.backlog:
            rep.retry()
        reply = self.r.xread({self.key: stream_id(rep.engine.seq)}, count=self.count, block=self.block_ms)
        n = 0
        for _, entries in reply or []:
            for entry_id, fields in entries:
                first, payloads = decode_chunk(fields[FIELD])
                self.stream_seq = max(self.stream_seq, id_seq(entry_id))
                seq = rep.engine.seq
                if first > seq + 1:
                    n += self.backfill(seq, first)
                n += rep.apply_chunk(first, payloads)
        return n

    def backfill(self, after: int, first_available: int) -> int:
        """Fill the gap between ``after`` and ``first_available`` from the backfill source."""
        if self._gap != (after, first_available):  # a gap retried is counted once
            self._gap = (after, first_available)
            self.gaps += 1
        src = self.backfill_source
        if src is None:
            raise BackfillError(f"gap after seq {after}, first available {first_available}: nothing to backfill "
                                "from (give gpux settle --exchange URL with an admin key, or --journal DIR)")
        log.warning("gap after seq %d, first available %d: backfilling from %s", after, first_available, src.name)
        rep = self.replica
        n = 0
        while rep.engine.seq < first_available - 1:
            seq = rep.engine.seq
            payloads = src.fetch(seq, min(self.backfill_limit, first_available - 1 - seq))
            if not payloads:
                raise BackfillError(f"{src.name} has nothing after seq {seq}")
            n += rep.apply_chunk(seq + 1, payloads)
            self.backfilled += len(payloads)
        log.warning("backfilled %d entries (seq %d to %d) from %s", n, after + 1, rep.engine.seq, src.name)
        return n

    def run(self, stop: Any = None, idle_exit_s: float | None = None) -> None:
        """Loop until ``stop`` (a threading.Event) is set, or nothing arrived for ``idle_exit_s``."""
        last = time.monotonic()
        while stop is None or not stop.is_set():
            if self.step():
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                return

    # ------------------------------------------------------------------ reporting
    def health(self) -> str:
        if self.down_since is not None:
            return f"Redis unreachable for {time.monotonic() - self.down_since:.0f} s: {self.last_error}"
        if self.failing:
            return f"no progress: {self.last_error}"
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        rep = self.replica
        seq = rep.engine.seq
        return [
            ("gpux_settle_journal_seq", seq, "last journal seq the replica applied", "gauge"),
            ("gpux_settle_lag_seq", max(0, self.stream_seq - seq), "journal entries in the stream not applied yet",
             "gauge"),
            ("gpux_settle_entries_total", rep.applied, "journal entries applied since start", "counter"),
            ("gpux_settle_commits_total", rep.commits, "ledger transactions", "counter"),
            ("gpux_settle_gaps_total", self.gaps, "gaps found in the stream (backfilled)", "counter"),
            ("gpux_settle_backfilled_entries_total", self.backfilled, "journal entries taken from the backfill source",
             "counter"),
            ("gpux_settle_errors_total", self.errors, "errors (Redis unreachable, backfill failed, ledger refused)",
             "counter"),
            ("gpux_settle_snapshots_total", rep.snapshots_written, "replica snapshots written", "counter"),
            ("gpux_settle_healthy", int(self.health() == "ok"), "0 while the replica cannot make progress", "gauge")]

    def status(self) -> dict[str, Any]:
        return {"seq": self.replica.engine.seq, "cursor": self.replica.cursor, "gaps": self.gaps,
                "backfilled": self.backfilled, "errors": self.errors, "health": self.health()}


def run_replica(cfg: ServerConfig, redis_url: str, ledger_path: str | Path, *, prefix: str | None = None,
                backfill: JournalSource | None = None, stop: Any = None, idle_exit_s: float | None = None,
                snapshot_every: int = SNAPSHOT_EVERY, block_ms: int = 1000,
                on_start: Callable[[ReplicaRunner], None] | None = None) -> ReplicaRunner:
    """``gpux settle --redis URL``: keep the ledger at ``ledger_path`` from the exchange's journal
    stream until ``stop`` is set (or nothing arrived for ``idle_exit_s``).  Returns the runner."""
    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url, socket_timeout=max(5.0, block_ms / 1000 + 5), socket_connect_timeout=2)
    replica = Replica(cfg, ledger_path, snapshot_every=snapshot_every, synchronous=cfg.ledger_synchronous)
    runner = ReplicaRunner(replica, r, prefix or cfg.redis_prefix, backfill=backfill, block_ms=block_ms)
    log.info("settling from journal seq %d (ledger at %d)", replica.engine.seq + 1, replica.cursor)
    if on_start is not None:
        on_start(runner)
    try:
        runner.run(stop, idle_exit_s)
    finally:
        replica.close()
        r.close()
    return runner

