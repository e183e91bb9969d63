"""Recovery: the core at the end of the journal, from the newest usable snapshot and the
journal entries after it, through the same `Engine.apply` stages as live trading (`Engine.replay` pipelines them).

    engine = recover(cfg)                                   # start-up
    engine = recover(cfg, use_snapshots=False)              # the whole journal (tests, verify)
    engine = recover(cfg, settled=ledger.cursor, sink=ledger.replayed)   # and feed a projection

A torn last journal record (a crash mid-write) was never acknowledged and is dropped by the
journal.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from exchange import framescan
from exchange.config import ServerConfig
from exchange.engine import Engine, Packed
from exchange.entries import Cmd, Entry, Fund, Prov, decode_entries
from exchange.journal import read_spans
from exchange.money import settlement_config
from exchange.snapshots import snapshots
from orderbook.types import COMMAND_DTYPE

log = logging.getLogger("gpux.recovery")
# journal entries per chunk of the replay pipeline: each chunk costs a few Python calls per stage
# and class, so bigger is faster (300,000 entries: ~200,000/s at 4,096, ~270,000/s at 32,768)
# while a chunk's entries and events stay a few MB (docs/perf/order-path.md §15)
REPLAY_CHUNK = 32768


def recover(cfg: ServerConfig, journal_dir: Path | None = None, use_snapshots: bool = True,
            settled: Callable[[str], int] | None = None,
            sink: Callable[[dict[str, np.ndarray], list[Prov], list[Fund]], None] | None = None) -> Engine:
    """An engine at the end of the journal: newest usable snapshot + the entries after it.

    ``settled(cls)``: the last event seq of each class that settlement has; a snapshot is used
    only if it is not ahead of it, so that the replay regenerates every event settlement lacks
    and hands it to ``sink`` (the events of each replayed chunk, by class, its provisioning
    answers and its deposits and withdrawals)."""
    data = cfg.data_path
    journal_dir = journal_dir or data / "journal"
    threads = cfg.book_threads or None
    money = settlement_config(cfg)
    engine = None
    if use_snapshots:
        for seq, path in reversed(snapshots(data)):
            try:
                candidate = Engine(cfg.instruments, cfg.engine, threads, money)
                candidate.load_snapshot(path.read_bytes())
            except Exception as e:  # unusable, whatever the damage (bad bytes, bad deflate, a mismatch)
                log.warning("snapshot %s not usable (%s); trying an older one", path, e)
                continue
            ahead = [n for n in candidate.books if settled is not None and candidate.event_seq(n) > settled(n)]
            if ahead:
                log.info("snapshot %s is ahead of the ledger in %s; trying an older one", path, ", ".join(ahead))
                continue
            engine = candidate
            log.info("restored snapshot", extra={"seq": seq, "path": str(path)})
            break
    if engine is None:  # no usable snapshot: the whole journal
        engine = Engine(cfg.instruments, cfg.engine, threads, money)
    replay(engine, journal_dir, sink)
    return engine


def replay(engine: Engine, journal_dir: Path,
           sink: Callable[[dict[str, np.ndarray], list[Prov], list[Fund]], None] | None = None) -> int:
    """Apply every journal entry after ``engine.seq``, REPLAY_CHUNK at a time through the
    engine's pipeline (`Engine.replay`); returns how many were applied.  A chunk's commands are
    read straight from the journal's bytes into records (`Packed`); those with a client order
    id, and the other entries, are decoded one by one."""
    start = engine.seq
    names = list(engine.books)
    encoded = [n.encode() for n in names]
    table = np.zeros((len(names), max(1, *map(len, encoded))), np.uint8)
    for k, e in enumerate(encoded):
        table[k, :len(e)] = np.frombuffer(e, np.uint8)
    lens = np.array([len(e) for e in encoded], np.int64)
    codes = {name: k for k, name in enumerate(names)}

    def pack(runs: list[tuple[bytes, np.ndarray, np.ndarray]]) -> Packed:
        n = sum(len(s) for _, s, _ in runs)
        book = np.empty(n, np.int64)
        recs = np.empty(n, COMMAND_DTYPE)
        raw = recs.view(np.uint8).reshape(n, COMMAND_DTYPE.itemsize)
        others: dict[int, Entry] = {}
        coids: dict[int, str] = {}
        at = 0
        for buf, starts, ends in runs:
            m = len(starts)
            framescan.commands(np.frombuffer(buf, np.uint8), starts, ends, table, lens, COMMAND_DTYPE.itemsize,
                               raw[at:at + m], book[at:at + m])
            rest = np.flatnonzero(book[at:at + m] < 0).tolist()
            if rest:
                decoded = decode_entries([buf[starts[k]:ends[k]] for k in rest])
                for k, e in zip(rest, decoded, strict=True):
                    if type(e) is Cmd:  # a command with a client order id: its record, and the id
                        raw[at + k] = np.frombuffer(e.rec, np.uint8)
                        book[at + k] = codes[e.book]
                        coids[at + k] = e.coid
                    else:
                        others[at + k] = e
            at += m
        return Packed(names, book, recs, others, coids)

    def chunks() -> Iterator[Packed]:
        expect = start + 1
        runs: list[tuple[bytes, np.ndarray, np.ndarray]] = []
        count = 0
        for seq, buf, starts, ends in read_spans(journal_dir, from_seq=start + 1):
            if seq != expect:
                raise RuntimeError(f"journal gap: expected seq {expect}, found {seq}")
            expect += len(starts)
            while len(starts):
                take = min(len(starts), REPLAY_CHUNK - count)
                runs.append((buf, starts[:take], ends[:take]))
                count += take
                starts, ends = starts[take:], ends[take:]
                if count == REPLAY_CHUNK:
                    yield pack(runs)
                    runs, count = [], 0
        if runs:
            yield pack(runs)

    def handed(arrays: dict[str, np.ndarray], chunk: Packed) -> None:
        entries = [e for _, e in sorted(chunk.others.items())]
        sink(arrays, [e for e in entries if type(e) is Prov], [e for e in entries if type(e) is Fund])  # type: ignore[misc]

    # what a replay builds lives on (orders, leases, first answers) and makes no cycles, so the
    # collector's full sweeps only re-read it, ever larger: a third of a replay's time with client
    # order ids (docs/perf/order-path.md §21).  Paused for the replay (process-wide: start-up and
    # `gpux verify` run nothing else that needs it meanwhile), as it was after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        engine.replay(chunks(), handed if sink is not None else None)
    finally:
        if collecting:
            gc.enable()
    return engine.seq - start
