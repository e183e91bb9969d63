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

import gc
import hashlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import numpy as np

from clearing.engine import SettlementConfig, join_transfers
from exchange.config import Instrument
from exchange.entries import Cmd, Entry, Fund, Prov
from exchange.money import Money
from exchange.snapshots import BookSnap, Snapshot, SnapshotMismatch, encode_snapshot_parts
from exchange.tables import ExchangeState
from exchange.views import answer
from orderbook import types as T
from orderbook.book import Book, make_book, restore_book
from orderbook.engines import resolve_engine
from orderbook.types import CMD_CLOCK, COMMAND_DTYPE, Command, Event

log = logging.getLogger("gpux.engine")
# books with at least this many commands in one apply() run on worker threads together: below
# it, handing a batch to a thread costs more than the book's work (~1 µs a command)
PARALLEL_MIN_COMMANDS = 256
REPLAY_AHEAD = 2  # chunks the books may run ahead of the state and the money in `Engine.replay`
SMALL = 16  # commands (or events) of one book call read as tuples rather than with numpy
_RECORD_BYTES = np.dtype((np.void, COMMAND_DTYPE.itemsize))  # a command record as plain bytes
_EVENT_BYTES = np.dtype((np.void, T.EVENT_DTYPE.itemsize))  # an event record as plain bytes


@dataclass(slots=True)
class _Booked:
    """One `apply`'s entries after the books took them (`Engine._book`): what the state and
    the money stages read."""

    entries: list[Entry]
    out: list[Result | None]
    want: bool  # Results wanted
    by_book: dict[str, list[int]]  # entry indexes of each book's commands
    answers_of: dict[str, list[Prov]]
    funds: list[int]
    admin: list[Entry]
    plans: dict[str, tuple[np.ndarray, np.ndarray | None]]  # each book's commands, where their events start
    facts: dict[str, tuple[list[Command] | None, int, int]]  # its commands as tuples, last order id, clock
    events: dict[str, np.ndarray]  # each book's events
    coids: dict[str, list[str] | None]  # each book's commands' client order ids (None: none has one)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The events of the books that produced any (for the bus)."""
        return {name: ev for name, ev in self.events.items() if len(ev)}


def _events_of(events: np.ndarray, spans: list[tuple[int, int]]) -> list[list[Event]]:
    """The events of each span as tuples, read with one copy (a slice read per span costs
    several microseconds, most of a replay's time with client order ids)."""
    if not spans:
        return []
    sp = np.array(spans, np.int64).reshape(-1, 2)
    lens = sp[:, 1] - sp[:, 0]
    ends = np.cumsum(lens)
    at = np.repeat(sp[:, 0] - (ends - lens), lens) + np.arange(int(ends[-1]) if len(ends) else 0)
    flat = T.events(events.view(_EVENT_BYTES)[at].view(T.EVENT_DTYPE))
    bounds = [0, *ends.tolist()]
    return [flat[bounds[j]:bounds[j + 1]] for j in range(len(spans))]


@dataclass
class Result:
    """What one entry did: the book, the command, the events it produced and, when asked for,
    the answer to its sender."""

    book: str
    command: Command | None
    events: list[Event]
    answer: dict[str, Any] | None = None


@dataclass
class Packed:
    """A chunk of journal entries for `Engine.replay`, read straight from the journal
    (`exchange.recovery`): every command as a record of its class (with its client order id,
    if any, beside), the other entries decoded.

    ``book[k]`` is the class (an index into ``names``) of entry k when it is a command, -1
    otherwise; ``recs[k]`` its record; ``coids`` the client order ids of the commands that
    carry one, by position; ``others`` the other entries by position.  Applying it is applying
    the entries one after the other (`Engine.apply`)."""

    names: list[str]
    book: np.ndarray  # int64, one per entry
    recs: np.ndarray  # COMMAND_DTYPE, one per entry (the records of the others are not read)
    others: dict[int, Entry]
    coids: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.book)


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
                ("gpux_leases", len(self.state.leases), "leases kept: live, or ended 7 days ago or less", "gauge")]
        return out

    def book_time(self, name: str) -> int:
        return int(getattr(self.books[name], "now", 0))

    def event_seq(self, name: str) -> int:
        """The last event seq of a book."""
        return book_seq(self.books[name])

    # ------------------------------------------------------------------ applying entries
    def apply(self, entries: list[Entry], answers: bool = False,
              results: bool = True) -> tuple[list[Result], dict[str, np.ndarray]]:
        """Apply journal entries in order.  Returns one Result per entry and the events
        array of each book that produced any (for the bus).  ``results=False`` (replay, where
        nothing is answered): the same changes, no Results (an empty list; no answers).

        Three stages (`replay` runs them on three threads, a chunk apart): the books
        (`_book`), then the exchange state (`_apply_state`) and the money (`_apply_money`),
        which read the books' events and share nothing with each other."""
        b = self._book(entries, results or answers)
        self._apply_state(b)
        self._apply_money(b)
        out = b.out
        if answers:
            state = self.state
            asked = [r for r in out if r is not None and r.command is not None]
            orders = state.orders_of([r.command.oid for r in asked])  # type: ignore[union-attr]
            for r in asked:
                r.answer = answer(r.book, r.command, r.events, orders, state.leases)  # type: ignore[arg-type]
        return (out if b.want else []), b.arrays  # type: ignore[return-value]

    def replay(self, chunks: Iterable[list[Entry] | Packed],
               sink: Callable[[dict[str, np.ndarray], Any], None] | None = None) -> None:
        """``apply(chunk, results=False)`` for each chunk, in order, as a pipeline: while the
        books take a chunk on this thread, the exchange state and the money take the chunks
        before it, each on a thread of its own (their kernels let go of the GIL).  Each stage
        sees the chunks in journal order, so the outcome is `apply`'s, chunk by chunk
        (tests/test_engine_replay.py compares them).  ``sink(arrays, chunk)`` gets each chunk's
        events by class once its books took it.  A chunk is a list of entries or a `Packed` one
        (recovery reads most commands straight from the journal's bytes), which applies as
        its entries would.  With one thread (``threads=1``, the reference engine), the stages
        one after the other."""
        if self.threads < 2:
            for chunk in chunks:
                b = self._book_chunk(chunk)
                self._apply_state(b)
                self._apply_money(b)
                if sink is not None:
                    sink(b.arrays, chunk)
            return
        stages = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replay-{n}") for n in ("state", "money")]
        pending: deque[Future] = deque()
        try:
            for chunk in chunks:
                b = self._book_chunk(chunk)
                if sink is not None:
                    sink(b.arrays, chunk)
                pending.append(stages[0].submit(self._apply_state, b))
                pending.append(stages[1].submit(self._apply_money, b))
                while len(pending) > 2 * REPLAY_AHEAD:  # a few chunks ahead at most (memory)
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            for st in stages:
                st.shutdown(wait=True)

    def _book(self, entries: list[Entry], want: bool) -> _Booked:
        """Stage one of `apply`: the entries sorted by kind, and each book's commands through
        the book in one call (the engine's seq and last order id move on here)."""
        out: list[Result | None] = [None] * len(entries)
        by_book: dict[str, list[int]] = {}
        answers_of: dict[str, list[Prov]] = {}
        funds: list[int] = []
        admin: list[Entry] = []
        for i, e in enumerate(entries):
            if type(e) is Cmd:
                by_book.setdefault(e.book, []).append(i)
            elif type(e) is Prov:  # a provider agent's answer: money only (R18)
                answers_of.setdefault(e.book, []).append(e)
                out[i] = Result(e.book, None, [])
            elif type(e) is Fund:
                funds.append(i)
            else:
                admin.append(e)
                out[i] = Result(e.book, None, [])
        plans: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        facts: dict[str, tuple[list[Command] | None, int, int]] = {}
        coids: dict[str, list[str] | None] = {}
        for name, idx in by_book.items():
            cmds = np.frombuffer(b"".join([entries[i].rec for i in idx]), dtype=COMMAND_DTYPE)
            c: list[str] | None = [entries[i].coid for i in idx]
            coids[name] = c if any(c) else None  # type: ignore[arg-type]
            # A few commands (live batches) are read as tuples, many (a replay) with numpy: each
            # numpy call costs a microsecond or two whatever its size
            if len(idx) <= SMALL:
                cmd_list: list[Command] | None = T.commands(cmds)
                last_oid = max(c.oid for c in cmd_list)  # type: ignore[union-attr]
                tick = max((c.time for c in cmd_list if c.type == CMD_CLOCK), default=0)  # type: ignore[union-attr]
            else:
                cmd_list = T.commands(cmds) if want else None  # (client order ids: those commands only)
                clocks = cmds["time"][cmds["type"] == CMD_CLOCK]
                last_oid = int(cmds["oid"].max())
                tick = int(clocks.max()) if len(clocks) else 0
            # where each command's events start, when they must be told apart: for its Result, or
            # for the first answer to its client order id (nothing to answer and no client order
            # ids, a replay: none needed)
            firsts = np.empty(len(cmds) + 1, np.int64) if want or coids[name] else None
            plans[name] = (cmds, firsts)
            facts[name] = (cmd_list, last_oid, tick)
            if last_oid > self.last_oid:
                self.last_oid = last_oid
        events = self._run_books(plans)
        self.seq += len(entries)
        return _Booked(entries, out, want, by_book, answers_of, funds, admin, plans, facts, events, coids)

    def _book_chunk(self, chunk: list[Entry] | Packed) -> _Booked:
        """Stage one for a replay's chunk, either kind (nothing answered)."""
        return self._book_packed(chunk) if type(chunk) is Packed else self._book(chunk, False)  # type: ignore[arg-type]

    def _book_packed(self, p: Packed) -> _Booked:
        """`_book` of a chunk read straight from the journal (replay, nothing answered): each
        class's records go to its book in one call, in journal order; the other entries are
        sorted as `_book` sorts them."""
        n = len(p)
        entries: list[Any] = [None] * n  # only the other entries are read from it (funds)
        answers_of: dict[str, list[Prov]] = {}
        funds: list[int] = []
        admin: list[Entry] = []
        by_book: dict[str, list[int]] = {}
        for i, e in sorted(p.others.items()):
            entries[i] = e
            if type(e) is Prov:
                answers_of.setdefault(e.book, []).append(e)
            elif type(e) is Fund:
                funds.append(i)
            elif type(e) is Cmd:
                raise ValueError("a packed chunk holds its commands as records, not as entries")
            else:
                admin.append(e)
        plans: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        facts: dict[str, tuple[list[Command] | None, int, int]] = {}
        coids: dict[str, list[str] | None] = {}
        rows = p.recs.view(_RECORD_BYTES)  # (a fancy index of records as bytes: ~15× a structured one)
        found = [(int(w[0]), code, w) for code, w in
                 ((code, np.flatnonzero(p.book == code)) for code in range(len(p.names))) if len(w)]
        for _, code, where in sorted(found, key=lambda x: x[0]):  # the books as they first come
            name = p.names[code]
            cmds = rows[where].view(COMMAND_DTYPE)
            clocks = cmds["time"][cmds["type"] == CMD_CLOCK]
            last_oid = int(cmds["oid"].max())
            c = [p.coids.get(k, "") for k in where.tolist()] if p.coids else None
            coids[name] = c if c and any(c) else None
            by_book[name] = where  # type: ignore[assignment]  (its entries' places in the chunk)
            plans[name] = (cmds, np.empty(len(cmds) + 1, np.int64) if coids[name] else None)
            facts[name] = (None, last_oid, int(clocks.max()) if len(clocks) else 0)
            if last_oid > self.last_oid:
                self.last_oid = last_oid
        events = self._run_books(plans)
        self.seq += n
        return _Booked(entries, [None] * n, False, by_book, answers_of, funds, admin, plans, facts, events, coids)

    def _apply_state(self, b: _Booked) -> None:
        """Stage two (a): the exchange state takes the books' events (and halts, and the first
        answers to client order ids); each command's `Result` when they are wanted."""
        state = self.state
        for e in b.admin:
            if e.op == "halt":  # type: ignore[union-attr]
                state.halted.add(e.book)
            elif e.op == "resume":  # type: ignore[union-attr]
                state.halted.discard(e.book)
        for name, idx in b.by_book.items():
            cmds, firsts = b.plans[name]
            coids = b.coids[name]
            events = b.events[name]
            if firsts is not None:  # each command's events: for its Result, or its first answer
                self._per_command(name, idx, cmds, firsts, events, b.facts[name][0], coids,
                                  b.out if b.want else None)
            if not coids and len(events):  # the state takes the book's events in one call
                state.apply(name, events)
            tick = b.facts[name][2]
            if tick:
                state.prune(name, tick)
        state.flush_coids()  # the client order ids' first answers, in journal order

    def _apply_money(self, b: _Booked) -> None:
        """Stage two (b): deposits and withdrawals, then each class's events and provisioning
        answers through settlement, every class's transfers posted at once."""
        money = self.money
        out, entries = b.out, b.entries
        for i in b.funds:  # before the events: balances are sums (exchange.money)
            e = entries[i]
            out[i] = Result("", None, [], {"ok": True, "op": e.op, "account": e.account,  # type: ignore[union-attr]
                                            "amount": e.amount, "applied": money.fund(e)})  # type: ignore[arg-type,union-attr]
        answers_of = dict(b.answers_of)
        moved = [money.apply_class(name, b.events[name], answers_of.pop(name, []), b.facts[name][2])
                 for name in b.by_book]
        for name, answers in answers_of.items():  # answers in classes without commands in this apply
            moved.append(money.apply_class(name, None, answers, 0))
        money.post(join_transfers(moved))  # every class's at once (one pass over the accounts)
        for i in b.funds:
            r = out[i]
            r.answer["available"] = money.available(r.answer["account"])  # type: ignore[index, union-attr]

    def _per_command(self, name: str, idx: list[int], cmds: np.ndarray, firsts: np.ndarray, events: np.ndarray,
                     cmd_list: list[Command] | None, coids: list[str] | None, out: list[Result | None] | None) -> None:
        """One book's events told apart by command (``firsts``, from the book): each command's
        `Result` into ``out`` (None: none wanted), and, with client order ids, the state applied
        with the first answer of each remembered.  Without Results (a replay), only the commands
        with a client order id and their events are read as tuples."""
        spans_of = list(zip(firsts[:-1].tolist(), firsts[1:].tolist(), strict=True))
        if out is None and cmd_list is None:  # a replay: the commands with a client order id only
            assert coids is not None
            k = [i for i, c in enumerate(coids) if c]
            spans = [spans_of[i] for i in k]
            mine = T.commands(cmds.view(_RECORD_BYTES)[k].view(COMMAND_DTYPE))
            self.state.apply(name, events, mine, None, [coids[i] for i in k], spans, [idx[i] for i in k],
                             _events_of(events, spans))
            return
        commands = cmd_list if cmd_list is not None else T.commands(cmds)
        ev_list = T.events(events)
        if coids:
            self.state.apply(name, events, commands, ev_list, coids, spans_of, idx)
        if out is not None:
            for k, (a, b) in enumerate(spans_of):
                out[idx[k]] = Result(name, commands[k], ev_list[a:b])

    def _run_books(self, plans: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, np.ndarray]:
        """Each book's commands through its book in one call; its events (and, where ``plans``
        has an array for them, where each command's events start).

        Books of different classes share nothing, and the numba book releases the GIL while it
        matches, so when two or more books have a sizeable batch (a busy tick, a replay) they run
        on worker threads at once, one book per thread.
        What comes out does not depend on it: the exchange state is updated afterwards, book by
        book, in the same order as on one thread."""
        t0 = time.perf_counter()
        try:
            return self._run_plans(plans)
        finally:
            self.book_seconds += time.perf_counter() - t0

    def _run_plans(self, plans: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, np.ndarray]:
        def run(name: str) -> np.ndarray:
            cmds, firsts = plans[name]
            return self.books[name].process(cmds) if firsts is None else self.books[name].process(cmds, firsts)

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
        return b"".join(encode_snapshot_parts(self.capture()()))

    def capture(self) -> Callable[[], Snapshot]:
        """The core now, for a snapshot taken off the event loop.  Here, between two batches, only
        copies: each numba book's arrays (`NumbaBook.capture`; a reference book serialises at
        once), the exchange state's containers (`ExchangeState.capture`) and the money's arrays
        (`Money.copy`), a few milliseconds on the loop.  The function returned
        makes the `Snapshot` of this moment from them (the books' bytes, the state
        msgpack-encoded a chunk at a time): call it, and `encode_snapshot_parts`, in a worker
        thread."""
        collecting = gc.isenabled()
        gc.disable()  # the copies make no cycles; a collection here would cost more than them
        try:
            return self._capture()
        finally:
            if collecting:
                gc.enable()

    def _capture(self) -> Callable[[], Snapshot]:
        books: dict[str, tuple[int, int, Callable[[], bytes]]] = {}
        for name, b in self.books.items():
            grab = getattr(b, "capture", None)
            if grab is not None:
                arrays = grab()
                books[name] = (self.book_time(name), b.state_hash(), partial(b.encode_capture, arrays))
            else:
                books[name] = (self.book_time(name), b.state_hash(), partial(bytes, b.snapshot()))
        state = self.state.capture()
        money = self.money.copy()  # its arrays change in place; its snapshot form is made later
        seq, last_oid, engine = self.seq, self.last_oid, self.engine

        def make() -> Snapshot:
            snap = money.to_snap()
            encoded = msgspec.msgpack.encode(snap)  # hashed from these bytes as `Money.state_hash` does
            return Snapshot(seq=seq, books={name: BookSnap(engine, t, h, blob())
                                            for name, (t, h, blob) in books.items()},
                            state=state(), last_oid=last_oid, money=msgspec.Raw(encoded),  # type: ignore[arg-type]
                            money_hash=int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "little"))

        return make

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
