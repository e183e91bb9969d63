"""The journal's record framing checked by jitted code (`exchange.journal`'s readers).

    n, offset = scan(buf, offset, seq, verify_from, starts, ends)

walks the records of a segment image from ``offset``, the first of which must carry ``seq``,
and stops at the first one that is not good (torn, too long, out of sequence, or failing its
CRC when its seq is at least ``verify_from``), at the end of the image, or when ``starts`` is
full.  It fills ``starts[:n]`` and ``ends[:n]`` with the good records' payload bounds and
returns ``n`` and the offset it stopped at.  The caller reads the record there the slow way,
which names what is wrong with it (`exchange.journal._records`).  The CRC is zlib's CRC-32
(tests/test_journal.py checks it against ``zlib.crc32``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from orderbook import jitcache

jitcache.use(__name__)

HEADER_SIZE = 16
MAX_PAYLOAD = 16 << 20  # (exchange.journal.MAX_PAYLOAD; checked there)


def _table() -> np.ndarray:
    t = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[i] = c
    return t


_CRC = _table()
_nj = njit(cache=True, nogil=True)


@_nj
def crc32(buf: np.ndarray, lo: int, hi: int) -> int:
    """zlib's CRC-32 of ``buf[lo:hi]``."""
    c = np.uint32(0xFFFFFFFF)
    for i in range(lo, hi):
        c = _CRC[(c ^ buf[i]) & 0xFF] ^ (c >> np.uint32(8))
    return int(c ^ np.uint32(0xFFFFFFFF))


@_nj
def _u32(buf: np.ndarray, at: int) -> int:
    return int(buf[at]) | int(buf[at + 1]) << 8 | int(buf[at + 2]) << 16 | int(buf[at + 3]) << 24


@_nj
def scan(buf: np.ndarray, offset: int, seq: int, verify_from: int, starts: np.ndarray,
         ends: np.ndarray) -> tuple[int, int]:
    size = len(buf)
    n = 0
    while offset < size and n < len(starts):
        if size - offset < HEADER_SIZE:
            break
        length = _u32(buf, offset)
        crc = _u32(buf, offset + 4)
        got = _u32(buf, offset + 8) | _u32(buf, offset + 12) << 32
        end = offset + HEADER_SIZE + length
        if length > MAX_PAYLOAD or end > size or got != seq:
            break
        if seq >= verify_from and crc32(buf, offset + 8, end) != crc:
            break
        starts[n] = offset + HEADER_SIZE
        ends[n] = end
        n += 1
        seq += 1
        offset = end
    return n, offset
