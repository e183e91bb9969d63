"""What publishing to Redis costs the exchange, and how soon a request's entry is in Redis (issue 14).

    python -m bench.redis_publish --rate 1000 --seconds 10 --json
    python -m bench.redis_publish --root /work/main --python /work/main/.venv/bin/python --json   # before

Runs `gpux serve` (from ``--root``, with ``--python``) as its own process over a fresh data
directory, once without and once with ``--redis`` (a private `redis-server` on a free port), and
drives it open-loop at ``--rate`` requests/s over WebSockets for ``--seconds`` (bids that rest,
then their cancels: every request is a journal entry).  Reported per mode:

* the server process's CPU time (utime + stime from /proc) per request during the load; the
  difference between the two modes is what publishing costs per request;
* with Redis: for every bid, the time from its ack reaching the client to its record arriving at
  a reader blocked on the stream (XREAD): the journal stream ``{prefix}:journal`` (chunks of
  journal entries, this branch) or, for the code before it, the class stream
  ``{prefix}:events:H100`` (one JSON event per entry) — whichever the server writes.

The load generator runs in this process, so the client's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.redis_outage import RedisServer

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def _accounts(python: str, root: Path, data: Path, traders: int) -> list[tuple[str, str]]:
    out = []
    for name, role, dep in [("prov", "provider", 0)] + [(f"t{i}", "trader", 10**9) for i in range(traders)]:
        argv = [python, "-m", "cli.main", "accounts", "create", name, "--role", role, "--data", str(data), "--json"]
        if dep:
            argv += ["--deposit", str(dep)]
        got = json.loads(subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True,
                                        env={**os.environ, "PYTHONPATH": str(root)}).stdout)
        out.append((got["key_id"], got["secret"]))
    return out


class StreamReader(threading.Thread):
    """Blocks on the Redis stream and records when each bid's oid arrives (monotonic seconds)."""

    def __init__(self, url: str, journal_stream: bool) -> None:
        super().__init__(daemon=True)
        import redis

        self.r = redis.Redis.from_url(url)
        self.journal_stream = journal_stream
        self.key = "gpux:journal" if journal_stream else "gpux:events:H100"
        self.arrived: dict[int, float] = {}
        self.stop = False

    def run(self) -> None:
        last = "0-0"
        while not self.stop:
            reply = self.r.xread({self.key: last}, count=1000, block=200)
            now = time.monotonic()
            for _, entries in reply or []:
                for eid, fields in entries:
                    last = eid
                    for oid in self._oids(fields):
                        self.arrived.setdefault(oid, now)

    def _oids(self, fields: dict[bytes, bytes]) -> list[int]:
        if self.journal_stream:
            import numpy as np

            from exchange.entries import Cmd, decode_entry
            from exchange.stream import FIELD, decode_chunk
            from orderbook.types import CMD_BID, COMMAND_DTYPE

            out = []
            for p in decode_chunk(fields[FIELD])[1]:
                e = decode_entry(p)
                if type(e) is Cmd:
                    rec = np.frombuffer(e.rec, dtype=COMMAND_DTYPE)[0]
                    if rec["type"] == CMD_BID:
                        out.append(int(rec["oid"]))
            return out
        if fields.get(b"type") == b"accepted":
            return [int(json.loads(fields[b"event"])["oid"])]
        return []


async def _load(url: str, keys: list[tuple[str, str]], rate: float, seconds: float) -> dict[str, Any]:
    from client.api import Client

    prov = Client(url, *keys[0])
    await prov.ask("H100", gpus=1000, price=3_000_000, end=int(time.time()) + 7 * 86_400)
    clients = [Client(url, *k) for k in keys[1:]]
    sessions = [await c.trader() for c in clients]
    acks: dict[int, float] = {}
    errors = 0
    sent = 0
    pending: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        nonlocal errors
        s = sessions[i % len(sessions)]
        try:
            ack = await s.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
            acks[ack["oid"]] = time.monotonic()
            await s.cancel(ack["oid"])
        except Exception:  # noqa: BLE001 - counted
            errors += 1

    t0 = time.monotonic()
    interval = 2.0 / rate  # each task sends two requests (bid, cancel)
    i = 0
    while time.monotonic() - t0 < seconds:
        t = asyncio.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)
        i += 1
        sent += 2
        await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
    await asyncio.gather(*pending)
    elapsed = time.monotonic() - t0
    for s in sessions:
        await s.close()
    for c in [prov, *clients]:
        await c.close()
    return {"requests": sent, "errors": errors, "seconds": elapsed, "acks": acks}


def run_mode(python: str, root: Path, work: Path, redis: bool, rate: float, seconds: float,
             traders: int = 4) -> dict[str, Any]:
    data = work / ("data-redis" if redis else "data-plain")
    keys = _accounts(python, root, data, traders)
    server = RedisServer(work / "redis", node_entries=100) if redis else None
    if server is not None:
        server.start()
    argv = [python, "-m", "cli.main", "serve", "--data", str(data), "--port", "0", "--log-level", "WARNING"]
    if server is not None:
        argv += ["--redis", server.url]
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    reader = None
    try:
        line = ""
        while "serving on" not in line:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                raise RuntimeError("gpux serve exited")
        url = line.split("serving on ", 1)[1].split()[0]
        if server is not None:
            reader = StreamReader(server.url, (root / "exchange" / "stream.py").exists())
            reader.start()
        time.sleep(1.0)
        cpu0 = cpu_seconds(proc.pid)
        out = asyncio.run(_load(url, keys, rate, seconds))
        cpu = cpu_seconds(proc.pid) - cpu0
        acks = out.pop("acks")
        res: dict[str, Any] = {"redis": redis, **out, "server_cpu_s": round(cpu, 3),
                               "cpu_us_per_request": round(cpu / out["requests"] * 1e6, 1),
                               "achieved_rate": round(out["requests"] / out["seconds"], 1)}
        if reader is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not set(acks) <= set(reader.arrived):
                time.sleep(0.1)
            lat = sorted((reader.arrived[o] - t) * 1000 for o, t in acks.items() if o in reader.arrived)
            res["stream"] = reader.key
            res["bids_seen_in_redis"] = len(lat)
            res["bids_acked"] = len(acks)
            if lat:
                res["ack_to_redis_ms"] = {"p50": round(lat[len(lat) // 2], 2), "p90": round(lat[int(len(lat) * .9)], 2),
                                          "p99": round(lat[int(len(lat) * .99)], 2), "max": round(lat[-1], 2)}
        return res
    finally:
        if reader is not None:
            reader.stop = True
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if server is not None:
            server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--root", default=str(ROOT), help="the checkout whose gpux serve runs (default this one)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--micro", action="store_true",
                   help="the publishing work alone, in this process: the journal publisher against the old per-event "
                        "RedisBus (--before-bus FILE, e.g. from `git show main:exchange/bus.py`)")
    p.add_argument("--before-bus", default=None, metavar="FILE")
    p.add_argument("--requests", type=int, default=5_000, help="--micro: requests (one batch each)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.micro:
        with tempfile.TemporaryDirectory(prefix="gpux-pub-") as tmp:
            server = RedisServer(Path(tmp) / "redis", node_entries=100)
            server.start()
            try:
                res = micro(server.url, args.requests, Path(args.before_bus) if args.before_bus else None,
                            args.rate)
            finally:
                server.close()
        print(json.dumps(res, indent=1))
        return 0
    root = Path(args.root)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "redis": []}
    with tempfile.TemporaryDirectory(prefix="gpux-pub-") as tmp:
        for k in range(args.repeat):
            for mode in ("plain", "redis"):
                runs[mode].append(run_mode(args.python, root, Path(tmp) / f"{mode}{k}", mode == "redis",
                                           args.rate, args.seconds))
    plain = statistics.median(r["cpu_us_per_request"] for r in runs["plain"])
    red = statistics.median(r["cpu_us_per_request"] for r in runs["redis"])
    out = {"benchmark": "redis_publish", "root": str(root), "rate": args.rate, "seconds": args.seconds,
           "cpu_us_per_request_plain": plain, "cpu_us_per_request_redis": red,
           "publish_cpu_us_per_request": round(red - plain, 1), "runs": runs, "loadavg": os.getloadavg()[0]}
    print(json.dumps(out, indent=1) if args.json else
          f"publishing costs {red - plain:.1f} µs of server CPU per request ({plain} -> {red}); "
          f"ack->Redis {[r.get('ack_to_redis_ms') for r in runs['redis']]}")
    return 0


# ---------------------------------------------------------------------- the publishing work alone
def _workload(journal_dir: Path, requests: int) -> list[Any]:
    """A journal of ``requests`` one-request batches (a bid that rests, its cancel; a clock command
    every 500 requests) written as the sequencer writes it, and the Published batch of each."""
    from exchange.bus import Published
    from exchange.config import DEFAULT_INSTRUMENTS
    from exchange.engine import Engine
    from exchange.entries import Cmd, encode_entry
    from exchange.journal import Journal
    from orderbook.types import COMMAND_DTYPE, ON_DEMAND, ask_command, bid_command, cancel_command, clock_command

    engine = Engine(dict(DEFAULT_INSTRUMENTS), "numba")
    t = 1_800_000_000
    batches = []
    with Journal.open(journal_dir, fsync=False) as j:
        def one(cmd: Any) -> None:
            rec = np.array([cmd], dtype=COMMAND_DTYPE)
            rec["time"] = t
            if rec["type"][0] in (1, 2):
                rec["oid"] = engine.last_oid + 1
                engine.last_oid += 1
            entries = [Cmd("H100", rec.tobytes())]
            j.append([encode_entry(e) for e in entries])
            results, arrays = engine.apply(entries, answers=True)
            batches.append((engine.seq, Published(results, arrays, [None])))

        one(clock_command(t))
        one(ask_command(1, gpus=1000, price=3_000_000, end=t + 7 * 86_400))
        for i in range(requests // 2):
            one(bid_command(2, ON_DEMAND, gpus=1, hours=1, limit=1_000_000))
            one(cancel_command(2, engine.last_oid))
            if i % 250 == 249:
                t += 1
                one(clock_command(t))
    return batches


def micro(url: str, requests: int, before_bus: Path | None, rate: float) -> dict[str, Any]:
    """Process CPU to publish ``requests`` one-request batches to Redis: the journal publisher
    (this branch), or the per-event RedisBus of ``before_bus`` (a copy of the old exchange/bus.py)."""
    import importlib.util

    from exchange.bus import Bus

    work = Path(tempfile.mkdtemp(prefix="gpux-pubmicro-"))
    batches = _workload(work / "journal", requests)

    async def go(kind: str) -> float:
        prefix = f"micro{kind}{time.monotonic_ns()}"
        if kind == "before":
            spec = importlib.util.spec_from_file_location("oldbus", before_bus)
            mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules["oldbus"] = mod
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            bus = mod.RedisBus(url, prefix, backlog=10**6)
            await bus.start()
        else:
            from exchange.stream import JournalPublisher

            bus = Bus()
            pub = JournalPublisher(url, prefix, work / "journal", 0)
            await pub.start()
            bus.subscribe(lambda b: None)
        c0 = time.process_time()
        t0 = time.monotonic()
        for i, (seq, b) in enumerate(batches):
            bus.publish(b)
            if kind == "after":
                pub.wake(seq)
            # one batch per request, paced at ``rate`` as in gpux serve (the loop turns between them)
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        if kind == "before":
            await bus.flush()
        elif kind == "after":
            await pub.flush(60)
        cpu = time.process_time() - c0
        if kind == "before":
            await bus.close()
        elif kind == "after":
            await pub.close()
        import redis

        r = redis.Redis.from_url(url)
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)
        r.close()
        return cpu

    out: dict[str, Any] = {"requests": len(batches), "rate": rate}
    base = asyncio.run(go("none"))
    out["baseline_cpu_s"] = round(base, 4)
    for kind in (["before"] if before_bus else []) + ["after"]:
        cpu = statistics.median(asyncio.run(go(kind)) for _ in range(3))
        out[f"{kind}_cpu_us_per_request"] = round((cpu - base) / len(batches) * 1e6, 1)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
