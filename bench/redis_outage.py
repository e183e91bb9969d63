"""Redis outages and a consumer down past the stream's retention, under load (issue 14).

    python -m bench.redis_outage --outage-s 10 --json            # Redis stopped 10 s, restarted with its data
    python -m bench.redis_outage --outage-s 10 --empty --json    # ... restarted empty

The exchange (`gpux serve --redis`, in this process) takes a steady load of bids and cancels from
SDK clients over WebSockets; `gpux settle` runs as its own process (a replica, backfilling gaps
from the exchange's journal-tail endpoint).  A private `redis-server` on a free port (small
stream nodes, so that approximate MAXLEN trims) is stopped for ``outage_s`` and restarted (with
its data, or empty); then `gpux settle` is killed with SIGKILL, the load goes on until the stream
is trimmed past its cursor, and it is restarted.  At the end the replica's ledger must equal the
exchange's, transfer for transfer, and its log must name the gaps and their backfill.

`tests/test_settle_replica.py` runs this with a short outage; this script runs it at full length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
USD = 1_000_000
P = 2_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A `redis-server` of our own on a free loopback port, in ``directory``; stop and start it at will."""

    def __init__(self, directory: Path, port: int | None = None, node_entries: int = 8,
                 replica_of: int | None = None) -> None:
        self.directory = directory
        self.replica_of = replica_of  # the port of the primary this one replicates
        self.port = port or free_port()
        self.node_entries = node_entries
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "",
             "--appendonly", "no", "--stream-node-max-entries", str(self.node_entries), "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log"),
             *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, save: bool = True) -> None:
        """SHUTDOWN SAVE (restarts with its data) or SHUTDOWN NOSAVE and the dump removed (restarts empty)."""
        if self.proc is None:
            return
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
                s.recv(64)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        if not save:
            (self.directory / "dump.rdb").unlink(missing_ok=True)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


def ledger_transfers(path: Path) -> tuple[list, dict]:
    from settlement.service import Settlement

    s = Settlement(path)
    try:
        return sorted(s.transfers()), s.ledger.balances()
    finally:
        s.close()


def journal_cursor(path: Path) -> int:
    """The replica ledger's journal cursor, read while another process may write it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT position FROM settle_positions WHERE cls = '_journal'").fetchone()
            return int(row[0]) if row else 0
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def stream_first_seq(url: str, key: str) -> int | None:
    import redis

    from exchange.stream import FIELD, decode_chunk

    r = redis.Redis.from_url(url)
    try:
        got = r.xrange(key, count=1)
        return decode_chunk(got[0][1][FIELD])[0] if got else None
    finally:
        r.close()


async def scenario(work: Path, outage_s: float = 10.0, empty: bool = False, rate: float = 150.0,
                   maxlen: int = 16, settle_down_s: float = 3.0, log: Any = print) -> dict[str, Any]:
    """The whole run (see the module docstring); returns what happened and whether the ledgers agree."""
    sys.path.insert(0, str(ROOT / "tests"))
    from exchange_helpers import running_exchange

    from exchange.stream import stream_key

    work.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work / "redis")
    redis.start()
    data = work / "exchange"
    replica_ledger = work / "settle" / "ledger.db"
    settle_log = work / "settle.log"
    config = work / "gpux.toml"
    config.write_text("[server]\nredis_prefix = \"gpux\"\n[settlement]\nprovisioning = \"auto\"\n")
    out: dict[str, Any] = {"outage_s": outage_s, "empty": empty, "rate": rate, "maxlen": maxlen}
    procs: list[subprocess.Popen] = []
    try:
        async with running_exchange(data, engine="numba", redis_url=redis.url, redis_maxlen=maxlen,
                                    provisioning="auto") as ex:
            _, admin_key, admin_secret = ex.account("root", "admin")
            prov = ex.client("prov", "provider")
            traders = [ex.client(f"t{i}", "trader", 10_000 * USD) for i in range(3)]
            await prov.ask("H100", gpus=64, price=P, spot_price=1_200_000, end=ex.now + 7 * 86_400)
            await prov.ask("A100", gpus=64, price=P // 2, end=ex.now + 7 * 86_400)

            def start_settle() -> subprocess.Popen:
                f = open(settle_log, "a")  # noqa: SIM115 - the child's stderr, closed with it
                p = subprocess.Popen([sys.executable, "-m", "cli.main", "settle", "--redis", redis.url, "--config",
                                      str(config), "--ledger", str(replica_ledger), "--exchange", ex.url,
                                      "--key", admin_key, "--snapshot-every", "500"],
                                     cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                     # the secret by the environment: kept out of the process list, and one
                                     # that begins with "-" (1 in 64) would read as an option on the command line
                                     env={**os.environ, "GPUX_SECRET": admin_secret})
                procs.append(p)
                return p

            settle = start_settle()
            stop_load = asyncio.Event()
            counts = {"sent": 0, "errors": 0}
            load = asyncio.create_task(_load(traders, rate, stop_load, counts))
            await asyncio.sleep(2.0)
            log(f"redis stopped ({'empty' if empty else 'with its data'} on restart) for {outage_s} s")
            await asyncio.to_thread(redis.stop, not empty)
            t0 = time.monotonic()
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(redis.start)
            out["redis_down_s"] = round(time.monotonic() - t0, 2)
            await asyncio.sleep(2.0)
            # gpux settle killed; the stream goes on past its retention; restarted
            settle.send_signal(signal.SIGKILL)
            settle.wait(10)
            killed_at = journal_cursor(replica_ledger)
            log(f"gpux settle killed at journal seq {killed_at}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                first = stream_first_seq(redis.url, stream_key("gpux"))
                if first is not None and first > killed_at + 1 and time.monotonic() - t0 >= settle_down_s:
                    break
            out["settle_killed_at_seq"] = killed_at
            out["stream_first_seq_at_restart"] = stream_first_seq(redis.url, stream_key("gpux"))
            settle = start_settle()
            await asyncio.sleep(2.0)
            stop_load.set()
            await load
            out.update(counts)
            pub = ex.exchange.publisher
            assert pub is not None
            await pub.flush(30)
            await ex.exchange.settlement.synced()
            out["journal_seq"] = ex.exchange.engine.seq
            out["publisher"] = {name: v for name, v, _, _ in pub.metric_samples()}
            # the replica catches up while the exchange still serves (its backfill endpoint)
            deadline = time.monotonic() + 90
            while journal_cursor(replica_ledger) < out["journal_seq"] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            out["replica_seq"] = journal_cursor(replica_ledger)
        want = ledger_transfers(data / "ledger.db")
        got = ledger_transfers(replica_ledger)
        settle.send_signal(signal.SIGTERM)
        settle.wait(30)
        out["transfers"] = len(want[0])
        out["replica_transfers"] = len(got[0])
        out["ledgers_equal"] = got[0] == want[0] and got[1] == want[1]
        text = settle_log.read_text()
        out["log_gaps"] = [line for line in text.splitlines() if "gap after seq" in line]
        out["log_backfills"] = [line for line in text.splitlines() if "backfilled" in line]
        out["settle_log"] = str(settle_log)
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        redis.close()


async def _load(traders: list[Any], rate: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Bids (some fill, some rest) and cancels at about ``rate`` requests/s, until ``stop``."""
    rng = random.Random(14)
    sessions = [await t.trader() for t in traders]
    try:
        resting: list[tuple[Any, int]] = []
        interval = 1.0 / rate
        nxt = time.monotonic()
        while not stop.is_set():
            s = rng.choice(sessions)
            try:
                if resting and rng.random() < 0.3:
                    sess, oid = resting.pop(rng.randrange(len(resting)))
                    await sess.cancel(oid)
                else:
                    cls = rng.choice(["H100", "A100"])
                    fill = rng.random() < 0.2
                    limit = (P if cls == "H100" else P // 2) if fill else 500_000
                    ack = await s.bid(cls, "on_demand", gpus=1, hours=1, limit=limit)
                    if ack.get("ok") and not ack.get("trades"):
                        resting.append((s, ack["oid"]))
                counts["sent"] += 1
            except Exception:  # noqa: BLE001 - counted; the load goes on
                counts["errors"] += 1
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    finally:
        for s in sessions:
            await s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_outage", description=__doc__.split("\n\n")[0])
    p.add_argument("--outage-s", type=float, default=10.0)
    p.add_argument("--empty", action="store_true", help="restart Redis empty (else with its data)")
    p.add_argument("--rate", type=float, default=150.0, help="requests per second")
    p.add_argument("--work", default=None, help="working directory (default: a new temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import tempfile

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpux-outage-"))
    out = asyncio.run(scenario(work, args.outage_s, args.empty, args.rate,
                               log=lambda m: print(m, file=sys.stderr)))
    print(json.dumps(out, indent=2) if args.json else out)
    return 0 if out["ledgers_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
