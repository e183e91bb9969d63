"""The deterministic core of the exchange: the books of every GPU class and the state kept
from their events, driven by journal entries.

    engine = Engine(instruments, engine="numba")
    results = engine.apply(entries)        # live, after the sequencer journaled them
    engine.apply(entries)                  # the same call on replay: same events, same state

A journal entry is a msgspec record (encoded into each journal payload):

* ``Cmd(book, rec, coid)`` — one COMMAND_DTYPE record for a book (clock commands too) and
  the client order id it carried;
* ``Admin(op, book)`` — halt or resume a class.

Snapshots hold every book's snapshot blob, its state hash (verified on restore) and the
exchange state; start-up is the latest snapshot + the journal after it (`recover`).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from exchange.config import Instrument
from exchange.state import ExchangeState, StateData, answer
from orderbook.book import Book, make_book, restore_book
from orderbook.engines import resolve_engine
from orderbook.types import CMD_CLOCK, COMMAND_DTYPE

log = logging.getLogger("gpux.engine")
# books with at least this many commands in one apply() run on worker threads together: below
# it, handing a batch to a thread costs more than the book's work (~1 µs a command)
PARALLEL_MIN_COMMANDS = 256


class Cmd(msgspec.Struct, array_like=True, tag=1):
    book: str
    rec: bytes  # one COMMAND_DTYPE record
    coid: str = ""


class Admin(msgspec.Struct, array_like=True, tag=2):
    op: str  # "halt" | "resume"
    book: str


class Prov(msgspec.Struct, array_like=True, tag=3):
    """A provider agent's answer to a provisioning task (R18): ready (metering from ``time``)
    or failed.  Journaled like a command, so the ledger replays exactly from the journal; the
    books do not see it."""

    book: str
    trade_id: int
    ready: bool
    time: int  # engine time of the answer
    after: int  # the class's last event seq when it was journaled (the lease's trade is at or before it)
    connection: str = ""  # JSON object: how the renter connects
    reason: str = ""  # why it failed


Entry = Cmd | Admin | Prov
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _entry_encoder.encode(entry)


def decode_entry(payload: bytes) -> Entry:
    return _entry_decoder.decode(payload)


@dataclass
class Result:
    """What one entry did: the book, the command (a record tuple), the events it produced
    (record tuples) and, when asked for, the answer to its sender."""

    book: str
    command: tuple | None
    events: list[tuple]
    answer: dict[str, Any] | None = None


class BookSnap(msgspec.Struct, array_like=True):
    engine: str
    time: int
    state_hash: int
    blob: bytes


class Snapshot(msgspec.Struct, kw_only=True):
    seq: int  # last journal seq applied
    books: dict[str, BookSnap]
    state: StateData
    last_oid: int = 0  # the highest order id the sequencer gave out
    version: int = 2  # 2: book blobs are zlib-compressed


def book_seq(book: Any) -> int:
    """The last event seq of a book (either engine)."""
    seq = getattr(book, "seq", None)
    if seq is not None:
        return int(seq)
    from orderbook.fast import S_SEQ

    return int(book.st.S[S_SEQ])


class SnapshotMismatch(RuntimeError):
    """A restored book's state hash differs from the one recorded with its snapshot."""


class Engine:
    """Books + exchange state; `apply` is the only way they change."""

    def __init__(self, instruments: dict[str, Instrument], engine: str | None = None,
                 threads: int | None = None) -> None:
        self.instruments = instruments
        self.engine = resolve_engine(engine)
        self.books: dict[str, Book] = {name: make_book(i.book, self.engine) for name, i in instruments.items()}
        self.state = ExchangeState(instruments)
        self.seq = 0  # last journal seq applied
        self.last_oid = 0
        self.book_seconds = 0.0  # time spent inside the books (metrics)
        # worker threads for books with big batches at the same time (_run_books); 1: never.  The
        # reference book holds the GIL throughout: threads would only add their hand-offs.
        auto = min(os.cpu_count() or 1, len(self.books)) if self.engine == "numba" else 1
        self.threads = auto if threads is None else max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

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
        for i, e in enumerate(entries):
            if type(e) is Cmd:
                by_book.setdefault(e.book, []).append(i)
            elif type(e) is Prov:  # settlement's (settlement.link); nothing here changes
                results[i] = Result(e.book, None, [])
            else:
                if e.op == "halt":
                    self.state.halted.add(e.book)
                elif e.op == "resume":
                    self.state.halted.discard(e.book)
                results[i] = Result(e.book, None, [])
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
            cmd_list = cmds.tolist()
            coids = [entries[i].coid for i in idx]
            parts = book_parts[name]
            for (lo, hi), part in zip(spans, parts, strict=True):
                ev_list = part.tolist()
                owned = state.apply(name, cmd_list[lo:hi], ev_list, coids[lo:hi])
                for k in range(lo, hi):
                    a, b = owned[k - lo]
                    results[idx[k]] = Result(name, cmd_list[k], ev_list[a:b])
            events = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if len(events):
                arrays[name] = events
            last = int(cmds["oid"].max()) if len(cmds) else 0
            if last > self.last_oid:
                self.last_oid = last
        if answers:
            for r in results:
                if r is not None and r.command is not None:
                    r.answer = answer(r.book, r.command, r.events, state)
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
        return Snapshot(seq=self.seq, books=books, state=state, last_oid=self.last_oid)

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
        self.state.load_data(snap.state)
        self.seq = snap.seq
        self.last_oid = snap.last_oid

    def state_hashes(self) -> dict[str, int]:
        return {name: b.state_hash() for name, b in self.books.items()}


def encode_snapshot(snap: Snapshot) -> bytes:
    """Snapshot bytes: book blobs deflated (a numba book's arrays are mostly empty: ~40 MB -> <1 MB)."""
    books = {name: BookSnap(b.engine, b.time, b.state_hash, zlib.compress(b.blob, 1)) for name, b in snap.books.items()}
    return msgspec.msgpack.encode(Snapshot(seq=snap.seq, books=books, state=snap.state, last_oid=snap.last_oid,
                                           version=snap.version))


# ---------------------------------------------------------------------- snapshot files
SNAP_SUFFIX = ".snap"


def snapshot_dir(data_dir: Path) -> Path:
    return data_dir / "snapshots"


def write_snapshot(data_dir: Path, seq: int, blob: bytes, keep: int = 3) -> Path:
    """Write atomically (temp file, fsync, rename, fsync dir); keep the newest ``keep``."""
    d = snapshot_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{seq:020d}{SNAP_SUFFIX}"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in sorted(d.glob(f"*{SNAP_SUFFIX}"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def snapshots(data_dir: Path) -> list[tuple[int, Path]]:
    d = snapshot_dir(data_dir)
    out = []
    for p in d.glob(f"*{SNAP_SUFFIX}") if d.exists() else ():
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)
