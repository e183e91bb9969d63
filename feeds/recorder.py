"""The market-data recorder: every event, per fan-out round, into ``DATA_DIR/market-data``
(format: `feeds.recording`).

No fsync per round, and none at rotation: the recording is derived data.  The command journal
(fsynced before any acknowledgement) is the system of record, and replaying it reproduces every
event byte for byte (R21), so whatever a crash cuts from the recording's tail is rebuilt from the
command journal by `catch_up` when the exchange starts again.  A clean shutdown writes a
checkpoint record (no blocks) carrying the last command-journal seq.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from exchange.config import Instrument
from exchange.engine import Engine
from exchange.entries import decode_entry
from exchange.journal import Journal, read, segments
from exchange.snapshots import snapshots
from feeds.recording import (
    DIR_NAME,
    EVENT_SIZE,
    RecordingError,
    encode_record,
    read_meta,
    scan_segment,
    write_meta,
)
from orderbook.config import BookConfig
from orderbook.types import EVENT_DTYPE, join

log = logging.getLogger("gpux.feeds")
SEGMENT_BYTES = 64 << 20
CHUNK = 4096  # journal entries per engine call when replaying


class Recorder:
    """Appends market-data records to a journal opened without fsync."""

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.journal = Journal.open(self.dir, segment_bytes=segment_bytes, fsync=False)
        self.last_jseq = last_jseq(self.dir)
        self.records = 0
        self.events = 0

    def append(self, jseq: int, blocks: list[tuple[str, int, bytes]]) -> None:
        """One record: the round that ended at command-journal seq ``jseq``."""
        self.journal.append([encode_record(jseq, blocks)])
        self.last_jseq = jseq
        self.records += 1
        self.events += sum(len(b[2]) for b in blocks) // EVENT_SIZE

    def checkpoint(self, jseq: int) -> None:
        """A record with no block: the recording is complete up to ``jseq``."""
        if jseq != self.last_jseq:
            self.append(jseq, [])

    def close(self) -> None:
        self.journal.close()


def last_jseq(directory: Path) -> int:
    """The command-journal seq of the last whole record (0 for an empty recording)."""
    segs = segments(directory) if directory.is_dir() else []
    for i in range(len(segs) - 1, -1, -1):
        first, path = segs[i]
        seg = scan_segment(path, first, i == len(segs) - 1)
        if len(seg.recs):
            return int(seg.recs[-1, 3])
    return 0


# ---------------------------------------------------------------------- meta
def instruments_meta(instruments: dict[str, Instrument]) -> dict[str, Any]:
    return {name: inst.to_dict() for name, inst in instruments.items()}


def instruments_from_meta(meta: dict[str, Any]) -> dict[str, Instrument]:
    names = {f.name for f in fields(BookConfig)}
    out = {}
    for name, d in meta.items():
        book = BookConfig(**{k: v for k, v in d.items() if k in names})
        out[name] = Instrument(book, d.get("maker_fee_bps", 0), d.get("taker_fee_bps", 0))
    return out


def write_recording_meta(directory: Path, instruments: dict[str, Instrument], engine: str) -> None:
    meta = read_meta(directory)
    meta.update({"format": "gpux market data", "version": 1, "engine": engine,
                 "instruments": instruments_meta(instruments), "event_dtype": str(EVENT_DTYPE.descr),
                 "updated": int(time.time())})
    meta.setdefault("created", meta["updated"])
    write_meta(directory, meta)


# ---------------------------------------------------------------------- replaying the command journal
def engine_at(instruments: dict[str, Instrument], engine: str, data_dir: Path, seq: int) -> Engine:
    """A fresh engine at command-journal seq ``seq``: the newest snapshot at or before it, then
    the journal up to it."""
    eng = Engine(instruments, engine)
    for snap_seq, path in reversed(snapshots(data_dir)):
        if snap_seq > seq:
            continue
        try:
            cand = Engine(instruments, engine)
            cand.load_snapshot(path.read_bytes())
            eng = cand
            break
        except Exception as e:  # unusable, whatever the damage: an older one, or the journal
            log.info("snapshot %s not usable for the recorder (%s)", path, e)
    if eng.seq < seq:
        for entries, _ in journal_chunks(data_dir / "journal", eng.seq + 1, seq):
            eng.apply(entries)
    if eng.seq != seq:
        raise RecordingError(f"the command journal ends at seq {eng.seq}, before {seq}")
    return eng


def journal_chunks(journal_dir: Path, from_seq: int, to_seq: int | None = None,
                   chunk: int = CHUNK) -> Iterator[tuple[list[Any], int]]:
    """(decoded entries, last seq) in chunks of at most ``chunk``, checking that seqs are gapless."""
    entries: list[Any] = []
    expect = from_seq
    last = from_seq - 1
    for seq, payload in read(journal_dir, from_seq=from_seq, to_seq=to_seq):
        if seq != expect:
            raise RecordingError(f"command journal gap: expected seq {expect}, found {seq}")
        expect += 1
        entries.append(decode_entry(payload))
        last = seq
        if len(entries) >= chunk:
            yield entries, last
            entries = []
    if entries:
        yield entries, last


def record_engine(eng: Engine, entries: list[Any], jseq: int) -> list[tuple[str, int, bytes]]:
    """Apply ``entries`` and return the blocks a record of them holds."""
    before = {name: eng.book_time(name) for name in eng.books}
    _, arrays = eng.apply(entries)
    blocks = []
    for name in eng.books:
        t = eng.book_time(name)
        ev = arrays.get(name)
        if (ev is not None and len(ev)) or t != before[name]:
            blocks.append((name, t, ev.tobytes() if ev is not None else b""))
    return blocks


def catch_up(recorder: Recorder, instruments: dict[str, Instrument], engine: str, data_dir: Path, target: int,
             progress: Callable[[int], None] | None = None) -> int:
    """Complete the recording from the command journal up to seq ``target``; records written."""
    start = recorder.last_jseq
    if start >= target:
        return 0
    t0 = time.perf_counter()
    eng = engine_at(instruments, engine, data_dir, start)
    n = 0
    for entries, last in journal_chunks(data_dir / "journal", start + 1, target):
        blocks = record_engine(eng, entries, last)
        recorder.append(last, blocks)
        n += 1
        if progress is not None:
            progress(last)
    if recorder.last_jseq < target:
        recorder.checkpoint(target)
    log.info("market data caught up from the command journal",
             extra={"from_seq": start, "to_seq": target, "records": n, "seconds": round(time.perf_counter() - t0, 3)})
    return n


def open_recorder(data_dir: Path, instruments: dict[str, Instrument], engine: str, journal_seq: int,
                  segment_bytes: int = SEGMENT_BYTES) -> Recorder:
    """The recorder of a data directory.  A recording that is ahead of the command journal (a
    journal that lost its unsynced tail, or a data directory restored from a backup) cannot be
    trusted: it is moved aside (``market-data.ahead-TIMESTAMP``) and rebuilt."""
    d = data_dir / DIR_NAME
    d.mkdir(parents=True, exist_ok=True)
    rec = Recorder(d, segment_bytes)
    if rec.last_jseq > journal_seq:
        rec.close()
        aside = data_dir / f"{DIR_NAME}.ahead-{int(time.time())}"
        log.error("the market-data recording is ahead of the command journal; moved aside and rebuilt",
                  extra={"recording_seq": rec.last_jseq, "journal_seq": journal_seq, "moved_to": str(aside)})
        d.rename(aside)
        d.mkdir()
        rec = Recorder(d, segment_bytes)
    try:
        write_recording_meta(d, instruments, engine)
    except BaseException:  # (a full disk) the recording's lock is let go: it is opened again later
        rec.close()
        raise
    return rec


def concat_events(parts: list[np.ndarray]) -> np.ndarray:
    return join(parts, EVENT_DTYPE)
