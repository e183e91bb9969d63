"""Checking the journal and the snapshots without running the exchange, copying out what can be
read of a damaged journal, and verifying closed segments in the background of a running server.

    problems, notes = check(data_dir)                  # `gpux journal check DATA`
    report = salvage(data_dir / "journal", out_dir)    # `gpux journal salvage DATA OUT`
    verifier = SegmentVerifier(data_dir / "journal")   # in `gpux serve`: /healthz and /metrics
    verifier.start()

A segment is read record by record with every CRC checked (`scan`).  At a record that is not
good, the scan looks for the next intact record after it (a CRC-valid record with a later seq,
found by its seq bytes, so a damaged length field does not hide what follows) and goes on from
there: one `Damage` per damaged stretch, naming the segment, the byte offset and the seqs lost.
Zeros after the last record of the last segment are the end of the journal (segments are
preallocated), and a bad last record with nothing intact after it is a torn tail (a write a crash
interrupted, never acknowledged; `Journal.open` cuts it): neither is damage.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from exchange.journal import HEADER, HEADER_SIZE, MAX_PAYLOAD, segments

log = logging.getLogger("gpux.integrity")

_U64 = np.dtype("<u8")


@dataclass(frozen=True)
class Damage:
    """A damaged stretch of a segment: it starts at ``offset``; the seqs ``first``..``last`` are
    missing (``last`` None: to the end of the journal; ``last < first``: none missing, but bytes
    that are no record sit between two good records)."""

    path: Path
    offset: int
    reason: str
    first: int
    last: int | None
    resumes: int | None = None  # the seq of the next intact record in the segment, if any

    def __str__(self) -> str:
        if self.last is None:
            lost = f"seqs {self.first} to the end of the segment are lost"
        elif self.last < self.first:
            lost = "no seq is missing (bytes that are no record)"
        elif self.last == self.first:
            lost = f"seq {self.first} is lost"
        else:
            lost = f"seqs {self.first}-{self.last} are lost"
        after = f"; intact records resume at seq {self.resumes}" if self.resumes is not None else ""
        return f"{self.path}: {self.reason} at byte offset {self.offset}: {lost}{after}"


@dataclass(frozen=True)
class Record:
    seq: int
    start: int  # payload start in the segment image
    end: int


@dataclass(frozen=True)
class Torn:
    """A bad last record of the last segment with nothing intact after it (never acknowledged)."""

    path: Path
    offset: int
    size: int  # bytes from offset to the last non-zero byte


def _record_at(buf: bytes | memoryview, view: memoryview, offset: int, size: int) -> tuple[int, int] | None:
    """(seq, end) of an intact record starting at ``offset``, else None."""
    if size - offset < HEADER_SIZE:
        return None
    length, crc, seq = HEADER.unpack_from(buf, offset)
    end = offset + HEADER_SIZE + length
    if length > MAX_PAYLOAD or end > size or zlib.crc32(view[offset + 8:end]) != crc:
        return None
    return seq, end


def _find_intact(buf: bytes, start: int, lo: int, hi: int) -> tuple[int, int, int] | None:
    """The first intact record at or after byte ``start`` whose seq is in [lo, hi): (offset, seq,
    end).  Candidates are found by their seq field (any byte alignment), then CRC-checked."""
    size = len(buf)
    if size - start < HEADER_SIZE:
        return None
    view = memoryview(buf)
    base = start + 8  # the seq field of a record starting at `start`
    found: list[np.ndarray] = []
    for k in range(8):
        off = base + k
        count = (size - off) // 8
        if count <= 0:
            continue
        arr = np.frombuffer(buf, dtype=_U64, count=count, offset=off)
        hits = np.flatnonzero((arr >= lo) & (arr < hi))
        if len(hits):
            found.append(hits * 8 + off - 8)  # record starts
    if not found:
        return None
    for pos in np.sort(np.concatenate(found)).tolist():
        got = _record_at(buf, view, pos, size)
        if got is not None and lo <= got[0] < hi:
            return pos, got[0], got[1]
    return None


def scan(path: Path, buf: bytes, first: int, next_first: int | None,
         pause: Callable[[], None] | None = None) -> Iterator[Record | Damage | Torn]:
    """Every record, damaged stretch and torn tail of the segment image ``buf`` (file ``path``),
    whose first record should carry seq ``first``.  ``next_first``: the next segment's first seq
    (the segment must end with the seq before it), None for the last segment.  ``pause`` is
    called every few thousand records (a background verifier yields the CPU there)."""
    size = len(buf)
    view = memoryview(buf)
    offset, seq = 0, first
    last_seg = next_first is None
    # a segment holds at most one record per HEADER_SIZE bytes: seqs beyond that are not its own
    hi = next_first if next_first is not None else first + size // HEADER_SIZE + 1
    n = 0
    while offset < size:
        got = _record_at(buf, view, offset, size)
        if got is not None and got[0] == seq:
            yield Record(seq, offset + HEADER_SIZE, got[1])
            offset, seq = got[1], seq + 1
            n += 1
            if pause is not None and n % 4096 == 0:
                pause()
            continue
        reason = _why(buf, offset, size, seq)
        if buf.count(0, offset) == size - offset:  # only zeros from here
            if not last_seg:
                yield Damage(path, offset, "zeros where records should be", seq, hi - 1)
            return
        nxt = _find_intact(buf, offset, seq, hi) if seq < hi else None
        if nxt is None:
            if last_seg:
                yield Torn(path, offset, len(buf.rstrip(b"\0")) - offset)
            else:
                yield Damage(path, offset, reason, seq, hi - 1)
            return
        pos, resumes, _ = nxt
        yield Damage(path, offset, reason, seq, resumes - 1, resumes)
        offset, seq = pos, resumes
    if next_first is not None and seq < next_first:
        yield Damage(path, offset, f"the segment's records end at seq {seq - 1}, before the next segment's "
                                   f"first seq {next_first}", seq, next_first - 1)
    elif next_first is not None and seq > next_first:
        yield Damage(path, offset, f"the segment's records run to seq {seq - 1}, past the next segment's "
                                   f"first seq {next_first}", next_first, next_first - 1)


def _why(buf: bytes, offset: int, size: int, seq: int) -> str:
    if size - offset < HEADER_SIZE:
        return "torn record header (the file ends inside it)"
    length, crc, got = HEADER.unpack_from(buf, offset)
    if length > MAX_PAYLOAD:
        return f"record length {length} exceeds {MAX_PAYLOAD}"
    if offset + HEADER_SIZE + length > size:
        return "torn record (its payload runs past the end of the file)"
    if got != seq:
        return f"record has seq {got} where {seq} was expected"
    return f"record seq {seq} fails its CRC"


@dataclass
class SegmentReport:
    path: Path
    first: int
    records: int = 0
    last_seq: int | None = None
    damage: list[Damage] = field(default_factory=list)
    torn: Torn | None = None


def check_segment(path: Path, first: int, next_first: int | None,
                  pause: Callable[[], None] | None = None) -> SegmentReport:
    """Read one segment whole and check every record (see `scan`)."""
    rep = SegmentReport(path, first)
    buf = path.read_bytes()
    for item in scan(path, buf, first, next_first, pause):
        if type(item) is Record:
            rep.records += 1
            rep.last_seq = item.seq
        elif type(item) is Damage:
            rep.damage.append(item)
        else:
            rep.torn = item
    return rep


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)  # one line each
    notes: list[str] = field(default_factory=list)  # what was found and is fine
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    segments: int = 0
    snapshots: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_journal(journal_dir: Path, result: CheckResult | None = None) -> CheckResult:
    """Verify every segment of the journal in ``journal_dir``: names, continuity, every CRC."""
    res = result or CheckResult()
    if not journal_dir.is_dir():
        res.problems.append(f"{journal_dir}: no journal directory")
        return res
    segs = segments(journal_dir)
    res.segments = len(segs)
    if not segs:
        res.notes.append(f"{journal_dir}: the journal is empty")
        return res
    if segs[0][0] < 1:
        res.problems.append(f"{segs[0][1]}: sequence numbers start at 1")
    for i, (first, path) in enumerate(segs):
        nxt = segs[i + 1][0] if i + 1 < len(segs) else None
        if nxt is not None and nxt <= first:
            res.problems.append(f"{segs[i + 1][1]}: segment name {nxt} is not after {first}")
            nxt = None
        try:
            rep = check_segment(path, first, nxt)
        except OSError as e:
            res.problems.append(f"{path}: cannot be read: {e.strerror or e}")
            continue
        res.records += rep.records
        if rep.records and res.first_seq is None:
            res.first_seq = first
        if rep.last_seq is not None:
            res.last_seq = rep.last_seq
        res.problems += [str(d) for d in rep.damage]
        if rep.torn is not None:
            res.notes.append(f"{path}: a torn last record at byte offset {rep.torn.offset} ({rep.torn.size} bytes, "
                             "a write a crash interrupted, never acknowledged): start-up cuts it")
    return res


def check_snapshots(data_dir: Path, cfg: Any = None, result: CheckResult | None = None) -> CheckResult:
    """Verify every snapshot of ``data_dir``: it decodes, its name is its seq, and it restores
    (every book with its state hash, the money with its hash) with the instruments of ``cfg``
    (a ServerConfig; None: the defaults), as start-up would restore it."""
    from exchange.config import ServerConfig
    from exchange.engine import Engine
    from exchange.money import settlement_config
    from exchange.snapshots import Snapshot, snapshots

    res = result or CheckResult()
    cfg = cfg or ServerConfig(data_dir=str(data_dir))
    for seq, path in snapshots(data_dir):
        res.snapshots += 1
        try:
            blob = path.read_bytes()
            snap = msgspec.msgpack.decode(blob, type=Snapshot)
            if snap.seq != seq:
                raise ValueError(f"it holds seq {snap.seq}, its name says {seq}")
            engines = {b.engine for b in snap.books.values()}
            engine = Engine(cfg.instruments, engines.pop() if len(engines) == 1 else cfg.engine, 1,
                            settlement_config(cfg))
            try:
                engine.load_snapshot(blob)
            finally:
                engine.close()
        except Exception as e:  # whatever the damage: start-up skips it for an older one
            res.problems.append(f"{path}: snapshot not usable: {e}")
            continue
        if res.last_seq is not None and seq > res.last_seq:
            res.problems.append(f"{path}: snapshot at seq {seq} is ahead of the journal's last seq {res.last_seq}")
        else:
            res.notes.append(f"{path}: snapshot at seq {seq} restores")
    return res


def check(data_dir: Path, cfg: Any = None) -> CheckResult:
    """`check_journal` of DATA/journal, then `check_snapshots` of DATA."""
    res = check_journal(Path(data_dir) / "journal")
    return check_snapshots(Path(data_dir), cfg, res)


# ---------------------------------------------------------------------------------------- salvage
@dataclass
class SalvageReport:
    records: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)  # seq ranges copied, in order
    damage: list[Damage] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)  # written in OUT

    @property
    def gaps(self) -> list[tuple[int, int]]:
        return [(a[1] + 1, b[0] - 1) for a, b in zip(self.ranges, self.ranges[1:], strict=False) if b[0] > a[1] + 1]


class SalvageError(Exception):
    """OUT cannot take a salvaged journal (it exists and is not empty, or is the source)."""


def salvage(journal_dir: Path, out: Path, segment_bytes: int = 64 << 20) -> SalvageReport:
    """Copy every intact record of the journal in ``journal_dir`` — those after damaged ones too —
    byte for byte (its seq and CRC unchanged) into a new journal in ``out`` (which must not exist,
    or be empty).  A gap in the seqs (the records a damaged stretch lost) starts a new segment,
    named after its first seq as always, so the gap is one between segments: `gpux journal check
    OUT` names it, and the exchange does not start on OUT until an operator decided what to do
    about it.  The source is only read.  Files are fsynced, then OUT."""
    journal_dir, out = Path(journal_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise SalvageError(f"{out} exists and is not empty; give a new directory")
    if out.exists() and out.resolve() == journal_dir.resolve():
        raise SalvageError("OUT must not be the journal being salvaged")
    out.mkdir(parents=True, exist_ok=True)
    rep = SalvageReport()
    fd: int | None = None
    size = 0
    last = 0  # the last seq copied
    segs = segments(journal_dir)
    try:
        for i, (first, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= first:
                nxt = None
            buf = path.read_bytes()
            for item in scan(path, buf, first, nxt):
                if type(item) is Damage:
                    rep.damage.append(item)
                    continue
                if type(item) is not Record or item.seq <= last:
                    continue  # a torn tail, or a seq already copied (a duplicate record)
                if fd is not None and (item.seq != last + 1 or size > segment_bytes):
                    os.fsync(fd)
                    os.close(fd)
                    fd = None
                if fd is None:
                    seg = out / f"{item.seq:020d}.seg"
                    fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    size = 0
                    rep.segments.append(seg)
                    if item.seq != last + 1 or not rep.ranges:
                        rep.ranges.append((item.seq, item.seq))
                record = buf[item.start - HEADER_SIZE:item.end]
                os.write(fd, record)
                size += len(record)
                last = item.seq
                rep.records += 1
                rep.ranges[-1] = (rep.ranges[-1][0], last)
        if fd is not None:
            os.fsync(fd)
    finally:
        if fd is not None:
            os.close(fd)
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return rep


# ---------------------------------------------------------------------------- background verifier
class SegmentVerifier:
    """Reads every closed segment of a running exchange's journal (all but the last: they never
    change) and checks every record, in a thread of its own at the lowest CPU priority, pausing
    between stretches of records so that the order path keeps the interpreter: once after start,
    new segments as they close, and every segment again each ``every_s`` seconds (bits rot).
    Damage is reported in `health` (the segment, offset and seqs) and `metric_samples` long
    before a replay needs those segments."""

    def __init__(self, journal_dir: Path, every_s: float = 6 * 3600, poll_s: float = 60.0) -> None:
        self.dir = Path(journal_dir)
        self.every_s = every_s
        self.poll_s = poll_s
        self.damage: dict[Path, list[str]] = {}  # segment -> its problems (one line each)
        self.verified: dict[Path, float] = {}  # segment -> when it was last verified (monotonic)
        self.segments_verified = 0
        self.bytes_verified = 0
        self.passes = 0  # rounds over every closed segment
        self.errors = 0
        self.failed: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._recheck = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="gpux-verify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Look for closed segments to verify now (new ones are otherwise found every ``poll_s``)."""
        self._wake.set()

    def recheck(self) -> None:
        """Verify every closed segment again now, not ``every_s`` after its last verification."""
        self._recheck = True
        self._wake.set()

    def _work(self) -> None:
        try:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
            except (OSError, AttributeError):
                pass
            while not self._stop.is_set():
                self.verify_due()
                self._wake.wait(self.poll_s)
                self._wake.clear()
        except BaseException as e:  # reported unhealthy, never running on half-alive
            log.critical("the journal verifier stopped: %r", e, exc_info=True)  # (logged before /healthz says so)
            self.failed = e

    def _pause(self) -> None:
        time.sleep(0.001)  # hand the interpreter to the order path
        if self._stop.is_set():
            raise _Stopped

    def verify_due(self) -> int:
        """Verify the closed segments never verified, or verified ``every_s`` ago; returns how many."""
        segs = segments(self.dir)
        now = time.monotonic()
        if self._recheck:
            self._recheck = False
            self.verified.clear()
        present = {path for _, path in segs}
        for gone in [p for p in self.damage if p not in present]:  # removed (e.g. restored elsewhere, or pruned)
            del self.damage[gone]
        for gone in [p for p in self.verified if p not in present]:
            del self.verified[gone]
        done = 0
        for (first, path), (nxt, _) in zip(segs, segs[1:], strict=False):
            if self._stop.is_set():
                break
            seen = self.verified.get(path)
            if seen is not None and now - seen < self.every_s:
                continue
            try:
                rep = check_segment(path, first, nxt, self._pause)
            except _Stopped:
                break
            except FileNotFoundError:  # removed meanwhile
                self.damage.pop(path, None)
                continue
            except OSError as e:
                self.errors += 1
                self.damage[path] = [f"{path}: cannot be read: {e.strerror or e}"]
                log.error("journal segment cannot be read", extra={"segment": str(path), "error": str(e)})
            else:
                problems = [str(d) for d in rep.damage]
                if problems:
                    if self.damage.get(path) != problems:
                        for p in problems:
                            log.error("journal segment damaged: %s", p)
                    self.damage[path] = problems
                elif self.damage.pop(path, None) is not None:
                    log.warning("journal segment verified intact again", extra={"segment": str(path)})
                self.bytes_verified += path.stat().st_size
            self.verified[path] = time.monotonic()
            self.segments_verified += 1
            done += 1
        else:
            if done:
                self.passes += 1
        return done

    def health(self) -> str:
        if self.failed is not None:
            return f"the journal verifier stopped: {self.failed!r}"
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the journal verifier's thread ended"
        damage = list(self.damage.values())  # (one C call: the verifier thread may change the dict)
        if damage:
            lines = [p for probs in damage for p in probs]
            return "journal damaged (`gpux journal check`, docs/operations.md): " + " | ".join(lines)
        return "ok"

    def metric_samples(self) -> list[tuple[str, Any, str, str]]:
        return [("gpux_journal_damaged_segments", len(self.damage),
                 "closed journal segments the background verifier found damaged", "gauge"),
                ("gpux_journal_verified_segments_total", self.segments_verified,
                 "closed journal segments read and CRC-checked in the background", "counter"),
                ("gpux_journal_verified_bytes_total", self.bytes_verified,
                 "bytes of closed journal segments verified in the background", "counter"),
                ("gpux_journal_verify_errors_total", self.errors, "segments the verifier could not read", "counter"),
                ("gpux_journal_verifier_up", int(self.failed is None and self._thread is not None
                                                 and self._thread.is_alive()),
                 "1 while the background journal verifier runs", "gauge")]


class _Stopped(Exception):
    pass
