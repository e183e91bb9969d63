"""The first hour of a new user (issue 18): nothing hangs, every failure is one line that says
what to do, prices are written as a person writes them.

Real servers on free loopback ports, the CLI as real subprocesses.  The only time limits are
generous ones that turn a hang into a failure (HANG_S), never a measure of speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cli.main import build_parser
from client.api import Client, ClientError
from gateway.explain import usd
from tests.exchange_helpers import USD, running_exchange

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 60  # a command that has not ended by then hangs


async def gpux(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `gpux ARGS` (python -m cli.main) with ``env`` over os.environ minus GPUX_*; a hang fails."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPUX_")}
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli.main", *args, env={**base, **env},
                                             cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(p.communicate(), HANG_S)
    except TimeoutError:
        p.kill()
        await p.wait()
        pytest.fail(f"gpux {' '.join(args)} hung for {HANG_S} s")
    return p.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpux: error: "), err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- bad values: no hang
BAD_BIDS = [
    # (flag, value, the words the one line must hold: the field and its bounds or the unit)
    ("--gpus", "0", ["BAD_GPUS", "gpus", "between 1 and"]),
    ("--hours", "0", ["BAD_HOURS", "hours", "between 1 and"]),
    ("--limit", "0", ["BAD_PRICE", "limit", "µ$ per GPU-hour", "tick", "{lo} to {hi}", "{tick} µ$"]),
    ("--limit", "0.000002", ["BAD_PRICE", "limit", "µ$ per GPU-hour", "tick"]),
    ("--limit", "2100000", ["BAD_PRICE", "limit", "{hi}", "dollars per GPU-hour"]),  # µ$ written as dollars
    ("--limit", "2.0005", ["OFF_TICK", "limit", "tick", "{tick} µ$"]),
    ("--limit", "2.10.5", ["--limit", "dollars per GPU-hour", "H100 prices are {lo} to {hi}", "steps of {tick_usd}"]),
    ("--limit", "2.1234567", ["--limit", "6 decimals", "µ$", "H100 prices are"]),
    ("--block", "0", ["BAD_BLOCK", "block", "divide gpus"]),
]


def test_cli_bid_with_a_bad_value_exits_with_one_line_naming_the_field(tmp_path):
    """`gpux bid` with each bad value of the report exits non-zero (it used to wait for ever) and
    prints one line naming the field, its bounds, the unit; nothing was ordered."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            _, key, secret = ex.account("alice", "trader", 1000 * USD)
            env = {"GPUX_URL": ex.url, "GPUX_KEY": key, "GPUX_SECRET": secret}
            good = {"--kind": "on_demand", "--gpus": "4", "--hours": "2", "--limit": "2.10"}
            cfg = ex.exchange.cfg.instruments["H100"].book
            bounds = {"lo": usd(cfg.min_price), "hi": usd(cfg.max_price), "tick": cfg.tick, "tick_usd": usd(cfg.tick)}
            for flag, value, words in BAD_BIDS:
                argv = ["bid", "H100"]
                for f, v in {**good, flag: value}.items():
                    argv += [f, v]
                rc, out, err = await gpux(env, *argv)
                assert rc != 0 and out == "", (flag, value, out, err)
                line = one_line(err)
                for w in words:
                    assert w.format(**bounds) in line, (flag, value, w, line)
            assert list(ex.exchange.engine.state.open_orders(ex.keys["alice"][0])) == []

    asyncio.run(scenario())


def test_sdk_raises_on_bad_values_and_every_error_carries_the_id(tmp_path):
    """The SDK raises at once with the book's code (gpus=0 used to wait for ever); a message the
    server cannot decode is answered with its id whenever the id can be read."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            alice = ex.client("alice", "trader", 1000 * USD)
            async with await alice.trader() as session:
                for kw, code in ((dict(gpus=0), "BAD_GPUS"), (dict(hours=0), "BAD_HOURS"),
                                 (dict(limit=0), "BAD_PRICE"), (dict(block=0), "BAD_BLOCK"),
                                 (dict(gpus=-3), "BAD_GPUS"), (dict(limit=2), "BAD_PRICE")):
                    args = {"gpus": 4, "hours": 2, "limit": 2_100_000, **kw}
                    with pytest.raises(ClientError) as e:
                        await asyncio.wait_for(session.bid("H100", "on_demand", **args), HANG_S)
                    assert e.value.code == code, (kw, e.value)
                    field = next(iter(kw))
                    assert e.value.message.startswith(field), e.value.message
                # undecodable, but the id is readable: it comes back with the answer
                ws = session.ws
                for raw, rid in (('{"op": "bid", "id": 41, "class": "H100", "gpus": "four"}', 41),
                                 ('{"op": "teleport", "id": "t-1"}', "t-1"),
                                 ('{"id": 43}', 43)):
                    fut = asyncio.get_running_loop().create_future()
                    session._pending[rid] = fut
                    await ws.send_str(raw)
                    answer = await asyncio.wait_for(fut, HANG_S)
                    assert answer["type"] == "error" and answer["code"] == "MALFORMED" and answer["id"] == rid
            # the market-data socket too
            async with aiohttp.ClientSession() as http, http.ws_connect(ex.url + "/v1/feeds") as feed:
                await feed.send_str('{"op": "subscribe", "id": 7, "channel": 42}')
                while (m := await asyncio.wait_for(feed.receive_json(), HANG_S)).get("type") != "error":
                    pass
                assert m["code"] == "MALFORMED" and m["id"] == 7

    asyncio.run(scenario())


async def _fake_exchange(behaviour: str) -> tuple[web.AppRunner, str]:
    """A WebSocket endpoint that authenticates anyone, then for every request: answers an error
    without an id ("no-id"), says nothing ("silent"), or closes the connection ("close")."""

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.send_json({"type": "authenticated", "account": 1, "role": "trader"})
        async for _msg in ws:
            if behaviour == "no-id":
                await ws.send_json({"type": "error", "id": None, "code": "MALFORMED", "message": "what?"})
            elif behaviour == "close":
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize("behaviour, code", [("no-id", "MALFORMED"), ("silent", "TIMEOUT"), ("close", "CLOSED")])
def test_sdk_never_waits_for_ever(behaviour, code):
    """An error without an id, a closed socket or a timeout becomes a ClientError."""

    async def scenario():
        runner, url = await _fake_exchange(behaviour)
        try:
            async with Client(url, "gk_x", "secret", timeout=2) as c, await c.trader() as session:
                with pytest.raises(ClientError) as e:
                    await asyncio.wait_for(session.bid("H100", "on_demand", gpus=1, hours=1, limit=2_000_000),
                                           HANG_S)
                assert e.value.code == code
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- failures a user can cause
def test_serve_on_a_busy_port_says_so_and_creates_nothing(tmp_path):
    async def scenario():
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            data = tmp_path / "data"
            rc, _, err = await gpux({}, "serve", "--port", str(port), "--data", str(data), "--fsync", "off")
            assert rc != 0
            line = one_line(err)
            assert f"port {port}" in line and "in use" in line and "--port" in line
            assert not data.exists()

    asyncio.run(scenario())


def test_a_second_server_on_the_same_data_directory_says_so(tmp_path):
    async def scenario():
        data = tmp_path / "data"
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "serve", "--port", "0", "--data", str(data), "--fsync", "off",
            "--log-level", "WARNING", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            line = await asyncio.wait_for(first.stdout.readline(), HANG_S)
            assert b"serving on" in line, line
            rc, _, err = await gpux({}, "serve", "--port", "0", "--data", str(data), "--fsync", "off")
            assert rc != 0
            out = one_line(err)
            assert str(data) in out and "in use by another gpux serve" in out and "--data" in out
            url = line.decode().split()[3]  # "gpux: serving on http://127.0.0.1:PORT  (data: ...)"
            async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                assert r.status == 200  # the first one serves on, untouched
        finally:
            first.terminate()
            await asyncio.wait_for(first.wait(), HANG_S)
        assert first.returncode == 0

    asyncio.run(scenario())


def test_client_failures_are_one_line(tmp_path):
    """A URL without http://, nothing listening, no key, an unknown class: one line each that says
    what to do, exit non-zero."""

    async def scenario():
        port = free_port()
        rc, _, err = await gpux({"GPUX_URL": f"127.0.0.1:{port}", "GPUX_KEY": "k", "GPUX_SECRET": "s"}, "orders")
        line = one_line(err)
        assert rc == 2 and f"http://127.0.0.1:{port}" in line and "GPUX_URL" in line
        rc, _, err = await gpux({"GPUX_URL": f"http://127.0.0.1:{port}", "GPUX_KEY": "k", "GPUX_SECRET": "s"},
                                "orders")
        line = one_line(err)
        assert rc == 1 and "cannot reach the exchange" in line and "gpux serve" in line
        async with running_exchange(tmp_path, fsync="off") as ex:
            rc, _, err = await gpux({"GPUX_URL": ex.url}, "orders")
            line = one_line(err)
            assert rc == 2 and "GPUX_KEY" in line and "gpux accounts create" in line
            _, key, secret = ex.account("alice", "trader", 1000 * USD)
            env = {"GPUX_URL": ex.url, "GPUX_KEY": key, "GPUX_SECRET": secret}
            rc, _, err = await gpux(env, "bid", "Z80", "--kind", "spot", "--gpus", "1", "--hours", "1",
                                    "--limit", "1.00")
            line = one_line(err)
            assert rc == 1 and "UNKNOWN_CLASS" in line and "H100" in line
            rc, _, err = await gpux(env, "release", "H100")
            assert rc == 2 and "CLASS-TRADE_ID" in one_line(err)

    asyncio.run(scenario())


def test_release_ends_a_lease(tmp_path):
    """`gpux release CLASS-TRADE_ID`: the on-demand lease ends now (R16)."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            prov = ex.client("prov", "provider")
            await prov.ask("H100", gpus=8, price=2_000_000, end=ex.now + 86_400)
            _, key, secret = ex.account("alice", "trader", 1000 * USD)
            env = {"GPUX_URL": ex.url, "GPUX_KEY": key, "GPUX_SECRET": secret}
            rc, out, err = await gpux(env, "bid", "H100", "--kind", "on_demand", "--gpus", "2", "--hours", "3",
                                      "--limit", "$2.00/h")
            assert rc == 0, err
            lease = json.loads(out)["trades"][0]["lease"]
            rc, out, err = await gpux(env, "release", lease)
            assert rc == 0, err
            assert json.loads(out)["ok"]
            rc, out, _ = await gpux(env, "leases")
            (mine,) = json.loads(out)
            assert mine["lease"] == lease and mine["status"] in ("released", "released_pending")

    asyncio.run(scenario())


def test_every_option_of_every_command_has_a_description():
    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "gpux") == []


def test_agent_start_prints_no_deprecation_warnings():
    """Importing the agent's ssh backend (asyncssh, cryptography) prints nothing on stderr."""
    p = subprocess.run([sys.executable, "-c", "import agent.ssh, agent.agent, demo.live"], cwd=ROOT,
                       capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0 and p.stderr == "", p.stderr
