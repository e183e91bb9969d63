"""Settlement benchmark: trades settled per second (`python -m bench.settlement --trades 200000 --json`).

The event stream is real: the seeded mixed workload of `bench.workload` (asks, bids of every
kind and TIF, cancels, amends, clock jumps; three classes) run through one numba book per
class, in batches of ``--batch`` commands as `bench.book` does; each book call's events are
one hand-over to settlement, as the exchange's bus hands over one durable batch.  Enough
commands are generated for ``--trades`` trades.  Every account is funded first (deposits
are not timed).

Modes:

* embedded — `Settlement.on_events` for each hand-over: events -> transfers -> one SQLite
  transaction (transfers, balances, leases, bids, last seq).  Timed: everything settlement
  does, for every event of the stream (not only trades).  The workload compresses ~36 s of
  engine time into each command, so nearly every lease also *ends* within the run: the
  figure includes each trade's whole life (escrow hold, lease, metering, end and refunds),
  not just the fill.
* (The Redis consumer-group mode is gone with the consumer group: `gpux settle` is a replica of
  the journal now, `settlement.replica`; `bench.redis_publish` measures the publishing side.)

Reported: trades/s (wall clock), trades per CPU-second of this process, events/s,
transfers/s, how many transfers and lease rows were written, the ledger file's size, and the
time split between the pure engine, the ledger writes and the state writes (embedded).
Durability: ``--synchronous NORMAL`` (default; WAL, no fsync per commit: a power loss may
lose the last commits, a process crash loses nothing committed) or ``FULL`` (fsync per commit).

Also a library for the tests: `workload_events`, `fund_accounts`, `ledger_digest`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.book import run_books
from bench.workload import DEFAULT_CLASSES, generate
from clearing.engine import SettlementConfig, SettlementEngine
from orderbook.types import EV_TRADE
from settlement.ledger import Ledger
from settlement.service import Settlement

TRADES_PER_COMMAND = 0.7  # the mixed workload makes ~0.71 trades per command
DEFAULT_FEES = {"H100": (10, 25), "A100": (10, 25), "RTX4090": (0, 30)}  # maker, taker bps (R19)
FUNDS = 10**15  # µ$ per account: never the limit


# ---------------------------------------------------------------------- streams (also for tests)
def workload_events(n_commands: int, seed: int = 1, classes: tuple[str, ...] = DEFAULT_CLASSES,
                    batch: int = 4096, engine: str = "numba") -> list[tuple[str, np.ndarray]]:
    """The events of the mixed workload, as hand-overs ``[(class, EVENT_DTYPE array), ...]``:
    one per book call of ``batch`` commands, classes interleaved in command order."""
    runs = run_books(generate(n_commands, seed=seed, classes=classes), engine, batch, keep_events=True)
    per_class = {name: [a for a in r.event_arrays if len(a)] for name, r in runs.items()}
    out: list[tuple[str, np.ndarray]] = []
    i = 0
    while any(per_class.values()):
        for name in classes:
            parts = per_class[name]
            if i < len(parts):
                out.append((name, parts[i]))
        i += 1
        if all(i >= len(p) for p in per_class.values()):
            break
    return out


def accounts_of(handovers: list[tuple[str, np.ndarray]]) -> list[int]:
    acc: set[int] = set()
    for _, ev in handovers:
        acc.update(ev["account"].tolist())
        acc.update(ev["account2"].tolist())
    acc.discard(0)
    return sorted(acc)


def fund_accounts(ledger: Ledger, accounts: list[int], amount: int = FUNDS) -> None:
    """One deposit per account, all in one transaction."""
    from settlement.ledger import AVAILABLE, EXCHANGE, EXTERNAL, Transfer

    ledger.apply([Transfer(f"deposit:bench:{a}", EXCHANGE, EXTERNAL, a, AVAILABLE, amount, 0) for a in accounts])


def ledger_digest(s: Settlement) -> dict[str, Any]:
    """Everything two equal settlements share: transfers, balances, leases, cursors."""
    conn = s.ledger.conn
    return {
        "transfers": sorted(tuple(t) for t in s.ledger.transfers()),
        "balances": conn.execute("SELECT owner, kind, balance FROM balances WHERE balance <> 0 "
                                 "ORDER BY owner, kind").fetchall(),
        "leases": conn.execute("SELECT cls, trade_id, status, data FROM leases ORDER BY cls, trade_id").fetchall(),
        "bids": conn.execute("SELECT cls, oid, account, hpg, remaining FROM settle_bids ORDER BY cls, oid").fetchall(),
        "cursors": conn.execute("SELECT cls, seq FROM settle_cursors ORDER BY cls").fetchall(),
    }


def commands_for(trades: int) -> int:
    return max(1000, int(trades / TRADES_PER_COMMAND))


# ---------------------------------------------------------------------- runs
def _timed(obj: Any, name: str, acc: dict[str, float]) -> None:
    f = getattr(obj, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def run_embedded(handovers: list[tuple[str, np.ndarray]], config: SettlementConfig, synchronous: str,
                 data_dir: Path) -> dict[str, Any]:
    path = data_dir / f"ledger-{uuid.uuid4().hex[:8]}.db"
    s = Settlement(path, config, synchronous=synchronous)
    fund_accounts(s.ledger, accounts_of(handovers))
    split: dict[str, float] = {}
    _timed(s.engine, "apply", split)
    _timed(s.ledger, "post", split)
    _timed(s.store, "write", split)
    n0 = s.ledger.count()
    trades = sum(int(np.count_nonzero(ev["type"] == EV_TRADE)) for _, ev in handovers)
    events = sum(len(ev) for _, ev in handovers)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for cls, ev in handovers:
        s.on_events(cls, ev)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    transfers = s.ledger.count() - n0
    leases = s.ledger.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
    s.close()
    size = sum(p.stat().st_size for p in data_dir.glob(path.name + "*"))
    for p in data_dir.glob(path.name + "*"):
        p.unlink()
    return {"trades": trades, "events": events, "handovers": len(handovers), "transfers": transfers,
            "leases": leases, "seconds": wall, "cpu_seconds": cpu, "trades_per_s": trades / wall,
            "trades_per_cpu_s": trades / cpu, "events_per_s": events / wall, "transfers_per_s": transfers / wall,
            "ledger_mb": size / 1e6,
            "split_s": {"engine": split.get("apply", 0.0), "ledger": split.get("post", 0.0),
                        "state": split.get("write", 0.0)},
            "commits": len(handovers)}


def engine_only(handovers: list[tuple[str, np.ndarray]], config: SettlementConfig) -> dict[str, Any]:
    """The pure engine (no SQLite): the floor of the Python part."""
    e = SettlementEngine(config)
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for cls, ev in handovers:
        n += len(e.apply(cls, ev))
        e.take_changes()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"seconds": wall, "cpu_seconds": cpu, "trades_per_s": e.trades / wall, "transfers": n}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["trades_per_s"] for r in runs]
    best = sorted(runs, key=lambda r: r["trades_per_s"])[len(runs) // 2]
    return {**best, "runs_trades_per_s": [round(x) for x in rates], "median_trades_per_s": statistics.median(rates)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.settlement", description=__doc__.split("\n\n")[0])
    p.add_argument("--trades", type=int, default=200_000, help="trades to settle (approximately; default 200000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=4096, help="commands per book call = one hand-over (default 4096)")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is reported (default 3)")
    p.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    p.add_argument("--no-fees", action="store_true", help="no maker/taker fees (the exchange's default config)")
    p.add_argument("--meter-interval", type=int, default=SettlementConfig().meter_interval_s,
                   help="seconds between metering points of a ready lease (default one day)")
    p.add_argument("--dir", help="where to put the ledger files (default a temporary directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = SettlementConfig(fees={} if args.no_fees else DEFAULT_FEES, meter_interval_s=args.meter_interval)
    t0 = time.perf_counter()
    handovers = workload_events(commands_for(args.trades), seed=args.seed, batch=args.batch)
    gen_s = time.perf_counter() - t0
    tmp = tempfile.TemporaryDirectory() if not args.dir else None
    data_dir = Path(args.dir or tmp.name)  # type: ignore[union-attr]
    data_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "settlement", "trades": sum(int(np.count_nonzero(ev["type"] == EV_TRADE)) for _, ev in handovers),
        "events": sum(len(ev) for _, ev in handovers), "handovers": len(handovers), "batch_commands": args.batch,
        "synchronous": args.synchronous, "fees_bps": config.fees, "meter_interval_s": config.meter_interval_s,
        "generate_seconds": gen_s, "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0],
    }
    result["engine_only"] = engine_only(handovers, config)
    result["embedded"] = _median_run([run_embedded(handovers, config, args.synchronous, data_dir)
                                      for _ in range(args.repeat)])
    result["loadavg_after"] = os.getloadavg()[0]
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        e = result["embedded"]
        print(f"{result['trades']} trades, {result['events']} events in {result['handovers']} hand-overs; "
              f"fees {config.fees or 'none'}; synchronous={args.synchronous}")
        print(f"embedded: {e['median_trades_per_s']:,.0f} trades/s (median of {e['runs_trades_per_s']}), "
              f"{e['trades_per_cpu_s']:,.0f} trades per CPU-s, {e['transfers']} transfers, "
              f"{e['leases']} leases, {e['ledger_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
