"""`gpux verify DATA_DIR`: replay the command journal through fresh books and check the events
against the market-data recording, byte for byte (R21).

Each recorded record says up to which command-journal seq it goes (``jseq``).  The journal's
entries up to that seq go through a fresh `Engine` (same instruments and engine as the
recording's ``meta.json``, or as given), and the events each class produced since the previous
record must be exactly the record's block of that class, and the class's engine time its time.
The first difference is reported with the segment file, the byte offset, the class, the event
seq and the fields that differ, both versions shown as JSON.  Damage the recording's CRCs catch
is reported the same way (file and offset).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from exchange.config import Instrument
from exchange.engine import Engine
from exchange.journal import JournalError
from feeds.recorder import concat_events, instruments_from_meta, journal_chunks
from feeds.recording import EVENT_SIZE, RecordingError, iter_segments, read_meta, recording_dir
from orderbook.codec import event_to_json
from orderbook.types import EVENT_DTYPE

_enc = msgspec.json.Encoder()


@dataclass
class Result:
    ok: bool
    records: int = 0
    events: int = 0
    journal_seq: int = 0
    message: str = ""
    difference: dict[str, Any] = field(default_factory=dict)


def _first_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, list[str]]:
    """Index of the first differing record of two event arrays, and the fields that differ there."""
    n = min(len(a), len(b))
    ra, rb = a[:n].view(np.uint8).reshape(n, EVENT_SIZE), b[:n].view(np.uint8).reshape(n, EVENT_SIZE)
    rows = np.flatnonzero((ra != rb).any(axis=1))
    if len(rows):
        i = int(rows[0])
        return i, [f for f in EVENT_DTYPE.names if a[i][f] != b[i][f]]
    return n, []


def _json(ev: np.void | None) -> str:
    return _enc.encode(event_to_json(ev)).decode() if ev is not None else "(none)"


def verify(data_dir: str | Path, instruments: dict[str, Instrument] | None = None, engine: str | None = None,
           progress: Any = None) -> Result:
    data = Path(data_dir)
    rdir = recording_dir(data)
    if rdir == data:  # given the recording itself: its data directory is the parent
        data = rdir.parent
    meta = read_meta(rdir)
    if instruments is None:
        if "instruments" not in meta:
            return Result(False, message=f"{rdir}: no meta.json with the instruments; pass --config")
        instruments = instruments_from_meta(meta["instruments"])
    engine = engine or meta.get("engine") or None
    eng = Engine(instruments, engine)
    journal = journal_chunks(data / "journal", 1, None)
    applied = 0
    produced: dict[str, list[np.ndarray]] = {}
    recorded_time = {name: 0 for name in eng.books}
    res = Result(True)
    backlog: list[Any] = []

    def apply_to(jseq: int) -> bool:
        nonlocal applied, backlog
        while applied < jseq:
            if not backlog:
                try:
                    entries, _ = next(journal)
                except StopIteration:
                    return False
                backlog = entries
            take = backlog[:jseq - applied]
            backlog = backlog[len(take):]
            _, arrays = eng.apply(take)
            applied += len(take)
            for name, ev in arrays.items():
                produced.setdefault(name, []).append(ev)
        return True

    try:
        segs = iter_segments(rdir)
        for seg in segs:
            bi = 0
            nb = len(seg.blocks)
            for i, (rseq, off, _length, jseq, _crc) in enumerate(seg.recs.tolist()):
                where = f"first difference: {seg.path}, record {rseq} at byte offset {off}"
                if jseq < applied:
                    return _fail(res, f"{where}: journal seq {jseq} goes backwards (after {applied})",
                                 record=rseq, file=str(seg.path), offset=off)
                if not apply_to(jseq):
                    return _fail(res, f"{where}: the record says journal seq {jseq} but the command journal ends "
                                      f"at seq {applied}", record=rseq, file=str(seg.path), offset=off)
                seen = set()
                while bi < nb and seg.blocks[bi, 0] == i:
                    name = seg.block_class(bi)
                    seen.add(name)
                    rec_ev = seg.block_events(bi)
                    got = concat_events(produced.pop(name, []))
                    ev_off = int(seg.blocks[bi, 4])
                    if name not in eng.books:
                        return _fail(res, f"{where}: class {name!r} is not in the configuration",
                                     record=rseq, file=str(seg.path), offset=off, cls=name)
                    if rec_ev.tobytes() != got.tobytes():
                        k, fields = _first_diff(rec_ev, got)
                        a = rec_ev[k] if k < len(rec_ev) else None
                        b = got[k] if k < len(got) else None
                        seq = int((a if a is not None else b)["seq"])
                        what = (f"fields {', '.join(fields)} differ" if fields else
                                "the recording has more events" if b is None else "the recording lacks events")
                        at = ev_off + k * EVENT_SIZE
                        return _fail(res, f"{where}: class {name}, event seq {seq} (byte offset {at}):"
                                          f" {what}\n  recorded: {_json(a)}\n  replayed: {_json(b)}",
                                     record=rseq, file=str(seg.path), offset=at, cls=name,
                                     seq=seq, fields=fields, recorded=_json(a), replayed=_json(b))
                    t = int(seg.blocks[bi, 2])
                    if t != eng.book_time(name):
                        return _fail(res, f"{where}: class {name}: recorded engine time {t}, replayed "
                                          f"{eng.book_time(name)}", record=rseq, file=str(seg.path), offset=off,
                                     cls=name)
                    recorded_time[name] = t
                    res.events += len(rec_ev)
                    bi += 1
                for name, parts in list(produced.items()):
                    if any(len(p) for p in parts):
                        ev = concat_events(parts)
                        first = int(ev["seq"][0])
                        return _fail(res, f"{where}: class {name}: events from seq {first} on are not in the "
                                          f"recording\n  replayed: {_json(ev[0])}", record=rseq,
                                     file=str(seg.path), offset=off, cls=name, seq=int(ev["seq"][0]))
                produced.clear()
                for name in eng.books:
                    if name not in seen and eng.book_time(name) != recorded_time[name]:
                        return _fail(res, f"{where}: class {name}: engine time moved to {eng.book_time(name)} "
                                          f"but the recording has no block for it", record=rseq,
                                     file=str(seg.path), offset=off, cls=name)
                res.records += 1
                res.journal_seq = applied
                if progress is not None:
                    progress(res)
    except (RecordingError, JournalError) as e:
        return _fail(res, f"the recording is damaged: {e}")
    # what the journal holds beyond the recording
    tail_events = 0
    first_missing = None
    while apply_to(applied + 1):
        for name, parts in produced.items():
            for p in parts:
                if len(p) and first_missing is None:
                    first_missing = (name, int(p["seq"][0]))
                tail_events += len(p)
        produced.clear()
    if tail_events:
        name, seq = first_missing  # type: ignore[misc]
        return _fail(res, f"the recording ends at journal seq {res.journal_seq}; the journal goes on to seq {applied} "
                          f"with {tail_events} more events (first: class {name}, seq {seq}). The exchange completes "
                          "its recording from the journal when it starts.", cls=name, seq=seq, tail=tail_events)
    res.journal_seq = applied
    res.message = (f"ok: {res.records} records, {res.events} events, command journal seq 1..{applied}: "
                   f"the recording matches a replay of the command journal byte for byte")
    return res


def _fail(res: Result, message: str, **difference: Any) -> Result:
    res.ok = False
    res.message = message
    res.difference = difference
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA_DIR", help="the exchange's data directory")
    p.add_argument("--config", metavar="FILE.toml", help="instruments (default: the recording's meta.json)")
    p.add_argument("--engine", choices=["numba", "reference"], help="book engine (default: the recording's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    instruments = None
    if args.config:
        from exchange.config import load_config

        instruments = load_config(args.config).instruments
    res = verify(args.data_dir, instruments, args.engine)
    if args.json:
        print(_enc.encode({"ok": res.ok, "records": res.records, "events": res.events,
                           "journal_seq": res.journal_seq, "message": res.message,
                           "difference": res.difference}).decode())
    else:
        print(res.message, file=sys.stdout if res.ok else sys.stderr)
    return 0 if res.ok else 1
