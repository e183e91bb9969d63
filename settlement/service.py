"""Settlement: the engine's transfers and state committed to the ledger together.

    s = Settlement(data_dir / "ledger.db", SettlementConfig(fees=fees_from_instruments(instruments)))
    s.deposit(42, 100 * USD, "accounts:deposit:17")
    s.on_events("H100", events)          # one transaction: transfers + leases + bids + last seq
    s.apply([("H100", ev1), ("A100", ev2)])   # several classes, one transaction
    s.tick(now)                          # metering, lease ends (engine time)
    s.mark_ready("H100-7", t); s.mark_failed("H100-8", t, "no GPUs")   # provisioning (R18)
    s.statement(42)                      # balances, transfers, leases of an account
    s.last_seq("H100")                   # feed events after this one

Every call is one SQLite transaction.  If anything in it fails (a sequence gap, funds that
would go below zero, a crash in between), nothing of it is committed and the in-memory
state is reloaded from the file, so the caller can retry the same events later.  Another
process writing the same file is noticed at the start of each transaction (the store's
version) and the state reloaded first, so a standby consumer can take over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from clearing.engine import NO_TRANSFERS, LeaseStateError, SettlementConfig, SettlementEngine, join_transfers
from clearing.events import as_events
from clearing.leases import check_lease
from settlement.ledger import ESCROW, KIND_NAMES, PREPAID, Ledger, Transfer
from settlement.store import StateStore

log = logging.getLogger("gpux.settlement")

# how the renter of each ready lease connects (the provider agent's answer, R18)
_CONNECTIONS = ("CREATE TABLE IF NOT EXISTS lease_connections (lease TEXT PRIMARY KEY, connection TEXT NOT NULL, "
                "at INTEGER NOT NULL) WITHOUT ROWID")


def events_step(batches: Iterable[tuple[str, Any]]) -> Callable[[SettlementEngine], np.ndarray]:
    """A step (for `Settlement.run`) applying events of one or more classes, each an
    EVENT_DTYPE array, JSON dicts or Events, in seq order."""
    parts = [(cls, events if isinstance(events, np.ndarray) else as_events(events)) for cls, events in batches]

    def step(engine: SettlementEngine) -> np.ndarray:
        return join_transfers([engine.apply(cls, evs) for cls, evs in parts])

    return step


def parse_lease_ref(ref: str | tuple[str, int]) -> tuple[str, int]:
    """``"H100-7"`` or ``("H100", 7)`` -> ``("H100", 7)``."""
    if isinstance(ref, tuple):
        return ref[0], int(ref[1])
    cls, sep, tid = ref.rpartition("-")
    if not sep or not cls or not tid.isdigit() or not 0 < int(tid) < 2**63:
        raise ValueError(f"a lease is CLASS-TRADE_ID (e.g. H100-7, a trade id below 2**63), not {ref[:80]!r}")
    return cls, int(tid)


class Answer(NamedTuple):
    """A provider agent's answer to a provisioning task (R18), as journaled by the exchange
    (exchange.entries.Prov) and applied by `gpux settle`'s replica alike: it follows the event
    ``after`` of its class."""

    cls: str
    trade_id: int
    ready: bool
    time: int
    after: int
    connection: str = ""
    reason: str = ""


class Settlement:
    def __init__(self, path: str | Path, config: SettlementConfig | None = None, *,
                 synchronous: str = "NORMAL") -> None:
        self.config = config or SettlementConfig()
        self.ledger = Ledger(path, synchronous=synchronous)
        self.store = StateStore(self.ledger.conn)
        with self.ledger.transaction() as db:
            self.store.create()
            db.execute(_CONNECTIONS)
            self.engine = self._load()
        # called inside the transaction, after the transfers and state were written and
        # before COMMIT (tests use it to crash there); an exception rolls everything back
        self.before_commit: Callable[[], None] | None = None

    def close(self) -> None:
        self.ledger.close()

    def _load(self) -> SettlementEngine:
        engine = SettlementEngine(self.config)
        self.store.load(engine)
        return engine

    def refresh(self) -> bool:
        """Reload the state if another process committed since we last did (True if so)."""
        if self.store.stored_version() == self.store.version:
            return False
        with self.ledger.transaction():  # one consistent snapshot
            self.engine = self._load()
        return True

    # ------------------------------------------------------------------ writing
    def _commit(self, step: Callable[[SettlementEngine], list], positions: dict[str, str] | None = None) -> int:
        """Run ``step`` on the engine and commit its transfers and state changes in one
        transaction; on any failure roll back and reload.  Returns the new transfers' count."""
        try:
            with self.ledger.transaction():
                if self.store.stored_version() != self.store.version:  # another process wrote
                    log.info("settlement state changed under us (another writer): reloading")
                    self.engine = self._load()
                transfers = join_transfers([step(self.engine)])
                n = self.ledger.post(transfers, checked=True) if len(transfers) else 0
                self.store.save(self.engine, self.engine.take_changes(), positions)
                if self.before_commit is not None:
                    self.before_commit()
        except BaseException:
            with self.ledger.transaction():
                self.engine = self._load()
            raise
        return n

    def apply(self, batches: Iterable[tuple[str, Any]], positions: dict[str, str] | None = None) -> int:
        """Events of one or more classes (each an EVENT_DTYPE array, JSON dicts or record
        tuples, in seq order) in one transaction.  Returns the number of new transfers.
        ``positions``: where the source is now, per class (the Redis consumer's last entry
        id), recorded in the same transaction."""
        return self._commit(events_step(batches), positions)

    def run(self, step: Callable[[SettlementEngine], list], positions: dict[str, str] | None = None) -> int:
        """Any engine step (events, ticks, provisioning answers, several at once) in one
        transaction: ``step(engine)`` returns the transfers; its state changes are saved with
        them (and ``positions`` as in `apply`).  On failure nothing is committed and the state
        is reloaded."""
        return self._commit(step, positions)

    def answer_step(self, engine: SettlementEngine, cls: str, trade_id: int, ready: bool, time: int,
                    connection: str = "", reason: str = "") -> tuple[list, Any]:
        """A provider agent's answer (R18), inside a `run` step: ready from ``time`` (metering
        starts; ``connection`` — a JSON object — kept for the renter in the same transaction)
        or failed (refund in full).  Returns (transfers, the lease) — ``([], None)`` when the
        lease cannot take it any more (ended and settled, failed or ready already: a replay,
        or an answer that came too late), which changes nothing."""
        lease = engine.lease(cls, trade_id)
        if lease is None:
            return NO_TRANSFERS, None
        try:
            if ready:
                out = engine.mark_ready(cls, trade_id, time)
                if connection:
                    self.ledger.conn.execute("INSERT OR REPLACE INTO lease_connections (lease, connection, at) "
                                             "VALUES (?, ?, ?)", (lease.ref, connection, time))
            else:
                out = engine.mark_failed(cls, trade_id, time, reason or "the provider's agent could not provision it")
        except LeaseStateError as e:
            log.warning("provisioning answer for %s not applied: %s", lease.ref, e)
            return NO_TRANSFERS, None
        return out, lease

    def events_and_answers(self, engine: SettlementEngine, cls: str, events: Any, answers: list[Answer],
                           ticks: Iterable[tuple[int, int]] = ()) -> tuple[np.ndarray, list[tuple[Answer, Any]]]:
        """Inside a `run` step: one class's events (EVENT_DTYPE array or Events, in seq
        order) with the provisioning answers among them, each right after the event it follows
        (``after``), as the exchange's journal has them; and ``ticks``, ``(after, time)``: the
        class's clock moved to ``time`` right after event ``after`` (a clock command, as the
        Redis stream has it; after the answers that follow the same event).  Returns the
        transfers and the answers that took effect, with their leases."""
        steps = [(a.after, 0, a) for a in answers] + [(after, 1, t) for after, t in ticks]
        if not steps:
            return (engine.apply(cls, events) if len(events) else NO_TRANSFERS), []
        if not isinstance(events, np.ndarray):
            events = as_events(events)
        seqs = events["seq"].tolist() if isinstance(events, np.ndarray) else [e.seq for e in events]
        out: list[np.ndarray] = []
        took: list[tuple[Answer, Any]] = []
        i = 0
        for after, is_tick, x in sorted(steps, key=lambda s: (s[0], s[1])):
            j = i
            while j < len(seqs) and seqs[j] <= after:
                j += 1
            if j > i:
                out.append(engine.apply(cls, events[i:j]))
                i = j
            if is_tick:
                out.append(engine.tick(x, cls))
                continue
            transfers, lease = self.answer_step(engine, cls, x.trade_id, x.ready, x.time, x.connection, x.reason)
            out.append(transfers)
            if lease is not None:
                took.append((x, lease))
        if i < len(seqs):
            out.append(engine.apply(cls, events[i:]))
        return join_transfers(out), took

    def connection(self, lease: str | tuple[str, int]) -> str | None:
        """The JSON connection details of a ready lease, if its agent gave any."""
        cls, tid = parse_lease_ref(lease)
        row = self.ledger.conn.execute("SELECT connection FROM lease_connections WHERE lease = ?",
                                       (f"{cls}-{tid}",)).fetchone()
        return row[0] if row else None

    def on_events(self, cls: str, events: Any) -> int:
        """One class's events (as `apply`)."""
        return self.apply([(cls, events)])

    def tick(self, now: int, cls: str | None = None) -> int:
        return self._commit(lambda e: e.tick(now, cls))

    def mark_provisioning(self, lease: str | tuple[str, int]) -> None:
        cls, tid = parse_lease_ref(lease)
        self._commit(lambda e: e.mark_provisioning(cls, tid))

    def mark_ready(self, lease: str | tuple[str, int], t: int) -> int:
        cls, tid = parse_lease_ref(lease)
        return self._commit(lambda e: e.mark_ready(cls, tid, t))

    def mark_failed(self, lease: str | tuple[str, int], t: int, reason: str = "provisioning failed") -> int:
        cls, tid = parse_lease_ref(lease)
        return self._commit(lambda e: e.mark_failed(cls, tid, t, reason))

    def deposit(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        return self.ledger.deposit(owner, amount, id, time)

    def withdraw(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        return self.ledger.withdraw(owner, amount, id, time)

    def payout(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        return self.ledger.payout(owner, amount, id, time)

    # ------------------------------------------------------------------ reading
    def last_seq(self, cls: str) -> int:
        """The last event seq of ``cls`` whose money is in the ledger (feed events after it)."""
        return self.engine.last_seq(cls)

    def cursors(self) -> dict[str, tuple[int, int]]:
        """``{class: (last seq, clock)}`` as committed."""
        return self.store.cursors()

    def positions(self) -> dict[str, str]:
        """``{class: source position}`` of the last applied events, as committed."""
        return self.store.positions()

    def lease(self, lease: str | tuple[str, int]) -> dict[str, Any] | None:
        cls, tid = parse_lease_ref(lease)
        x = self.engine.lease(cls, tid) or self.store.lease(cls, tid)
        return x.view() if x is not None else None

    def leases(self, owner: int) -> list[dict[str, Any]]:
        return [x.view() for x in self.store.leases_of(owner)]

    def statement(self, owner: int) -> dict[str, Any]:
        """An account's balances, its ledger (every transfer that touched it, with running
        balances) and its leases as buyer or provider (what `gpux statement ACCOUNT` prints)."""
        return {"account": owner, "balances": self.ledger.balances(owner),
                "transfers": self.ledger.statement(owner), "leases": self.leases(owner)}

    def transfers(self, prefix: str = "") -> list[Transfer]:
        return self.ledger.transfers(prefix)

    def check_invariants(self) -> dict[str, int]:
        """The ledger's invariants (sum zero, available ≥ 0, balances = transfers), and that
        escrow equals the open bids' exposure, lease_prepaid equals what live leases hold,
        every lease's money matches its state, and the stored state equals the memory's."""
        summary = self.ledger.check_invariants()
        ledger_escrow = {o: b for (o, k), b in self.ledger.balances().items() if k == KIND_NAMES[ESCROW]}
        exposure = self.engine.exposure()
        if ledger_escrow != exposure:
            diff = {a: (ledger_escrow.get(a, 0), exposure.get(a, 0)) for a in set(ledger_escrow) | set(exposure)
                    if ledger_escrow.get(a, 0) != exposure.get(a, 0)}
            raise AssertionError(f"escrow differs from the open bids' exposure (account: ledger, bids): {diff}")
        ledger_prepaid = {o: b for (o, k), b in self.ledger.balances().items() if k == KIND_NAMES[PREPAID]}
        prepaid = self.engine.prepaid()
        if ledger_prepaid != prepaid:
            raise AssertionError(f"lease_prepaid differs from the live leases: {ledger_prepaid} != {prepaid}")
        n = 0
        for lease in self.store.all_leases():
            check_lease(lease)
            n += 1
        mem = {(c.name, t): x for c in self.engine.classes.values() for t, x in c.leases.items()}
        for (cls, tid), x in mem.items():
            if self.store.lease(cls, tid) != x:
                raise AssertionError(f"lease {x.ref}: stored state differs from memory")
        return {**summary, "leases": n}
