"""WebSocket send buffers and the one slow-client policy, for the trader sessions
(`gateway.gateway.Session`) and the market-data subscribers (`feeds.hub.Conn`).

Frames are written straight to the connection's transport (RFC 6455 §5.2), so one socket write
can carry many messages::

    sends = Sender(limit=8 << 20, grace_s=5.0, clock=clock, stats=counters, stat="ws_cut_off_total")
    buf = SendBuffer(sends, ws, request.transport, peer)
    buf.push(ws_frame(payload))           # queued; written on the next event-loop turn
    sends.push_all(buffers, frame)        # the same frame (bytes object) queued on many

A `Sender` holds the buffers of one kind of connection and their parameters.  Whatever is
queued goes out in one ``transport.write`` per connection per event-loop turn, from one
callback for all the sender's connections.  Nothing here waits for a socket.  After its
write, a connection whose transport holds more than ``limit`` unsent bytes is cut off
(`Sender.cut`): it is marked closed, nothing more is queued for it, a close frame 1008 whose
reason names the bytes unsent and the limit goes out behind what it has not read, the socket
is aborted if it has not gone within ``grace_s`` (a timer of the injected clock), and the cut
is counted in ``stats[stat]``.  A slow reader so costs at most ``limit`` bytes (plus one turn's
messages) and nobody else notices it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from exchange.clock import WALL, Clock

CLOSE_GRACE_S = 5.0  # seconds a cut-off connection has to go before its socket is aborted
POLICY_VIOLATION = 1008


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def close_frame(code: int, reason: str) -> bytes:
    """A WebSocket close frame: the code and the reason (cut to the 123 bytes a control frame allows)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


class SendBuffer:
    """The frames queued for one WebSocket connection (``out``), written by its `Sender`.

    ``ws`` is the aiohttp response when there is one: once it is closed (by aiohttp or by the
    owner) nothing more is written.  ``closed`` is set by a cut, or by the owner when it is done
    with the connection; a closed buffer queues and writes nothing.
    """

    __slots__ = ("sender", "ws", "transport", "peer", "out", "dirty", "closed", "sent")

    def __init__(self, sender: Sender, ws: Any, transport: Any, peer: str = "") -> None:
        self.sender = sender
        self.ws = ws
        self.transport = transport
        self.peer = peer
        self.out: list[bytes] = []
        self.dirty = False  # on the sender's list for its next flush
        self.closed = False
        self.sent = 0  # frames queued to it

    def push(self, frame: bytes) -> None:
        """Queue one frame (see `ws_frame`); it goes out on the next event-loop turn."""
        if self.closed:
            return
        self.out.append(frame)
        self.sent += 1
        if not self.dirty:
            self.dirty = True
            self.sender.mark(self)


class Sender:
    """The send buffers of one kind of connection: one flush per event-loop turn for all of
    them, and the slow-client policy with this kind's ``limit`` (bytes unsent) and
    ``grace_s``.  A cut counts ``stats[stat]`` and calls ``on_cut(buffer)`` (the owner's
    clean-up, e.g. unsubscribing it from everything)."""

    def __init__(self, limit: int, grace_s: float = CLOSE_GRACE_S, clock: Clock = WALL, *,
                 stats: MutableMapping[str, int] | None = None, stat: str = "cut_off",
                 on_cut: Callable[[Any], None] | None = None, log: logging.Logger | None = None,
                 label: str = "WebSocket client") -> None:
        self.limit = int(limit)
        self.grace_s = float(grace_s)
        self.clock = clock
        self.stats: MutableMapping[str, int] = stats if stats is not None else {}
        self.stat = stat
        self.on_cut = on_cut
        self.log = log or logging.getLogger("gpux.sendbuffer")
        self.label = label
        self._dirty: list[SendBuffer] = []
        self._scheduled = False
        self._cut: set[Any] = set()  # transports of cut-off connections, until aborted

    # ------------------------------------------------------------------ queueing
    def mark(self, buf: SendBuffer) -> None:
        """``buf`` has frames to write: on the list for the next flush."""
        self._dirty.append(buf)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def push_all(self, bufs: Iterable[SendBuffer], frame: bytes) -> None:
        """Queue the same frame on each of ``bufs`` (the fan-out's hot loop: no closed check;
        a closed buffer is emptied at the flush)."""
        dirty = self._dirty
        for b in bufs:
            b.out.append(frame)
            b.sent += 1
            if not b.dirty:
                b.dirty = True
                dirty.append(b)
        if not self._scheduled and dirty:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    # ------------------------------------------------------------------ writing
    def flush(self) -> None:
        """Write what is queued: one write per connection; cut off whoever is too far behind."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        limit = self.limit
        for b in dirty:
            b.dirty = False
            out = b.out
            t = b.transport
            ws = b.ws
            if b.closed or t is None or t.is_closing() or (ws is not None and ws.closed):
                out.clear()
                continue
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            t.write(data)
            waiting = t.get_write_buffer_size()
            if waiting > limit:
                self.cut(b, f"slow consumer: {waiting} bytes unsent, the limit is {limit}")

    def cut(self, buf: SendBuffer, reason: str, slow: bool = True) -> None:
        """Disconnect a connection that fell behind: stop queueing for it, close frame 1008 with
        the reason behind what it has not read, abort the socket if it has not closed within
        ``grace_s``; counted in ``stats[stat]``.  ``slow=False``: for another reason (its key
        was revoked), not counted."""
        if buf.closed:
            return
        buf.closed = True
        buf.out.clear()
        if slow:
            self.stats[self.stat] = self.stats.get(self.stat, 0) + 1
            self.log.warning("%s cut off", self.label, extra={"peer": buf.peer, "reason": reason})
        else:
            self.log.info("%s closed", self.label, extra={"peer": buf.peer, "reason": reason})
        if self.on_cut is not None:
            self.on_cut(buf)
        t = buf.transport
        if t is not None and not t.is_closing():
            t.write(close_frame(POLICY_VIOLATION, reason))
            self._cut.add(t)
            self.clock.call_later(self.grace_s, lambda: self._abort(t))

    def abort_cut(self) -> None:
        """Abort now every cut-off connection still in its grace period (at shutdown)."""
        for t in list(self._cut):
            self._abort(t)

    def _abort(self, t: Any) -> None:
        """Drop the socket and whatever it still had to send (a cut-off connection that did not go)."""
        self._cut.discard(t)
        try:
            t.abort()
        except Exception:  # already gone
            pass
