"""The sequencer: the single writer in front of the books (LMAX's input stage).

Requests from the gateway queue up while the previous batch is being made durable; each
turn of the loop takes everything queued as one batch and

1. checks what depends on order and must not reach the journal when refused: halted
   class, client order id already answered, open-order limit, escrow (R17) and withdrawals
   against the core's own balances (`exchange.money`: exact, in memory, no query);
2. stamps each command with its book's engine time and a new order id (R4) and appends
   the batch to the journal;
3. fsyncs the journal (one fsync per batch, in a worker thread) while the books apply the
   batch in this thread;
4. only then answers every request and publishes the events on the bus;
5. the projections follow: settlement's ledger commits the published batches together, a few
   milliseconds later, in one transaction.

A clock command per book every ``clock_interval_s`` of wall time moves engine time
(R4, R13, R14): expiries and lease ends are journaled commands and replay exactly.

A full disk stalls the sequencer, never stops it: a batch the journal could not append (nothing
of it stays on disk, nothing of it was applied) is answered UNAVAILABLE; requests are refused
UNAVAILABLE for a back-off (0.1 s, doubling to 5 s), then the next batch tries again (clock
commands come every second, so it does without traffic).  A batch whose fsync failed was applied
already: it is held, unanswered, while the journal writes it again and syncs (`Journal.resync`)
with the same back-off, then answered as usual.  /healthz says the journal is stalled meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from clearing.engine import MONEY_LIMIT
from exchange.bus import Bus, Published
from exchange.clock import WALL, Clock
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Admin, Cmd, Entry, Fund, Prov, encode_entry
from exchange.errors import ApiError
from exchange.journal import Journal
from exchange.lease import Deposed
from exchange.money import WITHDRAW, warm_reads
from exchange.snapshots import encode_snapshot_parts, write_snapshot
from exchange.supervise import supervise
from orderbook.types import (
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    COMMAND_DTYPE,
    RESERVED,
    Command,
    clock_command,
)

log = logging.getLogger("gpux.sequencer")

REC_SIZE = COMMAND_DTYPE.itemsize
_decoder = msgspec.json.Decoder()


@dataclass
class Request:
    """One command for the sequencer, and where its answer goes."""

    book: str
    cmd: Command | None  # None for admin and provisioning entries; time (and a new order's oid) stamped here
    account: int
    coid: str = ""
    hold: int = 0  # escrow the command needs (bids: set by the sequencer's check, R17)
    origin: Any = None  # the session that sent it (events it produced are not pushed back to it)
    reply: Callable[[Any], None] | None = None  # gets the answer dict or an ApiError
    admin: str = ""  # "halt" | "resume" for admin entries
    prov: Any = None  # an exchange.entries.Prov entry: a provisioning answer
    fund: Fund | None = None  # a deposit or withdrawal (``book`` unused)
    result: Any = None
    done: bool = False

    def resolve(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.result = value
            if self.reply is not None:
                self.reply(value)


def submit_through(post: Callable[[Request], None], req: Request) -> asyncio.Future:
    """``post(req)`` with a reply that completes the returned future: the answer dict, or the
    ApiError as its exception (a sequencer's ``submit``, here or in another process)."""
    fut = asyncio.get_running_loop().create_future()

    def reply(value: Any) -> None:
        if not fut.done():
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

    req.reply = reply
    post(req)
    return fut


_CLOCK = clock_command()


@dataclass
class SequencerStats:
    batches: int = 0
    commands: int = 0
    entries: int = 0
    rejected_pre: dict[str, int] = field(default_factory=dict)
    fsync_seconds: float = 0.0  # the sequencer waiting for the fsync (books apply meanwhile)
    fsync_busy_seconds: float = 0.0  # inside fsync itself
    fsyncs: int = 0
    last_batch: int = 0
    max_batch: int = 0
    batch_seconds: float = 0.0
    hook_errors: int = 0  # on_tick hooks that raised
    batch_cpu_seconds: float = 0.0  # CPU time of the sequencer's thread in batches (not the fsync's)
    snapshots: int = 0  # written by the sequencer (the periodic and requested ones)
    snapshot_failures: int = 0
    snapshot_capture_seconds: float = 0.0  # on the event loop: Engine.capture
    snapshot_capture_max: float = 0.0
    snapshot_write_seconds: float = 0.0  # in the I/O thread: encoding and writing, until done
    write_failures: int = 0  # journal appends or syncs that failed (a full disk): retried
    stalls: int = 0  # times the journal stopped taking writes and the sequencer waited for it
    stall_seconds: float = 0.0  # time stalled (ended stalls)


# a bid may hold at most this (µ$, ~1.28 billion USD): the money of the lease it may make stays
# within settlement's int64 arithmetic (clearing.engine.MONEY_LIMIT, µ$·s/h)
MAX_HOLD = MONEY_LIMIT // 3600
# how far ahead a reserved bid may start (two leap years)
MAX_LEAD_S = 2 * 366 * 86_400
# after a failed journal write: wait this long before the next try, doubling up to RETRY_MAX_S
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class Sequencer:
    """The single writer.  ``escrow``: whether bids need escrow (R17) from the core's balances
    (off in benchmarks of the books alone).  Hooks for the projections that batch their work:
    ``on_tick`` runs at start and at every clock tick, ``after_batch`` after each published
    batch, ``on_idle`` whenever nothing is queued.  ``clock`` stamps clock commands and times
    the ticks and periodic snapshots."""

    def __init__(self, engine: Engine, journal: Journal, cfg: ServerConfig, bus: Bus,
                 escrow: bool = True, *, on_tick: Callable[[], Any] | None = None,
                 after_batch: Callable[[], Any] | None = None, on_idle: Callable[[], Any] | None = None,
                 clock: Clock = WALL, replicate: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self.journal = journal
        self.cfg = cfg
        self.bus = bus
        self.escrow = escrow
        self.on_tick = on_tick
        self.after_batch = after_batch
        self.on_idle = on_idle
        self.clock = clock
        # a leader with a standby (exchange.lease): a batch is answered only once it is also in the
        # Redis stream; raises exchange.lease.Deposed when another core leads
        self.replicate = replicate
        self.stats = SequencerStats()
        self._queue: list[Request] = []
        self._wake = asyncio.Event()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpux-io")
        self._syncer = _Syncer(self._sync)
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._closed = False
        self._stopped = asyncio.Event()
        self._snapshot_due = False
        self._last_snapshot_seq = engine.seq
        self._snapshot_writing: asyncio.Future | None = None  # a snapshot being encoded and written
        self._snapshot_error: BaseException | None = None  # the last snapshot's failure (None: it worked)
        self.failed: BaseException | None = None
        self.stalled: BaseException | None = None  # the journal's write error while it cannot write
        self._stalled_since = 0.0
        self._retry_s = RETRY_FIRST_S
        self._retry_at = 0.0  # (monotonic) requests are refused until then
        self._retry_wake = asyncio.Event()  # a stop ends the back-off
        self.busy = False  # a batch is journaled but not yet published
        self._inflight: list[Request] = []  # the owners of the batch being made durable
        self.times = {name: engine.book_time(name) for name in engine.books}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for book in self.engine.books.values():  # the jitted hash loaded and the capture buffers made now,
            book.state_hash()                     # not on the loop at the first snapshot (~0.2 s and more)
            warm = getattr(book, "warm_capture", None)
            if warm is not None:
                warm()
        warm_reads()  # numba loads jitted code at its first call, holding the GIL
        self._running = True
        if self.on_tick is not None:
            self.on_tick()
        self._tick()
        stopping = lambda: self._closed  # noqa: E731
        self._tasks = [supervise(asyncio.create_task(self._run(), name="sequencer"), "the sequencer's loop", stopping),
                       supervise(asyncio.create_task(self._clock(), name="clock"), "the sequencer's clock task",
                             stopping)]

    async def stop(self, snapshot: bool = True) -> None:
        """Finish the queued requests, take a final snapshot, close the journal (once; also after
        the sequencer failed or was never started)."""
        if self._closed:
            return
        self._closed = True
        if self._running:
            self._running = False
            self._wake.set()
            self._retry_wake.set()
            await self._stopped.wait()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._snapshot_writing is not None:  # the last periodic one, still being written
            await asyncio.gather(self._snapshot_writing, return_exceptions=True)
        if snapshot and self.failed is None and self.engine.seq > self._last_snapshot_seq:
            try:
                write_snapshot(self.cfg.data_path, self.engine.seq, self.engine.snapshot())
            except Exception as e:  # (a full disk) the journal has everything: the next start replays more
                self.stats.snapshot_failures += 1
                log.error("the final snapshot at seq %d failed: %r; the journal is closed as usual", self.engine.seq, e,
                          exc_info=True)
        for book in self.engine.books.values():  # the capture buffers serve a running sequencer only
            if getattr(book, "_capture_bufs", None) is not None:
                book._capture_bufs = None
                book._capture_owner = None
        self._syncer.close()
        self.journal.close()
        self._io.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._running

    def health(self) -> str:
        """"ok" while the sequencer takes orders and its tasks (the loop, the clock) run."""
        if self.failed is not None:
            return f"sequencer stopped: {self.failed!r}"
        if not self._running:
            return "sequencer stopped"
        if self.stalled is not None:
            return (f"the journal cannot write ({_why(self.stalled)}) for "
                    f"{time.monotonic() - self._stalled_since:.0f} s; orders are refused, writes are retried")
        for t in self._tasks:
            if t.done():
                exc = None if t.cancelled() else t.exception()
                return f"the sequencer's {t.get_name()} task ended: {exc!r}"
        if not self._syncer.alive:
            return "the journal's fsync thread died (see the log): batches cannot be made durable"
        if self._snapshot_error is not None:
            return (f"the last snapshot failed ({self._snapshot_error!r}); trading goes on, start-up replays more "
                    "journal; retried every snapshot_every_s")
        return "ok"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        st = self.stats
        out: list[tuple[str, float, str, str]] = [
            ("gpux_batches_total", st.batches, "sequencer batches", "counter"),
            ("gpux_commands_total", st.commands, "commands journaled and applied", "counter"),
            ("gpux_fsyncs_total", st.fsyncs, "journal fsyncs (one per batch)", "counter"),
            ("gpux_fsync_seconds_total", round(st.fsync_seconds, 6), "time waiting for fsync", "counter"),
            ("gpux_fsync_busy_seconds_total", round(st.fsync_busy_seconds, 6), "time inside fsync", "counter"),
            ("gpux_batch_seconds_total", round(st.batch_seconds, 6), "time spent in batches", "counter"),
            ("gpux_batch_cpu_seconds_total", round(st.batch_cpu_seconds, 6),
             "CPU time of the sequencer's thread in batches", "counter"),
            ("gpux_batch_max", st.max_batch, "largest batch so far", "gauge"),
            ("gpux_tick_hook_errors_total", st.hook_errors, "clock-tick hooks that raised (see the log)", "counter"),
            ("gpux_snapshots_total", st.snapshots, "snapshots written by the sequencer", "counter"),
            ("gpux_snapshot_failures_total", st.snapshot_failures, "snapshots that failed (logged)", "counter"),
            ("gpux_snapshot_capture_seconds_total", round(st.snapshot_capture_seconds, 6),
             "time capturing snapshots on the event loop", "counter"),
            ("gpux_snapshot_capture_max_seconds", round(st.snapshot_capture_max, 6),
             "longest snapshot capture on the event loop", "gauge"),
            ("gpux_snapshot_write_seconds_total", round(st.snapshot_write_seconds, 6),
             "time encoding and writing snapshots off the event loop", "counter"),
            ("gpux_sequencer_queued", len(self._queue), "requests waiting for the next batch", "gauge"),
            ("gpux_journal_write_failures_total", st.write_failures,
             "journal appends or syncs that failed (a full disk), retried with back-off", "counter"),
            ("gpux_journal_stalled", int(self.stalled is not None),
             "1 while the journal cannot write and orders are refused", "gauge"),
            ("gpux_journal_stalls_total", st.stalls, "times the journal stopped taking writes", "counter"),
            ("gpux_journal_stall_seconds_total", round(st.stall_seconds, 3), "time the journal could not write "
             "(ended stalls)", "counter")]
        out += [(f'gpux_rejected_pre_total{{code="{code}"}}', n,
                 "requests refused by the sequencer before the journal", "counter")
                for code, n in sorted(st.rejected_pre.items())]
        return out

    # ------------------------------------------------------------------ submitting
    def submit(self, req: Request) -> asyncio.Future:
        """Queue a request; the future gets its answer dict (or ApiError) once it is durable."""
        return submit_through(self.post, req)

    def post(self, req: Request) -> None:
        """Queue a request whose ``reply`` callback gets the answer dict or an ApiError, called
        from the sequencer's loop once the request is durable (or refused)."""
        if not self._running:
            raise ApiError("UNAVAILABLE")
        if self.stalled is not None and time.monotonic() < self._retry_at:
            raise self._stall_error()
        self._queue.append(req)
        self._wake.set()

    def _stall_error(self) -> ApiError:
        return ApiError("UNAVAILABLE", f"the journal cannot write ({_why(self.stalled)}); nothing was accepted, "
                                       "the exchange retries by itself: retry shortly")

    # ------------------------------------------------------------------ a full disk
    def _stall(self, exc: BaseException) -> None:
        """A journal write failed: refuse requests for a back-off (doubling), answer the queued ones."""
        self.stats.write_failures += 1
        if self.stalled is None:
            self.stats.stalls += 1
            self._stalled_since = time.monotonic()
            self._retry_s = RETRY_FIRST_S
            log.error("the journal cannot write: orders are refused and writes retried until it can (%s)",
                      _why(exc), exc_info=exc)
        else:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self.stalled = exc
        self._retry_at = time.monotonic() + self._retry_s
        refused, self._queue = self._queue, []
        for r in refused:
            r.resolve(self._stall_error())

    def _unstall(self) -> None:
        if self.stalled is not None:
            took = time.monotonic() - self._stalled_since
            self.stats.stall_seconds += took
            log.warning("the journal writes again: orders are taken (stalled %.1f s, %d failed writes)", took,
                        self.stats.write_failures)
            self.stalled = None

    async def _back_off(self) -> None:
        """Wait until the next try is due (or the sequencer stops)."""
        wait = self._retry_at - time.monotonic()
        if wait > 0 and self._running:
            self._retry_wake.clear()
            try:
                await asyncio.wait_for(self._retry_wake.wait(), wait)
            except TimeoutError:
                pass

    async def _resync(self, exc: BaseException) -> None:
        """The fsync of an applied batch failed: write it again and sync until that works (the
        batch is answered after), with back-off; raise if the sequencer stops meanwhile."""
        while True:
            self._stall(exc)
            await self._back_off()
            if not self._running:
                raise RuntimeError(f"stopped while the journal could not sync ({_why(exc)})") from exc
            try:
                await self._syncer.sync(self.journal.resync)
            except OSError as e:
                exc = e
                continue
            return

    def _sync(self) -> None:
        t = time.perf_counter()
        self.journal.sync()
        self.stats.fsync_busy_seconds += time.perf_counter() - t

    def request_snapshot(self) -> None:
        self._snapshot_due = True
        self._wake.set()

    def _tick(self) -> None:
        """Queue a clock command for every book whose time is behind the wall clock."""
        now = self.clock.time()
        for name in self.engine.books:
            if now > self.times[name]:
                self._queue.append(Request(name, _CLOCK, 0))
        self._wake.set()

    async def _clock(self) -> None:
        interval = self.cfg.clock_interval_s
        clock = self.clock
        last_snapshot = clock.monotonic()
        while self._running:
            await clock.sleep(interval - (clock.time_ms() / 1000 % interval))
            self._tick()
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:  # a projection's hook must not stop engine time
                    self.stats.hook_errors += 1
                    log.exception("the clock tick's hook failed (engine time goes on)")
            if clock.monotonic() - last_snapshot >= self.cfg.snapshot_every_s:
                last_snapshot = clock.monotonic()
                self.request_snapshot()

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    if self.on_idle is not None:  # nothing waiting: e.g. the ledger commits shortly
                        self.on_idle()
                    if not self._running:
                        break
                    if self._snapshot_due:
                        await self._snapshot(loop)
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self.stalled is not None:
                    await self._back_off()  # (a stop ends it: the queue is tried once more, then answered)
                items, self._queue = self._queue, []
                await self._batch(loop, items)
        except BaseException as e:  # a journal that cannot go on, or a broken book: stop taking orders
            if not isinstance(e, asyncio.CancelledError):
                log.critical("sequencer stopped: %r", e, exc_info=True)
                self.failed = e
            self._running = False
            for r in self._queue:
                r.resolve(ApiError("UNAVAILABLE"))
            self._queue = []
            why = ("this core lost the leader's lease before the request was replicated: it was not acknowledged; "
                   "retry it, with the same client order id, on the new leader") if isinstance(e, Deposed) else \
                  ("the exchange stopped before this request was made durable; after the restart, ask for it by "
                   "its client order id")
            for r in self._inflight:  # applied, never made durable: the outcome is not known here
                r.resolve(ApiError("UNAVAILABLE", why))
            self._inflight = []
            raise
        finally:
            self._stopped.set()

    def _check(self, r: Request, seen: dict[tuple[int, str], Request], holds: dict[int, int],
               new: dict[int, int]) -> ApiError | bytes | Request | None:
        """Refusals that depend on order (never journaled), or an earlier answer."""
        state = self.engine.state
        if r.coid:
            key = (r.account, r.coid)
            if key in state.coids:
                return state.coids[key]
            if key in seen:
                return seen[key]
        cmd = r.cmd
        typ = cmd.type
        if typ == CMD_CANCEL:
            return None
        if r.book in state.halted:
            return ApiError("HALTED", f"trading in {r.book} is halted; resting orders are kept, "
                                      "cancels are accepted")
        if typ == CMD_BID or typ == CMD_ASK:
            if typ == CMD_BID and cmd.kind == RESERVED and cmd.start - self.times[r.book] > MAX_LEAD_S:
                # a start no one alive will see would hold the bid's escrow for ever (an ask holds no money)
                return ApiError("BAD_START", f"a reserved bid may start at most {MAX_LEAD_S // 86_400} days "
                                             f"after now ({MAX_LEAD_S} s); this one is "
                                             f"{cmd.start - self.times[r.book]} s ahead")
            count = state.open_count(r.account) + new.get(r.account, 0)
            if count >= self.cfg.max_open_orders:
                return ApiError("TOO_MANY_ORDERS", f"the account has {count} open orders, the maximum is "
                                                   f"{self.cfg.max_open_orders}")
            if typ == CMD_BID:  # R17: a bid holds its whole exposure (gpus x hours x limit + fee)
                r.hold = state.hold_for(r.book, cmd.gpus, cmd.hours, cmd.price)
                if r.hold >= MAX_HOLD:
                    return ApiError("INSUFFICIENT_FUNDS", f"the bid needs {r.hold} µ$ of escrow; a bid may hold "
                                                          f"at most {MAX_HOLD - 1} µ$")
            if r.hold and self.escrow:
                avail = self.engine.money.available(r.account) - holds.get(r.account, 0)
                if r.hold > avail:
                    return ApiError("INSUFFICIENT_FUNDS", f"the bid needs {r.hold} µ$ of escrow, "
                                                          f"{max(avail, 0)} µ$ is available")
                holds[r.account] = holds.get(r.account, 0) + r.hold
            new[r.account] = new.get(r.account, 0) + 1
        return None

    def _refuse_unfit(self, items: list[Request], recs: list[Command], owners: list[Request | None],
                      rec_entry: list[int]) -> None:
        """Commands with a field their record cannot hold get MALFORMED; the rest of the batch is
        queued again, as it came, for the next turn (nothing of it was journaled)."""
        bad = set()
        for k, rec in enumerate(recs):
            try:
                np.array([rec], dtype=COMMAND_DTYPE)
            except (OverflowError, ValueError):
                r = owners[rec_entry[k]]
                if r is not None:
                    bad.add(id(r))
                    r.resolve(ApiError("MALFORMED", "a field of the command is beyond its range"))
        self._queue[:0] = [r for r in items if id(r) not in bad]
        self._wake.set()

    def _check_fund(self, r: Request, holds: dict[int, int], index: int) -> ApiError | None:
        """A withdrawal takes only what is available, less the holds of bids earlier in the batch
        (and names itself by its journal seq); a deposit passes (and counts for what follows)."""
        f = r.fund
        assert f is not None
        f.time = self.clock.time()
        if f.op != WITHDRAW:  # the core applies a batch's deposits before its events: bids after it may use it
            if self.engine.money.fresh(f.ref) and f.ref not in self._batch_refs:
                self._batch_refs.add(f.ref)
                holds[f.account] = holds.get(f.account, 0) - f.amount
            return None
        avail = self.engine.money.available(f.account) - holds.get(f.account, 0)
        if f.amount > avail:
            return ApiError("INSUFFICIENT_FUNDS", f"the withdrawal is {f.amount} µ$, {max(avail, 0)} µ$ is available")
        holds[f.account] = holds.get(f.account, 0) + f.amount
        f.ref = f"journal:{self.journal.last_seq + index + 1}"
        return None

    async def _batch(self, loop: asyncio.AbstractEventLoop, items: list[Request]) -> None:
        t0 = time.perf_counter()
        cpu = time.thread_time()
        engine = self.engine
        entries: list[Entry] = []
        owners: list[Request | None] = []
        recs: list[Command] = []
        stamps: list[int] = []  # engine time of each of recs
        oids: list[int] = []  # order id of each of recs (new orders: the next one)
        rec_entry: list[int] = []
        later: list[tuple[Request, Any]] = []  # answered without the journal (refused, or repeats)
        seen: dict[tuple[int, str], Request] = {}
        holds: dict[int, int] = {}
        new: dict[int, int] = {}
        taken = items  # as they came (provisioning answers are taken out below)
        times = self.times
        times_before = dict(times)
        oid = engine.last_oid
        self._batch_refs: set[str] = set()  # refs of the batch's deposits (a repeat is applied once)
        if any(r.prov is not None for r in items):
            # provisioning answers first, stamped with their book's time and last event seq: in the
            # journal they follow exactly the events up to `after` (settlement applies them there)
            for r in items:
                if r.prov is not None:
                    r.prov.time = times[r.book]
                    r.prov.after = engine.event_seq(r.book)
                    entries.append(r.prov)
                    owners.append(r)
            items = [r for r in items if r.prov is None]
        for r in items:
            if r.admin:
                entries.append(Admin(r.admin, r.book))
                owners.append(r)
                continue
            if r.fund is not None:
                verdict = self._check_fund(r, holds, len(entries))
                if verdict is not None:
                    later.append((r, verdict))
                else:
                    entries.append(r.fund)
                    owners.append(r)
                continue
            cmd = r.cmd
            if cmd.type == CMD_CLOCK:
                t = self.clock.time()
                if t <= times[r.book]:
                    continue
                times[r.book] = t
                stamps.append(t)
                oids.append(0)
            else:
                verdict = self._check(r, seen, holds, new)
                if verdict is not None:
                    later.append((r, verdict))
                    continue
                stamps.append(times[r.book])
                if cmd.type == CMD_BID or cmd.type == CMD_ASK:
                    oid += 1
                    oids.append(oid)
                else:
                    oids.append(cmd.oid)
                if r.coid:
                    seen[(r.account, r.coid)] = r
            rec_entry.append(len(entries))
            recs.append(cmd)
            entries.append(Cmd(r.book, b"", r.coid))
            owners.append(r)
        if recs:  # the records with their engine times and order ids stamped
            try:
                arr = np.array(recs, dtype=COMMAND_DTYPE)
            except (OverflowError, ValueError):  # a field beyond its record type (the edge should refuse it)
                self._refuse_unfit(taken, recs, owners, rec_entry)
                return
            arr["time"] = stamps
            arr["oid"] = oids
            blob = arr.tobytes()
            for k, i in enumerate(rec_entry):
                entries[i].rec = blob[k * REC_SIZE:(k + 1) * REC_SIZE]
        if entries:
            try:
                self.journal.append([encode_entry(e) for e in entries])
            except OSError as e:  # e.g. a full disk
                if self.journal.failed is not None and not self.journal.retryable:  # it could not clean up
                    raise
                # nothing of the batch is in the journal or applied: refused, as if it never came
                self.times.update(times_before)
                self._stall(e)
                err = self._stall_error()
                for r in owners:
                    if r is not None:
                        r.resolve(err)
                self._answer_later([(r, err if isinstance(v, Request) else v) for r, v in later])
                if self.journal.failed is not None:  # a sync of earlier records failed (closing a segment)
                    await self._resync(e)
                    self._unstall()
                return
            self.busy = True
            self._inflight = [r for r in owners if r is not None]
            ts = time.perf_counter()
            sync = self._syncer.sync()
            try:
                results, arrays = engine.apply(entries, answers=True)
            except BaseException:
                await asyncio.shield(sync)
                raise
            engine.last_oid = max(engine.last_oid, oid)
            cpu -= time.thread_time()  # the loop runs other work while it waits
            try:
                await sync
            except OSError as e:  # applied, not durable: held until the journal has it
                if not self.journal.retryable:
                    raise
                await self._resync(e)
            if self.replicate is not None:
                await self.replicate(engine.seq)
            self._inflight = []
            self._unstall()
            cpu += time.thread_time()
            self.stats.fsync_seconds += time.perf_counter() - ts
            self.stats.fsyncs += 1
            coids = engine.state.coids
            for r, res in zip(owners, results, strict=True):
                if r is not None and not r.done:
                    if r.coid and (r.account, r.coid) in coids:
                        r.resolve(_decoder.decode(coids[(r.account, r.coid)]))
                    else:
                        r.resolve(res.answer or {"ok": True})
            self.bus.publish(Published(results, arrays, [o.origin if o else None for o in owners],
                                       [e for e in entries if type(e) is Prov],
                                       [e for e in entries if type(e) is Fund]))
            self.busy = False
            if self.after_batch is not None:  # busy: e.g. the ledger commits now and then
                self.after_batch()
        self._answer_later(later)
        st = self.stats
        st.batches += 1
        st.entries += len(entries)
        st.commands += len(recs)
        st.last_batch = len(items)
        st.max_batch = max(st.max_batch, len(items))
        st.batch_seconds += time.perf_counter() - t0
        st.batch_cpu_seconds += time.thread_time() - cpu
        if self._snapshot_due:
            await self._snapshot(loop)

    def _answer_later(self, later: list[tuple[Request, Any]]) -> None:
        """Answer the requests of a batch that needed no journal entry."""
        for r, verdict in later:
            if isinstance(verdict, ApiError):
                if verdict.code != "UNAVAILABLE":
                    self.stats.rejected_pre[verdict.code] = self.stats.rejected_pre.get(verdict.code, 0) + 1
                r.resolve(verdict)
            elif isinstance(verdict, bytes):
                r.resolve(_decoder.decode(verdict))
            else:  # a repeat of a request in this same batch: the first one's answer
                r.resolve(verdict.result if verdict.done else ApiError("INTERNAL"))

    async def _snapshot(self, loop: asyncio.AbstractEventLoop) -> None:
        """Capture the core between two batches (copies only: `Engine.capture`) and encode and
        write the snapshot in the I/O thread while batches go on; one at a time."""
        self._snapshot_due = False
        if self.engine.seq == self._last_snapshot_seq or self._snapshot_writing is not None:
            return
        t = time.perf_counter()
        make = self.engine.capture()
        seq = self.engine.seq
        st = self.stats
        took = time.perf_counter() - t
        st.snapshot_capture_seconds += took
        st.snapshot_capture_max = max(st.snapshot_capture_max, took)
        self._snapshot_writing = fut = loop.run_in_executor(self._io, _encode_and_write, self.cfg.data_path,
                                                            seq, make)
        fut.add_done_callback(partial(self._snapshot_written, seq, time.perf_counter()))

    def _snapshot_written(self, seq: int, started: float, fut: asyncio.Future) -> None:
        self._snapshot_writing = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # the journal is the system of record: trading goes on, start-up replays more
            self.stats.snapshot_failures += 1
            self._snapshot_error = exc
            log.error("snapshot at seq %d failed: %r", seq, exc, exc_info=exc)
            return
        self._snapshot_error = None
        self._last_snapshot_seq = max(self._last_snapshot_seq, seq)
        self.stats.snapshots += 1
        self.stats.snapshot_write_seconds += time.perf_counter() - started
        log.info("snapshot", extra={"seq": seq, "bytes": fut.result()})


def _encode_and_write(data_dir: Path, seq: int, make: Callable[[], Any]) -> int:
    parts = encode_snapshot_parts(make())
    write_snapshot(data_dir, seq, parts)
    return sum(len(p) for p in parts)


class _Syncer:
    """A thread that fsyncs the journal on request; cheaper than a ThreadPoolExecutor per batch."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._closing = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="gpux-fsync", daemon=True)
        self._thread.start()

    def sync(self, fn: Callable[[], None] | None = None) -> asyncio.Future:
        """Run the sync (or ``fn``) in the thread; the future gets its outcome."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((loop, fut, fn or self._fn))
        return fut

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                loop, fut, fn = job
                try:
                    fn()
                except BaseException as e:  # handed to the sequencer
                    loop.call_soon_threadsafe(_set, fut, None, e)
                else:
                    loop.call_soon_threadsafe(_set, fut, True, None)
        except BaseException as e:  # (e.g. the loop closed under it) reported in health, never silent
            log.critical("the journal's fsync thread died: %r", e, exc_info=True)

    @property
    def alive(self) -> bool:
        """The thread runs (or was closed on purpose)."""
        return self._thread.is_alive() or self._closing

    def close(self) -> None:
        self._closing = True
        self._jobs.put(None)
        self._thread.join(timeout=10)


def _set(fut: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _why(exc: BaseException | None) -> str:
    """A write error in a few words: "No space left on device (ENOSPC)"."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return repr(exc)


def open_journal(data_dir: Path, cfg: ServerConfig) -> Journal:
    return Journal.open(data_dir / "journal", segment_bytes=cfg.segment_bytes, fsync=cfg.fsync == "batch",
                        preallocate=True)
