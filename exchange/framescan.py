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


def _tables() -> np.ndarray:
    """CRC-32 tables for eight bytes a step ("slicing by 8"): ``t[0]`` is the classic byte table,
    ``t[k][i]`` the CRC of byte ``i`` followed by ``k`` zero bytes."""
    t = np.zeros((8, 256), np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[0, i] = c
    for i in range(256):
        for k in range(1, 8):
            t[k, i] = (int(t[k - 1, i]) >> 8) ^ int(t[0, int(t[k - 1, i]) & 0xFF])
    return t


_CRC = _tables()
_nj = njit(cache=True, nogil=True)


@_nj
def crc32(buf: np.ndarray, lo: int, hi: int) -> int:
    """zlib's CRC-32 of ``buf[lo:hi]``: eight bytes a step through the tables, the rest one by one
    (a byte at a time cost ~0.4 µs per journal record on replay)."""
    T = _CRC
    c = np.uint32(0xFFFFFFFF)
    i = lo
    while i + 8 <= hi:
        a = c ^ (np.uint32(buf[i]) | np.uint32(buf[i + 1]) << np.uint32(8)
                 | np.uint32(buf[i + 2]) << np.uint32(16) | np.uint32(buf[i + 3]) << np.uint32(24))
        c = (T[7, a & 0xFF] ^ T[6, (a >> np.uint32(8)) & 0xFF] ^ T[5, (a >> np.uint32(16)) & 0xFF]
             ^ T[4, a >> np.uint32(24)] ^ T[3, buf[i + 4]] ^ T[2, buf[i + 5]] ^ T[1, buf[i + 6]] ^ T[0, buf[i + 7]])
        i += 8
    while i < hi:
        c = T[0, (c ^ buf[i]) & 0xFF] ^ (c >> np.uint32(8))
        i += 1
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


@_nj
def commands(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, names: np.ndarray, lens: np.ndarray,
             rec_size: int, recs: np.ndarray, book: np.ndarray) -> None:
    """Replay's shortcut past msgpack for the common entry: a command without a client order id.
    For each payload ``buf[starts[k]:ends[k]]`` that is exactly `exchange.entries.Cmd` (tag 1)
    with a book named by a row of ``names`` (``lens``: each name's length), a ``rec_size``-byte
    record and an empty client order id, ``book[k]`` is that row and ``recs[k]`` the record;
    for any other payload ``book[k]`` is -1 (the caller decodes it as msgpack)."""
    for k in range(len(starts)):
        book[k] = -1
        p, end = starts[k], ends[k]
        if end - p < 4 or buf[p] != 0x94 or buf[p + 1] != 0x01 or (buf[p + 2] & 0xE0) != 0xA0:
            continue
        n = buf[p + 2] & 0x1F
        r = p + 3 + n  # the record's bin8 header
        if end != r + 3 + rec_size or buf[r] != 0xC4 or buf[r + 1] != rec_size or buf[end - 1] != 0xA0:
            continue
        for b in range(len(lens)):
            if lens[b] != n:
                continue
            same = True
            for i in range(n):
                if buf[p + 3 + i] != names[b, i]:
                    same = False
                    break
            if same:
                book[k] = b
                break
        if book[k] < 0:
            continue
        recs[k, :] = buf[r + 2:r + 2 + rec_size]
