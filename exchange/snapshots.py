"""Snapshots of the core: every book's snapshot blob and state hash, the exchange state, the
journal seq they stand at.  Start-up restores the newest usable one and replays the journal
after it (`exchange.recovery`).

    blob = encode_snapshot(engine.capture())      # deflated books; can run in a worker thread
    path = write_snapshot(data_dir, seq, blob)    # atomic: temp file, fsync, rename, fsync dir
    for seq, path in reversed(snapshots(data_dir)): ...
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import msgspec

from exchange.money import MoneySnap
from exchange.state import Encoded
from exchange.tables import TableData

SNAP_SUFFIX = ".snap"


class BookSnap(msgspec.Struct, array_like=True):
    engine: str
    time: int
    state_hash: int
    blob: bytes


class Snapshot(msgspec.Struct, kw_only=True):
    seq: int  # last journal seq applied
    books: dict[str, BookSnap]
    state: TableData
    last_oid: int = 0  # the highest order id the sequencer gave out
    version: int = 4  # 2: book blobs are zlib-compressed; 3: money in the core; 4: the state as tables
    money: MoneySnap | None = None  # None in snapshots older than money in the core: not usable
    money_hash: int = 0


class SnapshotMismatch(RuntimeError):
    """A restored book's state hash differs from the one recorded with its snapshot."""


def encode_snapshot(snap: Snapshot) -> bytes:
    """Snapshot bytes: book blobs deflated (a numba book's arrays are mostly empty: ~40 MB -> <1 MB)."""
    books = {name: BookSnap(b.engine, b.time, b.state_hash, zlib.compress(b.blob, 1)) for name, b in snap.books.items()}
    return msgspec.msgpack.encode(Snapshot(seq=snap.seq, books=books, state=snap.state, last_oid=snap.last_oid,
                                           version=snap.version, money=snap.money, money_hash=snap.money_hash))


def encode_snapshot_parts(snap: Snapshot) -> list[bytes | memoryview]:
    """`encode_snapshot`'s bytes as pieces, in order.  Fields of ``snap.state`` may be `Encoded`
    (their msgpack, in pieces: `ExchangeState.capture`); they are spliced in, never joined, so
    no single call holds the GIL for the whole state (`write_snapshot` writes the pieces)."""
    fields = {f: v for f in type(snap.state).__struct_fields__ if isinstance(v := getattr(snap.state, f), Encoded)}
    if not fields:
        return [encode_snapshot(snap)]
    token = os.urandom(16)
    marks = {f: msgspec.msgpack.encode(token + f.encode()) for f in fields}  # bin values: found verbatim
    state = msgspec.structs.replace(snap.state, **{f: msgspec.Raw(m) for f, m in marks.items()})
    blob = encode_snapshot(msgspec.structs.replace(snap, state=state))
    parts: list[bytes | memoryview] = []
    at = 0
    for f, mark in sorted(marks.items(), key=lambda fm: blob.index(fm[1])):
        pos = blob.index(mark, at)
        parts.append(blob[at:pos])
        parts.extend(fields[f])
        at = pos + len(mark)
    parts.append(blob[at:])
    return parts


def snapshot_dir(data_dir: Path) -> Path:
    return data_dir / "snapshots"


def write_snapshot(data_dir: Path, seq: int, blob: bytes | list[bytes | memoryview], keep: int = 3) -> Path:
    """Write atomically (temp file, fsync, rename, fsync dir); keep the newest ``keep``.  ``blob``
    may be a list of pieces (`encode_snapshot_parts`), written one after another."""
    d = snapshot_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{seq:020d}{SNAP_SUFFIX}"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for piece in [blob] if isinstance(blob, bytes) else blob:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in sorted(d.glob(f"*{SNAP_SUFFIX}"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def snapshots(data_dir: Path) -> list[tuple[int, Path]]:
    """The snapshot files of a data directory, oldest first, with their journal seqs."""
    d = snapshot_dir(data_dir)
    out = []
    for p in d.glob(f"*{SNAP_SUFFIX}") if d.exists() else ():
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)
