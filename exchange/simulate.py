"""`gpux simulate`: JSON-lines commands in, JSON-lines events out, through one book.

Commands are read in batches (one `process` call per batch, as the sequencer will); a line
that cannot be decoded becomes an ``{"type":"error",...}`` line, written where it falls
among the events, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def simulate(lines: Iterable[bytes | str], out: BinaryIO, book: Book, batch: int = 4096) -> SimulateStats:
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
