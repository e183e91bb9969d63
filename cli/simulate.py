"""`gpux simulate`: JSON-lines commands in, JSON-lines events out, through one book.

Commands are read in batches (one `process` call per batch, as the sequencer will); a line
that cannot be decoded becomes an ``{"type":"error",...}`` line, written where it falls
among the events, and the run goes on.  A batch also ends whenever the input pauses, so
commands typed or piped in one at a time get their events at once.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import msgspec

from orderbook.book import Book
from orderbook.codec import CommandDecoder, LineError, events_to_jsonl, read_commands

_encode = msgspec.json.Encoder().encode


@dataclass
class SimulateStats:
    commands: int = 0
    events: int = 0
    errors: int = 0


def stream_lines(fd: int, chunk: int = 1 << 16) -> Iterator[bytes | None]:
    """Lines read from a file descriptor, with ``None`` wherever the input pauses (nothing more
    is ready to read): the caller can act on what it has instead of waiting for a full batch."""
    rest = b""
    while True:
        data = os.read(fd, chunk)
        if not data:
            if rest:
                yield rest
            return
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        yield from lines
        if not select.select([fd], [], [], 0)[0]:
            yield None


def simulate(
    lines: Iterable[bytes | str | None], out: BinaryIO, book: Book, batch: int = 4096
) -> SimulateStats:
    """Run every command of ``lines`` through ``book``; write events and errors to ``out``."""
    stats = SimulateStats()
    for item in read_commands(lines, batch=batch, decoder=CommandDecoder()):
        if isinstance(item, LineError):
            stats.errors += 1
            out.write(_encode(item.to_json()) + b"\n")
        else:
            events = book.process(item)
            stats.commands += len(item)
            stats.events += len(events)
            out.write(events_to_jsonl(events))
        out.flush()
    return stats
