"""WebSocket frames written straight to a transport (RFC 6455 §5.2): one socket write can then
carry many messages.  Used by the gateway's sessions and the feeds' fan-out."""

from __future__ import annotations


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
