"""The WebSocket send buffer and its one slow-client policy (`gateway.sendbuffer`), on a fake
transport and a `SimClock`."""

from __future__ import annotations

import asyncio

from exchange.clock import SimClock
from gateway.sendbuffer import SendBuffer, Sender, close_frame, ws_frame
from tests.exchange_helpers import run


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
