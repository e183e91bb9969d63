"""The live market-data service of a running exchange (docs/feeds.md).

    feeds = FeedService(engine, bus, cfg, verifier)   # after recovery
    feeds.add_routes(app.router)                      # GET /v1/feeds, GET /v1/replay
    await feeds.start()                               # the recorder caught up, then live
    ...
    await feeds.close()                               # after the sequencer stopped

It subscribes to the exchange's bus.  The bus callback only takes note of the batch (events of
each class, each touched class's engine time, the command-journal seq) and, for accounts with
private subscribers, builds their messages from the exchange state as it stands after the
batch; the rest — the level-2 models, trade statistics, public messages, fan-out and the
recorder — runs in one callback on the next event-loop turn, usually while the sequencer waits
for the next batch's fsync, and covers every batch that arrived meanwhile (one fan-out round,
one recorded record).  Nothing here waits for a subscriber.

Routes: ``GET /v1/feeds`` (live, public and private channels), ``GET /v1/replay`` (the
recording of this exchange, served at a chosen speed in the same message format), and the
history over REST, ``GET /v1/trades`` (cursor pages) and ``GET /v1/candles``, from the recording
(`feeds.history`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from exchange.bus import Bus
from exchange.clock import WALL, Clock
from exchange.config import ServerConfig
from exchange.engine import Engine, book_seq
from exchange.errors import ApiError
from exchange.records import lease_ref
from exchange.supervise import supervise
from exchange.views import fill_view, lease_view, order_view, private_update
from feeds.forward import curve
from feeds.history import TradeHistory, candles, merge_live
from feeds.hub import AuthOp, Hub, OpError
from feeds.model import DAY, INTERVALS, KIND_CODES, KINDS, BookModel, ClassFeed, trade_json
from feeds.products import INTERVAL_S, RESERVED_DAYS, BidLadders, ProductFeed, parse
from feeds.recorder import Recorder, catch_up, open_recorder
from feeds.recording import RecordingError, recent
from feeds.replay import parse_time
from gateway.auth import AuthError, Verifier
from gateway.explain import rule_error
from orderbook import reasons as R
from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    EVENT_DTYPE,
    Event,
    events,
)

log = logging.getLogger("gpux.feeds")
TRADES_PAGE, TRADES_PAGE_MAX = 100, 1000  # GET /v1/trades: trades per page, default and most
CANDLES_PAGE, CANDLES_PAGE_MAX = 500, 5000  # GET /v1/candles: candles per answer, default and most
FORWARD_DAYS, FORWARD_DAYS_MAX = 28, 90  # GET /v1/forward: start days, default and most
FORWARD_LOOKBACK_S = 7 * DAY  # ... its traded side: reserved trades of the last week


class FeedService:
    """Market data of a running exchange, kept from ``bus``'s batches; ``engine`` is the core
    after recovery (read for the starting models and the private channels' snapshots),
    ``verifier`` checks the private channels' auth messages."""

    def __init__(self, engine: Engine, bus: Bus, cfg: ServerConfig, verifier: Verifier, record: bool = True,
                 clock: Clock = WALL, products_interval_s: float = INTERVAL_S, **hub_options: Any) -> None:
        eng = engine
        self.engine = eng
        self.cfg = cfg
        self.clock = clock
        self.data = cfg.data_path
        self.start_seq = eng.seq
        st = eng.state
        leases = st.leases.values()  # (records made once, for every class)
        self.feeds: dict[str, ClassFeed] = {
            name: ClassFeed(name, BookModel.from_state(name, book_seq(book), eng.book_time(name),
                                                       st.open_records(name), leases))
            for name, book in eng.books.items()}
        self.verifier = verifier
        self.hub = Hub(self.feeds, private=self, clock=clock, **hub_options)
        # the products' books and quotes (feeds.products): computed from the books themselves when
        # they hold exactly what is durable — in the bus callback, or later if nothing came since
        self.product_feeds = {name: ProductFeed(name, cfg.instruments[name].book,
                                           BidLadders.from_state(name, st.open_records(name)),
                                           interval_s=products_interval_s) for name in eng.books}
        self.hub.live = self.product_feeds
        self.hub.on_live = lambda name: self._refresh_products(name, durable=False)
        self._durable = {name: (book_seq(book), eng.book_time(name)) for name, book in eng.books.items()}
        self._product_timers: dict[str, asyncio.TimerHandle] = {}
        self._product_wants: dict[str, list[asyncio.Future]] = {}  # REST answers waiting for a durable book
        self.product_refreshes = 0
        self.recorder: Recorder | None = None
        self.record = record
        self.history: TradeHistory | None = None  # the recording's trades, for GET /v1/trades and /v1/candles
        self.public_rate: Callable[[web.Request], None] | None = None  # the gateway's public rate limit
        self.recorder_failures = 0  # times the recorder failed (a full disk) and was rebuilt or is being
        self._behind = 0  # the last journal seq of a round not recorded while the recorder was down
        self._rebuild: asyncio.Task | None = None  # rebuilding the recorder from the command journal
        self._rebuild_error: BaseException | None = None
        # (journal seq, events arrays, events as tuples, engine times) per batch not yet published
        self._pending: deque[tuple[int, dict[str, np.ndarray], dict[str, list[Event]], dict[str, int]]] = deque()
        self._ready = False
        self._scheduled = False
        self._closed = False
        self.rounds = 0
        self.lag_max = 0  # most batches taken in one round
        self.busy_s = 0.0  # seconds spent in the bus callback and the rounds (not counting socket writes)
        self._unsubscribe = bus.subscribe(self._on_batch)

    def level2(self, name: str) -> tuple[int, dict[str, list]] | None:
        """The market-data model's level 2 of a class (R20) and the event seq it stands at."""
        feed = self.feeds.get(name)
        return None if feed is None else (feed.seq, feed.book.level2())

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        st = self.hub.stats
        return [("gpux_feeds_pending_batches", len(self._pending), "durable batches not yet published to the feeds",
                 "gauge"),
                ("gpux_feeds_lag_max_batches", self.lag_max, "most batches taken in one fan-out round", "gauge"),
                ("gpux_feeds_rounds_total", self.rounds, "fan-out rounds", "counter"),
                ("gpux_feeds_busy_seconds_total", round(self.busy_s, 6), "time spent building market data", "counter"),
                ("gpux_feeds_connections", len(self.hub.conns), "open market-data connections", "gauge"),
                ("gpux_feeds_messages_total", st["messages"], "market-data messages queued to subscribers", "counter"),
                ("gpux_feeds_cut_off_total", st["cut_off"], "subscribers cut off for reading too slowly", "counter"),
                ("gpux_feeds_recording", int(self.recorder is not None), "1 while the recorder writes", "gauge"),
                ("gpux_feeds_recorder_failures_total", self.recorder_failures,
                 "times the recorder failed (e.g. a full disk) and was rebuilt from the command journal", "counter")]

    def health(self) -> str:
        """"ok" while the feeds publish: the heartbeat task runs and, if recording, the recorder works."""
        hb = self.hub.heartbeat_task
        if self._ready and not self._closed and (hb is None or hb.done()):
            return "the feeds' heartbeat task is not running"
        if self.record and self._ready and self.recorder is None and not self._closed:
            if self._rebuild is None or self._rebuild.done():
                return f"the market-data recorder failed and its rebuild stopped: {self._rebuild_error!r}"
            why = f" ({self._rebuild_error})" if self._rebuild_error is not None else ""
            return ("the market-data recorder failed (see logs); it is being rebuilt from the command journal, "
                    f"retried until it can write{why}")
        return "ok"

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/feeds", self.hub.handle)
        router.add_get("/v1/replay", self.replay)
        router.add_get("/v1/trades", self.trades)
        router.add_get("/v1/candles", self.candles)
        router.add_get("/v1/forward", self.forward)
        router.add_get("/v1/products", self.products)

    async def start(self) -> None:
        """Open the recorder and complete it from the command journal (in a worker thread), load
        the last 24 h of trades for the statistics, then go live with the batches that arrived
        meanwhile."""
        loop = asyncio.get_running_loop()
        if self.record:
            cfg = self.cfg
            self.recorder = await loop.run_in_executor(None, open_recorder, self.data, cfg.instruments,
                                                       self.engine.engine, self.start_seq, cfg.segment_bytes)
            await loop.run_in_executor(None, catch_up, self.recorder, cfg.instruments, self.engine.engine,
                                       self.data, self.start_seq)
            self.history = TradeHistory(self.recorder.dir)
            now = max((f.now for f in self.feeds.values()), default=0)
            trades = await loop.run_in_executor(None, recent, self.recorder.dir, now - DAY, [EV_TRADE])
            self._load_stats(trades)  # on the loop: subscribers may be reading the statistics
        self._ready = True
        self.hub.start()
        if self._pending:
            self._drain()

    def _load_stats(self, trades: dict[str, np.ndarray]) -> None:
        """The last 24 h of trades (from the recording) into the statistics of a starting exchange."""
        for name, ev in trades.items():
            feed = self.feeds.get(name)
            if feed is None or not len(ev):
                continue
            ev = ev[ev["seq"] <= feed.seq]  # what the model has seen already
            for row in events(ev):
                feed.stats.add(row)
            feed.stats.expire(feed.now)
            for k in feed.stats.changed:
                feed.stats.changed[k] = None

    async def close(self) -> None:
        """Publish what is pending, write a checkpoint, close the subscribers (1001)."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        if self._rebuild is not None:
            self._rebuild.cancel()
            await asyncio.gather(self._rebuild, return_exceptions=True)
        if self._ready and self._pending:
            self._drain()
        for timer in self._product_timers.values():
            timer.cancel()
        await self.hub.close()
        if self.recorder is not None:
            self.recorder.checkpoint(self.engine.seq)
            self.recorder.close()

    # ------------------------------------------------------------------ history over REST
    def _query(self, request: web.Request, allowed: tuple[str, ...]) -> tuple[ClassFeed, int | None, int | None,
                                                                             int | None]:
        """The public rate limit, then the (feed, kind, from, to) of a history request."""
        if self.public_rate is not None:
            self.public_rate(request)
        q = request.query
        for k in q:
            if k not in allowed:
                raise ApiError("MALFORMED", f"unknown query parameter {k!r}; {request.path} takes "
                                            f"{', '.join(allowed)}")
        name = q.get("class")
        if not name:
            raise ApiError("MALFORMED", "the query parameter class is required")
        feed = self.feeds.get(name)
        if feed is None:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {name!r}; classes: {', '.join(sorted(self.feeds))}")
        kind = q.get("kind")
        if kind is not None and kind not in KIND_CODES:
            raise ApiError("MALFORMED", f"kind {kind!r} is not one of {', '.join(KINDS)}")
        try:
            t_from, t_to = parse_time(q.get("from")), parse_time(q.get("to"))
        except ValueError as e:
            raise ApiError("MALFORMED", f"from/to: {e}") from None
        if t_from is not None and t_to is not None and t_from > t_to:
            raise ApiError("BAD_RANGE", f"from ({t_from}) is after to ({t_to})")
        if not self._ready:
            raise ApiError("UNAVAILABLE", "market data is starting; retry shortly")
        return feed, None if kind is None else KIND_CODES[kind], t_from, t_to

    @staticmethod
    def _int(request: web.Request, name: str, default: int, lo: int, hi: int, code: str = "MALFORMED") -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(code, f"{name} must be an integer, not {raw[:40]!r}") from None
        if not lo <= v <= hi:
            raise ApiError(code, f"{name} must be between {lo} and {hi}, not {v}")
        return v

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except (RecordingError, OSError) as e:
            raise ApiError("INTERNAL", f"the recording cannot be read: {e}") from None

    async def trades(self, request: web.Request) -> web.Response:
        """``GET /v1/trades?class=&kind=&from=&to=&cursor=&limit=``: trades in seq order, a page
        at a time (docs/feeds.md, "History over REST")."""
        feed, kind, t_from, t_to = self._query(request, ("class", "kind", "from", "to", "cursor", "limit"))
        after = self._int(request, "cursor", 0, 0, 2**62, "BAD_CURSOR")
        limit = self._int(request, "limit", TRADES_PAGE, 1, TRADES_PAGE_MAX)
        if self.history is not None:
            rows, more = await self._read(self.history.page, feed.name, kind, t_from, t_to, after, limit)
        else:
            rows, more = None, False
        if self.history is None or (self.recorder is None and not more):
            # no recording, or the recorder stopped: the trades the live feed still holds follow
            got = merge_live(rows if rows is not None else np.empty(0, dtype=EVENT_DTYPE), feed.stats.recent,
                             kind, t_from, t_to, after, limit)
            more = len(got) > limit
            got = got[:limit]
        else:
            got = events(rows)
        return web.json_response({
            "class": feed.name, "kind": None if kind is None else KINDS[kind], "trades": [trade_json(ev) for ev in got],
            "next": str(got[-1].seq if got else after), "more": more})

    async def candles(self, request: web.Request) -> web.Response:
        """``GET /v1/candles?class=&kind=&interval=&from=&to=&limit=``: the candles of a range,
        equal to the live candles channel's (docs/feeds.md, "History over REST")."""
        feed, kind, t_from, t_to = self._query(request, ("class", "kind", "interval", "from", "to", "limit"))
        interval = request.query.get("interval", "1m")
        if interval not in INTERVALS:
            raise ApiError("MALFORMED", f"interval {interval!r} is not one of {', '.join(INTERVALS)}")
        width = INTERVALS[interval]
        limit = self._int(request, "limit", CANDLES_PAGE, 1, CANDLES_PAGE_MAX)
        hi = feed.now if t_to is None else t_to
        hi -= hi % width  # the last candle's start
        lo = hi - (limit - 1) * width if t_from is None else t_from - t_from % width
        rows = None
        if self.history is not None and lo <= hi:
            rows = await self._read(self.history.trades, feed.name, lo, hi + width - 1)
        if lo > hi:
            got = []
        elif self.history is None or self.recorder is None:
            got = merge_live(rows if rows is not None else np.empty(0, dtype=EVENT_DTYPE), feed.stats.recent,
                             None, lo, hi + width - 1, 0, None)
        else:
            got = events(rows)
        if kind is not None:
            got = [ev for ev in got if ev.kind == kind]
        out = candles(got, width)
        more = len(out) > limit
        return web.json_response({
            "class": feed.name, "kind": None if kind is None else KINDS[kind], "interval": interval, "from": lo,
            "to": hi, "candles": out[:limit], "next": out[limit]["start"] if more else None})

    async def forward(self, request: web.Request) -> web.Response:
        """``GET /v1/forward?class=&days=&gpus=&hours=``: the class's forward curve, by start day
        (feeds/forward.py; docs/feeds.md, "Forward curve")."""
        feed, _, _, _ = self._query(request, ("class", "days", "gpus", "hours"))
        days = self._int(request, "days", FORWARD_DAYS, 1, FORWARD_DAYS_MAX)
        book, cfg = self.engine.books[feed.name], self.cfg.instruments[feed.name].book
        gpus = self._int(request, "gpus", 1, 1, 2**31 - 1)
        hours = self._int(request, "hours", 24, 1, 2**31 - 1)
        now = self.engine.book_time(feed.name)
        for code, v, most in ((R.BAD_GPUS, gpus, cfg.max_gpus), (R.BAD_HOURS, hours, cfg.max_hours)):
            if v > most:  # the class's own bounds: the book's codes, as GET /v1/quote answers
                raise rule_error(code, cfg, now, gpus=gpus, hours=hours)
        lo = max(now - FORWARD_LOOKBACK_S, 0)
        rows = await self._read(self.history.trades, feed.name, lo, now) if self.history is not None else None
        if self.history is None or self.recorder is None:
            tape = merge_live(rows if rows is not None else np.empty(0, dtype=EVENT_DTYPE), feed.stats.recent,
                              None, lo, now, 0, None)
        else:
            tape = events(rows)
        return web.json_response({"class": feed.name, "time": now, "gpus": gpus, "hours": hours,
                                  "lookback_s": FORWARD_LOOKBACK_S,
                                  "days": curve(book, cfg, now, tape, days, gpus, hours)})

    async def products(self, request: web.Request) -> web.Response:
        """``GET /v1/products?class=[&product=&depth=]``: the executable book of each product of the
        class, or of one (feeds/products.py; docs/feeds.md, "Products")."""
        feed, _, _, _ = self._query(request, ("class", "product", "depth"))
        depth = self._int(request, "depth", 10, 1, 1000)
        only = None
        if "product" in request.query:
            only = parse(request.query["product"])
            if only is None:
                raise ApiError("UNKNOWN_PRODUCT", f"no product {request.query['product'][:60]!r}; names look like "
                                                  "on_demand:24h:x1, spot:8h:x8 or reserved:24h:x1@START")
        pf = await self._fresh_products(feed.name)
        assert pf.at is not None
        rows = [{**row, "bids": row["bids"][:depth], "asks": row["asks"][:depth], "quotes": pf.quotes[pid]}
                for pid, row in pf.full.items() if only is None or pid == only.id]
        if only is not None and not rows:  # a well-formed name outside today's set (e.g. a past day)
            raise ApiError("UNKNOWN_PRODUCT", f"no product {only.id!r} now; reserved products start at the next "
                                              f"{RESERVED_DAYS} UTC midnights")
        return web.json_response({"class": feed.name, "time": pf.at[1], "seq": pf.at[0], "products": rows})

    # ------------------------------------------------------------------ the bus
    def _on_batch(self, batch: Any) -> None:
        t0 = time.perf_counter()
        eng = self.engine
        times: dict[str, int] = {}
        rows: dict[str, list[Event]] = {}
        for r in batch.results:  # the engine's own Event tuples: no second tolist()
            if r.command is not None:
                if r.book not in times:
                    times[r.book] = eng.book_time(r.book)
                if r.events:
                    rows.setdefault(r.book, []).extend(r.events)
        for name in batch.events:
            if name not in times:
                times[name] = eng.book_time(name)
        self._pending.append((eng.seq, batch.events, rows, times))
        products = self.product_feeds
        for name, evs in rows.items():
            pf = products.get(name)
            if pf is not None:
                pf.ladders.apply(evs)
        for name, t in times.items():
            self._durable[name] = (book_seq(eng.books[name]), t)
        for name in products:  # the books hold exactly what is durable now
            self._refresh_products(name, durable=True)
        if self.hub.any_private:
            self._private(rows)
        if self._ready and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)
        self.busy_s += time.perf_counter() - t0

    def _drain(self) -> None:
        """One fan-out round: every pending batch, coalesced per class."""
        self._scheduled = False
        if not self._pending:
            return
        t0 = time.perf_counter()
        pending, self._pending = self._pending, deque()
        self.lag_max = max(self.lag_max, len(pending))
        jseq = pending[-1][0]
        parts: dict[str, list[np.ndarray]] = {}
        rows: dict[str, list[Event]] = {}
        times: dict[str, int] = {}
        for _, arrays, r, t in pending:
            for name, ev in arrays.items():
                parts.setdefault(name, []).append(ev)
            for name, evs in r.items():
                rows.setdefault(name, []).extend(evs)
            times.update(t)
        blocks = []
        hub = self.hub
        for name, t in times.items():
            feed = self.feeds.get(name)
            if feed is None:
                continue
            before = feed.now
            for stream, msg in feed.update(rows.get(name), t, lambda stream, name=name: hub.has(name, stream)):
                hub.publish(name, stream, msg)
            ev = parts.get(name)
            if ev or feed.now != before:
                blocks.append((name, feed.now, b"".join([e.tobytes() for e in ev]) if ev else b""))
        if blocks and self.recorder is not None:
            try:
                self.recorder.append(jseq, blocks)
            except Exception as e:  # e.g. a full disk: rebuilt from the command journal once it can write
                self._recorder_failed(e, jseq)
        elif blocks and self.record and self._rebuild is not None:
            self._behind = jseq  # the rebuild records it from the command journal
        self.rounds += 1
        self.busy_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ products
    def _refresh_products(self, name: str, durable: bool) -> None:
        """Recompute a class's products if someone wants them and its book moved: now if the book
        holds exactly what is durable (``durable``: the bus callback says so; otherwise its seq and
        time must be the last batch's) and ``interval_s`` has passed (or a REST answer waits); a timer when
        it has not; the next batch's callback when the book holds a batch not yet durable."""
        pf = self.product_feeds.get(name)
        if pf is None:
            return
        hub = self.hub
        wants = self._product_wants.get(name)
        if not (wants or pf.waiting or hub.has(name, "products") or hub.has(name, "quotes")):
            return
        eng = self.engine
        book = eng.books[name]
        state = (book_seq(book), eng.book_time(name))
        if state != pf.at and (durable or state == self._durable.get(name)):
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now < pf.next_at and pf.at is not None and not wants:
                if name not in self._product_timers:
                    self._product_timers[name] = loop.call_later(pf.next_at - now, self._products_due, name)
                return
            t0 = time.perf_counter()
            for stream, msg in pf.refresh(book, state[0], state[1], now):
                hub.publish(name, stream, msg)
            self.product_refreshes += 1
            self.busy_s += time.perf_counter() - t0
        elif state != pf.at:
            return  # the book holds a batch not yet durable: that batch's callback computes
        if pf.waiting:
            hub.deliver_live(name)
        if wants:
            del self._product_wants[name]
            for f in wants:
                if not f.done():
                    f.set_result(None)

    def _products_due(self, name: str) -> None:
        self._product_timers.pop(name, None)
        if not self._closed:
            self._refresh_products(name, durable=False)

    async def _fresh_products(self, name: str) -> ProductFeed:
        """The class's products computed at the book's current durable state (or, under load, at
        the next batch's)."""
        pf = self.product_feeds[name]
        f = asyncio.get_running_loop().create_future()
        self._product_wants.setdefault(name, []).append(f)
        self._refresh_products(name, durable=False)  # now, if the book holds what is durable (f is done)
        if not f.done():  # else the next batch's callback computes
            try:
                await asyncio.wait_for(f, 2.0)
            except TimeoutError:
                if pf.at is None:
                    raise ApiError("UNAVAILABLE", "the products are being computed; retry shortly") from None
        return pf

    # ------------------------------------------------------------------ a recorder that failed
    def _recorder_failed(self, exc: Exception, jseq: int) -> None:
        log.error("market-data recorder failed; it is rebuilt from the command journal once it can write (%r)", exc,
                  exc_info=exc)
        rec, self.recorder = self.recorder, None
        self.recorder_failures += 1
        self._behind = jseq
        try:
            if rec is not None:
                rec.close()
        except Exception:
            pass
        if not self._closed and (self._rebuild is None or self._rebuild.done()):
            self._rebuild = supervise(asyncio.get_running_loop().create_task(self._rebuild_recorder(),
                                                                             name="feeds-recorder"),
                                      "the market-data recorder's rebuild", lambda: self._closed)

    async def _rebuild_recorder(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        """Open the recording again and complete it from the command journal, as at start-up, in
        a worker thread (rounds meanwhile are not recorded; the catch-up covers them), retried with
        back-off until it works; then the recorder goes live again."""
        loop = asyncio.get_running_loop()
        cfg, engine = self.cfg, self.engine
        delay = first_s
        while not self._closed:
            await asyncio.sleep(delay)
            rec = None
            try:
                rec = await loop.run_in_executor(None, open_recorder, self.data, cfg.instruments, engine.engine,
                                                 engine.seq, cfg.segment_bytes)
                while rec.last_jseq < self._behind:  # (checked on the loop: no round records meanwhile)
                    await loop.run_in_executor(None, catch_up, rec, cfg.instruments, engine.engine, self.data,
                                               self._behind)
            except Exception as e:
                self._rebuild_error = e
                log.warning("market-data recorder not rebuilt yet (%r); retried in %.1f s", e, min(delay * 2, max_s))
                if rec is not None:
                    try:
                        rec.close()
                    except Exception:
                        pass
                delay = min(delay * 2, max_s)
                continue
            self.recorder = rec
            self._rebuild_error = None
            log.warning("market-data recorder rebuilt from the command journal; recording again",
                        extra={"seq": rec.last_jseq})
            return

    # ------------------------------------------------------------------ private channels
    def authenticate(self, op: AuthOp) -> tuple[int, str, str]:
        try:
            key = self.verifier.verify(op.key, op.ts, op.sig, "GET", "/v1/ws", b"")
        except AuthError as e:
            raise OpError(e.code, e.message) from None
        return key.account_id, key.role, key.key_id

    def revoke(self, key_id: str) -> int:
        """Close the market-data connections authenticated with a revoked key."""
        return self.hub.revoke(key_id)

    def private_snapshot(self, account: int, channel: str) -> dict[str, Any]:
        st = self.engine.state
        d: dict[str, Any] = {"type": channel, "account": account, "action": "snapshot",
                             "time": self.clock.time()}
        if channel == "orders":
            d["orders"] = [order_view(o) for o in st.open_orders(account)]
        elif channel == "leases":
            eng = self.engine
            d["leases"] = [lease_view(x, eng.book_time(x.book)) for x in st.account_leases(account)
                           if x.end > eng.book_time(x.book)]
        else:
            d[channel] = []
        return d

    def _private(self, events: dict[str, list[Event]]) -> None:
        hub = self.hub
        st = self.engine.state
        for name, rows in events.items():
            orders: dict[int, dict[int, None]] = {}
            fills: dict[int, list[dict[str, Any]]] = {}
            leases: dict[int, dict[int, None]] = {}
            for ev in rows:
                t = ev.type
                if t == EV_TRADE:
                    for acc, oid, side in ((ev.account, ev.oid, "buy"), (ev.account2, ev.oid2, "sell")):
                        if hub.has_private(acc, "orders"):
                            orders.setdefault(acc, {})[oid] = None
                        if hub.has_private(acc, "fills"):
                            fills.setdefault(acc, []).append(fill_view(name, ev, side))
                        if hub.has_private(acc, "leases"):
                            leases.setdefault(acc, {})[ev.trade_id] = None
                elif t in (EV_ACCEPTED, EV_CANCELLED, EV_EXPIRED, EV_AMENDED):
                    acc = ev.account
                    if hub.has_private(acc, "orders"):
                        orders.setdefault(acc, {})[ev.oid] = None
                elif t in (EV_PREEMPTED, EV_RELEASED):
                    for acc in (ev.account, ev.account2):
                        if hub.has_private(acc, "leases"):
                            leases.setdefault(acc, {})[ev.trade_id] = None
            if not (orders or fills or leases):
                continue
            seq, when = rows[-1].seq, self.engine.book_time(name)
            for acc, oids in orders.items():
                views = [order_view(st.orders[o]) for o in oids if o in st.orders]
                hub.publish_private(acc, "orders", private_update("orders", acc, name, seq, when, views))
            for acc, items in fills.items():
                hub.publish_private(acc, "fills", private_update("fills", acc, name, seq, when, items))
            for acc, tids in leases.items():
                views = [lease_view(st.leases[lease_ref(name, tid)], when) for tid in tids
                         if lease_ref(name, tid) in st.leases]
                hub.publish_private(acc, "leases", private_update("leases", acc, name, seq, when, views))

    def provisioning_listening(self, account: int) -> bool:
        """Whether the account has a subscriber on its ``provisioning`` channel."""
        return self.hub.has_private(account, "provisioning")

    def publish_provisioning(self, account: int, gpu_class: str, tasks: list[dict[str, Any]], seq: int = 0,
                             when: int = 0) -> None:
        """Provisioning messages (R18) for an account's private channel (settlement.provisioning calls
        it): ``tasks`` are dicts such as a provider's ``{"task": "provision", "lease": "H100-7",
        "trade_id": 7, "gpus": 8, "start": ..., "end": ..., "ssh_public_key": "..."}``, a renter's
        ``{"task": "ready", "lease": ..., "connection": {...}}`` or ``{"task": "end", ...}``."""
        if self.hub.has_private(account, "provisioning"):
            self.hub.publish_private(account, "provisioning",
                                     private_update("provisioning", account, gpu_class, seq, when, tasks))

    # ------------------------------------------------------------------ replay endpoint
    async def replay(self, request: web.Request) -> web.StreamResponse:
        from feeds.replay import serve_replay

        if self.recorder is None:
            return web.json_response({"error": {"code": "UNAVAILABLE", "message": "this exchange does not record"}},
                                     status=503)
        return await serve_replay(request, self.recorder.dir)
