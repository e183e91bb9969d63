"""The WebSocket send buffer and its one slow-client policy (`gateway.sendbuffer`), used alike by
the trader sessions (`/v1/ws`, 8 MiB) and the market-data subscribers (`/v1/feeds`, 4 MiB).

Unit tests on a fake transport and a `SimClock`, then the same live scenario for both kinds of
connection: clients that stop reading are cut off with close code 1008 and a reason naming the
bytes unsent and the limit, one that reads again gets the close frame, one that never does is
aborted at the end of the grace period, and the exchange keeps serving the others.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any

import pytest

from bench.wsclient import WsConn
from bench.wsclient import connect as raw_connect
from exchange.clock import SimClock
from gateway.auth import RateLimiter, Signer
from gateway.sendbuffer import SendBuffer, Sender, close_frame, ws_frame
from tests.exchange_helpers import run, running_exchange

REASON = re.compile(rb"\x88[\x00-\x7d]\x03\xf0(slow consumer: (\d+) bytes unsent, the limit is (\d+))")


class FakeTransport:
    """Keeps everything written (nobody reads): the write buffer only grows."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes))

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class FakeWs:
    closed = False


def test_ws_frame_and_close_frame() -> None:
    assert ws_frame(b"") == b"\x81\x00"
    assert ws_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert ws_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert ws_frame(b"x" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert ws_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert len(ws_frame(b"x" * 65536)) == 65536 + 10
    assert close_frame(1008, "why") == b"\x88\x05\x03\xf0why"
    long = close_frame(1008, "r" * 500)  # a control frame carries at most 125 bytes
    assert long[1] == 125 and len(long) == 127


def test_one_write_per_connection_per_turn_in_order() -> None:
    async def go() -> None:
        sender = Sender(1 << 20, clock=SimClock(0))
        a, b = FakeTransport(), FakeTransport()
        ba, bb = SendBuffer(sender, FakeWs(), a), SendBuffer(sender, None, b)
        ba.push(b"1")
        sender.push_all([ba, bb], b"2")
        bb.push(b"3")
        ba.push(b"4")
        assert a.writes == [] and b.writes == []  # nothing before the loop turns
        await asyncio.sleep(0)
        assert a.writes == [b"124"] and b.writes == [b"23"]
        assert ba.sent == 3 and not ba.out and not ba.dirty
        ba.push(b"5")
        await asyncio.sleep(0)
        assert a.writes == [b"124", b"5"] and b.writes == [b"23"]

    run(go())


def test_a_connection_past_its_limit_is_cut_off_then_aborted_after_the_grace() -> None:
    async def go() -> None:
        clock = SimClock(1000.0)
        stats: dict[str, int] = {}
        cut: list[SendBuffer] = []
        sender = Sender(100, 5.0, clock, stats=stats, stat="cut_off_total", on_cut=cut.append)
        slow, fine = FakeTransport(), FakeTransport()
        bs, bf = SendBuffer(sender, FakeWs(), slow, "10.0.0.1"), SendBuffer(sender, FakeWs(), fine)
        sender.push_all([bs, bf], b"x" * 60)
        await asyncio.sleep(0)
        assert stats == {} and not bs.closed
        bs.push(b"y" * 60)
        bf.push(b"z")
        await asyncio.sleep(0)
        # the write that passed the limit, then the close frame with the reason, and nothing more
        assert slow.writes[:2] == [b"x" * 60, b"y" * 60]
        assert slow.writes[2] == close_frame(1008, "slow consumer: 120 bytes unsent, the limit is 100")
        assert bs.closed and cut == [bs] and stats == {"cut_off_total": 1}
        bs.push(b"more")
        sender.push_all([bs, bf], b"w")
        await asyncio.sleep(0)
        assert len(slow.writes) == 3 and not bs.out
        assert fine.writes == [b"x" * 60, b"z", b"w"]  # the other one is served as before
        sender.cut(bs, "again")  # once only
        assert stats == {"cut_off_total": 1}
        await clock.advance(4.9)
        assert not slow.aborted
        await clock.advance(0.2)
        assert slow.aborted and not fine.aborted

    run(go())


def test_nothing_is_written_once_the_websocket_is_closed_and_cut_ones_abort_at_shutdown() -> None:
    async def go() -> None:
        clock = SimClock(0)
        sender = Sender(10, 60.0, clock)
        t, ws = FakeTransport(), FakeWs()
        b = SendBuffer(sender, ws, t)
        ws.closed = True  # aiohttp sent its close frame: no data frame may follow it
        b.push(b"late")
        await asyncio.sleep(0)
        assert t.writes == [] and not b.out
        t2 = FakeTransport()
        b2 = SendBuffer(sender, FakeWs(), t2)
        b2.push(b"x" * 20)
        await asyncio.sleep(0)
        assert b2.closed and not t2.aborted
        sender.abort_cut()  # at shutdown: no waiting for the grace
        assert t2.aborted

    run(go())


# ---------------------------------------------------------------------- live, both kinds
LIMIT = 64 * 1024
GRACE_S = 30.0


async def _until(cond: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Client:
    """A raw WebSocket client (bench.wsclient) that keeps the text messages and the last bytes."""

    def __init__(self, conn: WsConn, got: list[dict], tail: bytearray) -> None:
        self.conn, self.got, self.tail = conn, got, tail

    @classmethod
    async def open(cls, port: int, path: str) -> Client:
        got: list[dict] = []
        tail = bytearray()
        conn = await raw_connect("127.0.0.1", port, path, lambda m: got.append(json.loads(m)))
        received = conn.data_received

        def data_received(data: bytes) -> None:
            tail.extend(data)
            del tail[:-4096]
            received(data)

        conn.data_received = data_received  # type: ignore[method-assign]
        return cls(conn, got, tail)

    def send(self, msg: dict) -> None:
        self.conn.send(json.dumps(msg).encode())

    @property
    def transport(self) -> Any:
        assert self.conn.transport is not None
        return self.conn.transport

    def stop_reading(self) -> None:
        self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pause_reading()

    async def ping(self) -> None:
        n = len(self.got)
        self.send({"op": "ping", "id": "p"})
        await _until(lambda: any(m.get("type") == "pong" for m in self.got[n:]), "a pong")


@pytest.mark.parametrize("kind", ["trader session", "feed subscriber"])
def test_a_client_that_stops_reading_is_cut_off_alike_on_both_websockets(tmp_path, kind: str) -> None:
    """Three clients of one kind; two stop reading and keep sending pings.  Each is cut off
    with 1008 and the reason once its unsent bytes pass the limit (its connection's buffer
    holds nothing more), counted once; the one that reads again gets the close frame after
    what was sent before the cut; the one that never reads is aborted when the grace period
    ends on the exchange's clock; the third is served throughout."""

    async def go() -> None:
        clock = SimClock(float(int(time.time())))
        async with running_exchange(tmp_path, clock=clock, fsync="off", rate_per_s=1e6, rate_burst=10**6) as ex:
            x = ex.exchange
            port = int(ex.url.rsplit(":", 1)[1])
            if kind == "trader session":
                path, sender, stat = "/v1/ws", x.gateway.sends, "ws_cut_off_total"
                assert sender.limit == 8 << 20  # the sessions' own limit
                buffers: Any = x.gateway.all_sessions
                counters: Any = x.gateway.metrics
                assert counters[stat] == 0  # on /metrics before any cut
            else:
                path, sender, stat = "/v1/feeds", x.feeds.hub.sends, "cut_off"
                hub = x.feeds.hub
                assert hub.max_buffer == 4 << 20  # the subscribers' own limit
                hub.ops = RateLimiter(1e6, 10**6, clock=clock.monotonic)  # pings as fast as we like
                buffers = hub.conns
                counters = hub.stats
            sender.limit = LIMIT
            sender.grace_s = GRACE_S

            clients = []
            for i in range(3):
                c = await Client.open(port, path)
                if kind == "trader session":
                    _, key, secret = ex.account(f"t{i}", "trader")
                    c.send(Signer(key, secret).ws_auth())
                    await _until(lambda c=c: any(m.get("type") == "authenticated" for m in c.got), "auth")
                else:
                    await _until(lambda c=c: any(m.get("type") == "hello" for m in c.got), "hello")
                clients.append(c)
            slow, never, other = clients

            def server_side(c: Client) -> SendBuffer:
                port = c.transport.get_extra_info("sockname")[1]
                return next(b for b in buffers if b.transport.get_extra_info("peername")[1] == port)

            bslow, bnever = server_side(slow), server_side(never)
            for c, b in ((slow, bslow), (never, bnever)):
                c.stop_reading()
                b.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

            deadline = time.monotonic() + 30
            while not (bslow.closed and bnever.closed):
                assert time.monotonic() < deadline, "the clients that do not read were not cut off"
                for c in (slow, never):
                    for _ in range(200):
                        c.send({"op": "ping"})
                await asyncio.sleep(0.01)
            assert counters[stat] == 2
            for b in (bslow, bnever):
                assert b.closed and not b.out  # nothing more is queued for it
                assert b.transport.get_write_buffer_size() <= LIMIT + 64 * 1024
            await other.ping()  # the exchange keeps serving the others

            # the one that reads again: what was sent before the cut, then 1008 and the reason
            slow.transport.resume_reading()
            assert await asyncio.wait_for(slow.conn.closed, 10) == 1008
            m = REASON.search(bytes(slow.tail))
            assert m is not None, bytes(slow.tail[-200:])
            assert int(m.group(2)) > LIMIT and int(m.group(3)) == LIMIT
            assert slow.got and all(g.get("type") in ("pong", "authenticated", "hello") for g in slow.got)
            await _until(lambda: bslow not in buffers, "the connection that read its close frame to go")

            # the one that never reads is aborted when the grace period ends, on the exchange's clock
            await asyncio.sleep(0.2)
            assert bnever in buffers and not bnever.transport.is_closing()
            await clock.advance(GRACE_S + 1)
            await _until(lambda: bnever not in buffers, "the aborted connection to go")
            await other.ping()
            assert counters[stat] == 2
            for c in clients:
                c.conn.close()

    run(go())
