"""Connection hygiene (gateway/guard.py), on a real server with raw sockets: a request head sent a
byte at a time is cut off after the header timeout, a declared body that never arrives gets 408
after the body timeout, one address cannot hold more than its share of connections, and garbage
is counted and logged in one line without a traceback.  (The limits are lowered for the test.)"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from app.exchange import METRICS
from tests.exchange_helpers import run, running_exchange


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes; how long that took and what it sent."""
    t0 = time.monotonic()
    data = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(4096), seconds)
        if not chunk:
            return time.monotonic() - t0, data
        data += chunk


def _port(x) -> int:
    return int(x.url.rsplit(":", 1)[1])


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            x.exchange.guard.header_timeout_s = 0.5
            reader, writer = await _open(_port(x))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

            async def trickle() -> None:
                for _ in range(40):
                    await asyncio.sleep(0.1)
                    if writer.is_closing():
                        return
                    writer.write(b"X")

            feeder = asyncio.create_task(trickle())
            took, _ = await _closed_within(reader, 5)
            feeder.cancel()
            assert took < 2.0
            assert x.exchange.guard.counts["header_timeout"] == 1
            r2, w2 = await _open(_port(x))  # a request that completes is served as before
            w2.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            _, data = await _closed_within(r2, 5)
            assert data.startswith(b"HTTP/1.1 200")
            writer.close()

    run(scenario())


def test_a_declared_body_that_never_arrives_gets_408(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            x.exchange.guard.body_timeout_s = 0.5
            reader, writer = await _open(_port(x))
            writer.write(b"POST /v1/admin/deposit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000\r\n\r\n{\"")
            took, data = await _closed_within(reader, 5)
            assert took < 2.5
            assert data.startswith(b"HTTP/1.1 408") and b"REQUEST_TIMEOUT" in data
            assert x.exchange.guard.counts["body_timeout"] == 1

    run(scenario())


def test_one_address_cannot_hold_more_than_its_share_of_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            x.exchange.guard.max_per_address = 5
            x.exchange.guard.cap_loopback = True  # (the test's clients are all on loopback)
            held = [await _open(_port(x)) for _ in range(5)]
            await asyncio.sleep(0.05)
            reader, _ = await _open(_port(x))
            _, data = await _closed_within(reader, 5)
            assert data.startswith(b"HTTP/1.1 503") and b"UNAVAILABLE" in data
            for _, w in held[:2]:
                w.close()
            await asyncio.sleep(0.1)
            r, w = await _open(_port(x))
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            _, data = await _closed_within(r, 5)
            assert data.startswith(b"HTTP/1.1 200")
            assert x.exchange.guard.counts["over_cap"] == 1
            for _, w in held[2:]:
                w.close()

    run(scenario())


def test_garbage_is_counted_and_logged_in_one_line_without_a_traceback(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            for _ in range(20):
                reader, writer = await _open(_port(x))
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
                _, data = await _closed_within(reader, 5)
                assert b" 400 " in data.split(b"\r\n")[0]
            assert sum(x.exchange.guard.malformed.values()) == 20
            assert 'gpux_malformed_requests_total{kind="' in x.exchange.app[METRICS].render()

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    malformed = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(malformed) == 1  # one line per kind per LOG_EVERY_S
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("aiohttp")]


def test_idle_replay_connections_cannot_hold_every_replay_slot(tmp_path: Path, monkeypatch) -> None:
    """One replay per address at once, and a replay that subscribes to nothing gives its slot back."""
    import aiohttp

    from feeds import replay

    monkeypatch.setattr(replay, "SUBSCRIBE_TIMEOUT_S", 0.5)

    async def scenario() -> None:
        async with running_exchange(tmp_path / "d") as x:
            url = x.url.replace("http://", "ws://") + "/v1/replay"
            async with aiohttp.ClientSession() as http:
                idle = await http.ws_connect(url)
                await idle.receive_json(timeout=5)  # hello
                handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
                async with http.get(x.url + "/v1/replay", headers=handshake) as r:  # a second one, same address
                    assert r.status == 503 and (await r.json())["error"]["code"] == "UNAVAILABLE"
                msg = await idle.receive(timeout=5)  # closed for idling
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert idle.close_code == 1008
                await asyncio.sleep(0.1)
                again = await http.ws_connect(url)  # the slot is free again
                assert "replay" in await again.receive_json(timeout=5)
                await again.close()

    run(scenario())
