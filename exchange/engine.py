"""The deterministic core of the exchange: the books of every GPU class, the state kept from
their events and the money (`exchange.money`), driven by journal entries (`exchange.entries`).

    engine = Engine(instruments, engine="numba")
    results, arrays = engine.apply(entries)   # live, after the sequencer journaled them
    engine.apply(entries)                     # the same call on replay: same events, same state

Snapshots (`exchange.snapshots`) hold every book's snapshot blob, its state hash (verified on
restore), the exchange state and the money with its hash (verified too); start-up is the
latest snapshot + the journal after it
(`exchange.recovery`).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from exchange.config import Instrument
from exchange.entries import Cmd, Entry, Fund, Prov
from exchange.money import Money
from exchange.snapshots import BookSnap, Snapshot, SnapshotMismatch, encode_snapshot
from exchange.state import ExchangeState, StateData
from exchange.views import answer
from orderbook import types as T
from orderbook.book import Book, make_book, restore_book
from orderbook.engines import resolve_engine
from orderbook.types import CMD_CLOCK, COMMAND_DTYPE, Command, Event
from settlement.engine import SettlementConfig

log = logging.getLogger("gpux.engine")
# books with at least this many commands in one apply() run on worker threads together: below
# it, handing a batch to a thread costs more than the book's work (~1 µs a command)
PARALLEL_MIN_COMMANDS = 256


@dataclass
class Result:
    """What one entry did: the book, the command, the events it produced and, when asked for,
    the answer to its sender."""

    book: str
    command: Command | None
    events: list[Event]
    answer: dict[str, Any] | None = None


def book_seq(book: Any) -> int:
    """The last event seq of a book (either engine)."""
    seq = getattr(book, "seq", None)
    if seq is not None:
        return int(seq)
    from orderbook.fast import S_SEQ

    return int(book.st.S[S_SEQ])


class Engine:
    """Books + exchange state + money; `apply` is the only way they change.  ``money``: how
    settlement settles (fees, provisioning; default: the instruments' fees, leases ready at
    their start)."""

    def __init__(self, instruments: dict[str, Instrument], engine: str | None = None,
                 threads: int | None = None, money: SettlementConfig | None = None) -> None:
        self.instruments = instruments
        self.engine = resolve_engine(engine, warn=log.warning)
        self.books: dict[str, Book] = {name: make_book(i.book, self.engine) for name, i in instruments.items()}
        self.state = ExchangeState(instruments)
        self.money = Money(instruments, money)
        self.seq = 0  # last journal seq applied
        self.last_oid = 0
        self.book_seconds = 0.0  # time spent inside the books (metrics)
        # worker threads for books with big batches at the same time (_run_books); 1: never.  The
        # reference book holds the GIL throughout: threads would only add their hand-offs.
        auto = min(os.cpu_count() or 1, len(self.books)) if self.engine == "numba" else 1
        self.threads = auto if threads is None else max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        """/metrics: the journal seq applied, each book's resting orders, engine time and halt."""
        out: list[tuple[str, float, str, str]] = [
            ("gpux_journal_seq", self.seq, "last journal sequence number applied", "counter")]
        out += [(f'gpux_resting_orders{{class="{n}"}}', b.resting_orders(), "orders resting in each book", "gauge")
                for n, b in self.books.items()]
        out += [(f'gpux_engine_time{{class="{n}"}}', self.book_time(n), "engine time of each book (UTC seconds)",
                 "gauge") for n in self.books]
        out += [(f'gpux_halted{{class="{n}"}}', int(n in self.state.halted), "1 while trading in the class is halted",
                 "gauge") for n in self.books]
        out += [("gpux_book_seconds_total", round(self.book_seconds, 6), "time spent inside the books", "counter"),
                ("gpux_leases", len(self.state.leases), "leases known (all states)", "gauge")]
        return out

    def book_time(self, name: str) -> int:
        return int(getattr(self.books[name], "now", 0))

    def event_seq(self, name: str) -> int:
        """The last event seq of a book."""
        return book_seq(self.books[name])

    # ------------------------------------------------------------------ applying entries
    def apply(self, entries: list[Entry], answers: bool = False) -> tuple[list[Result], dict[str, np.ndarray]]:
        """Apply journal entries in order.  Returns one Result per entry and the events
        array of each book that produced any (for the bus)."""
        results: list[Result | None] = [None] * len(entries)
        by_book: dict[str, list[int]] = {}
        answers_of: dict[str, list[Prov]] = {}
        funds: list[int] = []
        for i, e in enumerate(entries):
            if type(e) is Cmd:
                by_book.setdefault(e.book, []).append(i)
            elif type(e) is Prov:  # a provider agent's answer: money only (R18)
                answers_of.setdefault(e.book, []).append(e)
                results[i] = Result(e.book, None, [])
            elif type(e) is Fund:
                funds.append(i)
            else:
                if e.op == "halt":
                    self.state.halted.add(e.book)
                elif e.op == "resume":
                    self.state.halted.discard(e.book)
                results[i] = Result(e.book, None, [])
        money = self.money
        for i in funds:  # before the events: balances are sums (exchange.money)
            e = entries[i]
            results[i] = Result("", None, [], {"ok": True, "op": e.op, "account": e.account, "amount": e.amount,
                                                "applied": money.fund(e)})
        arrays: dict[str, np.ndarray] = {}
        state = self.state
        plans: dict[str, tuple[np.ndarray, list[tuple[int, int]]]] = {}
        for name, idx in by_book.items():
            cmds = np.frombuffer(b"".join([entries[i].rec for i in idx]), dtype=COMMAND_DTYPE)
            # A clock command has no leading event, so after another command in the same book
            # call its events could not be told from that command's (split_events): every clock
            # starts a new call.
            cuts = np.flatnonzero(cmds["type"][1:] == CMD_CLOCK) + 1
            bounds = [0, *cuts.tolist(), len(cmds)]
            plans[name] = (cmds, list(zip(bounds[:-1], bounds[1:], strict=True)))
        t0 = time.perf_counter()
        book_parts = self._run_books(plans)
        self.book_seconds += time.perf_counter() - t0
        for name, idx in by_book.items():
            cmds, spans = plans[name]
            cmd_list = T.commands(cmds)
            coids = [entries[i].coid for i in idx]
            parts = book_parts[name]
            for (lo, hi), part in zip(spans, parts, strict=True):
                ev_list = T.events(part)
                owned = state.apply(name, cmd_list[lo:hi], ev_list, coids[lo:hi])
                for k in range(lo, hi):
                    a, b = owned[k - lo]
                    results[idx[k]] = Result(name, cmd_list[k], ev_list[a:b])
            events = T.join(parts, T.EVENT_DTYPE)
            if len(events):
                arrays[name] = events
            last = int(cmds["oid"].max()) if len(cmds) else 0
            if last > self.last_oid:
                self.last_oid = last
            clocks = cmds["time"][cmds["type"] == CMD_CLOCK]
            money.apply_class(name, events, answers_of.pop(name, []), int(clocks.max()) if len(clocks) else 0)
        for name, answers in answers_of.items():  # answers in classes without commands in this apply
            money.apply_class(name, None, answers, 0)
        for i in funds:
            r = results[i]
            r.answer["available"] = money.available(r.answer["account"])  # type: ignore[index, union-attr]
        if answers:
            for r in results:
                if r is not None and r.command is not None:
                    r.answer = answer(r.book, r.command, r.events, state.orders, state.leases)
        self.seq += len(entries)
        return results, arrays  # type: ignore[return-value]

    def _run_books(self, plans: dict[str, tuple[np.ndarray, list[tuple[int, int]]]]) -> dict[str, list[np.ndarray]]:
        """Each book's command spans through its book, in order; the events of each span.

        Books of different classes share nothing, and the numba book releases the GIL while it
        matches, so when two or more books have a sizeable batch (a busy tick, a replay) they run
        on worker threads at once, one book per thread; each book still sees its spans in order.
        What comes out does not depend on it: the exchange state is updated afterwards, book by
        book, in the same order as on one thread."""
        def run(name: str) -> list[np.ndarray]:
            book = self.books[name]
            cmds, spans = plans[name]
            return [book.process(cmds[lo:hi]) for lo, hi in spans]

        big = [name for name, (cmds, _) in plans.items() if len(cmds) >= PARALLEL_MIN_COMMANDS]
        if self.threads < 2 or len(big) < 2:
            return {name: run(name) for name in plans}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="book")
        futures = {name: self._pool.submit(run, name) for name in big}
        out = {name: run(name) for name in plans if name not in futures}
        for name, fut in futures.items():
            out[name] = fut.result()
        return {name: out[name] for name in plans}

    def close(self) -> None:
        """Stop the book worker threads (if any were started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> bytes:
        return encode_snapshot(self.capture())

    def capture(self) -> Snapshot:
        """The state now, uncompressed (cheap: copies); `encode_snapshot` can run in a thread."""
        books = {name: BookSnap(self.engine, self.book_time(name), b.state_hash(), b.snapshot())
                 for name, b in self.books.items()}
        state = msgspec.msgpack.decode(msgspec.msgpack.encode(self.state.to_data()), type=StateData)
        return Snapshot(seq=self.seq, books=books, state=state, last_oid=self.last_oid, money=self.money.to_snap(),
                        money_hash=self.money.state_hash())

    def load_snapshot(self, blob: bytes) -> None:
        snap = msgspec.msgpack.decode(blob, type=Snapshot)
        for name, bs in snap.books.items():
            if name not in self.instruments:
                raise SnapshotMismatch(f"the snapshot holds class {name!r}, which the configuration lacks")
            if bs.engine != self.engine:
                # a snapshot of the other engine: replay is the way (the caller falls back)
                raise SnapshotMismatch(f"snapshot taken with the {bs.engine} engine, running {self.engine}")
            book = restore_book(self.instruments[name].book, zlib.decompress(bs.blob), self.engine)
            if book.state_hash() != bs.state_hash:
                raise SnapshotMismatch(f"class {name}: restored state hash differs from the snapshot's")
            self.books[name] = book
        if snap.money is None:
            raise SnapshotMismatch("the snapshot holds no money state (taken before money was in the core)")
        self.money.load_snap(snap.money)
        if self.money.state_hash() != snap.money_hash:
            raise SnapshotMismatch("restored money state hash differs from the snapshot's")
        self.state.load_data(snap.state)
        self.seq = snap.seq
        self.last_oid = snap.last_oid

    def state_hashes(self) -> dict[str, int]:
        return {name: b.state_hash() for name, b in self.books.items()}
