"""`gpux simulate`: JSON-lines commands in, JSON-lines events out, through one book.

Commands are read in batches (one `process` call per batch, as the sequencer will); a line
that cannot be decoded becomes an ``{"type":"error",...}`` line, written where it falls
among the events, and the run goes on.  A batch also ends whenever the input pauses, so
commands typed or piped in one at a time get their events at once.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import msgspec
import numpy as np

from exchange.instruments import ConfigError
from orderbook import reasons as R
from orderbook.book import Book
from orderbook.codec import CodecError, CommandDecoder, LineError, events_to_json, events_to_jsonl
from orderbook.types import COMMAND_DTYPE, Command

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
    lines: Iterable[bytes | str | None], out: BinaryIO, book: Book, batch: int = 4096, *,
    default_class: str = "", open_class: Callable[[str], Book] | None = None,
) -> SimulateStats:
    """Run every command of ``lines`` through ``book``; write events and errors to ``out``.

    A line with ``"class"`` goes to that class's book (``default_class`` is ``book``'s; another
    is opened with ``open_class(name)`` the first time it is named, which may raise
    ``ConfigError``: that line becomes an error).  The events of a line that carried ``class`` or
    ``client_order_id`` carry them too.  Commands of one class without a ``client_order_id`` go
    through their book in batches of at most ``batch``; a command with one goes alone, so that
    exactly its events are tagged."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    stats = SimulateStats()
    books: dict[str, Book] = {default_class: book}
    decoder = CommandDecoder(default_class=default_class)
    pending: list[Command] = []
    key: tuple[str, str | None, str | None] | None = None  # (class, class as written, coid) of pending

    def run() -> None:
        nonlocal pending, key
        if not pending or key is None:
            return
        cls, named, coid = key
        events = books[cls].process(np.array(pending, dtype=COMMAND_DTYPE))
        stats.commands += len(pending)
        stats.events += len(events)
        if named is None and coid is None:
            out.write(events_to_jsonl(events))
        else:
            tag: dict[str, str] = {}
            if named is not None:
                tag["class"] = named
            for ev in events_to_json(events):
                d = {**tag, **ev}
                if coid is not None:
                    d["client_order_id"] = coid
                out.write(_encode(d) + b"\n")
        pending, key = [], None

    def error(number: int, reason: int, message: str) -> None:
        run()
        stats.errors += 1
        out.write(_encode(LineError(number, reason, message).to_json()) + b"\n")
        out.flush()

    number = 0
    for line in lines:
        if line is None:
            run()
            out.flush()
            continue
        number += 1
        if not line.strip():
            continue
        state = (decoder.last_oid, dict(decoder.times))
        try:
            cmd, named, coid = decoder.decode_line(line)
        except CodecError as e:
            error(number, e.reason, e.message)
            continue
        cls = default_class if named is None else named
        if cls not in books:
            try:
                if open_class is None:
                    raise ConfigError(f"this run has one book, {default_class or 'the default'}")
                books[cls] = open_class(cls)
            except ConfigError as e:
                decoder.last_oid, decoder.times = state  # the line used no order id and no time
                error(number, R.MALFORMED, f"no GPU class {cls!r}: {e} - at `$.class`")
                continue
        k = (cls, named, coid)
        if key != k or coid is not None or len(pending) >= batch:
            run()
        pending.append(cmd)
        key = k
        if coid is not None:
            run()
    run()
    out.flush()
    return stats
