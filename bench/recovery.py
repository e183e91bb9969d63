"""Recovery benchmark: how fast the core replays its journal (`exchange.recovery`).

    python -m bench.recovery --commands 2000000 --json [--snapshot-every 500000] [--batch 64] [--repeat 3]
                             [--coids 0.5]

Builds a data directory the way a server leaves it: the synthetic workload of `bench.book`
(`bench.workload`, three classes, times and order ids stamped) journaled as `Cmd` entries
``--batch`` at a time (the exchange's preallocated segments, no fsync), applied live through an
`Engine` as the sequencer does, with a snapshot every ``--snapshot-every`` commands.  Then it times,
``--repeat`` times each (page cache warm), and reports the medians:

* ``recover_none_s`` — `recover(cfg, use_snapshots=False)`: a fresh engine replays the whole
  journal (reading the segments, decoding the entries, the books, the exchange state);
* ``entries_per_s`` — journal entries replayed per second in that run;
* ``recover_snapshot_s`` — `recover(cfg)`: load the newest snapshot, replay the entries after it
  (``tail_entries``);
* ``snapshot_load_s`` — the part of it spent loading the snapshot, ``snapshot_bytes`` its size.

Both recovered engines are checked against the live one (``identical``: every book's state hash,
the money's, and the exchange state's snapshot form, byte for byte, in a canonical order).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench.workload import generate_workload
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Cmd, encode_entry
from exchange.journal import Journal
from exchange.money import settlement_config
from exchange.recovery import recover
from exchange.snapshots import snapshots, write_snapshot
from orderbook.types import CMD_ASK, CMD_BID, CMD_CLOCK, COMMAND_DTYPE

CLASSES = ("H100", "A100", "RTX4090")
REC_SIZE = COMMAND_DTYPE.itemsize


def _state_bytes(engine: Engine) -> bytes:
    """The exchange state's snapshot form in a canonical order: one `Engine.apply` call handles
    its entries book by book, so the order in which orders, leases and closed orders were
    recorded follows the batches (the live ones here, REPLAY_CHUNK entries on replay)."""
    d = engine.state.to_data()
    d.orders.sort(key=lambda o: o.oid)
    d.closed.sort()
    d.leases.sort(key=lambda x: (x.book, x.trade_id))
    d.coids.sort()
    return msgspec.msgpack.encode(d)


def sequenced(commands: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``commands`` workload commands as the sequencer journals them: only a clock command moves a
    book's time, and every other command is stamped with its book's time.  Each book starts with a
    clock command to the workload's first time; a workload clock that would not move its book's
    time is dropped (the sequencer never journals one)."""
    w = generate_workload(commands + commands // 10 + 10, seed, CLASSES)
    src = w.commands.copy()
    types = src["type"].tolist()
    times = src["time"].tolist()
    book_of = w.book.tolist()
    now = [0] * len(CLASSES)
    stamp = [0] * len(src)
    take: list[int] = [-1 - k for k in range(len(CLASSES))]  # -1 - k: the first clock of class k
    for i in range(len(src)):
        if len(take) >= commands:
            break
        b = book_of[i]
        if types[i] == CMD_CLOCK:
            if times[i] <= max(now[b], times[0]):
                continue
            now[b] = times[i]
        elif not now[b]:
            now[b] = times[0]
        stamp[i] = now[b]
        take.append(i)
    src["time"] = stamp
    out = np.zeros(len(take), dtype=COMMAND_DTYPE)
    idx = np.array(take, dtype=np.int64)
    real = idx >= 0
    out[real] = src[idx[real]]
    out["type"][~real] = CMD_CLOCK
    out["time"][~real] = times[0]
    which = np.where(real, w.book[np.maximum(idx, 0)], -1 - idx)
    return out, [CLASSES[int(k)] for k in which]


def build(cfg: ServerConfig, commands: int, batch: int, snapshot_every: int, seed: int,
          coids: float = 0.0) -> dict[str, Any]:
    """Journal ``commands`` workload commands into cfg's data directory, applying them live, with
    a snapshot every ``snapshot_every`` and a client order id on a ``coids`` fraction of the bids
    and asks; returns the live engine's figures."""
    cmds, names = sequenced(commands, seed)
    commands = len(cmds)
    blob = cmds.tobytes()
    rng = np.random.default_rng(seed)
    orders = np.isin(cmds["type"], (CMD_ASK, CMD_BID)) & (rng.random(commands) < coids)
    coid = [f"c{k}" if o else "" for k, o in enumerate(orders.tolist())]
    engine = Engine(cfg.instruments, cfg.engine, None, settlement_config(cfg))
    t0 = time.perf_counter()
    snaps = 0
    with Journal.open(cfg.data_path / "journal", segment_bytes=cfg.segment_bytes, fsync=False,
                      preallocate=True) as journal:
        for lo in range(0, commands, batch):
            hi = min(lo + batch, commands)
            entries = [Cmd(names[k], blob[k * REC_SIZE:(k + 1) * REC_SIZE], coid[k]) for k in range(lo, hi)]
            journal.append([encode_entry(e) for e in entries])
            engine.apply(entries)
            if snapshot_every and hi // snapshot_every != lo // snapshot_every:
                write_snapshot(cfg.data_path, engine.seq, engine.snapshot())
                snaps += 1
    out = {"seq": engine.seq, "hashes": engine.state_hashes(), "state": _state_bytes(engine),
           "coids_remembered": len(engine.state.coids),
           "money": engine.money.state_hash(),
           "build_s": time.perf_counter() - t0, "snapshots": snaps}
    engine.close()
    return out


def run(commands: int, batch: int, snapshot_every: int, repeat: int, engine: str, seed: int,
        keep: str | None, coids: float = 0.0) -> dict[str, Any]:
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gpux-bench-recovery-"))
    try:
        cfg = ServerConfig(data_dir=str(tmp), engine=engine)
        live = build(cfg, commands, batch, snapshot_every, seed, coids)
        identical = True

        def timed(use_snapshots: bool) -> list[float]:
            nonlocal identical
            ts = []
            for _ in range(repeat):
                t = time.perf_counter()
                e = recover(cfg, use_snapshots=use_snapshots)
                ts.append(time.perf_counter() - t)
                identical &= (e.seq == live["seq"] and e.state_hashes() == live["hashes"]
                              and _state_bytes(e) == live["state"] and e.money.state_hash() == live["money"])
                e.close()
            return ts

        none = timed(False)
        snap = timed(True)
        snap_seq, snap_bytes, load_s = 0, 0, 0.0
        if snapshots(tmp):
            snap_seq, path = snapshots(tmp)[-1]
            snap_bytes = path.stat().st_size
            loads = []
            for _ in range(repeat):
                e = Engine(cfg.instruments, cfg.engine, None, settlement_config(cfg))
                t = time.perf_counter()
                e.load_snapshot(path.read_bytes())
                loads.append(time.perf_counter() - t)
                e.close()
            load_s = statistics.median(loads)
        med_none = statistics.median(none)
        return {
            "commands": commands,
            "entries": live["seq"],
            "entries_per_s": round(live["seq"] / med_none),
            "us_per_entry": round(med_none / live["seq"] * 1e6, 3),
            "recover_none_s": round(med_none, 3),
            "recover_none_all": [round(x, 3) for x in none],
            "recover_snapshot_s": round(statistics.median(snap), 3),
            "recover_snapshot_all": [round(x, 3) for x in snap],
            "snapshot_seq": snap_seq,
            "tail_entries": live["seq"] - snap_seq,
            "snapshot_bytes": snap_bytes,
            "snapshot_load_s": round(load_s, 3),
            "snapshots_written": live["snapshots"],
            "identical": identical,
            "build_s": round(live["build_s"], 1),
            "batch": batch,
            "coids": coids,
            "coids_remembered": live["coids_remembered"],
            "engine": cfg.engine,
            "target_entries_per_s": 500_000,
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=2_000_000, help="commands journaled (default 2,000,000)")
    p.add_argument("--batch", type=int, default=64, help="entries per journal append (default 64)")
    p.add_argument("--snapshot-every", type=int, default=500_000,
                   help="a snapshot every this many commands while building (default 500,000; 0: none)")
    p.add_argument("--repeat", type=int, default=3, help="timed recoveries of each kind; medians (default 3)")
    p.add_argument("--engine", default="numba", choices=["numba", "reference"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--coids", type=float, default=0.0,
                   help="the fraction of bids and asks that carry a client order id (default 0: none)")
    p.add_argument("--keep", metavar="DIR", help="build the data directory here and keep it")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = run(a.commands, a.batch, a.snapshot_every, a.repeat, a.engine, a.seed, a.keep, a.coids)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:22} {v}")
    return 0 if out["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
