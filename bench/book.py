"""Order-book benchmark: throughput of the numba books, checked against the reference book.

    python -m bench.book --commands 1000000 --json [--seed 1] [--prefix 20000] [--batch 4096]
    python -m bench.book --resting 1000000 --json          # memory of deep, quiet books
    python -m bench.book --commands 50000 --engine reference  # dry run without orderbook.fast

Mixed run (default):

1. Generate the workload of `bench.workload` (not timed; reported as ``generate_s``).
2. ``jit_compile_s``: the first call of the engine in this process, on a throwaway book
   with the first 64 commands of one class (numba compiles, or loads its cache).
3. The timed run: one fresh book per class; each class's commands go through
   ``book.process`` in batches of ``--batch`` records.  Only the ``process`` calls are
   timed; counting events happens outside the timer.  ``numba_cmds_per_s`` = commands /
   time in ``process``.
4. Prefix check: the first ``--prefix`` commands of the global stream, split per class,
   run through fresh reference books and fresh engine books (same batches); the event
   arrays must be byte-for-byte equal (``prefix_identical``) and the state hashes too
   (``prefix_state_hash_equal``).  ``reference_cmds_per_s`` and ``numba_prefix_cmds_per_s``
   are timed on this prefix, and ``speedup`` is their ratio (same commands, same books);
   ``speedup_full_vs_prefix`` compares the full run with the reference on the prefix.
5. ``jit_warm_start_s``: a fresh ``python -c`` that imports ``orderbook.fast``, builds a
   book and processes one small batch, timed from just before the process is spawned to
   the moment the batch returned (printed by the child); the child is run once first to
   warm numba's cache, the second run is reported.

``resting_orders`` (open orders at the end, all books) is derived from the events:
accepted − cancelled − expired − bids whose fill left nothing remaining.
``peak_rss_mb`` is ``ru_maxrss`` of this process (it includes the workload arrays).

``--resting N`` fills the books with N orders that cannot cross (`generate_resting`)
through the same ``process`` path and reports memory instead.  ``--engine reference``
runs everything with the reference book (a dry run: the numbers are the reference's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.rss import current_rss_mb, peak_rss_mb
from bench.workload import DEFAULT_CLASSES, Workload, generate_resting, generate_workload
from orderbook.book import Book, make_book
from orderbook.config import BookConfig
from orderbook.types import (
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_REJECTED,
    EV_TRADE,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BATCH = 4096
CURVE_POINTS = 10


@dataclass
class BookRun:
    """What running one class's commands through one book gave."""

    name: str
    commands: int = 0
    seconds: float = 0.0  # inside book.process only
    events: int = 0
    trades: int = 0
    rejected: int = 0
    resting: int = 0
    state_hash: int = 0
    curve: list[tuple[int, int]] = field(default_factory=list)  # (commands done, resting)
    event_arrays: list[np.ndarray] = field(default_factory=list)


def resting_delta(events: np.ndarray) -> int:
    """Change in the number of open orders that a batch of events implies."""
    t = events["type"]
    filled = np.count_nonzero((t == EV_TRADE) & (events["remaining"] == 0))
    return int(
        np.count_nonzero(t == EV_ACCEPTED)
        - np.count_nonzero(t == EV_CANCELLED)
        - np.count_nonzero(t == EV_EXPIRED)
        - filled
    )


def run_book(book: Book, name: str, commands: np.ndarray, batch: int, keep_events: bool = False) -> BookRun:
    """Feed ``commands`` to ``book`` in batches; time only ``book.process``."""
    run = BookRun(name=name, commands=len(commands))
    clock = time.perf_counter
    n = len(commands)
    # batches of `batch` records, also cut at every 1/CURVE_POINTS of the stream for the curve
    cuts = sorted({*range(0, n, batch), *(n * k // CURVE_POINTS for k in range(1, CURVE_POINTS))} - {n})
    for i, j in zip(cuts, [*cuts[1:], n], strict=True):
        chunk = commands[i:j]
        t0 = clock()
        events = book.process(chunk)
        run.seconds += clock() - t0
        run.events += len(events)
        run.trades += int(np.count_nonzero(events["type"] == EV_TRADE))
        run.rejected += int(np.count_nonzero(events["type"] == EV_REJECTED))
        run.resting += resting_delta(events)
        run.curve.append((j, run.resting))
        if keep_events:
            run.event_arrays.append(events)
    run.state_hash = int(book.state_hash())
    return run


def run_books_threaded(books: dict[str, Book], parts: dict[str, np.ndarray], batch: int, threads: int) -> float:
    """Run every class's commands through its book on ``threads`` worker threads; return the
    wall-clock seconds.

    The books share nothing (one per GPU class) and ``process`` releases the GIL, so each
    worker takes the next batch of a book no other worker is on, the book with the most
    commands left first: every book still sees its own batches in order, one at a time,
    exactly as on one thread (the state hashes are compared afterwards)."""
    pos = dict.fromkeys(parts, 0)
    busy: set[str] = set()
    cond = threading.Condition()

    def take() -> tuple[str, int] | None:
        with cond:
            while True:
                left = [n for n in parts if pos[n] < len(parts[n])]
                if not left:
                    return None
                free = [n for n in left if n not in busy]
                if free:
                    name = max(free, key=lambda n: len(parts[n]) - pos[n])
                    busy.add(name)
                    at = pos[name]
                    pos[name] = at + batch
                    return name, at
                cond.wait()

    def worker() -> None:
        while (job := take()) is not None:
            name, at = job
            try:
                books[name].process(parts[name][at: at + batch])
            finally:
                with cond:
                    busy.discard(name)
                    cond.notify_all()

    t0 = time.perf_counter()
    workers = [threading.Thread(target=worker, name=f"book-worker-{k}") for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def run_books(
    parts: dict[str, np.ndarray], engine: str, batch: int, keep_events: bool = False
) -> dict[str, BookRun]:
    """One fresh book per class, each fed its own commands."""
    return {
        name: run_book(make_book(BookConfig(name=name), engine), name, cmds, batch, keep_events)
        for name, cmds in parts.items()
    }


def book_resting_count(book: Book) -> int | None:
    """The book's own count of open orders."""
    return int(book.resting_orders())


def resting_curve(runs: dict[str, BookRun], points: int = CURVE_POINTS) -> list[list[float]]:
    """Open orders (all books) at each 1/points of every class's stream: [[fraction, n], ...]."""
    out = []
    for k in range(1, points + 1):
        total = 0
        for run in runs.values():
            want = run.commands * k // points
            total += next((r for done, r in run.curve if done >= want), run.resting)
        out.append([k / points, total])
    return out


def jit_compile_seconds(workload: Workload, engine: str) -> float:
    """First call of the engine in this process, on a throwaway book."""
    name = workload.classes[0]
    cmds = workload.split(upto=min(len(workload.commands), 256))[name][:64]
    t0 = time.perf_counter()
    make_book(BookConfig(name=name), engine).process(cmds)
    return time.perf_counter() - t0


WARM_START_CHILD = """
import time
import numpy as np
{import_engine}
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import COMMAND_DTYPE, CMD_ASK, CMD_BID, ON_DEMAND
c = np.zeros(2, dtype=COMMAND_DTYPE)
c["time"] = 1_800_000_000
c["oid"] = [1, 2]
c["account"] = [1, 10_001]
c["type"] = [CMD_ASK, CMD_BID]
c["price"] = 2_000_000
c["gpus"] = 8
c["end"][0] = 1_800_000_000 + 24 * 3600
c["hours"][1] = 1
c["kind"][1] = ON_DEMAND
c["block"][1] = 1
events = make_book(BookConfig(name="H100"), {engine!r}).process(c)
assert len(events) >= 3
print(repr(time.time()))
"""


def warm_start_seconds(engine: str) -> float:
    """Seconds from spawning a fresh interpreter to its first processed batch."""
    import_engine = "import orderbook.fast" if engine == "numba" else "import orderbook.reference"
    code = WARM_START_CHILD.format(import_engine=import_engine, engine=engine)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1]) - t0


def compare_prefix(workload: Workload, prefix: int, engine: str, batch: int) -> dict[str, Any]:
    """Run the prefix through the reference and the engine; compare events and state hashes."""
    parts = workload.split(upto=prefix)
    ref = run_books(parts, "reference", batch, keep_events=True)
    fast = run_books(parts, engine, batch, keep_events=True)
    identical = True
    hashes_equal = True
    first_diff: dict[str, Any] | None = None
    for name in parts:
        a = np.concatenate(ref[name].event_arrays) if ref[name].event_arrays else np.zeros(0)
        b = np.concatenate(fast[name].event_arrays) if fast[name].event_arrays else np.zeros(0)
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        hashes_equal &= ref[name].state_hash == fast[name].state_hash
        if not same:
            identical = False
            if first_diff is None:
                n = min(len(a), len(b))
                diff = [i for i in range(n) if a[i].tobytes() != b[i].tobytes()][:1]
                at = diff[0] if diff else n
                first_diff = {
                    "class": name,
                    "event_index": at,
                    "reference_events": len(a),
                    "engine_events": len(b),
                    "reference": _event_dict(a, at),
                    "engine": _event_dict(b, at),
                }
    n = sum(r.commands for r in ref.values())
    ref_s = sum(r.seconds for r in ref.values())
    fast_s = sum(r.seconds for r in fast.values())
    out: dict[str, Any] = {
        "prefix_commands": n,
        "prefix_identical": identical,
        "prefix_state_hash_equal": hashes_equal,
        "prefix_events": sum(r.events for r in ref.values()),
        "prefix_trades": sum(r.trades for r in ref.values()),
        "prefix_rejected": sum(r.rejected for r in ref.values()),
        "reference_cmds_per_s": n / ref_s if ref_s else 0.0,
        "numba_prefix_cmds_per_s": n / fast_s if fast_s else 0.0,
    }
    if first_diff is not None:
        out["prefix_first_diff"] = first_diff
    return out


def _event_dict(events: np.ndarray, i: int) -> dict[str, int] | None:
    if i >= len(events):
        return None
    return {k: int(events[i][k]) for k in events.dtype.names}


def work_per_command(books: Any, n: int) -> dict[str, float]:
    """The numba book's work counters, per command: orders and price levels its walks visited and
    lease lists it scanned (docs/orderbook.md).  Empty for the reference book."""
    try:
        from orderbook import fast
    except ImportError:  # pragma: no cover - numba missing
        return {}
    names = {"asks_visited": fast.S_VISIT_ASK, "bids_visited": fast.S_VISIT_BID,
             "ask_levels_visited": fast.S_VISIT_LEVEL, "lease_scans": fast.S_SCAN}
    books = [b for b in books if isinstance(b, fast.NumbaBook)]
    if not books or not n:
        return {}
    return {k: round(sum(int(b.st.S[i]) for b in books) / n, 2) for k, i in names.items()}


def bench_mixed(args: argparse.Namespace) -> dict[str, Any]:
    classes = tuple(args.classes)
    t0 = time.perf_counter()
    workload = generate_workload(args.commands, args.seed, classes)
    generate_s = time.perf_counter() - t0
    parts = workload.split()
    jit_s = jit_compile_seconds(workload, args.engine)

    books = {name: make_book(BookConfig(name=name), args.engine) for name in parts}
    runs = {name: run_book(books[name], name, parts[name], args.batch) for name in parts}
    n = sum(r.commands for r in runs.values())
    seconds = sum(r.seconds for r in runs.values())
    one_thread = n / seconds if seconds else 0.0
    threads = min(args.threads or (os.cpu_count() or 1), len(parts))
    rss = peak_rss_mb()  # before the threaded run, whose fresh books would count twice
    counted = [book_resting_count(b) for b in books.values()]
    counted_total = sum(c for c in counted if c is not None) if all(c is not None for c in counted) else None
    work = work_per_command(books.values(), n)
    del books  # the threaded run builds its own
    threaded: dict[str, Any] = {}
    rate = one_thread
    if threads > 1:
        # the same run again, fresh books, the classes' books on `threads` worker threads
        again = {name: make_book(BookConfig(name=name), args.engine) for name in parts}
        wall = run_books_threaded(again, parts, args.batch, threads)
        rate = n / wall if wall else 0.0
        threaded = {
            "threaded_wall_s": round(wall, 3),
            "threads_state_hash_equal": all(
                int(again[name].state_hash()) == runs[name].state_hash for name in parts
            ),
        }
        del again
    result: dict[str, Any] = {
        "engine": args.engine,
        "commands": n,
        "seed": args.seed,
        "classes": list(classes),
        "batch": args.batch,
        "threads": threads,
        "cpus": os.cpu_count(),
        "generate_s": round(generate_s, 3),
        "jit_compile_s": round(jit_s, 3),
        "process_s": round(seconds, 3),
        "numba_cmds_per_s": round(rate, 1),
        "numba_1thread_cmds_per_s": round(one_thread, 1),
        **threaded,
        "events": sum(r.events for r in runs.values()),
        "trades": sum(r.trades for r in runs.values()),
        "rejected": sum(r.rejected for r in runs.values()),
        "resting_orders": sum(r.resting for r in runs.values()),
        "resting_curve": resting_curve(runs),
        "peak_rss_mb": round(rss, 1),
        "per_class": {
            name: {
                "commands": r.commands,
                "cmds_per_s": round(r.commands / r.seconds if r.seconds else 0.0, 1),
                "events": r.events,
                "trades": r.trades,
                "resting_orders": r.resting,
            }
            for name, r in runs.items()
        },
    }
    if counted_total is not None:
        result["resting_orders_book"] = counted_total
    if work:
        result["work_per_command"] = work
    if args.prefix > 0:
        cmp = compare_prefix(workload, min(args.prefix, len(workload.commands)), args.engine, args.batch)
        ref_rate, fast_rate = cmp["reference_cmds_per_s"], cmp["numba_prefix_cmds_per_s"]
        cmp["speedup"] = round(fast_rate / ref_rate, 1) if ref_rate else None
        cmp["speedup_full_vs_prefix"] = round(result["numba_cmds_per_s"] / ref_rate, 1) if ref_rate else None
        cmp["reference_cmds_per_s"] = round(ref_rate, 1)
        cmp["numba_prefix_cmds_per_s"] = round(fast_rate, 1)
        result.update(cmp)
    if not args.no_warm_start:
        warm_start_seconds(args.engine)  # warm numba's on-disk cache
        result["jit_warm_start_s"] = round(warm_start_seconds(args.engine), 3)
    return result


def bench_resting(args: argparse.Namespace) -> dict[str, Any]:
    classes = tuple(args.classes)
    # numba compiles (if its on-disk cache is cold) in a child process first: the peak RSS
    # reported is the books', not LLVM's (~270 MB while it compiles the book)
    warm_child_s = warm_start_seconds(args.engine)
    workload = generate_resting(args.resting, args.seed, classes)
    parts = workload.split()
    jit_s = jit_compile_seconds(workload, args.engine)
    rss_before = current_rss_mb()
    books = {name: make_book(BookConfig(name=name), args.engine) for name in parts}
    runs = {name: run_book(books[name], name, parts[name], args.batch) for name in parts}
    rss_after = current_rss_mb()
    n = sum(r.commands for r in runs.values())
    seconds = sum(r.seconds for r in runs.values())
    resting = sum(r.resting for r in runs.values())
    result: dict[str, Any] = {
        "engine": args.engine,
        "mode": "resting",
        "commands": n,
        "seed": args.seed,
        "classes": list(classes),
        "batch": args.batch,
        "warm_cache_child_s": round(warm_child_s, 3),
        "jit_compile_s": round(jit_s, 3),
        "process_s": round(seconds, 3),
        "numba_cmds_per_s": round(n / seconds if seconds else 0.0, 1),
        "events": sum(r.events for r in runs.values()),
        "trades": sum(r.trades for r in runs.values()),
        "resting_orders": resting,
        "workload_mb": round(workload.commands.nbytes / 2**20, 1),
        "rss_before_books_mb": round(rss_before, 1),
        "rss_after_books_mb": round(rss_after, 1),
        "bytes_per_resting_order": round((rss_after - rss_before) * 2**20 / resting, 1) if resting else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    counted = [book_resting_count(b) for b in books.values()]
    if all(c is not None for c in counted):
        result["resting_orders_book"] = sum(c for c in counted if c is not None)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A human-readable rendering of the result."""
    lines = []
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key == "per_class":
            for name, row in value.items():
                lines.append(f"{'  ' + name:<{width}}  " + "  ".join(f"{k}={v}" for k, v in row.items()))
            continue
        if isinstance(value, float):
            value = f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.book", description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=1_000_000, help="global commands (mixed run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", type=int, default=20_000, help="global commands checked against the reference")
    p.add_argument("--resting", type=int, default=0, metavar="N", help="N resting orders, no crossing")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="command records per process() call")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    p.add_argument("--engine", choices=("numba", "reference"), default="numba")
    p.add_argument("--threads", type=int, default=0,
                   help="worker threads for the class books (default: one per CPU, at most one per class; 1: serial)")
    p.add_argument("--no-warm-start", action="store_true", help="skip the jit_warm_start_s subprocess")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = bench_resting(args) if args.resting else bench_mixed(args)
    print(json.dumps(result) if args.json else format_table(result))
    return 0 if result.get("prefix_identical", True) and result.get("threads_state_hash_equal", True) else 1


if __name__ == "__main__":
    sys.exit(main())
