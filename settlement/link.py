"""Settlement's SQLite ledger inside `gpux serve` (embedded mode, docs/architecture.md): a
projection of the journal, for statements, leases and provisioning.

    link = SettlementLink(cfg)                  # opens DATA/ledger.db
    engine = recover(cfg, settled=link.cursor, sink=link.replayed)   # the journal fills any gap
    link.start(); link.attach(bus)              # every durable batch: one ledger transaction
    await link.synced()                         # reads that must reflect every answered command

The exchange's journal is the system of record and the money is the core's (`exchange.money`:
the sequencer checks escrow there); the ledger is kept from the same journal, exactly once
(settlement's seq cursor and idempotent transfer ids, docs/settlement.md), and must end with
the core's balances.  Durable batches queue up and are committed together ``FLUSH_S`` after the
oldest of them, or once ``FLUSH_EVENTS`` wait (one transaction for many batches: its fixed cost
is paid once), by a committer thread, so the event loop answers orders meanwhile (SQLite runs
without the GIL; the settlement engine's Python part does not, which is why commits are few and
large).  Deposits and withdrawals are journaled entries (`exchange.entries.Fund`: one transfer
each, ``deposit:accounts:{row}`` / ``withdraw:journal:{seq}``); clock commands tick settlement
(metering, lease ends, provisioning timeouts); provisioning (R18) is
`settlement.provisioning.Provisioning`, whose step runs in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clearing.engine import SequenceGap, join_transfers
from exchange.clock import WALL, Clock, Timer
from exchange.config import ServerConfig
from exchange.entries import Fund, Prov
from exchange.money import DEPOSIT, settlement_config
from orderbook.types import CMD_CLOCK, EVENT_DTYPE, join
from settlement.ledger import AVAILABLE, EXCHANGE, EXTERNAL, LedgerError, Transfer
from settlement.service import Answer, Settlement

log = logging.getLogger("gpux.settlement")
LEDGER_FILE = "ledger.db"
_NONE = np.zeros(0, dtype=EVENT_DTYPE)
FLUSH_S = 0.025  # under load, queued batches are committed at least this often
FLUSH_EVENTS = 8192  # ... or once this many events wait


@dataclass
class _Batch:
    """One durable batch handed to settlement."""

    number: int
    parts: list[tuple[str, np.ndarray]]  # its events, by class
    times: dict[str, int]  # engine time of the books that got a clock command
    answers: list[Prov] = field(default_factory=list)  # provisioning answers (R18), journaled
    funds: list[Fund] = field(default_factory=list)  # deposits and withdrawals, journaled


class SettlementLink:
    """The exchange's settlement ledger, kept from the bus (and the journal on recovery)."""

    def __init__(self, cfg: ServerConfig, clock: Clock = WALL) -> None:
        self.cfg = cfg
        self.time_source = clock  # timers of the deferred commits
        path = cfg.data_path / LEDGER_FILE
        self.settlement = Settlement(path, settlement_config(cfg), synchronous=cfg.ledger_synchronous)
        self.lock = threading.RLock()  # held while anything uses self.settlement
        self.backlog: list[_Batch] = []  # batches the ledger refused, retried first
        self.last_error: Exception | None = None
        self.batches = 0  # ledger commits of batches
        self.seconds = 0.0  # spent committing
        self.provisioning: Any = None  # settlement.provisioning.Provisioning, once attached
        self.book_times: Any = None  # () -> {class: engine time}
        self._answered: list[tuple[Answer, Any]] = []  # answers applied in the transaction being committed
        self.answered_out: list[tuple[Answer, Any]] = []  # ... committed: for provisioning to pass on
        self._queue: list[_Batch] = []  # handed over, not committed yet
        self._queued_events = 0
        self._oldest = 0.0  # when the oldest queued batch was handed over
        self._deferred = False
        self._timer: Timer | None = None
        self._inflight: asyncio.Future | None = None  # a commit running in the committer thread
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpux-ledger")
        self._carried: list[_Batch] = []  # batches in the refused backlog
        self.handed = 0  # batches handed over
        self.committed = 0  # of those, committed

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """From now on batches queue up and are committed by `flush` (before: at once)."""
        self._deferred = True

    async def aclose(self) -> None:
        """Commit what was handed over (waiting for a commit in flight), close the ledger."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
        self.close()

    def close(self) -> None:
        """Commit what was handed over, close the ledger (no commit may be in flight: `aclose`)."""
        self.flush()
        self._committer.shutdown(wait=True)
        self.settlement.close()

    # ------------------------------------------------------------------ recovery
    def cursor(self, cls: str) -> int:
        """The last event seq of ``cls`` in the ledger: recovery replays from a snapshot at or
        before it and hands the events after it to `replayed`."""
        return self.settlement.last_seq(cls)

    def replayed(self, events: dict[str, np.ndarray], answers: list[Prov], funds: list[Fund] = ()) -> None:  # type: ignore[assignment]
        """Events, provisioning answers, deposits and withdrawals regenerated by the journal
        replay (settlement skips the events it has; an answer or a transfer it has is a no-op)."""
        parts = [(cls, ev) for cls, ev in events.items() if len(ev) and int(ev["seq"][-1]) > self.cursor(cls)]
        if parts or answers or funds:
            with self.lock:
                self._commit([_Batch(0, parts, {}, list(answers), list(funds))])
            self.answered_out = []  # replayed answers are not news

    # ------------------------------------------------------------------ live
    def attach(self, bus: Any) -> None:
        bus.subscribe(self.on_published)

    def on_published(self, batch: Any) -> None:
        """A durable batch (`exchange.bus.Published`): its events, time for the books that got
        a clock command (leases end, metering happens between events) and the leases whose
        start came, for provisioning (R18).  Queued; committed by `flush`."""
        times: dict[str, int] = {}
        for r in batch.results:
            if r is not None and r.command is not None and r.command.type == CMD_CLOCK:
                times[r.book] = max(times.get(r.book, 0), r.command.time)
        parts = [(cls, ev.copy()) for cls, ev in batch.events.items()]  # the publisher may reuse its arrays
        answers = list(batch.answers)
        funds = list(batch.funds)
        if not parts and not times and not answers and not funds:
            return
        self.handed += 1
        b = _Batch(self.handed, parts, times, answers, funds)
        if not self._queue:
            self._oldest = self.time_source.monotonic()
        self._queue.append(b)
        self._queued_events += sum(len(ev) for _, ev in parts)
        if not self._deferred:  # not started (tests, recovery): at once
            self.flush()

    def tick(self, times: dict[str, int]) -> None:
        """Move settlement's clock of some classes now (and start the leases due by then)."""
        self.flush()
        with self.lock:
            ok = self._commit([_Batch(0, [], times)])
        self._done([], ok)

    def due(self) -> bool:
        """Whether queued batches should be committed now although the sequencer is busy."""
        return bool(self._queue) and (self._queued_events >= FLUSH_EVENTS
                                      or self.time_source.monotonic() - self._oldest >= FLUSH_S)

    def commit_if_due(self) -> None:
        """After each batch of a busy sequencer: commit now if `due`."""
        if self.due():
            self.flush_soon(now=True)

    def flush_soon(self, now: bool = False) -> None:
        """Commit what is queued ``FLUSH_S`` after its oldest batch (``now``: at once), in the
        committer thread: the event loop goes on answering orders meanwhile (the SQLite work
        runs without the GIL).  One commit at a time; what queues meanwhile goes in the next."""
        if self._inflight is not None or not (self._queue or self.backlog):
            return
        if now:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._inflight = asyncio.ensure_future(self._flush_async())
        elif self._timer is None:
            delay = max(0.0, self._oldest + FLUSH_S - self.time_source.monotonic()) if self._queue else FLUSH_S
            self._timer = self.time_source.call_later(delay, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush_soon(now=True)

    async def _flush_async(self) -> None:
        items, self._queue, self._queued_events = self._queue, [], 0
        ok = False
        t0 = time.perf_counter()
        try:
            ok = await asyncio.get_running_loop().run_in_executor(self._committer, self._commit_locked, items)
        except Exception:  # a bug: the batches stay in the backlog (retried), their holds stay counted
            log.exception("settlement commit failed")
            self.last_error = self.last_error or RuntimeError("settlement commit failed")
        finally:
            self.seconds += time.perf_counter() - t0
            self._inflight = None
            self._finish(items, ok)
        if self._queue or self.backlog:
            self.flush_soon()

    def _commit_locked(self, items: list[_Batch]) -> bool:
        with self.lock:
            return self._commit(items)

    def flush(self) -> None:
        """Commit every queued batch now, in this thread (start-up, ticks, shutdown, tests).
        Not while a commit runs in the committer thread: await `synced` there."""
        if self._inflight is not None:  # it would commit later batches before the ones in flight
            raise RuntimeError("a ledger commit is in flight: await synced() instead of flush()")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queue and not self.backlog:
            return
        items, self._queue, self._queued_events = self._queue, [], 0
        t0 = time.perf_counter()
        ok = self._commit_locked(items)
        self.seconds += time.perf_counter() - t0
        self._finish(items, ok)

    def _finish(self, items: list[_Batch], ok: bool) -> None:
        self._carried += items
        done: list[_Batch] = []
        if ok:
            done, self._carried = self._carried, []
            if done:
                self.committed = max(self.committed, done[-1].number)
        self._done(done, ok)

    async def synced(self) -> None:
        """Every batch handed over so far is in the ledger (read your writes) on return."""
        target = self.handed
        while self.committed < target and (self._queue or self._inflight is not None):
            if self._inflight is None:
                self.flush_soon(now=True)
            if self._inflight is not None:
                await asyncio.shield(self._inflight)

    def _commit(self, items: list[_Batch]) -> bool:
        """Batches (after the backlog of refused ones), in journal order — each one's deposits and
        withdrawals, events, provisioning answers and ticks — then the leases whose start came: one
        transaction, applied in the core's order (so each statement line's balance is one the
        account had): the events' transfers are one page, cut before each batch with funds.
        Caller holds the lock.  False if the ledger refused (all kept in the backlog)."""
        self.backlog += items
        prov = self.provisioning
        engine_now = self.book_times() if prov is not None and self.book_times is not None else {}
        backlog = self.backlog
        self._answered = []

        ledger = self.settlement.ledger
        funds_first = False

        def step(engine: Any) -> np.ndarray:
            out: list[np.ndarray] = []
            if funds_first:
                ledger.post([_fund_transfer(f) for b in backlog for f in b.funds])
            for b in backlog:  # in journal order: each batch's funds, events, the answers among them, its clocks
                if b.funds and not funds_first:  # before the batch's events, as the core applies them, and
                    if out:  # after the batches before (the ledger's order is the statements' order)
                        ledger.post(join_transfers(out), checked=True)
                        out = []
                    ledger.post([_fund_transfer(f) for f in b.funds])  # a transfer posted already is a no-op
                answers: dict[str, list[Answer]] = {}
                for a in b.answers:
                    answers.setdefault(a.book, []).append(Answer(a.book, a.trade_id, a.ready, a.time, a.after,
                                                                 a.connection, a.reason))
                events = dict(b.parts)
                for cls in {*events, *answers}:
                    transfers, took = self.settlement.events_and_answers(engine, cls, events.get(cls, _NONE),
                                                                         answers.get(cls, []))
                    out.append(transfers)
                    self._answered += took
                for cls, now in b.times.items():
                    out.append(engine.tick(now, cls))
            if prov is not None:
                out.append(prov.step(engine, [p for b in backlog for p in b.parts], engine_now))
            return join_transfers(out)

        try:
            try:
                self.settlement.run(step)
            except LedgerError:
                if not any(b.funds for b in backlog):
                    raise
                # a backlog the ledger refused (a batch it could not fund; the core's escrow check
                # never lets one through): the money that came after it goes first, so that it can
                # apply, at the cost of the statements' order for these batches
                self._answered = []
                funds_first = True
                self.settlement.run(step)
        except (LedgerError, SequenceGap, sqlite3.Error) as e:
            if not isinstance(self.last_error, type(e)):
                log.critical("settlement could not apply %d batches (kept, retried): %s", len(self.backlog), e)
            self.last_error = e
            self._answered = []
            if prov is not None:
                prov.failed_step()
            return False
        self.answered_out += self._answered
        self._answered = []
        if prov is not None:
            prov.events_committed(_by_class([p for b in backlog for p in b.parts]))
        self.backlog = []
        self.last_error = None
        self.batches += 1
        return True

    def _done(self, batches: list[_Batch], ok: bool) -> None:
        """After a commit (or a refusal): provisioning sends what the commit started."""
        if self.provisioning is not None:
            with self.lock:
                self.provisioning.committed()

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [
            ("gpux_settlement_commits_total", self.batches, "ledger transactions of queued batches", "counter"),
            ("gpux_settlement_seconds_total", round(self.seconds, 6), "time committing to the ledger", "counter"),
            ("gpux_settlement_queued", len(self._queue), "durable batches not committed to the ledger yet", "gauge"),
            ("gpux_settlement_lag_batches", self.handed - self.committed,
             "batches handed to settlement and not committed yet (backlog included)", "gauge"),
            ("gpux_settlement_healthy", int(self.healthy), "0 while the ledger refuses a batch (see logs)", "gauge")]

    def health(self) -> str:
        """"ok" while the ledger takes every batch; else why not (statements lag; trading goes on: the
        money the sequencer checks is the core's)."""
        return "ok" if self.last_error is None else f"the ledger refuses batches: {self.last_error}"

    @property
    def healthy(self) -> bool:
        """The ledger took every batch it was given."""
        return self.last_error is None

    # ------------------------------------------------------------------ reading
    def balances(self, account: int) -> dict[str, int]:
        with self.lock:
            return self.settlement.ledger.balances(account)

    def statement(self, account: int) -> dict[str, Any]:
        with self.lock:
            return self.settlement.statement(account)


def _fund_transfer(f: Fund) -> Transfer:
    """A deposit (from the external account) or a withdrawal (to it), named by its journal ref."""
    if f.op == DEPOSIT:
        return Transfer(f"{f.op}:{f.ref}", EXCHANGE, EXTERNAL, f.account, AVAILABLE, f.amount, f.time)
    return Transfer(f"{f.op}:{f.ref}", f.account, AVAILABLE, EXCHANGE, EXTERNAL, f.amount, f.time)


def _by_class(parts: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several batches' events of each class, in order."""
    out: dict[str, list[np.ndarray]] = {}
    for cls, ev in parts:
        out.setdefault(cls, []).append(ev)
    return {cls: join(evs, EVENT_DTYPE) for cls, evs in out.items()}
