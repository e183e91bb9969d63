"""`gpux demo` as a user runs it (a real process): it starts the exchange, prints the dashboard URL
and keys, the simulated market trades through the API so that trades are visible on the public
feed within 60 seconds, the printed ready-to-paste `gpux bid` line works, it falls back to a free
port when the asked one is taken, stops by itself after --seconds and removes its fresh data
directory.  Plus the small pure helpers of exchange/demo.py."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from demo.live import CLASSES, Market, next_reserved_start
from orderbook.types import HOUR

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 300  # a cold numba cache compiles the book first (about a minute on a small machine)
TRADES_WITHIN_S = 60  # the acceptance: the dashboard shows trades within 60 seconds


class DemoProcess:
    """`python -m cli.main demo ARGS` with its stdout read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "demo", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        for line in self.lines:
            if m := rx.search(line):
                return m
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if m := rx.search(line):
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output so far:\n"
                             + "\n".join(self.lines) + "\nstderr:\n" + "".join(self.err[-30:]))

    def drain(self) -> None:
        while True:
            try:
                line = self._q.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def feed_trades(url: str, timeout: float) -> int:
    """Trades of the demo's classes on the public feed (snapshot + updates), once there are any."""
    ws_url = url.replace("http://", "ws://") + "/v1/feeds"
    seen = 0
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "hello"
        for c in CLASSES:
            await ws.send_json({"op": "subscribe", "channel": "trades", "class": c.name})
        while time.monotonic() < deadline:
            try:
                m = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
            except (TimeoutError, TypeError):
                break
            if m.get("type") == "trades":
                seen += len(m["trades"])
                if seen:
                    return seen
    return seen


async def dashboard_leases(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        total = 0
        for c in CLASSES:
            async with http.get(f"{url}/v1/dashboard/{c.name}") as r:
                assert r.status == 200
                total += (await r.json())["leases"]["open"]
        async with http.get(f"{url}/") as r:
            assert r.status == 200 and "canvas" in await r.text()
        return total


def test_demo_trades_within_a_minute_and_stops_by_itself(tmp_path) -> None:
    # a port that is taken: the demo says so and serves on a free one
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    demo = DemoProcess("--port", str(port), "--seconds", "30", "--every", "5")
    try:
        demo.wait_for(r"^gpux demo — a live GPU-hour market", STARTUP_S)
        t0 = time.monotonic()
        url = demo.wait_for(r"dashboard\s+(http://127\.0\.0\.1:(\d+))/", 10).group(1)
        assert any(f"port {port} is taken" in line for line in demo.lines), demo.lines
        assert not url.endswith(f":{port}")
        data = Path(demo.wait_for(r"^\s+data\s+(\S+)\s+\(fresh", 5).group(1))
        assert data.is_dir()
        demo.wait_for(r"^\s+admin\s+GPUX_KEY=gk_\S+ GPUX_SECRET=\S+", 5)
        demo.wait_for(r"^\s+provider\s+GPUX_KEY=gk_\S+ GPUX_SECRET=\S+", 5)
        env_line = demo.wait_for(r"^\s+(GPUX_URL=\S+ GPUX_KEY=\S+ GPUX_SECRET=\S+) \\$", 5).group(1)
        cmd_line = demo.wait_for(r"^\s+(\S*gpux bid H100 .*)$", 5).group(1)

        trades = asyncio.run(feed_trades(url, TRADES_WITHIN_S - (time.monotonic() - t0)))
        assert trades > 0, "no trades on the public feed within 60 s"
        assert time.monotonic() - t0 < TRADES_WITHIN_S
        assert asyncio.run(dashboard_leases(url)) > 0

        # the ready-to-paste line: GPUX_URL/KEY/SECRET and `gpux bid ...`, run as printed
        env = dict(kv.split("=", 1) for kv in env_line.split())
        assert env["GPUX_URL"] == url
        argv = shlex.split(cmd_line)
        assert argv[0].endswith("gpux")
        run = subprocess.run([sys.executable, "-m", "cli.main", *argv[1:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        assert run.returncode == 0, run.stderr
        ack = json.loads(run.stdout)
        assert ack["ok"] is True and ack["order"]["kind"] == "on_demand"

        # --seconds 30: it stops by itself, prints its tally and removes the fresh data directory
        assert demo.proc.wait(timeout=90) == 0, "".join(demo.err[-30:])
        demo.drain()
        final = [line for line in demo.lines if re.match(r"^\[\s*\d+s\] \d+ trades", line)]
        assert final and int(re.search(r"\] (\d+) trades", final[-1]).group(1)) > 0
        # the providers' reference agents (command backend) provisioned leases (R18)
        ready = re.search(r"provisioned (\d+) ready, (\d+) failed \(of (\d+) handed to agents\)", final[-1])
        assert ready and int(ready.group(1)) > 0, final[-1]
        assert demo.lines[-1] == "gpux demo: stopped"
        assert not data.exists()
    finally:
        demo.stop()
        taken.close()


def test_reserved_start_is_on_the_hour_past_the_gate() -> None:
    for now in (1_767_225_600, 1_767_225_600 + 3599, 1_767_225_600 + 3600 - 330, 1_767_225_600 + 3600 - 329):
        s = next_reserved_start(now)
        assert s % HOUR == 0 and s - now >= 300 + 30 and s - now < 300 + 30 + HOUR


def test_market_prices_stay_plausible() -> None:
    import random

    m = Market(random.Random(1))
    for _ in range(5000):
        m.step()
        for c in CLASSES:
            firm, spot = m.firm(c.name, 1, 1), m.spot(c.name, 1, 1)
            assert 0.7 * c.firm <= firm <= 1.4 * c.firm
            assert spot < firm and firm % 1000 == 0 and spot % 1000 == 0


@pytest.mark.parametrize("args", [("--offline", "--steps", "20"), ("--steps", "20")])
def test_the_removed_offline_run_says_what_to_use_instead(args: tuple[str, ...]) -> None:
    """`gpux demo --offline` (the old run of a command stream through the books alone) is gone:
    asked for, it says so and names `gpux simulate`, and starts nothing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--engine", "reference", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "gpux simulate" in proc.stderr and "dashboard" not in proc.stdout and proc.stdout == ""
