"""The exchange's durable command journal: a write-ahead log of sequenced commands.

The sequencer stamps every command with a gapless sequence number (1, 2, 3, ...), appends it
here, and fsyncs the journal once per batch before it acknowledges anything (group commit).
On start-up the exchange replays the journal tail after its latest snapshot with `read`.

On disk
-------
A directory of segment files, each named after the sequence number of its first record,
zero-padded to 20 digits: ``00000000000000000001.seg``, ``00000000000000052113.seg``, ...
Other files in the directory are ignored.  A segment is a plain concatenation of records,
with no file header.  A record, little endian::

    offset  size  field
    0       4     length   u32, payload length in bytes (at most MAX_PAYLOAD = 16 MiB)
    4       4     crc      u32, zlib.crc32 over the 8 seq bytes followed by the payload
    8       8     seq      u64, the record's sequence number
    16      len   payload  opaque bytes (the exchange's own encoding of the command)

The seq field and the payload are contiguous, so ``crc == zlib.crc32(record[8:])``.
Sequence numbers are gapless across segments: a segment's first seq is the previous one's
last seq + 1, and matches its file name.

The writer rotates to a new segment at the start of an append when the current segment has
grown past ``segment_bytes``; a batch never spans two segments.  Before it creates the new
segment it fsyncs the old one, and after creating it, the directory: a segment is complete
before its successor exists.

Preallocated segments
---------------------
Opened with ``preallocate=True`` (the exchange's command journal), the writer allocates each
new segment's ``segment_bytes`` (+ PREALLOC_SLACK) up front (``posix_fallocate``: the file's size
is its allocation, reading as zeros) and writes records in place (``pwrite`` at the end of the
last record).  A batch then changes neither the file's size nor its block map, and `sync` is
one ``fdatasync`` that flushes the batch's data and nothing else.  The zeros after the last
record read as the end of the journal, exactly like a zeroed torn tail (below).  When it rotates,
the writer cuts the old segment to its records (truncate, fsync) before it creates the next one,
so only the last segment ever ends in zeros.

Torn tails
----------
A crash can leave the last segment ending in a partly written record (or in zeros, where the
file grew but its data never reached the disk, or where it was preallocated).  `Journal.open`
scans the last segment and truncates it before the first record that is torn, fails its CRC
or carries the wrong seq, reporting how many bytes it cut in `Journal.recovered_truncated_bytes`
(a preallocating writer instead zeroes the bad bytes in place and keeps the allocation; the
zeros after the last non-zero byte are not counted as cut).  `read` stops
silently at such a record at the very end of the last segment, and raises `JournalError`
(naming the file and byte offset) for a bad record anywhere else.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import os
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from zlib import crc32

import numpy as np

from exchange import framescan

log = logging.getLogger("gpux.journal")

__all__ = [
    "HEADER",
    "MAX_PAYLOAD",
    "PREALLOC_SLACK",
    "Journal",
    "JournalError",
    "read",
    "read_runs",
    "segments",
]

#: What a preallocating writer allocates beyond segment_bytes (a segment holds up to
#: segment_bytes plus its last batch).
PREALLOC_SLACK = 1 << 20
#: A record header: payload length, CRC (over seq bytes + payload), seq.
HEADER = struct.Struct("<IIQ")
HEADER_SIZE = HEADER.size  # 16
#: The largest payload a record may carry.
MAX_PAYLOAD = 16 << 20
if framescan.MAX_PAYLOAD != MAX_PAYLOAD or framescan.HEADER_SIZE != HEADER_SIZE:
    raise AssertionError("exchange.framescan's copies of MAX_PAYLOAD and HEADER_SIZE differ from the journal's")

_LEN_CRC = struct.Struct("<II")
_SEQ = struct.Struct("<Q")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
# How far back from a segment's end to look first for its last record (see _ends_with).
_TAIL_PROBE = 1 << 16


class JournalError(Exception):
    """The journal is damaged where damage cannot be a torn tail, or cannot be used."""


class FileOps:
    """The system calls a journal writer makes to write and sync.  A test subclass injects faults
    (a disk that is full for a while); the calls look the functions up at each call."""

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


_OPS = FileOps()


def _segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.seg"


def segments(directory: str | Path) -> list[tuple[int, Path]]:
    """Every segment of the journal in `directory` as (first seq, path), sorted by first seq."""
    found = []
    for entry in os.scandir(directory):
        match = _SEGMENT_NAME.match(entry.name)
        if match is not None:
            found.append((int(match.group(1)), Path(entry.path)))
    found.sort()
    return found


class _BadRecord(Exception):
    """Raised by _records at the first record that is not good."""

    def __init__(self, offset: int, reason: str, at_end: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.at_end = at_end  # nothing but this record (or zeros) follows: a torn tail


def _intact_record_after(buf: bytes, offset: int, seq: int) -> int | None:
    """The seq of an intact record (its CRC checked) after the bad one at ``offset``, which should
    have carried ``seq``; None if none follows, or if the bad record is a hole (an all-zero header:
    a write that never reached the disk before the crash, not damage).  Found by the next seqs'
    bytes, so a damaged length field does not hide what follows."""
    if not any(buf[offset:offset + HEADER_SIZE]):
        return None
    size = len(buf)
    view = memoryview(buf)
    for want in range(seq + 1, seq + 64):
        key = _SEQ.pack(want)
        pos = buf.find(key, offset + 8)
        while pos != -1:
            length, crc = _LEN_CRC.unpack_from(buf, pos - 8)
            end = pos + 8 + length
            if length <= MAX_PAYLOAD and end <= size and crc32(view[pos:end]) == crc:
                return want
            pos = buf.find(key, pos + 1)
    return None


def _zero_tail(buf: bytes, offset: int) -> bool:
    """Whether every byte of buf from offset on is zero (a file that grew before its data landed)."""
    return buf.count(0, offset) == len(buf) - offset


_RUN = 8192  # records framed per call of the jitted scan


def _runs(buf: bytes, seq: int, verify_from: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The records of the segment image ``buf`` as runs ``(first seq, payload starts, payload
    ends)``: `_records`, with the framing and the CRCs checked by jitted code
    (`exchange.framescan`) a run at a time.  Raises _BadRecord as `_records` does."""
    arr = np.frombuffer(buf, np.uint8)
    starts = np.empty(min(_RUN, len(buf) // HEADER_SIZE + 1), np.int64)
    ends = np.empty_like(starts)
    offset = 0
    size = len(buf)
    while offset < size:
        n, stop = framescan.scan(arr, offset, seq, verify_from, starts, ends)
        if n:
            yield seq, starts[:n].copy(), ends[:n].copy()
            seq += n
            offset = stop
        if offset < size and n < len(starts):  # stopped at a record that is not good: say what is wrong
            _, start, end = next(_records(buf, seq, verify_from, offset))  # (raises _BadRecord)
            # good after all: the slow check is the judge
            yield seq, np.array([start], np.int64), np.array([end], np.int64)
            seq += 1
            offset = end


def _records(buf: bytes, seq: int, verify_from: int, offset: int = 0) -> Iterator[tuple[int, int, int]]:
    """(seq, payload start, payload end) of each record in the segment image `buf` from
    ``offset``, whose first record must carry `seq`.  CRCs are checked for records with seq >=
    verify_from.  Raises _BadRecord at the first record that is torn, too long, out of
    sequence or fails its CRC."""
    view = memoryview(buf)
    size = len(buf)
    unpack = HEADER.unpack_from
    while offset < size:
        if size - offset < HEADER_SIZE:
            raise _BadRecord(offset, "torn record header (the file ends inside it)", True)
        length, crc, got = unpack(buf, offset)
        end = offset + HEADER_SIZE + length
        if length > MAX_PAYLOAD:
            raise _BadRecord(offset, f"record length {length} exceeds {MAX_PAYLOAD}", False)
        if end > size:
            raise _BadRecord(offset, "torn record (its payload runs past the end of the file)", True)
        # at the end: nothing but zeros follows (a torn record in a preallocated segment, or an
        # all-zero header where the file grew or was preallocated)
        if got != seq:
            at_end = end == size or _zero_tail(buf, end)
            raise _BadRecord(offset, f"record has seq {got} where {seq} was expected", at_end)
        if seq >= verify_from and crc32(view[offset + 8 : end]) != crc:
            at_end = end == size or _zero_tail(buf, end)
            raise _BadRecord(offset, f"record seq {seq} fails its CRC", at_end)
        yield seq, offset + HEADER_SIZE, end
        seq += 1
        offset = end


def read(directory: str | Path, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (seq, payload) for every record with from_seq <= seq <= to_seq (to the end when
    to_seq is None), in order.

    Starts at the segment holding from_seq (found by file name).  Checks sequence continuity
    and the CRC of every record it yields.  A bad record at the very end of the last segment
    (a torn tail) ends the iteration silently; a bad record anywhere else, or a gap between
    segments, raises JournalError naming the file and byte offset.  Asking for records older
    than the journal's first segment raises JournalError too.
    """
    for seq, payloads in read_runs(directory, from_seq, to_seq):
        yield from enumerate(payloads, seq)


def read_runs(directory: str | Path, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, list[bytes]]]:
    """`read`'s records a run at a time: ``(seq of the first, payloads)``, up to a few thousand
    per run (replay takes them so; each record checked as `read` checks it)."""
    for seq, buf, starts, ends in read_spans(directory, from_seq, to_seq):
        yield seq, [buf[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def read_spans(directory: str | Path, from_seq: int = 1,
               to_seq: int | None = None) -> Iterator[tuple[int, bytes, np.ndarray, np.ndarray]]:
    """`read_runs` without the payloads cut out: ``(seq of the first, segment image, payload
    starts, payload ends)``, the bounds as int64 arrays into the image (replay reads most
    records straight from it, `exchange.framescan.commands`)."""
    if from_seq < 1:
        raise ValueError(f"from_seq must be at least 1, not {from_seq}")
    if to_seq is not None and to_seq < from_seq:
        return
    segs = segments(directory)
    if not segs:
        return
    index = bisect.bisect_right(segs, from_seq, key=lambda seg: seg[0]) - 1
    if index < 0:
        first, path = segs[0]
        raise JournalError(f"{path}: the journal starts at seq {first}, after the requested seq {from_seq}")
    expected = segs[index][0]
    previous: Path | None = None
    for i in range(index, len(segs)):
        first, path = segs[i]
        if first != expected:
            raise JournalError(
                f"{path}: at byte offset 0: segment starts at seq {first}, "
                f"but {previous} ends at seq {expected - 1}"
            )
        buf = path.read_bytes()
        try:
            for seq, starts, ends in _runs(buf, first, from_seq):
                expected = seq + len(starts)
                lo = max(0, from_seq - seq)
                hi = len(starts) if to_seq is None else min(len(starts), to_seq - seq + 1)
                if lo < hi:
                    yield seq + lo, buf, starts[lo:hi], ends[lo:hi]
                if to_seq is not None and expected > to_seq:
                    return
        except _BadRecord as bad:
            if bad.at_end and i == len(segs) - 1:
                return
            raise JournalError(f"{path}: {bad.reason} at byte offset {bad.offset}") from None
        previous = path


def _fsync_directory_of(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_first(path: Path, first_seq: int) -> None:
    """A segment that is not the last must start with a good record carrying its file name's seq."""
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise JournalError(f"{path}: at byte offset 0: a segment before the last holds no whole record")
        length, crc, seq = HEADER.unpack(head)
        if seq != first_seq:
            raise JournalError(f"{path}: at byte offset 0: first record has seq {seq}, the name {first_seq}")
        if length > MAX_PAYLOAD:
            raise JournalError(f"{path}: at byte offset 0: record length {length} exceeds {MAX_PAYLOAD}")
        payload = f.read(length)
        if len(payload) < length or crc32(payload, crc32(head[8:])) != crc:
            raise JournalError(f"{path}: at byte offset 0: first record is torn or fails its CRC")


def _ends_with(path: Path, last_seq: int) -> bool:
    """Whether the segment's final record (the one ending exactly at end of file) is a good
    record with seq last_seq.  Searches backwards for the seq bytes, so it costs about one
    record's worth of reading instead of a scan of the whole segment."""
    target = _SEQ.pack(last_seq)
    size = path.stat().st_size
    with open(path, "rb") as f:
        for window in (_TAIL_PROBE, HEADER_SIZE + MAX_PAYLOAD):
            width = min(window, size)
            f.seek(size - width)
            buf = f.read(width)
            search_end = width
            while (pos := buf.rfind(target, 0, search_end)) >= 8:
                start = pos - 8
                length, crc = _LEN_CRC.unpack_from(buf, start)
                if length == width - start - HEADER_SIZE and crc32(memoryview(buf)[pos:]) == crc:
                    return True
                search_end = pos + len(target) - 1
            if width == size:
                break
    return False


class Journal:
    """The writer of a journal directory.  Make one with `Journal.open`.

    `append` writes a batch (one write call, no sync); `sync` makes everything appended so far
    durable (one fdatasync).  Acknowledge a batch only after its `sync` returned.

    I/O errors (a full disk): an `append` that fails leaves nothing of its batch behind (what
    reached the file is zeroed, or cut, and synced; a segment it was creating is removed) and the
    journal stays usable: a later append may succeed once there is space again.  A `sync` that
    fails is never simply retried (the kernel may have dropped the pages it could not write): the
    journal refuses appends and syncs until `resync` wrote every unsynced record again from memory
    and synced them.  If cleaning up after a failure fails too, the journal is `failed` for good
    and must be re-opened (which recovers the tail).

    One writer per directory: `open` takes an exclusive flock on the directory.  Not thread-safe:
    `sync` and `resync` may run in a worker thread, but not while another thread appends or closes.
    """

    def __init__(
        self,
        directory: Path,
        dir_fd: int,
        segment_bytes: int,
        fsync: bool,
        last_seq: int,
        fd: int | None,
        size: int,
        recovered_truncated_bytes: int,
        preallocate: bool = False,
        ops: FileOps = _OPS,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.preallocate = preallocate
        #: Bytes cut from the end of the last segment by `open` (a torn or corrupt tail); 0 if none.
        self.recovered_truncated_bytes = recovered_truncated_bytes
        self._dir_fd = dir_fd
        self._last_seq = last_seq
        self._fd = fd  # the current segment, written at _size (pwrite); None before the first segment exists
        self._size = size  # bytes of records in the current segment
        self._dirty = False  # appended since the last sync
        self._failed: BaseException | None = None
        self._retryable = False  # _failed by a sync: `resync` may cure it
        self._unsynced: list[tuple[int, bytes]] = []  # (offset, bytes) appended to _fd since the last sync
        self._written = 0  # bytes of the write in progress that reached the file
        self._closed = False
        self.ops = ops

    @classmethod
    def open(cls, directory: str | Path, *, segment_bytes: int = 64 << 20, fsync: bool = True,
             preallocate: bool = False, ops: FileOps | None = None) -> Journal:
        """Open (creating it if missing) the journal in `directory` for appending.

        Checks every segment but the last cheaply: its first record carries the seq of its file
        name, and its final record carries the seq before the next segment's name.  Scans the
        last segment record by record (with CRCs) and truncates it before the first record that
        is torn, fails its CRC or is out of sequence; `recovered_truncated_bytes` says how many
        bytes that cut.  ``preallocate``: allocate each segment up front and write records in
        place (see the module's docstring); the last segment's bad tail is then zeroed, not cut.
        Raises JournalError for damage elsewhere, or when another writer holds the directory.
        ``ops``: the system calls for writing and syncing (tests inject faults through it).
        """
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be at least 1, not {segment_bytes}")
        path = Path(directory)
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            if fsync:
                _fsync_directory_of(path.absolute().parent)
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = None
        try:
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"{path}: the journal is open for writing elsewhere") from None
            segs = segments(path)
            if not segs:
                return cls(path, dir_fd, segment_bytes, fsync, 0, None, 0, 0, preallocate, ops or _OPS)
            if segs[0][0] < 1:
                raise JournalError(f"{segs[0][1]}: sequence numbers start at 1")
            for (first, seg_path), (next_first, _) in zip(segs, segs[1:], strict=False):
                _check_first(seg_path, first)
                if not _ends_with(seg_path, next_first - 1):
                    raise JournalError(
                        f"{seg_path}: the segment does not end with a good record of seq {next_first - 1}, "
                        "the seq before the next segment's"
                    )
            first, last_path = segs[-1]
            buf = last_path.read_bytes()
            last_seq, valid = first - 1, 0
            try:
                for seq, _, end in _records(buf, first, first):
                    last_seq, valid = seq, end
            except _BadRecord as bad:
                after = None if bad.at_end else _intact_record_after(buf, bad.offset, last_seq + 1)
                if after is not None:  # intact records follow the damage: acknowledged ones, never cut
                    raise JournalError(
                        f"{last_path}: {bad.reason} at byte offset {bad.offset} (after seq {last_seq}), and an "
                        f"intact record (seq {after}) follows it: journal entries from seq {last_seq + 1} on are "
                        "at risk. Nothing was changed; restore the segment from a backup or a replica, or copy "
                        "out what can be read before deciding") from None
                valid = bad.offset
            fd = os.open(last_path, os.O_RDWR | os.O_CLOEXEC)
            if preallocate:
                data_end = len(buf.rstrip(b"\0")) if valid < len(buf) else valid
                cut = max(0, data_end - valid)
                if cut:  # zero the bad bytes in place: the allocation stays
                    os.pwrite(fd, bytes(cut), valid)
                want = segment_bytes + PREALLOC_SLACK
                if len(buf) < want:
                    os.posix_fallocate(fd, 0, want)
                if fsync and (cut or len(buf) < want):
                    os.fsync(fd)
            else:
                cut = len(buf) - valid
                if cut:
                    os.ftruncate(fd, valid)
                    if fsync:
                        os.fsync(fd)
            if cut:
                log.warning("journal: cut a torn last record (a write the crash interrupted, never acknowledged)",
                            extra={"segment": str(last_path), "offset": valid, "bytes": cut, "last_seq": last_seq})
            return cls(path, dir_fd, segment_bytes, fsync, last_seq, fd, valid, cut, preallocate, ops or _OPS)
        except BaseException:
            if fd is not None:
                os.close(fd)
            os.close(dir_fd)
            raise

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 for an empty journal)."""
        return self._last_seq

    @property
    def failed(self) -> BaseException | None:
        """The I/O error that stopped the journal (None while it takes appends)."""
        return self._failed

    @property
    def retryable(self) -> bool:
        """Whether `resync` may make a failed journal usable again (it failed in a sync)."""
        return self._failed is not None and self._retryable and not self._closed

    def _usable(self) -> None:
        if self._closed:
            raise ValueError("the journal is closed")
        if self._failed is not None:
            raise JournalError(f"{self.directory}: the journal failed earlier and must be re-opened") from (
                self._failed
            )

    def _start_segment(self) -> None:
        """Close the current segment (cut to its records and fsynced) and create the next one,
        named after the next seq (preallocated when asked), then fsync the directory.  If making
        the new segment fails (a full disk), it is removed again and there is no current segment:
        the next append tries again."""
        ops = self.ops
        if self._fd is not None:
            if self.preallocate:  # only the last segment may end in zeros
                os.ftruncate(self._fd, self._size)
                self._dirty = True
            if self._dirty and self.fsync:
                try:
                    ops.fsync(self._fd)
                except BaseException as exc:  # as a failed sync: `resync` writes its records again
                    self._failed = exc
                    self._retryable = True
                    raise
            self._dirty = False
            self._unsynced = []
            os.close(self._fd)
            self._fd = None
        path = _segment_path(self.directory, self._last_seq + 1)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if self.preallocate:
                ops.fallocate(fd, 0, self.segment_bytes + PREALLOC_SLACK)
                if self.fsync:
                    ops.fsync(fd)  # the size and the allocation, once; then fdatasync per batch
            if self.fsync:
                ops.fsync(self._dir_fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
                if self.fsync:
                    os.fsync(self._dir_fd)
            except OSError:
                log.exception("journal: could not remove the segment it failed to make", extra={"segment": str(path)})
            raise
        self._fd = fd
        self._size = 0

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append one record per payload, with seqs last_seq + 1, ..., in one write call, and
        return the new last_seq.  Does not sync: call `sync` before acknowledging the batch.
        A payload over MAX_PAYLOAD bytes raises ValueError, and nothing is written."""
        self._usable()
        seq = self._last_seq
        parts: list[bytes] = []
        add = parts.append
        pack_len_crc = _LEN_CRC.pack
        pack_seq = _SEQ.pack
        for payload in payloads:
            length = len(payload)
            if length > MAX_PAYLOAD:
                raise ValueError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte limit")
            seq += 1
            seq_bytes = pack_seq(seq)
            add(pack_len_crc(length, crc32(payload, crc32(seq_bytes))))
            add(seq_bytes)
            add(payload)
        if seq == self._last_seq:
            return seq
        data = b"".join(parts)
        self._written = 0
        try:
            if self._fd is None or self._size > self.segment_bytes:
                self._start_segment()
            self._write_all(data, self._size)
        except BaseException as exc:
            self._undo_append(exc)
            raise
        if self.fsync:  # kept until synced, for `resync` (without fsync nothing is ever synced)
            self._unsynced.append((self._size, data))
        self._size += len(data)
        self._dirty = True
        self._last_seq = seq
        return seq

    def _write_all(self, data: bytes, offset: int) -> None:
        """pwrite all of ``data`` at ``offset``: a short write (a nearly full disk) is finished or
        fails.  ``_written`` counts the bytes that reached the file, for `_undo_append`."""
        self._written = 0
        view = memoryview(data)
        while self._written < len(data):
            more = self.ops.pwrite(self._fd, view[self._written:], offset + self._written)  # type: ignore[arg-type]
            if not more:
                raise OSError(errno.ENOSPC, "short write to the journal's segment")
            self._written += more

    def _undo_append(self, exc: BaseException) -> None:
        """After a failed append: nothing of its batch may stay readable (a record past last_seq
        would be replayed as if it had been accepted).  The bytes it wrote are zeroed in place
        (their blocks are allocated already: no space is needed; preallocated: the allocation
        stays) or cut, and that is synced.  If that fails too, the journal is failed for good."""
        wrote, self._written = self._written, 0
        if self._fd is None or self._failed is not None or not wrote:
            return  # no segment, the old one's sync failed (`resync`), or nothing of the batch was written
        try:
            fd, start = self._fd, self._size
            if self.preallocate:
                self._write_all(bytes(wrote), start)
            elif os.fstat(fd).st_size > start:
                os.ftruncate(fd, start)
            if self.fsync:
                self.ops.fsync(fd)
        except BaseException as again:
            self._failed = exc
            self._retryable = False
            log.critical("journal: could not undo a failed append (%r); the journal must be re-opened", again)

    def sync(self) -> None:
        """Make every record appended so far durable: one fdatasync of the current segment (none
        when nothing was appended since the last sync, or when the journal was opened with
        fsync=False).  fdatasync flushes the data and, when a write grew the file, its size."""
        self._usable()
        if not self._dirty:
            return
        if self.fsync:
            try:
                self.ops.fdatasync(self._fd)  # type: ignore[arg-type]
            except BaseException as exc:
                self._failed = exc  # never retry a failed sync: the kernel may have dropped the pages
                self._retryable = True  # ... but `resync` writes them again from memory
                raise
        self._dirty = False
        self._unsynced = []

    def resync(self) -> None:
        """After a failed `sync`: write every record appended since the last good sync again
        (from memory, at its place) and sync.  When that succeeds the records are durable and the
        journal takes appends again; when it fails it raises, and may be called again later.
        Raises JournalError for a journal that did not fail in a sync."""
        if self._closed:
            raise ValueError("the journal is closed")
        if self._failed is None:
            return
        if not self._retryable:
            raise JournalError(f"{self.directory}: the journal failed earlier and must be re-opened") from self._failed
        for offset, data in self._unsynced:
            self._write_all(data, offset)
        if self.fsync:
            self.ops.fdatasync(self._fd)  # type: ignore[arg-type]
        self._failed = None
        self._retryable = False
        self._dirty = False
        self._unsynced = []

    def close(self) -> None:
        """Sync and close.  Idempotent.  A journal that failed is closed without syncing."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.close(self._dir_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exchange.journal DIR [FROM [TO]] [--records]``: summarise or dump a journal."""
    args = list(sys.argv[1:] if argv is None else argv)
    dump = "--records" in args
    args = [a for a in args if a != "--records"]
    if not 1 <= len(args) <= 3:
        print("usage: python -m exchange.journal DIR [FROM [TO]] [--records]", file=sys.stderr)
        return 2
    directory = args[0]
    from_seq = int(args[1]) if len(args) > 1 else 1
    to_seq = int(args[2]) if len(args) > 2 else None
    for first, path in segments(directory):
        print(f"{path.name}  first seq {first}  {path.stat().st_size} bytes")
    count = 0
    last = None
    try:
        for seq, payload in read(directory, from_seq, to_seq):
            count += 1
            last = seq
            if dump:
                print(f"{seq}\t{len(payload)}\t{payload[:32].hex()}{'...' if len(payload) > 32 else ''}")
    except JournalError as exc:
        print(f"{count} good records, then: {exc}", file=sys.stderr)
        return 1
    print(f"{count} records read, last seq {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
