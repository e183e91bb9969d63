"""Market-data fan-out benchmark: messages delivered per second to many WebSocket subscribers,
and delivery latency, at a fixed event rate.

    python -m bench.feeds --subscribers 1000 --json [--rate 100] [--seconds 10] [--procs 2]

The exchange runs in this process (`Exchange`: sequencer, numba books, the feed service and its
recorder, fsync off unless ``--fsync batch``; the fan-out is what is measured).  ``--procs``
subscriber processes (spawned, not forked) open ``--subscribers`` WebSocket connections in all
to ``/v1/feeds`` with a lean raw client (frames parsed by hand, no JSON except on sampled
connections), and each connection subscribes to ``--channels`` (default book, trades, ticker)
of every class (4).  Then a driver in this process posts commands straight to the sequencer
at ``--rate`` commands per second, spread over the classes: IOC bids that trade against
seeded asks, GTC bids that rest below them, cancels of those, and new asks — so nearly every
command changes a book and half of them trade.

After ``--warmup`` seconds, the subscribers count what arrives during ``--seconds``:

* ``messages_per_s`` — WebSocket messages received per second, all subscribers together
  (``data_messages_per_s`` without the once-a-second heartbeats);
* ``latency_ms`` — p50/p99/p999/max from the moment the exchange published a batch on its bus
  (after the journal) to the moment a subscriber process read the trades message carrying the
  batch's first trade, over every trades message of the sampled connections (1 in
  ``--sample``); both ends read the same wall clock;
* ``gaps`` — stream counters (``u``) that skipped on sampled connections (must be 0), and
  ``cut_off`` — subscribers the server disconnected as too slow (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

CLASSES = ("H100", "A100", "L40S", "RTX4090")
_ZERO_MASK = b"\x00\x00\x00\x00"
_HB = b'{"type":"heartbeat"'
_TRADES = b'{"type":"trades"'


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# ---------------------------------------------------------------------- subscriber processes
def _client_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    return head + _ZERO_MASK + payload


class Sub(asyncio.Protocol):
    """One subscriber: counts frames; a sampled one also decodes them (u gaps, trade latency)."""

    def __init__(self, sample: bool, window: list[float], ready: asyncio.Future) -> None:
        self.sample = sample
        self.window = window
        self.ready = ready
        self.buf = bytearray()
        self.upgraded = False
        self.transport: Any = None
        self.count = self.hb = self.nbytes = 0
        self.lat: list[tuple[str, int, float]] = []
        self.last_u: dict[tuple[str, str], int] = {}
        self.gaps = 0
        self.closed_code = None
        self.snapshots = 0
        self.want_snapshots = 0
        self.dec = msgspec.json.Decoder()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"handshake failed: {bytes(buf[:80])!r}")
            del buf[: end + 4]
            self.upgraded = True
        counting = self.window[0] <= now < self.window[1]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            p = pos + 2
            if length == 126:
                if n - p < 2:
                    break
                length = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif length == 127:
                if n - p < 8:
                    break
                length = int.from_bytes(buf[p:p + 8], "big")
                p += 8
            if n - p < length:
                break
            pos = p + length
            op = b0 & 0x0F
            if op == 0x1:
                if counting:
                    self.count += 1
                    self.nbytes += length
                    if buf[p:p + 19] == _HB:
                        self.hb += 1
                if self.sample or not self.ready.done():
                    self._decode(bytes(buf[p:pos]), now, counting)
            elif op == 0x9:
                self.transport.write(bytes((0x8A, 0x80 | length)) + _ZERO_MASK + bytes(buf[p:pos]))
            elif op == 0x8:
                self.closed_code = (buf[p] << 8 | buf[p + 1]) if length >= 2 else 1005
        if pos:
            del buf[:pos]

    def _decode(self, payload: bytes, now: float, counting: bool) -> None:
        m = self.dec.decode(payload)
        t = m.get("type")
        if t == "heartbeat":
            for stream, u in m["u"].items():
                key = (m["class"], stream)
                if key in self.last_u and self.last_u[key] != u:
                    self.gaps += 1
        elif "u" in m and "class" in m:
            key = (m["class"], t if t != "candles" else f"candles:{m['interval']}")
            if m.get("action") == "snapshot":
                self.last_u[key] = m["u"]
                self.snapshots += 1
                if self.snapshots == self.want_snapshots and not self.ready.done():
                    self.ready.set_result(True)
            else:
                if self.last_u.get(key, m["u"] - 1) != m["u"] - 1:
                    self.gaps += 1
                self.last_u[key] = m["u"]
                if t == "trades" and counting and m["trades"]:
                    self.lat.append((m["class"], m["trades"][0]["seq"], now))


async def _subscribers(port: int, n: int, first: int, sample_every: int, channels: list[str],
                       window: list[float], conn: Any) -> None:
    loop = asyncio.get_running_loop()
    subs: list[Sub] = []
    for i in range(n):
        ready = loop.create_future()
        _, s = await loop.create_connection(lambda r=ready, k=i: Sub((first + k) % sample_every == 0, window, r),
                                            "127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        s.transport.write(f"GET /v1/feeds HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        ops = []
        for c in CLASSES:
            for ch in channels:
                op: dict[str, Any] = {"op": "subscribe", "channel": ch.split(":")[0], "class": c}
                if ch.startswith("candles"):
                    op["interval"] = ch.split(":")[1] if ":" in ch else "1m"
                ops.append(_client_frame(msgspec.json.encode(op)))
        s.want_snapshots = len(ops)
        s.transport.write(b"".join(ops))
        subs.append(s)
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*(s.ready for s in subs)), 120)
    conn.send(("ready", len(subs)))
    window[:] = await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # the window, wall clock
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, window[1] - time.time()) + 0.5)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("done", {
        "count": sum(s.count for s in subs), "heartbeats": sum(s.hb for s in subs),
        "bytes": sum(s.nbytes for s in subs), "lat": [x for s in subs for x in s.lat],
        "gaps": sum(s.gaps for s in subs), "closed": sum(1 for s in subs if s.closed_code is not None),
        "sampled": sum(1 for s in subs if s.sample),
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)}))
    for s in subs:
        s.transport.abort()


def _child(port: int, n: int, first: int, sample_every: int, channels: list[str], conn: Any) -> None:
    window = [float("inf"), float("inf")]
    asyncio.run(_subscribers(port, n, first, sample_every, channels, window, conn))


# ---------------------------------------------------------------------- the exchange and the driver
class Driver:
    """Posts commands to the sequencer at a fixed rate."""

    def __init__(self, x: Any, rate: float, seed: int = 1) -> None:
        self.x = x
        self.rate = rate
        self.rng = np.random.default_rng(seed)
        self.resting: dict[str, deque[tuple[int, int]]] = {c: deque() for c in CLASSES}
        self.sent = 0
        self.answered = 0

    def seed_asks(self) -> None:
        from exchange.entries import Fund
        from exchange.sequencer import Request
        from orderbook.types import CMD_ASK, Command

        seq = self.x.sequencer
        for acc in range(100, 200):  # the traders' escrow (R17): journaled deposits
            seq.post(Request("", None, acc, fund=Fund("deposit", acc, 10**15, f"bench-feeds:{acc}", 0)))
        for c in CLASSES:
            now = seq.times[c]
            for k in range(40):
                price = 2_000_000 + 10_000 * (k % 20)
                rec = Command(type=CMD_ASK, account=1 + k % 5, price=price, spot_price=price // 2 // 1000 * 1000,
                              gpus=4_000, end=now + 7 * 86_400)
                seq.post(Request(c, rec, 1 + k % 5, reply=lambda _a: None))

    def one(self) -> None:
        from exchange.sequencer import Request
        from orderbook.types import CMD_ASK, CMD_BID, CMD_CANCEL, GTC, IOC, ON_DEMAND, SPOT, Command

        rng = self.rng
        c = CLASSES[int(rng.integers(0, len(CLASSES)))]
        r = rng.random()
        seq = self.x.sequencer
        acc = 100 + int(rng.integers(0, 100))
        reply = None
        if r < 0.5:  # trades: an IOC bid at or above the cheapest asks
            kind = SPOT if rng.random() < 0.3 else ON_DEMAND
            limit = 2_100_000 if kind == ON_DEMAND else 1_100_000
            rec = Command(type=CMD_BID, account=acc, price=limit, gpus=int(rng.integers(1, 9)), hours=1, kind=kind,
                          tif=IOC)
        elif r < 0.75 or not self.resting[c]:  # rests below every ask: a bid level changes
            price = 1_000_000 + 1000 * int(rng.integers(0, 500))
            rec = Command(type=CMD_BID, account=acc, price=price, gpus=int(rng.integers(1, 9)), hours=1,
                          kind=ON_DEMAND, tif=GTC)
            q = self.resting[c]

            def reply(ans: Any, q: deque = q) -> None:
                if isinstance(ans, dict) and ans.get("ok") and ans.get("order", {}).get("status") == "open":
                    q.append((ans["oid"], ans["order"]["account"]))
        elif r < 0.95:
            oid, acc = self.resting[c].popleft()
            rec = Command(type=CMD_CANCEL, account=acc, oid=oid)
        else:
            now = seq.times[c]
            price = 2_000_000 + 1000 * int(rng.integers(0, 400))
            rec = Command(type=CMD_ASK, account=1, price=price, gpus=int(rng.integers(1, 64)), end=now + 86_400)
            acc = 1
        seq.post(Request(c, rec, acc, reply=reply or (lambda _a: None)))
        self.sent += 1

    async def run(self, until: float) -> None:
        t0 = time.perf_counter()
        n = 0
        while time.time() < until:
            due = int((time.perf_counter() - t0) * self.rate)
            while n < due:
                self.one()
                n += 1
            await asyncio.sleep(0.002)


async def _bench(a: argparse.Namespace) -> dict[str, Any]:
    from app.exchange import Exchange
    from exchange.config import ServerConfig

    data = Path(tempfile.mkdtemp(prefix="gpux-bench-feeds-"))
    cfg = ServerConfig(data_dir=str(data), port=0, fsync=a.fsync, engine=a.engine, snapshot_every_s=3600)
    x = Exchange(cfg)
    await x.start()
    port = await x.serve("127.0.0.1", 0, backlog=4096)
    sys.setswitchinterval(0.0002)
    published: dict[str, tuple[list[int], list[float]]] = {c: ([], []) for c in CLASSES}

    def on_batch(batch: Any) -> None:
        t = time.time()
        for name, ev in batch.events.items():
            seqs, ts = published[name]
            seqs.append(int(ev["seq"][-1]))
            ts.append(t)

    x.bus.subscribe(on_batch)
    driver = Driver(x, a.rate)
    driver.seed_asks()
    ctx = mp.get_context("spawn")
    per = [a.subscribers // a.procs + (1 if i < a.subscribers % a.procs else 0) for i in range(a.procs)]
    pipes, procs = [], []
    first = 0
    for n in per:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child, args=(port, n, first, a.sample, a.channels, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
        first += n
    loop = asyncio.get_running_loop()
    t_connect = time.perf_counter()
    for pp in pipes:
        msg = await loop.run_in_executor(None, pp.recv)
        assert msg[0] == "ready", msg
    connect_s = time.perf_counter() - t_connect
    hub = x.feeds.hub
    t_start = time.time() + a.warmup
    t_end = t_start + a.seconds
    for pp in pipes:
        pp.send([t_start, t_end])
    stats0 = dict(hub.stats)
    drive = asyncio.create_task(driver.run(t_end + 0.2))
    await asyncio.sleep(max(0.0, t_start - time.time()))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    sent0, rounds_s0, st0 = driver.sent, x.feeds.rounds, dict(hub.stats)
    ev0 = sum(len(published[c][0]) for c in CLASSES)
    await asyncio.sleep(max(0.0, t_end - time.time()))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    sent1, rounds_s1, st1 = driver.sent, x.feeds.rounds, dict(hub.stats)
    ev1 = sum(len(published[c][0]) for c in CLASSES)
    await drive
    results = [await loop.run_in_executor(None, pp.recv) for pp in pipes]
    for p in procs:
        p.join(10)
    res = [r[1] for r in results]
    lat = []
    for cls, seq, t in (x for r in res for x in r["lat"]):
        seqs, ts = published[cls]
        i = bisect.bisect_left(seqs, seq)
        if i < len(seqs):
            lat.append((t - ts[i]) * 1000)
    lat.sort()
    secs = a.seconds
    count = sum(r["count"] for r in res)
    hb = sum(r["heartbeats"] for r in res)
    out = {
        "subscribers": a.subscribers,
        "procs": a.procs,
        "classes": len(CLASSES),
        "channels": a.channels,
        "streams_per_subscriber": len(CLASSES) * len(a.channels),
        "rate_cmds_per_s": a.rate,
        "commands_per_s": round((sent1 - sent0) / secs, 1),
        "batches_with_events_per_s": round((ev1 - ev0) / secs, 1),
        "fanout_rounds_per_s": round((rounds_s1 - rounds_s0) / secs, 1),
        "messages_per_s": round(count / secs),
        "data_messages_per_s": round((count - hb) / secs),
        "heartbeats_per_s": round(hb / secs),
        "mbytes_per_s": round(sum(r["bytes"] for r in res) / secs / 1e6, 2),
        "server_messages_queued_per_s": round((st1["messages"] - st0["messages"]) / secs),
        "server_frames_encoded_per_s": round((st1["frames"] - st0["frames"]) / secs),
        "latency_ms": {"p50": round(_percentile(lat, 0.5), 2), "p99": round(_percentile(lat, 0.99), 2),
                       "p999": round(_percentile(lat, 0.999), 2), "max": round(lat[-1], 2) if lat else None},
        "latency_samples": len(lat),
        "sampled_subscribers": sum(r["sampled"] for r in res),
        "gaps": sum(r["gaps"] for r in res),
        "cut_off": hub.stats["cut_off"] - stats0["cut_off"],
        "closed_by_server": sum(r["closed"] for r in res),
        "server_cpu_s_per_s": round(((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / secs, 3),
        "subscriber_cpu_s_per_s": round(sum(r["cpu_s"] for r in res) / secs, 3),
        "connect_and_subscribe_s": round(connect_s, 2),
        "fsync": a.fsync,
        "engine": x.engine.engine,
        "target_messages_per_s": 150_000,
    }
    await x.close()
    shutil.rmtree(data, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feeds", description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2, help="subscriber processes (default 2)")
    p.add_argument("--rate", type=float, default=100.0, help="commands per second (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (default 10)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--channels", type=lambda s: s.split(","), default=["book", "trades", "ticker"],
                   help="comma-separated: book,trades,ticker,candles:1m,candles:1h,index (default book,trades,ticker)")
    p.add_argument("--sample", type=int, default=20, help="1 in N subscribers decodes every message (default 20)")
    p.add_argument("--fsync", default="off", choices=["off", "batch"])
    p.add_argument("--engine", default="numba", choices=["numba", "reference"])
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = asyncio.run(_bench(a))
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32} {v}")
    return 0 if out["gaps"] == 0 and out["cut_off"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
