"""Pipelined settlement: the engine works on hand-over N+1 while a writer thread commits N.

    s = PipelinedSettlement(data_dir / "ledger.db", config)
    s.apply_async([("H100", events)])     # the engine step now; its SQL queued for the writer
    s.run_async(step)                     # any engine step, as `Settlement.run`
    s.flush()                             # wait until everything queued is committed (or raise)

The engine step (pure Python, in memory) runs in the caller's thread; its transfers and the
state rows it changed (leases encoded, bids, seq cursors: values, not live objects) go to one
writer thread, which commits each queued step in its own transaction — transfers, balances,
state rows and seq cursor together, as `Settlement.run` does — or, when it has fallen behind,
several queued steps in one transaction (`max_merge`).  SQLite releases the GIL while it
works, so the writer's B-tree work overlaps the engine's next step on another core.

What a caller can assume: ``apply_async`` returning means the events are *in the engine*,
not committed.  `flush` returning means every step queued before it is committed (with
``synchronous=NORMAL``: as durable as a `Settlement.run` that returned).  If a commit fails
(funds, a conflict, SQLite busy or full), nothing of that transaction is in the file, the
writer drops every step queued after it, and the next ``apply_async``/``run_async``/`flush`
(or any other method) reloads the engine from the file and raises the error: the ledger is
then at the last committed seq per class (`last_seq`), and the caller feeds again from
there.  Every other method of `Settlement` (``run``, ``apply``, ``tick``, ``mark_*``,
reads) flushes first and then works synchronously as before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from settlement.engine import SettlementEngine, join_transfers
from settlement.ledger import class_code, page_deltas
from settlement.service import Settlement, events_step
from settlement.store import StateRows

_CONNECTION = "INSERT OR REPLACE INTO lease_connections (lease, connection, at) VALUES (?, ?, ?)"


class StaleState(RuntimeError):
    """Another process wrote the ledger while steps computed on the older state were queued."""


class _Job(NamedTuple):
    transfers: list
    deltas: dict[int, int]  # per account, of all the transfers (used if they are all new)
    state: StateRows
    sql: list[tuple[str, tuple]]  # other statements of the step (provisioning connections)


class PipelinedSettlement(Settlement):
    def __init__(self, *args: Any, depth: int = 2, max_merge: int = 4, **kw: Any) -> None:
        self.max_merge = max_merge
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._committed = 0  # new transfers committed by the writer since the last flush
        self._sql: list[tuple[str, tuple]] | None = None  # collecting a step's statements
        self.commits = 0
        super().__init__(*args, **kw)
        self._writer = threading.Thread(target=self._write_loop, name="settlement-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ the caller's side
    def run_async(self, step: Callable[[SettlementEngine], list], positions: dict[str, str] | None = None) -> int:
        """`Settlement.run`, pipelined: ``step(engine)`` now, its commit queued.  Returns the
        number of transfers the step made (the ones new to the ledger are counted at `flush`)."""
        self._raise_failed()
        self._sql = []
        try:
            transfers = join_transfers([step(self.engine)])
            state = self.store.rows(self.engine, self.engine.take_changes(), positions)
        except BaseException:
            self._sql = None
            self._reload()
            raise
        job = _Job(transfers, page_deltas(transfers) if len(transfers) else {}, state, self._sql)
        self._sql = None
        self._queue.put(job)
        return len(transfers)

    def apply_async(self, batches: Iterable[tuple[str, Any]], positions: dict[str, str] | None = None) -> int:
        """`Settlement.apply`, pipelined (see `run_async`)."""
        return self.run_async(events_step(batches), positions)

    def flush(self) -> int:
        """Wait until every queued step is committed; returns how many new transfers they
        committed.  Raises the writer's error, if any (after reloading the engine)."""
        self._queue.join()
        self._raise_failed()
        n, self._committed = self._committed, 0
        return n

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._writer.join()
            super().close()

    def _raise_failed(self) -> None:
        if self._error is None:
            return
        self._queue.join()  # the writer drops what is left
        e, self._error = self._error, None
        self._reload()
        raise e

    def _reload(self) -> None:
        self._queue.join()
        with self.ledger.transaction():
            self.engine = self._load()

    def _load(self) -> SettlementEngine:
        engine = super()._load()
        base = engine.class_code

        def code(name: str) -> int:  # a new class's code: committed on its own, outside the writer
            if self._sql is None:  # a synchronous step: inside its transaction
                return base(name)
            self._queue.join()
            with self.ledger.transaction():
                return class_code(self.ledger.conn, name)  # type: ignore[return-value]

        engine.class_code = code  # type: ignore[method-assign]
        return engine

    def answer_step(self, engine: SettlementEngine, cls: str, trade_id: int, ready: bool, time: int,
                    connection: str = "", reason: str = "") -> tuple[list, Any]:
        if self._sql is None:
            return super().answer_step(engine, cls, trade_id, ready, time, connection, reason)
        out, lease = super().answer_step(engine, cls, trade_id, ready, time, "", reason)
        if lease is not None and ready and connection:
            self._sql.append((_CONNECTION, (lease.ref, connection, time)))
        return out, lease

    # ------------------------------------------------------------------ the writer thread
    def _write_loop(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                q.task_done()
                return
            jobs = [job]
            while len(jobs) < self.max_merge:  # behind: several steps, one transaction
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    q.put(None)  # (cannot block: just taken one) stop after these
                    q.task_done()
                    break
                jobs.append(more)
            try:
                if self._error is None:
                    self._commit_jobs(jobs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
            finally:
                for _ in jobs:
                    q.task_done()

    def _commit_jobs(self, jobs: list[_Job]) -> None:
        ledger, store = self.ledger, self.store
        if len(jobs) == 1:
            transfers, deltas, state, sql = jobs[0]
        else:  # one post and one set of state rows for all: a row changed twice is written once
            transfers, deltas, sql = join_transfers([j.transfers for j in jobs]), dict(jobs[0].deltas), []
            for j in jobs:
                sql += j.sql
            for j in jobs[1:]:
                for a, d in j.deltas.items():
                    deltas[a] = deltas.get(a, 0) + d
            state = _merge([j.state for j in jobs])
        with ledger.transaction() as conn:
            if store.stored_version() != store.version:
                raise StaleState("another process wrote the ledger under a pipelined settlement: reloaded")
            n = ledger.post(transfers, checked=True, deltas=deltas) if len(transfers) else 0
            for stmt, args in sql:
                conn.execute(stmt, args)
            store.write(state)
            if self.before_commit is not None:
                self.before_commit()
        self._committed += n
        self.commits += 1


def _merge(states: list[StateRows]) -> StateRows:
    """Several steps' state rows, in order, as one step's: the last value of each row."""
    bids: dict[int, tuple | None] = {}
    leases: dict[int, tuple] = {}
    cursors: dict[str, tuple] = {}
    positions: dict[str, str] = {}
    for st in states:
        for row in st.bids:
            bids[row[0]] = row
        for (key,) in st.closed:
            bids[key] = None
        for row in st.leases:
            leases[row[0]] = row
        for row in st.cursors:
            cursors[row[0]] = row
        positions.update(st.positions)
    return StateRows([r for r in bids.values() if r is not None], [(k,) for k, r in bids.items() if r is None],
                     list(leases.values()), list(cursors.values()), list(positions.items()))


def _flushing(name: str) -> Callable:
    method = getattr(Settlement, name)

    def wrapper(self: PipelinedSettlement, *a: Any, **k: Any) -> Any:
        self.flush()
        return method(self, *a, **k)

    wrapper.__name__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


# `last_seq` does not flush: it is the engine's (what was applied; after a failure, what is committed)
# every other public method: flush first, then as Settlement (synchronous, in the caller's thread)
for _name in ("refresh", "run", "apply", "on_events", "tick", "mark_provisioning", "mark_ready", "mark_failed",
              "deposit", "withdraw", "payout", "cursors", "positions", "lease", "leases", "statement",
              "transfers", "connection", "check_invariants"):
    if hasattr(Settlement, _name):
        setattr(PipelinedSettlement, _name, _flushing(_name))
