"""The market-data recording: every event the books emit, as written by the recorder, and a
fast loader into numpy (R21).

On disk it is a journal (`exchange.journal`: segment files named after their first record,
CRC-checked records, torn-tail recovery) in ``DATA_DIR/market-data``, written without fsync:
everything in it follows from the command journal, which is fsynced, so a recording that lost
its tail in a crash is completed from the command journal when the exchange starts again
(`feeds.recorder.catch_up`).  One record per fan-out round (one or more engine batches), its
payload, little endian::

    record   magic "GXMD" | version u16 = 1 | blocks u16 | jseq u64      (16 bytes)
    block    class name, 32 bytes NUL-padded | time i64 | count u32 | 0 u32  (48 bytes)
             then `count` EVENT_DTYPE records (132 bytes each), raw
    ...      one block per class whose events or engine time changed in that round

``jseq`` is the command journal's sequence number after the round: replaying the command
journal up to it gives exactly the events recorded so far (`feeds.verify`).  ``time`` is the
class's engine time after the round.  A record with no block is a checkpoint (written at a
clean shutdown): the recording is complete up to its jseq.

`load` reads the segment files whole, walks the record headers in compiled code, checks the
CRCs (`zlib.crc32`, C speed), and gathers each class's events into one contiguous array with
one compiled copy: `np.frombuffer` over concatenated payloads, no per-event Python.
"""

from __future__ import annotations

import json
import mmap
import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from exchange.journal import HEADER_SIZE, MAX_PAYLOAD, JournalError, segments
from orderbook import jitcache
from orderbook.types import EVENT_DTYPE, join

MAGIC = b"GXMD"
VERSION = 1
RECORD_HEAD = struct.Struct("<4sHHQ")  # magic, version, blocks, jseq
BLOCK_HEAD = struct.Struct("<32sqII")  # class, time, count, reserved
NAME_BYTES = 32
EVENT_SIZE = EVENT_DTYPE.itemsize
DIR_NAME = "market-data"
META_NAME = "meta.json"

#: One block of a loaded recording: which record (recorder seq) and command-journal seq it came
#: from, its class (index into Recording.classes), the class's engine time after it, and where
#: its events are in ``Recording.events[class]`` (after filtering).
BLOCK_DTYPE = np.dtype([("rseq", "<i8"), ("jseq", "<i8"), ("cls", "<i4"), ("time", "<i8"), ("first", "<i8"),
                        ("count", "<i8")])


class RecordingError(JournalError):
    """The recording is damaged (names the file and byte offset) or is not a recording."""


def recording_dir(path: str | Path) -> Path:
    """The recording directory of ``path``: a data directory or the recording itself."""
    p = Path(path)
    if (p / DIR_NAME).is_dir():
        return p / DIR_NAME
    return p


def encode_record(jseq: int, blocks: Sequence[tuple[str, int, bytes]]) -> bytes:
    """One record's payload: (class, engine time, raw events) per block."""
    parts = [RECORD_HEAD.pack(MAGIC, VERSION, len(blocks), jseq)]
    for name, time, events in blocks:
        raw = name.encode()
        if len(raw) > NAME_BYTES:
            raise ValueError(f"class name {name!r} is longer than {NAME_BYTES} bytes")
        n, rest = divmod(len(events), EVENT_SIZE)
        if rest:
            raise ValueError("events must be whole EVENT_DTYPE records")
        parts.append(BLOCK_HEAD.pack(raw, time, n, 0))
        parts.append(events)
    return b"".join(parts)


def decode_record(payload: bytes) -> tuple[int, list[tuple[str, int, np.ndarray]]]:
    """(jseq, [(class, time, events)]) of one payload (slow path: tools and tests)."""
    magic, version, nblocks, jseq = RECORD_HEAD.unpack_from(payload, 0)
    if magic != MAGIC or version != VERSION:
        raise RecordingError(f"not a market-data record (magic {magic!r}, version {version})")
    off = RECORD_HEAD.size
    out = []
    for _ in range(nblocks):
        name, time, count, _r = BLOCK_HEAD.unpack_from(payload, off)
        off += BLOCK_HEAD.size
        ev = np.frombuffer(payload, dtype=EVENT_DTYPE, count=count, offset=off)
        off += count * EVENT_SIZE
        out.append((name.rstrip(b"\0").decode(), time, ev))
    if off != len(payload):
        raise RecordingError(f"record of {len(payload)} bytes holds {off} bytes of blocks")
    return jseq, out


# ---------------------------------------------------------------------- scanning, compiled
jitcache.use(__name__)  # numba's cache for the functions below: keyed by the sources they are compiled from


@njit(cache=True)
def _u32(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16) | (np.int64(b[o + 3]) << 24)


@njit(cache=True)
def _u64(b, o):
    return _u32(b, o) | (_u32(b, o + 4) << 32)


@njit(cache=True)
def _class_of(b, q, table):
    """Row of ``table`` (k x 32 bytes) equal to the 32 name bytes at b[q:], or -1."""
    for r in range(table.shape[0]):
        same = True
        for k in range(32):
            if b[q + k] != table[r, k]:
                same = False
                break
        if same:
            return r
    return -1


@njit(cache=True)
def _scan(b, first_seq, recs, blocks, fill, table):
    """Walk the records of a segment image.  With fill=False only count; with fill=True also
    write recs[i] = (rseq, offset, length, jseq, crc) and blocks[j] = (record index, name offset,
    time, count, events offset, class: row of ``table`` or -1).  Returns (records, blocks, status,
    offset): status 0 ok, 1 torn (the file ends inside a record), 2 bad header (length or seq),
    3 bad payload."""
    n = b.shape[0]
    off = 0
    nr = 0
    nb = 0
    seq = first_seq
    while off < n:
        if n - off < 16:
            return nr, nb, 1, off
        length = _u32(b, off)
        crc = _u32(b, off + 4)
        got = _u64(b, off + 8)
        if length > 16777216:
            return nr, nb, 2, off
        p = off + 16
        end = p + length
        if end > n:
            return nr, nb, 1, off
        if got != seq:
            return nr, nb, 2, off
        if length < 16 or b[p] != 71 or b[p + 1] != 88 or b[p + 2] != 77 or b[p + 3] != 68:  # "GXMD"
            return nr, nb, 3, off
        nblk = np.int64(b[p + 6]) | (np.int64(b[p + 7]) << 8)
        jseq = _u64(b, p + 8)
        q = p + 16
        for _k in range(nblk):
            if q + 48 > end:
                return nr, nb, 3, off
            cnt = _u32(b, q + 40)
            ev = q + 48
            if ev + cnt * 132 > end:
                return nr, nb, 3, off
            if fill:
                blocks[nb, 0] = nr
                blocks[nb, 1] = q
                blocks[nb, 2] = _u64(b, q + 32)
                blocks[nb, 3] = cnt
                blocks[nb, 4] = ev
                blocks[nb, 5] = _class_of(b, q, table)
            nb += 1
            q = ev + cnt * 132
        if q != end:
            return nr, nb, 3, off
        if fill:
            recs[nr, 0] = seq
            recs[nr, 1] = off
            recs[nr, 2] = length
            recs[nr, 3] = jseq
            recs[nr, 4] = crc
        nr += 1
        seq += 1
        off = end
    return nr, nb, 0, off


@njit(cache=True, nogil=True)
def _gather(b, offs, counts, words, out, at):
    """Copy counts[i] records of `words` 32-bit words from b[offs[i]:] to out, from word `at` on
    (every offset in a segment is a multiple of 4: headers and events are whole words)."""
    for i in range(offs.shape[0]):
        m = counts[i] * words
        o = offs[i]
        for k in range(m):
            out[at + k] = b[o + k]
        at += m
    return at


def _crc_table() -> np.ndarray:
    """Slicing-by-8 tables of CRC-32 (the zlib polynomial, reflected 0xEDB88320)."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[0, i] = c
    for i in range(256):
        c = int(t[0, i])
        for k in range(1, 8):
            c = (c >> 8) ^ int(t[0, c & 0xFF])
            t[k, i] = c
    return t


_CRC = _crc_table()


@njit(cache=True, nogil=True)
def _crc32(b, start, end, t):
    c = np.uint32(0xFFFFFFFF)
    i = start
    while i + 8 <= end:
        c ^= np.uint32(b[i]) | (np.uint32(b[i + 1]) << 8) | (np.uint32(b[i + 2]) << 16) | (np.uint32(b[i + 3]) << 24)
        c = (t[7, c & 0xFF] ^ t[6, (c >> 8) & 0xFF] ^ t[5, (c >> 16) & 0xFF] ^ t[4, c >> 24]
             ^ t[3, b[i + 4]] ^ t[2, b[i + 5]] ^ t[1, b[i + 6]] ^ t[0, b[i + 7]])
        i += 8
    while i < end:
        c = t[0, (c ^ b[i]) & 0xFF] ^ (c >> 8)
        i += 1
    return c ^ np.uint32(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _crc_scan(b, recs, t):
    for i in range(recs.shape[0]):
        off = recs[i, 1]
        if _crc32(b, off + 8, off + 16 + recs[i, 2], t) != recs[i, 4]:
            return i
    return -1


def _crc_errors(buf: np.ndarray, recs: np.ndarray) -> int:
    """Index of the first record of ``recs`` that fails its CRC, or -1.  Large records go through
    zlib.crc32 (C, ~2 GB/s), small ones through a compiled loop with no per-record Python; both
    release the GIL, so this can run in a worker thread while the main thread copies."""
    if not len(recs):
        return -1
    if int(recs[:, 2].mean()) < 4096:
        return int(_crc_scan(buf, recs, _CRC))
    mv = memoryview(buf)
    crc32 = zlib.crc32
    for i, (_seq, off, length, _j, crc) in enumerate(recs.tolist()):
        if crc32(mv[off + 8:off + HEADER_SIZE + length]) != crc:
            return i
    return -1


@dataclass
class Segment:
    """One segment file, scanned: its bytes, records and blocks."""

    path: Path
    first_seq: int
    buf: np.ndarray  # uint8
    recs: np.ndarray  # (n, 5) int64: rseq, offset, length, jseq, crc
    blocks: np.ndarray  # (m, 6) int64: record index, name offset, time, count, events offset, class
    classes: list[str]  # class names; blocks[:, 5] indexes it (shared by the segments of one read)
    torn: int = -1  # byte offset of a torn tail (last segment only), else -1
    last: bool = False  # the recording's last segment

    def block_class(self, j: int) -> str:
        return self.classes[int(self.blocks[j, 5])]

    def block_events(self, j: int) -> np.ndarray:
        count, off = int(self.blocks[j, 3]), int(self.blocks[j, 4])
        return self.buf[off:off + count * EVENT_SIZE].view(EVENT_DTYPE)

    def record_bytes(self, i: int) -> bytes:
        off, length = int(self.recs[i, 1]), int(self.recs[i, 2])
        return self.buf[off + HEADER_SIZE:off + HEADER_SIZE + length].tobytes()


_STATUS = {1: "torn record (the file ends inside it)", 2: "record header out of sequence or too long",
           3: "record payload is not a market-data record"}


def _table(classes: list[str]) -> np.ndarray:
    t = np.zeros((len(classes), NAME_BYTES), dtype=np.uint8)
    for i, c in enumerate(classes):
        raw = c.encode()
        t[i, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return t


def scan_segment(path: Path, first_seq: int, last: bool, check_crc: bool = True,
                 classes: list[str] | None = None) -> Segment:
    """Map and walk one segment.  A bad record raises RecordingError naming the file and the
    byte offset, except a torn or garbled tail of the last segment (a crash mid-write), where the
    walk stops (``torn`` says where).  Each block's class is an index into ``classes``, which
    grows with the names first seen here (pass the same list for every segment of a read)."""
    classes = [] if classes is None else classes
    buf = _map(path)
    table = _table(classes)
    nr, nb, status, bad = _scan(buf, first_seq, np.empty((0, 5), np.int64), np.empty((0, 6), np.int64), False,
                                table)
    recs = np.empty((nr, 5), np.int64)
    blocks = np.empty((nb, 6), np.int64)
    _scan(buf, first_seq, recs, blocks, True, table)
    while nb and (unknown := np.flatnonzero(blocks[:, 5] < 0)).size:  # a class first seen here
        q = int(blocks[unknown[0], 1])
        classes.append(buf[q:q + NAME_BYTES].tobytes().rstrip(b"\0").decode())
        table = _table(classes)
        _scan(buf, first_seq, recs, blocks, True, table)
    torn = -1
    if status:
        at_end = status == 1 or _zero_tail(buf, bad) or _last_record_ends_file(buf, bad)
        if not (last and at_end):
            raise RecordingError(f"{path}: {_STATUS[status]} at byte offset {bad}")
        torn = bad
    if check_crc and nr:
        i = _crc_errors(buf, recs)
        if i >= 0:
            off = int(recs[i, 1])
            if not (last and i == nr - 1):
                raise RecordingError(f"{path}: record seq {int(recs[i, 0])} fails its CRC at byte offset {off}")
            torn = off  # a torn last record whose length happened to fit
            recs = recs[:i]
            blocks = blocks[blocks[:, 0] < i]
    return Segment(path, first_seq, buf, recs, blocks, classes, torn, last)


def _map(path: Path) -> np.ndarray:
    """The file's bytes, memory-mapped read-only (the page cache itself: no copy, no allocation)."""
    size = path.stat().st_size
    if size == 0:
        return np.empty(0, dtype=np.uint8)
    with open(path, "rb") as f:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        m = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
    return np.frombuffer(m, dtype=np.uint8)


def _zero_tail(buf: np.ndarray, off: int) -> bool:
    return not buf[off:].any()


def _last_record_ends_file(buf: np.ndarray, off: int) -> bool:
    if len(buf) - off < HEADER_SIZE:
        return True
    length = int(buf[off:off + 4].view("<u4")[0])
    return length <= MAX_PAYLOAD and off + HEADER_SIZE + length >= len(buf)


def iter_segments(path: str | Path, check_crc: bool | str = True) -> Iterator[Segment]:
    """Every segment of a recording, scanned, in order (gaps between segments raise).  With
    ``check_crc="last"`` only the last segment's CRCs are checked (the caller checks the rest)."""
    d = recording_dir(path)
    if not d.is_dir():
        raise RecordingError(f"{d}: no such recording directory")
    segs = segments(d)
    expect = segs[0][0] if segs else 1
    classes: list[str] = []
    for i, (first, p) in enumerate(segs):
        if first != expect:
            raise RecordingError(f"{p}: at byte offset 0: segment starts at record {first}, expected {expect}")
        last = i == len(segs) - 1
        seg = scan_segment(p, first, last, bool(check_crc) if check_crc != "last" else last, classes)
        expect = first + len(seg.recs)
        yield seg


# ---------------------------------------------------------------------- loading
@dataclass
class Recording:
    """A loaded recording: each class's events (EVENT_DTYPE, in seq order) and the blocks that
    carried them, in recording order (with the class's engine time after each)."""

    classes: list[str]
    events: dict[str, np.ndarray]
    blocks: np.ndarray  # BLOCK_DTYPE
    last_jseq: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(e) for e in self.events.values())

    def drains(self) -> Iterator[tuple[int, int, list[tuple[str, int, np.ndarray]]]]:
        """(rseq, jseq, [(class, time, events)]) per record, in order: what the live feed
        published in one fan-out round."""
        b = self.blocks
        if not len(b):
            return
        rseq = b["rseq"]
        cuts = np.flatnonzero(np.diff(rseq)) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [len(b)])).tolist()
        rows = b.tolist()
        classes, events = self.classes, self.events
        for s, e in zip(starts, ends, strict=True):
            out = []
            for r in rows[s:e]:
                name = classes[r[2]]
                out.append((name, r[3], events[name][r[4]:r[4] + r[5]]))
            yield rows[s][0], rows[s][1], out


def load(path: str | Path, classes: Sequence[str] | str | None = None, from_time: int | None = None,
         to_time: int | None = None, from_seq: int | None = None, to_seq: int | None = None,
         types: Sequence[int] | None = None, check_crc: bool = True) -> Recording:
    """Load a recording (a data directory or its ``market-data`` directory) into numpy.

    ``classes`` keeps only those classes; ``from_time``/``to_time`` (engine time, inclusive) and
    ``from_seq``/``to_seq`` (each book's own event seq, inclusive) and ``types`` (EV_* codes)
    keep only matching events.  Blocks are kept when they fall in the time range (their time
    is the class's engine time after them), so time-only blocks still carry engine time.

    Two passes: the segments are mapped and their records walked (and CRC-checked) first, then
    each class's events are copied once, by compiled code, into an array of exactly their size."""
    if isinstance(classes, str):
        classes = [classes]
    want = None if classes is None else set(classes)
    scanned: list[tuple[Segment, np.ndarray]] = []  # segment, its kept blocks
    names: list[str] = []  # every class seen, in order of first appearance (the blocks' class ids)
    last_jseq = 0
    crcs: list[tuple[Segment, Future[int]]] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpux-crc") if check_crc else None
    for seg in iter_segments(path, "last" if check_crc else False):
        names = seg.classes
        if len(seg.recs):
            last_jseq = int(seg.recs[-1, 3])
            if pool is not None and not seg.last:  # the last one was checked by the scan
                crcs.append((seg, pool.submit(_crc_errors, seg.buf, seg.recs)))
        blocks = seg.blocks
        if not len(blocks):
            continue
        keep = None
        if want is not None:
            keep = np.isin(blocks[:, 5], [i for i, n in enumerate(names) if n in want])
        if from_time is not None:  # every event of a block happened by its time
            k = blocks[:, 2] >= from_time
            keep = k if keep is None else keep & k
        if keep is not None and not keep.all():
            blocks = blocks[keep]
        if len(blocks):
            scanned.append((seg, blocks))
    totals = np.zeros(len(names), dtype=np.int64)
    present = np.zeros(len(names), dtype=bool)
    for _seg, blocks in scanned:
        totals += np.bincount(blocks[:, 5], weights=blocks[:, 3], minlength=len(names)).astype(np.int64)
        present[np.unique(blocks[:, 5])] = True
    all_names = sorted(n for i, n in enumerate(names) if present[i])
    index = {n: k for k, n in enumerate(all_names)}
    lut = np.full(max(len(names), 1), -1, dtype=np.int32)  # first-appearance id -> sorted index
    for i, n in enumerate(names):
        lut[i] = index.get(n, -1)
    outs = {n: np.empty(int(totals[names.index(n)]) * EVENT_SIZE // 4, dtype=np.uint32) for n in all_names}
    at = dict.fromkeys(all_names, 0)
    block_parts: list[np.ndarray] = []
    for seg, blocks in scanned:
        words = seg.buf[:len(seg.buf) // 4 * 4].view(np.uint32)
        ids = blocks[:, 5]
        for n in all_names:
            sel = blocks[ids == names.index(n)]
            if len(sel):
                at[n] = _gather(words, sel[:, 4] // 4, sel[:, 3].copy(), EVENT_SIZE // 4, outs[n], at[n])
        recs = seg.recs
        bp = np.empty(len(blocks), dtype=BLOCK_DTYPE)
        bp["rseq"] = recs[blocks[:, 0], 0]
        bp["jseq"] = recs[blocks[:, 0], 3]
        bp["cls"] = lut[ids]
        bp["time"] = blocks[:, 2]
        bp["count"] = blocks[:, 3]
        block_parts.append(bp)
    for seg, fut in crcs:
        i = fut.result()
        if i >= 0:
            pool.shutdown()  # type: ignore[union-attr]
            raise RecordingError(f"{seg.path}: record seq {int(seg.recs[i, 0])} fails its CRC at byte offset "
                                 f"{int(seg.recs[i, 1])}")
    if pool is not None:
        pool.shutdown()
    del scanned, crcs  # unmaps the segments
    blocks = np.concatenate(block_parts) if block_parts else np.empty(0, dtype=BLOCK_DTYPE)
    events: dict[str, np.ndarray] = {}
    for n in all_names:
        ev = outs[n].view(EVENT_DTYPE)
        mine = blocks["cls"] == index[n]
        counts = blocks["count"][mine]
        mask = None
        if from_time is not None:
            mask = ev["time"] >= from_time
        if to_time is not None:
            m = ev["time"] <= to_time
            mask = m if mask is None else mask & m
        if from_seq is not None:
            m = ev["seq"] >= from_seq
            mask = m if mask is None else mask & m
        if to_seq is not None:
            m = ev["seq"] <= to_seq
            mask = m if mask is None else mask & m
        if types is not None:
            m = np.isin(ev["type"], np.asarray(types, dtype=np.int8))
            mask = m if mask is None else mask & m
        if mask is not None and not mask.all():
            ends = np.cumsum(counts)
            kept = np.concatenate(([0], np.cumsum(mask)))
            counts = kept[ends] - kept[ends - counts]
            ev = ev[mask]
        first = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
        blocks["first"][mine] = first
        blocks["count"][mine] = counts
        events[n] = ev
    if to_time is not None and len(blocks):
        blocks = blocks[(blocks["time"] <= to_time) | (blocks["count"] > 0)]
    return Recording(all_names, events, blocks, last_jseq, read_meta(path))


def recent(path: str | Path, since: int, types: Sequence[int] | None = None,
           slack: int = 3600) -> dict[str, np.ndarray]:
    """Each class's events with engine time >= ``since``, reading segments from the newest back
    and stopping at the first segment whose every block is older than ``since - slack`` (classes'
    engine times follow the wall clock, a clock command per class per second): what a restarted
    exchange needs for its 24 h statistics, without reading the whole history."""
    d = recording_dir(path)
    segs = segments(d) if d.is_dir() else []
    found: dict[str, list[np.ndarray]] = {}
    want = None if types is None else np.asarray(types, dtype=np.int8)
    classes: list[str] = []
    for i in range(len(segs) - 1, -1, -1):
        first, p = segs[i]
        seg = scan_segment(p, first, i == len(segs) - 1, classes=classes)
        b = seg.blocks
        if not len(b):
            continue
        keep = (b[:, 2] >= since) & (b[:, 3] > 0)
        words = seg.buf[:len(seg.buf) // 4 * 4].view(np.uint32)
        for cid in np.unique(b[keep, 5]).tolist():
            name = classes[cid]
            sel = b[keep & (b[:, 5] == cid)]
            out = np.empty(int(sel[:, 3].sum()) * EVENT_SIZE // 4, dtype=np.uint32)
            _gather(words, sel[:, 4] // 4, sel[:, 3].copy(), EVENT_SIZE // 4, out, 0)
            ev = out.view(EVENT_DTYPE)
            mask = ev["time"] >= since
            if want is not None:
                mask &= np.isin(ev["type"], want)
            found.setdefault(name, []).append(ev[mask])
        if int(b[:, 2].max()) < since - slack:
            break
    return {n: join(parts[::-1], EVENT_DTYPE) for n, parts in found.items()}


# ---------------------------------------------------------------------- meta
def read_meta(path: str | Path) -> dict[str, Any]:
    p = recording_dir(path) / META_NAME
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def write_meta(path: str | Path, meta: dict[str, Any]) -> None:
    d = recording_dir(path)
    tmp = d / (META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(d / META_NAME)
