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
from orderbook.codec import events_to_json
from orderbook.types import EV_NAMES, EVENT_DTYPE, events

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


CSV_FIELDS = {
    "book": ["class", "seq", "time", "u", "action", "side", "price", "gpus"],
    "trades": ["class", "seq", "time", "u", "trade_seq", "trade_time", "trade_id", "kind", "gpus", "hours", "price",
               "start", "end", "maker"],
    "ticker": ["class", "seq", "time", "u", "best_bid", "best_bid_gpus", "best_ask", "best_ask_gpus", "best_spot_bid",
               "best_spot_bid_gpus", "best_spot_ask", "best_spot_ask_gpus", "last", "last_time", "last_kind",
               "volume_24h", "notional_24h", "vwap_24h", "trades_24h"],
    "candles": ["class", "interval", "seq", "time", "u", "start", "open", "high", "low", "close", "volume", "notional",
                "trades"],
    "index": ["class", "seq", "time", "u", "value", "volume_24h", "trades_24h"],
}


def _csv_rows(msg: dict[str, Any]) -> Iterator[list[Any]]:
    ch = msg["type"]
    head = [msg["class"], msg["seq"], msg["time"], msg["u"]]
    if ch == "book":
        for side in ("bids", "spot_bids", "asks", "spot_asks"):
            for price, gpus in msg.get(side, ()):
                yield head + [msg["action"], side, price, gpus]
    elif ch == "trades":
        for t in msg["trades"]:
            yield head + [t["seq"], t["time"], t["trade_id"], t["kind"], t["gpus"], t["hours"], t["price"],
                          t["start"], t["end"], t["maker"]]
    elif ch == "candles":
        for c in msg["candles"]:
            yield [msg["class"], msg["interval"]] + head[1:] + [c[k] for k in CSV_FIELDS["candles"][5:]]
    else:
        yield head + ["" if msg.get(k) is None else msg[k] for k in CSV_FIELDS[ch][4:]]


def _event_csv_header() -> list[str]:
    return ["class", "type"] + [n for n in EVENT_DTYPE.names if n != "type"]


def _write_events(out: io.TextIOBase, name: str, ev: np.ndarray, fmt: str, writer: Any) -> None:
    if fmt == "jsonl":
        lines = []
        for d in events_to_json(ev):
            lines.append(_enc.encode({"class": name, **d}).decode())
        if lines:
            out.write("\n".join(lines) + "\n")
    else:
        for row in events(ev):
            writer.writerow([name, EV_NAMES.get(row.type, row.type)]
                            + [v for field, v in zip(row._fields, row, strict=True) if field != "type"])


def run_replay(path: str | Path, out: TextIO, *, classes: Sequence[str] | None = None, channel: str = "events",
               interval: str = "1m", from_time: int | None = None, to_time: int | None = None, speed: float = 0.0,
               fmt: str = "jsonl", progress: Progress | bool | None = None) -> int:
    """`gpux replay`: write the recording's events (or one channel's messages) to ``out``;
    returns the number of events replayed."""
    rec = load(path, classes=classes, to_time=to_time, from_time=from_time if channel == "events" else None)
    total_blocks = len(rec.blocks)
    bar = progress if isinstance(progress, Progress) else Progress(total_blocks, enabled=bool(progress))
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
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
        if writer is not None:
            writer.writerow(_event_csv_header())
        for _rseq, _jseq, blocks in rec.drains():
            pace(max(b[1] for b in blocks))
            for name, _t, ev in blocks:
                if len(ev):
                    _write_events(out, name, ev, fmt, writer)
                    events += len(ev)
            done += len(blocks)
            bar.update(done, events)
    else:
        stream = f"candles:{interval}" if channel == "candles" else channel
        if writer is not None:
            writer.writerow(CSV_FIELDS[channel])
        for when, msgs in messages(rec, [stream], from_time):
            if when:
                pace(when)
            for m in msgs:
                if writer is None:
                    out.write(_enc.encode(m).decode() + "\n")
                else:
                    for row in _csv_rows(m):
                        writer.writerow(row)
            done += 1
            events = done
            bar.update(min(done, total_blocks), events)
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
    p.add_argument("--format", dest="fmt", default="jsonl", choices=["jsonl", "csv"],
                   help="output format: JSON lines (default) or CSV")
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
    try:
        run_replay(args.path, sys.stdout, classes=args.classes, channel=args.channel, interval=args.interval,
                   from_time=t_from, to_time=t_to, speed=args.speed, fmt=args.fmt, progress=progress)
    except RecordingError as e:
        print(f"\ngpux: error: {e}", file=sys.stderr)
        return 1
    return 0
