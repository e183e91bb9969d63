"""Market-data replay benchmark: how fast a recording loads into numpy (`feeds.replay.load`).

    python -m bench.replay --events 5000000 --json [--batch 64] [--repeat 5] [--engine numba]

Builds a recording of at least ``--events`` events in a temporary data directory the way the
live recorder writes it: the synthetic workload of `bench.book` (`bench.workload`, three
classes) runs through fresh books ``--batch`` global commands at a time, and each batch becomes
one record with a block per class (its events and engine time), appended through the recorder's
journal (64 MiB segments, no fsync).  Then it times ``load(path)`` ``--repeat`` times (page
cache warm: the files were just written, then synced) and reports the median:

* ``events_per_s`` — events loaded / seconds, the whole call: reading the segment files,
  walking the records, CRC of every record, gathering each class's events into one array;
* ``events_per_s_no_crc`` — the same with ``check_crc=False``;
* ``mb_per_s`` — recording bytes read per second;
* ``trades_only_per_s`` — events scanned per second when loading only the trades
  (``types=[EV_TRADE]``: same reading, smaller output).

The loaded arrays are checked against what was recorded (byte for byte).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import generate_workload
from feeds.recorder import Recorder
from feeds.recording import load
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import EV_TRADE, EVENT_DTYPE


def build(path: Path, events: int, batch: int, engine: str, seed: int) -> dict[str, Any]:
    """Write a recording of at least ``events`` events; returns what was written."""
    rec = Recorder(path / "market-data")
    classes = ("H100", "A100", "RTX4090")
    books = {c: make_book(BookConfig(name=c), engine) for c in classes}
    written: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    total = 0
    jseq = 0
    chunk = max(int(events * 0.75), 100_000)  # the workload gives ~1.5 events per command
    s = seed
    last_oid = 0
    t0 = time.perf_counter()
    while total < events:
        w = generate_workload(chunk, s, classes)
        s += 1
        cmds, which = w.commands, w.book
        if last_oid:  # a further chunk continues in time and order ids after the earlier ones
            cmds["time"] += max(b.now for b in books.values()) - int(cmds["time"][0]) + 1
            cmds["oid"][cmds["oid"] > 0] += last_oid
        last_oid = int(cmds["oid"].max())
        for lo in range(0, len(cmds), batch):
            part, cls = cmds[lo:lo + batch], which[lo:lo + batch]
            blocks = []
            for k, name in enumerate(classes):
                mine = part[cls == k]
                if not len(mine):
                    continue
                ev = books[name].process(mine)
                blocks.append((name, books[name].now, ev.tobytes()))
                if len(ev):
                    written[name].append(ev)
                    total += len(ev)
            jseq += len(part)
            rec.append(jseq, blocks)
            if total >= events:
                break
    rec.close()
    size = sum(p.stat().st_size for p in (path / "market-data").glob("*.seg"))
    return {"events": total, "records": rec.records, "bytes": size, "build_s": time.perf_counter() - t0,
            "written": {c: np.concatenate(v) for c, v in written.items() if v}}


def run(events: int, batch: int, repeat: int, engine: str, seed: int, keep: str | None) -> dict[str, Any]:
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gpux-bench-replay-"))
    try:
        info = build(tmp, events, batch, engine, seed)
        written = info.pop("written")
        os.sync()  # the recording's dirty pages go to disk now, not during the timings
        load(tmp)  # compile (or load numba's cache) outside the timings

        def timed(**kw: Any) -> tuple[list[float], Any]:
            out, ts = None, []
            for _ in range(repeat):
                out = None
                t = time.perf_counter()
                out = load(tmp, **kw)
                ts.append(time.perf_counter() - t)
            return ts, out

        times, rec = timed()
        times_nocrc, _ = timed(check_crc=False)
        times_trades, trades = timed(types=[EV_TRADE])
        identical = all(rec.events[c].tobytes() == w.tobytes() for c, w in written.items())
        identical &= all(trades.events[c].tobytes() == w[w["type"] == EV_TRADE].tobytes() for c, w in written.items())
        n = len(rec)
        med = statistics.median(times)
        return {
            "events": n,
            "records": info["records"],
            "events_per_record": round(n / max(info["records"], 1), 1),
            "recording_mb": round(info["bytes"] / 1e6, 1),
            "event_bytes": EVENT_DTYPE.itemsize,
            "load_s_median": round(med, 4),
            "load_s_all": [round(x, 4) for x in times],
            "events_per_s": round(n / med),
            "events_per_s_no_crc": round(n / statistics.median(times_nocrc)),
            "trades_only_per_s": round(n / statistics.median(times_trades)),
            "mb_per_s": round(info["bytes"] / 1e6 / med, 1),
            "identical": identical,
            "build_s": round(info["build_s"], 1),
            "batch": batch,
            "engine": engine,
            "target_events_per_s": 5_000_000,
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=5_000_000, help="events in the recording (default 5,000,000)")
    p.add_argument("--batch", type=int, default=64, help="global commands per record (default 64)")
    p.add_argument("--repeat", type=int, default=7, help="timed loads of each kind; medians are reported (default 7)")
    p.add_argument("--engine", default="numba", choices=["numba", "reference"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", metavar="DIR", help="write the recording here and keep it")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = run(a.events, a.batch, a.repeat, a.engine, a.seed, a.keep)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")
    return 0 if out["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
