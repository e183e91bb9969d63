"""The README's figures, measured here: what `make bench` prints.

    python -m bench.figures [--runs 5] [--scenario-runs 3] [--cold] [--json]

Runs ``python -m bench.book --commands 1000000 --json`` ``--runs`` times and
``python -m bench.scenario --json`` ``--scenario-runs`` times, each in a fresh process as a user
would run it, and prints every figure of the README's table under the same name and unit: the
median, the spread (lowest–highest of the runs), the machine's CPU count and its load average
(``os.getloadavg``, 1 minute) before each run.  ``--cold`` also times ``python -m cli.warm``
with an empty numba cache (a fresh ``NUMBA_CACHE_DIR``): the first compile that ``make`` does
once, which takes minutes on a slow machine and is not part of the default run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (name in the benchmark's JSON, what it is, unit): the rows of the README's table, in its order
BOOK_FIGURES = (
    ("numba_cmds_per_s", "numba books, {commands:,} mixed commands over 3 classes, the class books on the CPUs' "
     "threads", "commands/s"),
    ("numba_1thread_cmds_per_s", "the same on one thread", "commands/s"),
    ("reference_cmds_per_s", "reference book, the first {prefix:,} of the same commands", "commands/s"),
    ("speedup", "numba over the reference on those {prefix:,} commands, one thread", "x"),
    ("jit_warm_start_s", "warm start: a new process, numba's cache warm, to its first batch done", "s"),
)
SCENARIO_FIGURES = (("seconds", "python -m bench.scenario, the whole run", "s"),)
COLD_FIGURE = ("cold_compile_s", "python -m cli.warm with an empty numba cache (what make does once)", "s")
CHECKS = ("prefix_identical", "prefix_state_hash_equal", "threads_state_hash_equal")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_json(args: list[str]) -> dict[str, Any]:
    """Run ``python -m ARGS`` in a fresh process; its JSON output."""
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def cold_compile_s() -> float:
    """Seconds of ``python -m cli.warm`` with an empty numba cache of its own."""
    with tempfile.TemporaryDirectory(prefix="gpux-cold-") as d:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli.warm"], cwd=ROOT, env=_env(NUMBA_CACHE_DIR=d), check=True,
                       capture_output=True)
        return time.perf_counter() - t0


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(runs: int, scenario_runs: int, cold: bool, commands: int, prefix: int) -> dict[str, Any]:
    figures: dict[str, dict[str, Any]] = {}
    loads: list[float] = []
    checks: dict[str, bool] = dict.fromkeys(CHECKS, True)
    book: dict[str, list[float]] = {name: [] for name, _, _ in BOOK_FIGURES}
    for _ in range(runs):
        loads.append(load1())
        r = run_json(["bench.book", "--commands", str(commands), "--prefix", str(prefix), "--json"])
        for name in book:
            book[name].append(float(r[name]))
        for name in CHECKS:
            checks[name] &= bool(r.get(name, True))
    for name, what, unit in BOOK_FIGURES:
        if book[name]:
            figures[name] = {"what": what.format(commands=commands, prefix=prefix), "unit": unit, "runs": book[name],
                             **spread(book[name])}
    scen: list[float] = []
    for _ in range(scenario_runs):
        loads.append(load1())
        scen.append(float(run_json(["bench.scenario", "--json"])["seconds"]))
    if scen:
        name, what, unit = SCENARIO_FIGURES[0]
        figures[f"scenario_{name}"] = {"what": what, "unit": unit, "runs": scen, **spread(scen)}
    if cold:
        loads.append(load1())
        c = cold_compile_s()
        name, what, unit = COLD_FIGURE
        figures[name] = {"what": what, "unit": unit, "runs": [c], **spread([c])}
    loads.append(load1())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_1min": {"runs": loads, **spread(loads)},
        "commands": commands,
        "book_runs": runs,
        "scenario_runs": scenario_runs,
        "figures": figures,
        "checks": checks if runs else {},
    }


def _fmt(x: float, unit: str) -> str:
    if unit == "commands/s":
        return f"{x:,.0f}"
    if unit == "x":
        return f"{x:,.0f}"
    return f"{x:.2f}"


def table(m: dict[str, Any]) -> str:
    ld = m["load_1min"]
    lines = [
        f"{m['date']}, {m['cpus']} CPUs, load average (1 min) {ld['min']:.2f}-{ld['max']:.2f} before the runs; "
        f"runs: bench.book --commands {m['commands']:,} x {m['book_runs']}, bench.scenario x {m['scenario_runs']}",
        "",
        "| figure | median | lowest-highest | unit |",
        "| --- | --- | --- | --- |",
    ]
    for name, f in m["figures"].items():
        u = f["unit"]
        lines.append(f"| {f['what']} (`{name}`) | {_fmt(f['median'], u)} | {_fmt(f['min'], u)}-{_fmt(f['max'], u)} "
                     f"| {u} |")
    if m["checks"]:
        lines += ["", "checks in every run: " + ", ".join(f"{k}: {str(v).lower()}" for k, v in m["checks"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of bench.book (default 5)")
    p.add_argument("--scenario-runs", type=int, default=3, help="runs of bench.scenario (default 3)")
    p.add_argument("--cold", action="store_true", help="also time a cold compile (minutes on a slow machine)")
    p.add_argument("--commands", type=int, default=1_000_000, help="bench.book's --commands (the README's: 1M)")
    p.add_argument("--prefix", type=int, default=20_000, help="bench.book's --prefix (the README's: 20,000)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    m = measure(args.runs, args.scenario_runs, args.cold, args.commands, args.prefix)
    print(json.dumps(m) if args.json else table(m))
    return 0 if all(m["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
