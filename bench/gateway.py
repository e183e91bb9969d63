"""Gateway benchmark: real WebSocket clients against `gpux serve` on loopback, fsync on.

    python -m bench.gateway --clients 50 --seconds 20 --json [--rate 2000] [--window 32]

The server runs as its own process (`gpux serve`, default config: one fsync per batch) on a
fresh data directory with one provider, whose asks are seeded over REST, and ``--clients``
funded traders.  Two phases, each over every client's own WebSocket session, latency first (a steady 2,000/s on a
server that is not still writing back the burst before it), then saturation:

* **saturation** — each client keeps ``--window`` requests in flight (closed loop) for
  ``--seconds``: a GTC bid below the asks (it rests), then its cancel, and every fourth
  request an IOC on-demand bid that trades.  ``orders_per_s`` counts order-entry requests
  (bids and cancels) answered per second.
* **latency** — an open loop at ``--rate`` requests/s for ``--latency-seconds``: request i is
  due at t0 + i/rate whatever happened before it, and its latency is measured from that due
  time to its ack, so a stall counts against every request it delays (no coordinated
  omission); the clients' garbage collector is paused for the window (its pauses are the
  clients', not the server's).  Reports p50/p99/p999 in ms.  ``--snapshots`` snapshots (default 1) are forced
  inside this window, evenly spaced (``POST /v1/admin/snapshot``), on top of the periodic ones
  every ``--snapshot-every`` s (the server's ``snapshot_every_s``, default 60 as in production);
  ``snapshots_in_window`` says how many the server finished writing during the window
  (``gpux_snapshots_total``), ``snapshot_capture_max_ms`` the longest time one held the event loop.

A longer latency run, e.g. at 4,000/s for a minute without the saturation phase:
``--rate 4000 --latency-seconds 60 --seconds 0``.

CPU: ``core_cpu_us_per_order`` is the sequencer thread's CPU time in batches (checks, journal
append, books, exchange state, answers; not the fsync thread's) per command journaled, over each
phase (``gpux_batch_cpu_seconds_total`` / ``gpux_commands_total``); ``server_cpu_us_per_request``
the whole server process's (gateway, sequencer, fsync, ledger, feeds: ``/proc/PID/stat``) per
request answered.

Prints one JSON object (``--json``) or a short table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench.wsclient import WsConn, connect
from gateway.accounts import AccountStore
from gateway.auth import Signer

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
CLASS = "H100"
ASK_PRICE = 2_000_000
REST_PRICE = 500_000  # resting bids sit below every ask, firm and spot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


class Conn:
    """One trader's WebSocket session (bench.wsclient) with pipelined requests matched by id."""

    def __init__(self) -> None:
        self.ws: WsConn | None = None
        self.pending: dict[int, tuple[asyncio.Future, float]] = {}
        self.next_id = 1
        self.errors: dict[str, int] = {}

    @classmethod
    async def open(cls, host: str, port: int, key: str, secret: str) -> Conn:
        c = cls()
        c.ws = await connect(host, port, "/v1/ws", c._on_message)
        auth = Signer(key, secret).ws_auth()
        first = await c.send(auth)
        if first[0].get("type") != "authenticated":
            raise SystemExit(f"auth failed: {first[0]}")
        return c

    def _on_message(self, data: bytes) -> None:
        m = _dec.decode(data)
        rid = m.get("id")
        entry = self.pending.pop(rid, None) if rid is not None else None
        if entry is not None:
            if m.get("type") == "error":
                self.errors[m["code"]] = self.errors.get(m["code"], 0) + 1
            entry[0].set_result((m, time.perf_counter()))

    def send(self, op: dict[str, Any], due: float | None = None) -> asyncio.Future:
        rid = self.next_id
        self.next_id += 1
        op["id"] = rid
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = (fut, due or time.perf_counter())
        assert self.ws is not None
        self.ws.send(_enc.encode(op))
        return fut

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def _bid(kind: str, limit: int, tif: str, hours: int = 1) -> dict[str, Any]:
    return {"op": "bid", "class": CLASS, "kind": kind, "gpus": 1, "hours": hours, "limit": limit, "tif": tif}


async def _client_loop(conn: Conn, stop_at: float, window: int, counts: dict[str, int]) -> None:
    """Closed loop: `window` chains, each bid -> cancel -> bid ..., every 4th an IOC that trades."""

    async def chain(k: int) -> None:
        n = k
        while time.perf_counter() < stop_at:
            n += 1
            if n % 4 == 0:
                m, _ = await conn.send(_bid("on_demand", ASK_PRICE, "IOC"))
                counts["requests"] += 1
                continue
            m, _ = await conn.send(_bid("spot", REST_PRICE, "GTC"))
            counts["requests"] += 1
            if m.get("type") == "ack":
                await conn.send({"op": "cancel", "oid": m["oid"]})
                counts["requests"] += 1

    await asyncio.gather(*(chain(k) for k in range(window)))


async def _open_loop(conns: list[Conn], rate: float, seconds: float) -> list[float]:
    """Request i is due at t0 + i/rate; latency = ack time - due time (ms)."""
    latencies: list[float] = []
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.2
    futs: list[tuple[asyncio.Future, float]] = []
    resting: list[list[int]] = [[] for _ in conns]

    def done(f: asyncio.Future, due: float, ci: int) -> None:
        m, t = f.result()
        latencies.append((t - due) * 1000)
        if m.get("type") == "ack" and m.get("order", {}).get("status") == "open":
            resting[ci].append(m["oid"])

    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ci = i % len(conns)
        c = conns[ci]
        if resting[ci] and i % 2 == 0:
            op: dict[str, Any] = {"op": "cancel", "oid": resting[ci].pop()}
        elif i % 4 == 1:
            op = _bid("on_demand", ASK_PRICE, "IOC")
        else:
            op = _bid("spot", REST_PRICE, "GTC")
        fut = c.send(op, due)
        fut.add_done_callback(lambda f, due=due, ci=ci: done(f, due, ci))
        futs.append((fut, due))
    await asyncio.gather(*(f for f, _ in futs))
    return latencies


def _metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _force_snapshots(http: aiohttp.ClientSession, url: str, admin: Signer, times: list[float]) -> None:
    for at in times:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with http.post(url + "/v1/admin/snapshot", data=b"{}",
                             headers=admin.headers("POST", "/v1/admin/snapshot", b"{}")) as r:
            if r.status != 200:
                raise SystemExit(f"forcing a snapshot failed: {r.status} {await r.text()}")


async def _run(url: str, traders: list[tuple[str, str]], provider: tuple[str, str], args: argparse.Namespace,
               admin: tuple[str, str] | None = None, server_pid: int | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        # seed asks over signed REST: plenty of capacity, so IOC bids trade
        signer = Signer(*provider)
        now = int(time.time())
        for _ in range(args.asks):
            body = _enc.encode({"class": CLASS, "gpus": 10_000, "price": ASK_PRICE,
                                "spot_price": ASK_PRICE // 2, "end": now + 30 * 86400})
            async with http.post(url + "/v1/asks", data=body, headers=signer.headers("POST", "/v1/asks", body)) as r:
                if r.status != 201:
                    raise SystemExit(f"seeding asks failed: {r.status} {await r.text()}")
        host, port = url.split("//", 1)[1].split(":")
        conns = [await Conn.open(host, int(port), key, secret) for key, secret in traders]
        # warm-up; the latency phase (steady 2,000/s on a server that is not still writing back a
        # burst), then saturation
        counts = {"requests": 0}
        await asyncio.gather(*(_client_loop(c, time.perf_counter() + 1.0, 4, counts) for c in conns))
        for c in conns:
            c.errors.clear()
        await asyncio.sleep(0.5)

        async def metrics() -> dict[str, float]:
            async with http.get(url + "/metrics") as r:
                return _metrics(await r.text())

        def cpu() -> float:
            return _proc_cpu_s(server_pid) if server_pid else 0.0

        m0, c0 = await metrics(), cpu()
        start = time.perf_counter() + 0.2
        forced = [start + args.latency_seconds * (k + 1) / (args.snapshots + 1) for k in range(args.snapshots)]
        forcing = asyncio.ensure_future(_force_snapshots(http, url, Signer(*admin), forced) if admin and forced
                                        else asyncio.sleep(0))
        # the clients' own garbage collector paused for the window: its full collections (this
        # process holds every latency and 50 sessions' objects) took up to ~150 ms, and an open
        # loop counts a client's stall against every request it delays (docs/perf/order-path.md §14)
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            lat = sorted(await _open_loop(conns, args.rate, args.latency_seconds))
        finally:
            gc.enable()
            gc.unfreeze()
        await forcing
        m1, c1 = await metrics(), cpu()
        lat_errors: dict[str, int] = {}
        for c in conns:
            for k, v in c.errors.items():
                lat_errors[k] = lat_errors.get(k, 0) + v
            c.errors.clear()
        counts = {"requests": 0}
        t0 = time.perf_counter()
        stop_at = t0 + args.seconds
        if args.seconds > 0:
            await asyncio.gather(*(_client_loop(c, stop_at, args.window, counts) for c in conns))
        elapsed = time.perf_counter() - t0
        sat = counts["requests"] / elapsed if args.seconds > 0 else 0.0
        m2, c2 = await metrics(), cpu()
        errors: dict[str, int] = {}
        for c in conns:
            for k, v in c.errors.items():
                errors[k] = errors.get(k, 0) + v
        async with http.get(url + "/metrics") as r:
            metrics = await r.text()
        for c in conns:
            c.close()
        batches = _metric(metrics, "gpux_batches_total")
        commands = _metric(metrics, "gpux_commands_total")
        return {
            "clients": len(conns), "window": args.window, "seconds": round(elapsed, 2),
            "orders_per_s": round(sat), "saturation_requests": counts["requests"], "saturation_errors": errors,
            "rate": args.rate, "latency_requests": len(lat), "latency_errors": lat_errors,
            "p50_ms": round(_percentile(lat, 0.50), 3), "p99_ms": round(_percentile(lat, 0.99), 3),
            "p999_ms": round(_percentile(lat, 0.999), 3), "max_ms": round(lat[-1], 3) if lat else None,
            "fsync": "batch", "server_batches": batches, "server_commands": commands,
            "mean_batch": round(commands / batches, 1) if batches else None,
            "server_book_s": _metric(metrics, "gpux_book_seconds_total"),
            "server_batch_s": _metric(metrics, "gpux_batch_seconds_total"),
            "server_fsync_wait_s": _metric(metrics, "gpux_fsync_seconds_total"),
            "server_fsync_busy_s": _metric(metrics, "gpux_fsync_busy_seconds_total"),
            "snapshots_forced": len(forced) if admin else 0,
            "snapshots_in_window": int(m1.get("gpux_snapshots_total", 0) - m0.get("gpux_snapshots_total", 0)),
            "snapshot_capture_max_ms": round(m1.get("gpux_snapshot_capture_max_seconds", 0) * 1000, 2),
            "snapshot_write_s": round(m1.get("gpux_snapshot_write_seconds_total", 0)
                                      - m0.get("gpux_snapshot_write_seconds_total", 0), 3),
            "core_cpu_us_per_order": _per(m2, m1, "gpux_batch_cpu_seconds_total", "gpux_commands_total"),
            "core_cpu_us_per_order_latency": _per(m1, m0, "gpux_batch_cpu_seconds_total", "gpux_commands_total"),
            "server_cpu_us_per_request": round((c2 - c1) / counts["requests"] * 1e6, 1)
            if counts["requests"] and server_pid else None,
            "server_cpu_us_per_request_latency": round((c1 - c0) / len(lat) * 1e6, 1) if lat and server_pid else None,
        }


def _per(after: dict[str, float], before: dict[str, float], num: str, den: str) -> float | None:
    """µs of counter ``num`` per unit of counter ``den`` between two /metrics readings."""
    d = after.get(den, 0) - before.get(den, 0)
    return round((after.get(num, 0) - before.get(num, 0)) / d * 1e6, 2) if d else None


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20, help="saturation phase, s (0: none)")
    p.add_argument("--window", type=int, default=16, help="requests in flight per client at saturation")
    p.add_argument("--rate", type=float, default=2000, help="offered rate of the latency phase (requests/s)")
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--snapshots", type=int, default=1,
                   help="snapshots forced inside the latency window, evenly spaced (default 1)")
    p.add_argument("--snapshot-every", type=int, default=60,
                   help="the server's periodic snapshot interval, s (default 60, as in production)")
    p.add_argument("--asks", type=int, default=100)
    p.add_argument("--engine", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="gpux-bench-"))
    try:
        store = AccountStore(data / "accounts.db")
        _, pk, ps = store.create_account("provider", "provider")
        traders = []
        for i in range(args.clients):
            _, k, s = store.create_account(f"trader{i}", "trader", deposit=10**15)
            traders.append((k, s))
        _, ak, asec = store.create_account("bench-admin", "admin")
        store.close()
        port = _free_port()
        cmd = [sys.executable, "-m", "cli.main", "serve", "--data", str(data), "--port", str(port),
               "--log-level", "WARNING"]
        if args.engine:
            cmd += ["--engine", args.engine]
        cfg = data / "bench.toml"
        # the defaults but for the per-key limits: 50 keys at saturation go past 500 requests/s each
        cfg.write_text("[limits]\nrate_per_s = 1000000\nrate_burst = 1000000\nmax_open_orders = 100000\n"
                       f"[journal]\nsnapshot_every_s = {args.snapshot_every}\n")
        cmd += ["--config", str(cfg)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        # a SIGTERM (e.g. from `timeout`) must still stop the server below
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, server)
            result = asyncio.run(_run(url, traders, (pk, ps), args, (ak, asec), server.pid))
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gpux serve exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gpux serve did not become ready")


if __name__ == "__main__":
    sys.exit(main())
