"""Recovery: the core at the end of the journal, from the newest usable snapshot and the
journal entries after it, through the same `Engine.apply` stages as live trading (`Engine.replay` pipelines them).

    engine = recover(cfg)                                   # start-up
    engine = recover(cfg, use_snapshots=False)              # the whole journal (tests, verify)
    engine = recover(cfg, settled=ledger.cursor, sink=ledger.replayed)   # and feed a projection

A torn last journal record (a crash mid-write) was never acknowledged and is dropped by the
journal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Entry, Fund, Prov, decode_entries
from exchange.journal import read_runs
from exchange.money import settlement_config
from exchange.snapshots import snapshots

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
    engine's pipeline (`Engine.replay`); returns how many were applied."""
    start = engine.seq

    def chunks() -> Iterator[list[Entry]]:
        expect = start + 1
        payloads: list[bytes] = []
        for seq, run in read_runs(journal_dir, from_seq=start + 1):
            if seq != expect:
                raise RuntimeError(f"journal gap: expected seq {expect}, found {seq}")
            expect += len(run)
            payloads += run
            while len(payloads) >= REPLAY_CHUNK:
                yield decode_entries(payloads[:REPLAY_CHUNK])  # one call per chunk
                payloads = payloads[REPLAY_CHUNK:]
        if payloads:
            yield decode_entries(payloads)

    def handed(arrays: dict[str, np.ndarray], chunk: list[Entry]) -> None:
        sink(arrays, [e for e in chunk if type(e) is Prov], [e for e in chunk if type(e) is Fund])  # type: ignore[misc]

    engine.replay(chunks(), handed if sink is not None else None)
    return engine.seq - start
