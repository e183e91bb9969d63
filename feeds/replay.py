"""Replay of a market-data recording (R21): numpy loading, the book at any past sequence number,
the `gpux replay` command and the WebSocket replay endpoint.

    from feeds.replay import load, book_at
    rec = load("gpux-data", classes=["H100"])          # EVENT_DTYPE arrays per class
    trades = rec.events["H100"][rec.events["H100"]["type"] == EV_TRADE]
    book = book_at("gpux-data", "H100", seq=41_000)    # the level-2 model after event 41,000
    book.level2()                                      # {"bids": [[price, gpus], ...], ...}

The replay endpoint (``GET /v1/replay?from=&to=&speed=&class=``, also ``gpux replay PATH
--serve PORT``) speaks the live feed's protocol: subscribe as on ``/v1/feeds``; playback starts
with the first subscription, from the state at ``from``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec
import numpy as np
from aiohttp import web

from feeds.hub import Conn, Hub
from feeds.model import INTERVALS, BookModel, ClassFeed
from feeds.recording import Recording, RecordingError, load, recording_dir
from feeds.tables import (
    CHANNEL_COLUMNS,
    EVENT_COLUMNS,
    Anonymizer,
    ParquetOut,
    channel_rows,
    event_columns,
    rows_to_columns,
)
from orderbook.codec import events_to_json

__all__ = ["load", "book_at", "feed_at", "Recording", "RecordingError", "serve_replay", "main"]

_enc = msgspec.json.Encoder()
MAX_REPLAYS = 4  # replay connections served at once by one server
MAX_REPLAYS_PER_ADDRESS = 1  # ... and from one address (idle ones cannot take every slot)
SUBSCRIBE_TIMEOUT_S = 10.0  # a replay connection that subscribes to nothing this long is closed
_by_peer: dict[str, int] = {}
_active = 0


# ---------------------------------------------------------------------- the book at a past seq
def feed_at(path: str | Path | Recording, gpu_class: str, seq: int, time: int | None = None) -> ClassFeed:
    """The class's market data (level-2 model and trade statistics) right after its event ``seq``.

    Engine time also moves the book (leases start and end): the state returned is the latest one
    that still has ``seq`` as its last event — engine time advanced through the recorded rounds
    that came before the next event — or, with ``time``, the one at the latest recorded engine
    time at or before ``time``.  If ``seq`` falls inside a round, the events up to it apply at
    the engine time of event ``seq`` itself.  ``seq`` 0 is the empty book."""
    rec = path if isinstance(path, Recording) else load(path, classes=[gpu_class])
    if gpu_class not in rec.events:
        raise KeyError(f"the recording has no class {gpu_class!r}; it has {', '.join(rec.classes) or 'none'}")
    events = rec.events[gpu_class]
    last = int(events["seq"][-1]) if len(events) else 0
    if not 0 <= seq <= last:
        raise ValueError(f"{gpu_class}: seq {seq} is not in the recording (its events go up to {last})")
    feed = ClassFeed(gpu_class)
    cls = rec.classes.index(gpu_class)
    blocks = rec.blocks[rec.blocks["cls"] == cls]
    for _rseq, _jseq, _c, when, first, count in blocks.tolist():
        if count:
            ev = events[first:first + count]
            if int(ev["seq"][0]) > seq:
                break
            if int(ev["seq"][-1]) > seq:
                part = ev[ev["seq"] <= seq]
                feed.update(part, max(feed.now, int(part["time"][-1])))
                break
            feed.update(ev, when)
        else:
            if time is not None and when > time:
                break
            feed.update(None, when)
    return feed


def book_at(path: str | Path | Recording, gpu_class: str, seq: int, time: int | None = None) -> BookModel:
    """The level-2 book model of ``gpu_class`` right after its event ``seq`` (see `feed_at`)."""
    return feed_at(path, gpu_class, seq, time).book


# ---------------------------------------------------------------------- rounds as feed messages
def messages(rec: Recording, channels: Sequence[str], from_time: int | None = None,
             feeds: dict[str, ClassFeed] | None = None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(engine time, messages) per recorded round, for the given streams, as the live feed
    published them; rounds before ``from_time`` build the state silently, then every class's
    snapshot of each stream comes first."""
    feeds = feeds if feeds is not None else {name: ClassFeed(name) for name in rec.classes}
    started = from_time is None
    want = set(channels)
    if started:
        yield 0, [feeds[n].snapshot(s) for n in sorted(feeds) for s in channels]
    for _rseq, _jseq, blocks in rec.drains():
        when = max(b[1] for b in blocks)
        if not started and when >= (from_time or 0):
            started = True
            yield when, [feeds[n].snapshot(s) for n in sorted(feeds) for s in channels]
        out = []
        for name, t, ev in blocks:
            for stream, msg in feeds[name].update(ev, t):
                if started and stream in want:
                    out.append(msg)
        if started and out:
            yield when, out
    if not started:
        yield 0, [feeds[n].snapshot(s) for n in sorted(feeds) for s in channels]


# ---------------------------------------------------------------------- the WebSocket endpoint
def parse_time(text: str | None) -> int | None:
    """UTC seconds from an integer or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither UTC seconds nor an ISO 8601 time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp())


def _bad(message: str, status: int = 400, code: str = "MALFORMED") -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def serve_replay(request: web.Request, path: Path, max_buffer: int = 16 << 20) -> web.StreamResponse:
    """One replay connection: ``?from=&to=&speed=&class=a,b&delay=`` (times as UTC seconds or ISO
    8601; speed = engine seconds per wall second, 0 = as fast as the client reads, default 1).
    Playback starts ``delay`` seconds (default 0.25) after the first subscription, so that a
    client's subscriptions sent together all get their snapshot at the start."""
    global _active
    if not web.WebSocketResponse().can_prepare(request).ok:  # before reading the recording or taking a slot
        return _bad(f"{request.path} is a WebSocket endpoint: connect with an upgrade")
    q = request.query
    try:
        t_from = parse_time(q.get("from"))
        t_to = parse_time(q.get("to"))
        speed = float(q.get("speed", "1"))
        if speed < 0 or speed != speed:
            raise ValueError("speed must be 0 (as fast as possible) or positive")
        delay = float(q.get("delay", "0.25"))
        if not 0 <= delay <= 60:
            raise ValueError("delay must be between 0 and 60 seconds")
    except ValueError as e:
        return _bad(str(e))
    classes = [c for c in q.get("class", "").split(",") if c] or None
    if _active >= MAX_REPLAYS:
        return _bad(f"at most {MAX_REPLAYS} replays at once; try again later", 503, "UNAVAILABLE")
    peer = request.remote or ""
    if _by_peer.get(peer, 0) >= MAX_REPLAYS_PER_ADDRESS:
        return _bad(f"at most {MAX_REPLAYS_PER_ADDRESS} replay at once from one address; try again later", 503,
                    "UNAVAILABLE")
    _active += 1
    _by_peer[peer] = _by_peer.get(peer, 0) + 1
    try:
        loop = asyncio.get_running_loop()
        try:
            rec = await loop.run_in_executor(None, lambda: load(path, classes=classes, to_time=t_to))
        except (RecordingError, OSError) as e:
            return _bad(f"the recording cannot be read: {e}", 500, "INTERNAL")
        feeds = {name: ClassFeed(name) for name in rec.classes}
        drains = list(rec.drains())
        k = 0
        if t_from is not None:  # build the state at `from` before anyone subscribes
            def forward() -> int:
                i = 0
                for i, (_r, _j, blocks) in enumerate(drains):  # noqa: B007
                    if max(b[1] for b in blocks) >= t_from:
                        return i
                    for name, t, ev in blocks:
                        feeds[name].update(ev, t)
                return len(drains)

            k = await loop.run_in_executor(None, forward)
        hub = Hub(feeds, max_buffer=max_buffer,
                  hello={"replay": {"from": t_from, "to": t_to, "speed": speed, "rounds": len(drains) - k}})
        started = asyncio.Event()
        hub.on_first_subscribe = lambda _c: started.set()
        task = asyncio.create_task(_play(hub, feeds, drains[k:], speed, started, delay))
        idle = asyncio.create_task(_close_if_idle(hub, started))
        try:
            return await hub.handle(request)
        finally:
            task.cancel()
            idle.cancel()
            await asyncio.gather(task, idle, return_exceptions=True)
            await hub.close()
    finally:
        _active -= 1
        left = _by_peer.get(peer, 0) - 1
        if left > 0:
            _by_peer[peer] = left
        else:
            _by_peer.pop(peer, None)


async def _close_if_idle(hub: Hub, started: asyncio.Event) -> None:
    """A replay slot is for playing: a connection that subscribes to nothing gives it back."""
    try:
        await asyncio.wait_for(started.wait(), SUBSCRIBE_TIMEOUT_S)
    except TimeoutError:
        await hub.close(code=1008, reason=f"no subscription within {SUBSCRIBE_TIMEOUT_S:g} s")


async def _play(hub: Hub, feeds: dict[str, ClassFeed], drains: list[Any], speed: float, started: asyncio.Event,
                delay: float) -> None:
    await started.wait()
    await asyncio.sleep(delay)
    hub.start()
    loop = asyncio.get_running_loop()
    t0_wall = loop.time()
    t0_eng: int | None = None
    n = 0
    for _rseq, _jseq, blocks in drains:
        when = max(b[1] for b in blocks)
        if speed > 0:
            if t0_eng is None:
                t0_eng = when
            delay = (when - t0_eng) / speed - (loop.time() - t0_wall)
            if delay > 0:
                await asyncio.sleep(delay)
        for name, t, ev in blocks:
            for stream, msg in feeds[name].update(ev, t):
                hub.publish(name, stream, msg)
        n += 1
        if n % 64 == 0 or speed > 0:
            await asyncio.sleep(0)
            await _backpressure(hub)
    hub.flush()
    await _backpressure(hub, 0)
    for c in list(hub.conns):
        _send_end(hub, c, n)
        if c.ws is not None:
            await asyncio.sleep(0)
            await c.ws.close(code=1000, message=b"replay finished")


async def _backpressure(hub: Hub, high: int | None = None) -> None:
    """Replay waits for its reader instead of cutting it off."""
    limit = hub.max_buffer // 2 if high is None else high
    for _ in range(10_000):
        busy = [c for c in hub.conns if c.transport is not None and not c.transport.is_closing()
                and c.transport.get_write_buffer_size() > limit]
        if not busy:
            return
        await asyncio.sleep(0.005)


def _send_end(hub: Hub, c: Conn, rounds: int) -> None:
    hub._push(c, {"type": "replay_end", "rounds": rounds,
                  "classes": {n: {"seq": f.seq, "time": f.now} for n, f in sorted(hub.feeds.items())}})
    hub.flush()


def replay_app(path: str | Path) -> web.Application:
    """A standalone replay server for a recording (``gpux replay PATH --serve PORT``)."""
    app = web.Application()
    d = recording_dir(path)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_replay(request, d)

    app.router.add_get("/v1/replay", handler)
    return app


# ---------------------------------------------------------------------- gpux replay
class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True, label: str = "replay") -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.label = label
        self.t0 = time.perf_counter()
        self._last = -1.0

    def update(self, done: int, events: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(1.0, done / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = events / max(now - self.t0, 1e-9)
        self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}%  {events:,} events  {rate:,.0f}/s ")
        self.stream.flush()

    def done(self, events: int) -> None:
        if self.enabled:
            self.update(self.total, events, force=True)
            self.stream.write("\n")
            self.stream.flush()


CSV_FIELDS = CHANNEL_COLUMNS  # the columns of each channel's table (feeds/tables.py)
EVENT_CHUNK = 65_536  # events per CSV write or Parquet row group


def _csv_rows(msg: dict[str, Any]) -> Iterator[list[Any]]:
    return channel_rows(msg)


def _event_csv_header() -> list[str]:
    return list(EVENT_COLUMNS)


def book_snapshots(rec: Recording, every: int, from_time: int | None = None,
                   to_time: int | None = None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(T, a book snapshot per class) at every multiple T of ``every`` engine seconds from the
    recording's first round (or ``from_time``) to its last (or ``to_time``): each class's book
    after every recorded round whose engine time is at most T, with ``time`` = T."""
    if every < 1:
        raise ValueError("the snapshot interval must be at least 1 second")
    feeds = {name: ClassFeed(name) for name in rec.classes}
    nxt: int | None = None

    def snap(t: int) -> list[dict[str, Any]]:
        out = []
        for n in sorted(feeds):
            m = feeds[n].snapshot("book")
            m["time"] = t
            out.append(m)
        return out

    last = None
    for _rseq, _jseq, blocks in rec.drains():
        when = max(b[1] for b in blocks)
        if nxt is None:
            first = when if from_time is None else max(from_time, when)
            nxt = -(-first // every) * every
        while nxt < when and (to_time is None or nxt <= to_time):
            if from_time is None or nxt >= from_time:
                yield nxt, snap(nxt)
            nxt += every
        for name, t, ev in blocks:
            feeds[name].update(ev, t)
        last = when
    end = last if to_time is None else (to_time if last is None else max(last, to_time))
    while nxt is not None and end is not None and nxt <= end:
        yield nxt, snap(nxt)
        nxt += every


class _Table:
    """Rows out as CSV text or Parquet row groups: the same rows for both."""

    def __init__(self, out: Any, fmt: str, columns: list[str]) -> None:
        self.fmt = fmt
        self.columns = columns
        self.pending: list[list[Any]] = []
        if fmt == "parquet":
            self.parquet: ParquetOut | None = ParquetOut(out, columns)
            self.writer = None
        else:
            self.parquet = None
            self.writer = csv.writer(out, lineterminator="\n")
            self.writer.writerow(columns)

    def columns_out(self, cols: dict[str, Any]) -> None:
        if self.parquet is not None:
            self.parquet.write(cols)
        else:
            self.writer.writerows(zip(*(c.tolist() if isinstance(c, np.ndarray) else c  # type: ignore[union-attr]
                                        for c in cols.values()), strict=True))

    def rows_out(self, rows: Iterator[list[Any]]) -> None:
        if self.parquet is None:
            self.writer.writerows(rows)  # type: ignore[union-attr]
            return
        self.pending.extend(rows)
        if len(self.pending) >= EVENT_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.parquet is not None and self.pending:
            self.parquet.write(rows_to_columns(self.pending, self.columns))
            self.pending = []

    def close(self) -> None:
        self.flush()
        if self.parquet is not None:
            self.parquet.close()


def run_replay(path: str | Path, out: Any, *, classes: Sequence[str] | None = None, channel: str = "events",
               interval: str = "1m", from_time: int | None = None, to_time: int | None = None, speed: float = 0.0,
               fmt: str = "jsonl", progress: Progress | bool | None = None, anonymize: bool | Anonymizer = False,
               every: int | None = None) -> int:
    """`gpux replay`: write the recording's events (or one channel's messages) to ``out`` (text,
    or binary for ``fmt="parquet"``); returns the number of events (or messages) replayed.
    ``anonymize`` replaces account and order ids (`feeds.tables.Anonymizer`); ``every`` (book
    channel) writes each class's whole book every so many engine seconds instead of deltas."""
    if fmt not in ("jsonl", "csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r}: jsonl, csv or parquet")
    if fmt == "parquet" and speed > 0:
        raise ValueError("--speed paces a stream: it does not apply to a Parquet file")
    if every is not None and channel != "book":
        raise ValueError("--every applies to --channel book only (whole-book snapshots)")
    rec = load(path, classes=classes, to_time=to_time, from_time=from_time if channel == "events" else None)
    if anonymize and channel == "events":
        anon = anonymize if isinstance(anonymize, Anonymizer) else Anonymizer()
        rec.events = {name: anon.events(ev) for name, ev in rec.events.items()}
    total_blocks = len(rec.blocks)
    bar = progress if isinstance(progress, Progress) else Progress(total_blocks, enabled=bool(progress))
    columns = EVENT_COLUMNS if channel == "events" else CHANNEL_COLUMNS[channel]
    table = _Table(out, fmt, columns) if fmt != "jsonl" else None
    t0_wall = time.monotonic()
    t0_eng: int | None = None
    done = 0
    events = 0

    def pace(when: int) -> None:
        nonlocal t0_eng
        if speed > 0:
            if t0_eng is None:
                t0_eng = when
            delay = (when - t0_eng) / speed - (time.monotonic() - t0_wall)
            if delay > 0:
                out.flush()
                time.sleep(delay)

    if channel == "events":
        parts: list[tuple[str, np.ndarray]] = []
        held = 0

        def flush_parts() -> None:
            nonlocal parts, held
            if parts and table is not None:
                table.columns_out(event_columns(parts))
            parts, held = [], 0

        for _rseq, _jseq, blocks in rec.drains():
            pace(max(b[1] for b in blocks))
            for name, _t, ev in blocks:
                if len(ev):
                    if table is None:
                        lines = [_enc.encode({"class": name, **d}).decode() for d in events_to_json(ev)]
                        out.write("\n".join(lines) + "\n")
                    else:
                        parts.append((name, ev))
                        held += len(ev)
                    events += len(ev)
            if held >= EVENT_CHUNK or (speed > 0 and held):
                flush_parts()
            done += len(blocks)
            bar.update(done, events)
        flush_parts()
    else:
        stream = f"candles:{interval}" if channel == "candles" else channel
        source = (book_snapshots(rec, every, from_time, to_time) if every is not None
                  else messages(rec, [stream], from_time))
        for when, msgs in source:
            if when:
                pace(when)
            for m in msgs:
                if table is None:
                    out.write(_enc.encode(m).decode() + "\n")
                else:
                    table.rows_out(channel_rows(m))
            done += 1
            events = done
            bar.update(min(done, total_blocks), events)
    if table is not None:
        table.close()
    bar.done(events)
    return events


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a data directory or its market-data directory")
    p.add_argument("--from", dest="from_time", metavar="TIME", help="engine time to start at (UTC s or ISO 8601)")
    p.add_argument("--to", dest="to_time", metavar="TIME", help="engine time to stop at (inclusive)")
    p.add_argument("--class", dest="classes", action="append", metavar="NAME",
                   help="only this GPU class (repeatable; default all)")
    p.add_argument("--channel", default="events", choices=["events", "book", "trades", "ticker", "candles", "index"],
                   help="raw events (default) or one channel's feed messages")
    p.add_argument("--interval", default="1m", choices=sorted(INTERVALS), help="candle interval (default 1m)")
    p.add_argument("--speed", type=float, default=0.0,
                   help="engine seconds per wall second (default 0: as fast as possible)")
    p.add_argument("--format", dest="fmt", default="jsonl", choices=["jsonl", "csv", "parquet"],
                   help="output format: JSON lines (default), CSV or Parquet (pyarrow; needs --output or a "
                        "redirected stdout)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--anonymize", action="store_true",
                   help="replace account and order ids by keyed pseudonyms (HMAC-SHA256; key: $GPUX_ANONYMIZE_KEY, "
                        "else random for this run)")
    p.add_argument("--every", type=int, metavar="SECONDS",
                   help="--channel book: each class's whole book every SECONDS of engine time instead of deltas")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, even on a terminal")
    p.add_argument("--serve", metavar="[HOST:]PORT", help="serve the recording over WebSocket (/v1/replay) instead")


def main(args: argparse.Namespace) -> int:
    try:
        t_from, t_to = parse_time(args.from_time), parse_time(args.to_time)
    except ValueError as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    if args.serve:
        host, _, port = args.serve.rpartition(":")
        print(f"gpux: replaying {recording_dir(args.path)} on ws://{host or '127.0.0.1'}:{port}/v1/replay",
              file=sys.stderr, flush=True)
        web.run_app(replay_app(args.path), host=host or "127.0.0.1", port=int(port), print=None)
        return 0
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    fmt = args.fmt
    if fmt == "parquet" and args.output is None and sys.stdout.isatty():
        print("gpux: error: Parquet is binary: give --output FILE or redirect stdout", file=sys.stderr)
        return 2
    if args.anonymize and args.channel != "events":
        print("gpux: error: --anonymize applies to --channel events (the channels carry no account or order ids)",
              file=sys.stderr)
        return 2
    kwargs = dict(classes=args.classes, channel=args.channel, interval=args.interval, from_time=t_from,
                  to_time=t_to, speed=args.speed, fmt=fmt, progress=progress, anonymize=args.anonymize,
                  every=args.every)
    try:
        if fmt == "parquet" and args.output is None:  # stdout may be a pipe: build the file in memory
            buf = io.BytesIO()
            run_replay(args.path, buf, **kwargs)
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.buffer.flush()
        elif args.output is not None:
            with open(args.output, "wb" if fmt == "parquet" else "w", newline="" if fmt != "parquet" else None) as f:
                run_replay(args.path, f, **kwargs)
        else:
            run_replay(args.path, sys.stdout, **kwargs)
    except RecordingError as e:
        print(f"\ngpux: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    return 0
