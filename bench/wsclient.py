"""A small, fast WebSocket client for benchmarks (RFC 6455), so that the load generator —
which shares the machine with the server — spends as little CPU per message as it can.

    conn = await connect("127.0.0.1", 8080, "/v1/ws", on_message)
    conn.send(b'{"op": "ping"}')      # buffered; written at the end of the loop turn
    ...
    conn.close()

Text frames only, no extensions.  Client frames are masked as the RFC requires (with a
fixed all-zero key, which leaves the payload as is: the server unmasks it like any other).
Pings are answered; a close frame ends the connection.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable

_ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + _ZERO_MASK + payload


class WsConn(asyncio.Protocol):
    def __init__(self, on_message: Callable[[bytes], None]) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.out: list[bytes] = []
        self.scheduled = False
        self.close_code: int | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.handshake.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.upgraded = True
            self.handshake.set_result(True)
        self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # --- frames
    def _frames(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            p = pos + 2
            if length == 126:
                if n - p < 2:
                    break
                length = int.from_bytes(buf[p:p + 2], "big")
                p += 2
            elif length == 127:
                if n - p < 8:
                    break
                length = int.from_bytes(buf[p:p + 8], "big")
                p += 8
            if b1 & 0x80:  # a masked server frame is a protocol error; not expected
                p += 4
            if n - p < length:
                break
            payload = bytes(buf[p:p + length])
            pos = p + length
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                self.on_message(payload)
            elif opcode == 0x9:
                self._write(client_frame(payload, 0xA))
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None:
                    self._write(client_frame(payload[:2], 0x8))
                    self.transport.close()
        if pos:
            del buf[:pos]

    def send(self, payload: bytes) -> None:
        self.out.append(client_frame(payload))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self._write(client_frame((1000).to_bytes(2, "big"), 0x8))
            self.transport.close()


async def connect(host: str, port: int, path: str, on_message: Callable[[bytes], None]) -> WsConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: WsConn(on_message), host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    assert conn.transport is not None
    conn.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await conn.handshake
    return conn
