"""Market data from events (R20, R21): the level-2 book model and the trade statistics of one
GPU class, and the channel messages they produce.

The book model is rebuilt from the events alone (never from the book's internals), so the same
code serves the live feed, replay and `book_at`:

    feed = ClassFeed("H100")
    for stream, message in feed.update(events, now):   # a batch of EVENT_DTYPE records + book time
        ...                                              # book deltas, trades, ticker, candles, index
    feed.book.level2()                                   # {"bids": [[price, gpus], ...], ...}

Level 2 (docs/feeds.md):

* ``asks``: per firm price, the GPUs free *now* for a firm (on-demand or reserved) buyer, summed
  over the resting asks at that price whose window contains now: ``gpus − firm(a, now)``
  (spot leases do not count against a firm buyer, R9/R12);
* ``spot_asks``: per spot price, the GPUs free now for a spot buyer,
  ``gpus − firm(a, now) − spot(a, now)``, over the asks that offer spot;
* ``bids``: per limit, the remaining GPUs of resting on-demand and reserved bids;
* ``spot_bids``: per limit, the remaining GPUs of resting spot bids.

A level with 0 GPUs is not in the book.  "Free now" changes with engine time alone (a lease
starts or ends, an ask's window opens), so `BookModel.advance` recomputes the asks whose
leases or windows start or end at or before the new time (a heap of such moments).
"""

from __future__ import annotations

import heapq
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    KIND_NAMES,
    ON_DEMAND,
    SIDE_ASK,
    SIDE_BID,
    SIDE_NAMES,
    SPOT,
    Event,
    events,
)

_STALE = object()  # a side's cached best price must be recomputed

# sides of the level-2 book, in the order they are kept
BIDS, SPOT_BIDS, ASKS, SPOT_ASKS = 0, 1, 2, 3
SIDE_KEYS = ("bids", "spot_bids", "asks", "spot_asks")

# trade kinds, by name, in code order (orderbook.types: SPOT, ON_DEMAND, RESERVED)
KINDS = tuple(KIND_NAMES[k] for k in sorted(KIND_NAMES))
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
INTERVALS = {"1m": 60, "1h": 3600}
# public streams of a class: channel, channel:interval for candles, and the per-kind statistics
# channel:kind / candles:interval:kind (docs/feeds.md, "Statistics by kind")
CHANNELS = ("book", "trades", "ticker", "candles", "index")
KIND_CHANNELS = ("candles", "index")  # the channels that take a kind
STREAMS = (("book", "trades", "ticker") + tuple(f"candles:{iv}" for iv in INTERVALS) + ("index",)
           + tuple(f"candles:{iv}:{k}" for iv in INTERVALS for k in KINDS) + tuple(f"index:{k}" for k in KINDS))
CANDLE_STREAMS = tuple(s for s in STREAMS if s.startswith("candles:"))
CANDLE_KEYS = tuple(s.partition(":")[2] for s in CANDLE_STREAMS)  # "1m", "1m:spot", ... (MarketStats.candles)
INDEX_STREAMS = ((None, "index"),) + tuple((k, f"index:{k}") for k in KINDS)  # (kind or None, stream)
# kind code -> (width, candle keys) per interval: the candles a trade of that kind updates (MarketStats.add)
_CANDLES_OF = {k: tuple((w, (iv, f"{iv}:{name}")) for iv, w in INTERVALS.items()) for k, name in KIND_NAMES.items()}
_CANDLES_ANY = tuple((w, (iv,)) for iv, w in INTERVALS.items())  # a trade of no known kind: class-wide only
DAY = 86_400
TRADES_KEPT = 100  # recent trades kept for a trades snapshot
CANDLES_KEPT = {"1m": 1440, "1h": 720}  # a day of minutes, a month of hours
CANDLES_SENT = 100  # candles in a snapshot
CHECKSUM_DEPTH = 10  # levels per side in a book message's checksum
CHECKSUM_SIDES = ("asks", "bids", "spot_asks", "spot_bids")  # in this order (Kraken: asks, then bids)


def book_checksum(level2: dict[str, list[list[int]]]) -> int:
    """The ``checksum`` of a book message (docs/feeds.md): CRC-32 (zlib's, unsigned) of the ASCII
    string of the top CHECKSUM_DEPTH levels of each side, best first, in CHECKSUM_SIDES order:
    a level is ``price:gpus``, levels are joined by ``,`` and sides by ``|``.  ``level2`` is
    `BookModel.level2`'s shape (sides sorted best first)."""
    text = "|".join(",".join(f"{p}:{g}" for p, g in level2.get(side, ())[:CHECKSUM_DEPTH]) for side in CHECKSUM_SIDES)
    return zlib.crc32(text.encode("ascii"))


class _Ask:
    __slots__ = ("oid", "price", "spot", "gpus", "start", "end", "free", "free_spot", "leases", "firm_now",
                 "spot_now")

    def __init__(self, oid: int, price: int, spot: int, gpus: int, start: int, end: int) -> None:
        self.oid = oid
        self.price = price
        self.spot = spot
        self.gpus = gpus
        self.start = start
        self.end = end
        self.free = 0  # what this ask adds to asks[price] now
        self.free_spot = 0  # ... and to spot_asks[spot]
        # trade id -> (gpus, start, end, spot?, counted in *_now?); tuples, replaced when they change:
        # the collector stops tracking a tuple of ints, so live leases cost its scans nothing
        self.leases: dict[int, tuple[int, int, int, bool, bool]] = {}
        self.firm_now = 0  # GPUs of the firm leases running now
        self.spot_now = 0  # ... of the spot leases


class BookModel:
    """The level-2 book of one class, kept from its events and its engine time."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.seq = 0  # last event applied
        self.now = 0  # engine time
        self.asks: dict[int, _Ask] = {}
        self.bids: dict[int, tuple[int, int, int]] = {}  # oid -> (side (BIDS | SPOT_BIDS), limit, remaining)
        self.levels: list[dict[int, int]] = [{} for _ in SIDE_KEYS]  # price -> GPUs (> 0)
        self._best: list[int | None | object] = [None] * len(SIDE_KEYS)  # best price, or _STALE
        self._published: list[dict[int, int]] = [{} for _ in SIDE_KEYS]
        self._changed: list[set[int]] = [set() for _ in SIDE_KEYS]
        self._dirty: set[int] = set()  # asks to recompute at `now`
        # (time, ask oid, trade id or 0): a lease on the ask starts or ends then, or its window
        # opens or closes; stale entries (a preempted lease's old end) are harmless
        self._moments: list[tuple[int, int, int]] = []
        self._stale = 0  # moments of asks no longer in the book (dropped when they pile up)

    # ------------------------------------------------------------------ levels
    def _add(self, side: int, price: int, gpus: int) -> None:
        if not gpus:
            return
        lv = self.levels[side]
        v = lv.get(price, 0) + gpus
        if v:
            lv[price] = v
        else:
            del lv[price]
        self._changed[side].add(price)
        b = self._best[side]
        if b is not _STALE and (b is None or (price >= b if side < ASKS else price <= b)):  # type: ignore[operator]
            self._best[side] = _STALE

    # ------------------------------------------------------------------ events
    def apply(self, rows: list[Event], now: int | None = None) -> None:
        """Apply events (`orderbook.types.events` of an EVENT_DTYPE array), in seq order.  The
        asks they touch are recomputed by the next `advance`, which must be to ``now`` (the
        batch's engine time after these events) if it is given."""
        asks, bids, dirty, moments = self.asks, self.bids, self._dirty, self._moments
        push = heapq.heappush
        at = self.now if now is None else max(now, self.now)
        for ev in rows:
            t = ev.type
            if t == EV_TRADE:
                b = bids.get(ev.oid)
                if b is not None:
                    self._add(b[0], b[1], ev.remaining - b[2])
                    if ev.remaining:
                        bids[ev.oid] = (b[0], b[1], ev.remaining)
                    else:
                        del bids[ev.oid]
                a = asks.get(ev.oid2)
                if a is not None:
                    tid, start, end = ev.trade_id, ev.start, ev.end
                    if end > at:  # (a lease that is over by the batch's end changes nothing)
                        spot, running = ev.kind == SPOT, start <= at
                        a.leases[tid] = (ev.gpus, start, end, spot, running)
                        if running:  # running at the batch's end: count it now
                            if spot:
                                a.spot_now += ev.gpus
                            else:
                                a.firm_now += ev.gpus
                            dirty.add(a.oid)
                        else:
                            push(moments, (start, a.oid, tid))
                        push(moments, (end, a.oid, tid))
            elif t == EV_ACCEPTED:
                if ev.side == SIDE_ASK:
                    a = _Ask(ev.oid, ev.price, ev.price2, ev.gpus, ev.start, ev.end)
                    asks[a.oid] = a
                    dirty.add(a.oid)
                    if a.start > at:
                        push(moments, (a.start, a.oid, 0))
                    push(moments, (a.end, a.oid, 0))
                else:
                    side = SPOT_BIDS if ev.kind == SPOT else BIDS
                    bids[ev.oid] = (side, ev.price, ev.remaining)
                    self._add(side, ev.price, ev.remaining)
            elif t == EV_CANCELLED or t == EV_EXPIRED:
                if ev.side == SIDE_ASK:
                    a = asks.pop(ev.oid, None)
                    if a is not None:
                        self._add(ASKS, a.price, -a.free)
                        if a.spot:
                            self._add(SPOT_ASKS, a.spot, -a.free_spot)
                        dirty.discard(a.oid)
                        self._stale += 2 + 2 * len(a.leases)
                else:
                    b = bids.pop(ev.oid, None)
                    if b is not None:
                        self._add(b[0], b[1], -b[2])
            elif t == EV_PREEMPTED or t == EV_RELEASED:
                a = asks.get(ev.oid2)
                if a is not None:
                    lease = a.leases.get(ev.trade_id)
                    if lease is not None:
                        a.leases[ev.trade_id] = (lease[0], lease[1], ev.end, lease[3], lease[4])
                        push(moments, (ev.end, a.oid, ev.trade_id))
            elif t == EV_AMENDED:
                if ev.side == SIDE_ASK:
                    a = asks.get(ev.oid)
                    if a is not None:
                        a.gpus = ev.gpus
                        dirty.add(a.oid)
                else:
                    b = bids.get(ev.oid)
                    if b is not None:
                        self._add(b[0], b[1], ev.remaining - b[2])
                        bids[ev.oid] = (b[0], b[1], ev.remaining)
            # EV_REJECTED changes nothing (R8)
        if rows:
            self.seq = rows[-1].seq
        if self._stale > 4096 and 2 * self._stale > len(moments):
            # cancelled asks' moments can lie months ahead: drop them rather than keep them until then
            self._moments = [m for m in moments if m[1] in asks]
            heapq.heapify(self._moments)
            self._stale = 0

    def advance(self, now: int) -> None:
        """Move to engine time ``now`` (never backwards) and recompute what changed."""
        if now > self.now:
            self.now = now
        now = self.now
        moments, dirty, asks = self._moments, self._dirty, self.asks
        pop = heapq.heappop
        while moments and moments[0][0] <= now:
            _, oid, tid = pop(moments)
            a = asks.get(oid)
            if a is None:
                continue
            dirty.add(oid)
            if tid:
                lease = a.leases.get(tid)
                if lease is not None:
                    gpus, start, end, spot, counted = lease
                    running = start <= now < end
                    if running != counted:
                        d = gpus if running else -gpus
                        if spot:
                            a.spot_now += d
                        else:
                            a.firm_now += d
                    if end <= now:
                        del a.leases[tid]  # ended: its GPUs are back (R13)
                    elif running != counted:
                        a.leases[tid] = (gpus, start, end, spot, running)
        if dirty:
            for oid in dirty:
                a = asks.get(oid)
                if a is not None:
                    self._recompute(a, now)
            dirty.clear()

    def _recompute(self, a: _Ask, now: int) -> None:
        free = free_spot = 0
        if a.start <= now < a.end:
            free = max(0, a.gpus - a.firm_now)
            if a.spot:
                free_spot = max(0, a.gpus - a.firm_now - a.spot_now)
        if free != a.free:
            self._add(ASKS, a.price, free - a.free)
            a.free = free
        if free_spot != a.free_spot:
            self._add(SPOT_ASKS, a.spot, free_spot - a.free_spot)
            a.free_spot = free_spot

    # ------------------------------------------------------------------ output
    def level2(self) -> dict[str, list[list[int]]]:
        """The whole book: bids highest first, asks lowest first, ``[price, gpus]`` pairs."""
        lv = self.levels
        return {
            "bids": [[p, lv[BIDS][p]] for p in sorted(lv[BIDS], reverse=True)],
            "spot_bids": [[p, lv[SPOT_BIDS][p]] for p in sorted(lv[SPOT_BIDS], reverse=True)],
            "asks": [[p, lv[ASKS][p]] for p in sorted(lv[ASKS])],
            "spot_asks": [[p, lv[SPOT_ASKS][p]] for p in sorted(lv[SPOT_ASKS])],
        }

    def checksum(self) -> int:
        """`book_checksum` of the book as it stands (only the top levels are sorted)."""
        lv = self.levels
        parts = []
        for side in (ASKS, BIDS, SPOT_ASKS, SPOT_BIDS):
            d = lv[side]
            high = side < ASKS
            if len(d) > 4 * CHECKSUM_DEPTH:
                top = (heapq.nlargest if high else heapq.nsmallest)(CHECKSUM_DEPTH, d)
            else:
                top = sorted(d, reverse=high)[:CHECKSUM_DEPTH]
            parts.append(",".join([f"{p}:{d[p]}" for p in top]))
        return zlib.crc32("|".join(parts).encode("ascii"))

    def take_deltas(self) -> dict[str, list[list[int]]]:
        """The levels whose size differs from the last `take_deltas`, as absolute sizes (0: the
        level is gone); only the sides that changed."""
        out: dict[str, list[list[int]]] = {}
        for side, changed in enumerate(self._changed):
            if not changed:
                continue
            lv, pub = self.levels[side], self._published[side]
            rows = []
            for p in sorted(changed, reverse=side < ASKS):
                v = lv.get(p, 0)
                if v != pub.get(p, 0):
                    rows.append([p, v])
                    if v:
                        pub[p] = v
                    else:
                        del pub[p]
            changed.clear()
            if rows:
                out[SIDE_KEYS[side]] = rows
        return out

    def best(self, side: int) -> tuple[int, int] | None:
        """(price, GPUs) of the best level of a side: highest bid, lowest ask."""
        lv = self.levels[side]
        b = self._best[side]
        if b is _STALE:
            b = (max(lv) if side < ASKS else min(lv)) if lv else None
            self._best[side] = b
        return None if b is None else (b, lv[b])  # type: ignore[return-value]

    # ------------------------------------------------------------------ from a live exchange
    @classmethod
    def from_state(cls, name: str, seq: int, now: int, orders: Any, leases: Any) -> BookModel:
        """The model of a class from the exchange state (its open ``orders``, `open_records`, and
        its ``leases``; other classes' are skipped): how a restarted exchange starts its feed."""
        m = cls(name)
        rows = []
        for o in sorted((o for o in orders if o.status == "open" and o.book == name), key=lambda o: o.oid):
            if o.side == "ask":
                rows.append(Event(type=EV_ACCEPTED, oid=o.oid, price=o.price, gpus=o.gpus, side=SIDE_ASK,
                                  price2=o.spot_price, start=o.start, end=o.end))
            else:
                rows.append(Event(type=EV_ACCEPTED, oid=o.oid, price=o.price, gpus=o.gpus, side=SIDE_BID,
                                  kind=SPOT if o.kind == "spot" else ON_DEMAND, remaining=o.remaining))
        for x in sorted((x for x in leases if x.book == name and x.end > now), key=lambda x: x.trade_id):
            rows.append(Event(type=EV_TRADE, trade_id=x.trade_id, oid2=x.ask_oid, gpus=x.gpus, start=x.start,
                              end=x.end, kind=SPOT if x.kind == "spot" else ON_DEMAND,
                              oid=-1))  # no resting bid to change
        m.apply(rows, now)
        m.seq = seq
        m.advance(now)
        m.take_deltas()
        return m


# ---------------------------------------------------------------------- trade statistics
class MarketStats:
    """Trades of one class: the last ones, 24 h volume and VWAP, candles, the price index, each
    class-wide and per kind (spot, on_demand, reserved).

    Volumes are GPU-hours as traded (``gpus × hours``; a lease preempted or released later still
    counts as traded); notional is µ$ (``price × GPU-hours``); VWAP = notional // volume.
    The index is the 24 h VWAP of firm trades (on-demand and reserved), `docs/feeds.md`; the
    index of a kind is the 24 h VWAP of that kind's trades.
    """

    def __init__(self) -> None:
        # the 24 h window, one bucket per engine second with trades (at most 86,400 per class,
        # whatever the trade rate): [time, then per kind (KINDS order): gpu_h, notional, count]
        self.window: deque[list[int]] = deque()
        n = len(KINDS)
        self.kvolume = [0] * n  # per kind, over the window
        self.knotional = [0] * n
        self.kcount = [0] * n
        self.last: tuple[int, int, int] | None = None  # (price, time, kind)
        self.klast: list[tuple[int, int] | None] = [None] * n  # (price, time) of each kind's last trade
        self.recent: deque[Event] = deque(maxlen=TRADES_KEPT)  # the last trades' events
        # candles by key: "1m", "1h" (every trade) and "1m:spot", "1h:reserved"... (one kind's)
        self.candles: dict[str, deque[list[int]]] = {k: deque(maxlen=CANDLES_KEPT[k.partition(":")[0]])
                                                     for k in CANDLE_KEYS}
        self.changed: dict[str, int | None] = dict.fromkeys(CANDLE_KEYS)  # first changed candle start

    # class-wide and firm totals over the window
    @property
    def volume(self) -> int:
        return sum(self.kvolume)

    @property
    def notional(self) -> int:
        return sum(self.knotional)

    @property
    def count(self) -> int:
        return sum(self.kcount)

    @property
    def firm_volume(self) -> int:
        return sum(self.kvolume) - self.kvolume[SPOT]

    @property
    def firm_notional(self) -> int:
        return sum(self.knotional) - self.knotional[SPOT]

    @property
    def firm_count(self) -> int:
        return sum(self.kcount) - self.kcount[SPOT]

    def add(self, ev: Event) -> None:
        gpu_h = ev.gpus * ev.hours
        price = ev.price
        notional = price * gpu_h
        t = ev.time
        k = ev.kind
        kname = KIND_NAMES.get(k)
        w = self.window
        if w and w[-1][0] == t:
            b = w[-1]
        else:
            b = [t] + [0] * (3 * len(KINDS))
            w.append(b)
        if kname is not None:
            i = 1 + 3 * k
            b[i] += gpu_h
            b[i + 1] += notional
            b[i + 2] += 1
            self.kvolume[k] += gpu_h
            self.knotional[k] += notional
            self.kcount[k] += 1
            self.klast[k] = (price, t)
        self.last = (price, t, k)
        changed = self.changed
        for width, keys in _CANDLES_OF.get(k, _CANDLES_ANY):
            start = t - t % width
            for key in keys:
                fold_candle(self.candles[key], start, price, gpu_h)
                if changed[key] is None:
                    changed[key] = start
        self.recent.append(ev)

    def expire(self, now: int) -> bool:
        """Drop trades older than 24 h of engine time; whether anything dropped out."""
        w = self.window
        cut = now - DAY
        dropped = False
        while w and w[0][0] <= cut:
            b = w.popleft()
            for k in range(len(KINDS)):
                i = 1 + 3 * k
                self.kvolume[k] -= b[i]
                self.knotional[k] -= b[i + 1]
                self.kcount[k] -= b[i + 2]
            dropped = True
        return dropped

    def take_candles(self, key: str, build: bool = True) -> list[dict[str, int]] | bool:
        """The candles of ``key`` ("1m", "1h:spot"...) changed since the last call (with
        ``build`` false: only whether any did)."""
        since = self.changed[key]
        self.changed[key] = None
        if since is None:
            return [] if build else False
        if not build:
            return True
        out = []
        for c in reversed(self.candles[key]):  # the changed ones are the newest
            if c[0] < since:
                break
            out.append(candle_json(c))
        out.reverse()
        return out

    def index(self, kind: str | None = None) -> dict[str, Any]:
        """The class's index (24 h VWAP of firm trades), or with ``kind`` the 24 h VWAP of that
        kind's trades."""
        if kind is None:
            v, n, c, method = self.firm_volume, self.firm_notional, self.firm_count, "vwap_24h_firm"
        else:
            k = KIND_CODES[kind]
            v, n, c, method = self.kvolume[k], self.knotional[k], self.kcount[k], f"vwap_24h_{kind}"
        return {"value": n // v if v else None, "volume_24h": v, "trades_24h": c, "window_s": DAY, "method": method}

    def by_kind(self) -> dict[str, dict[str, int | None]]:
        """Per kind: its last trade and its 24 h volume, notional, VWAP and count (the ticker's ``kinds``)."""
        out: dict[str, dict[str, int | None]] = {}
        for k, name in enumerate(KINDS):
            last, v, n = self.klast[k], self.kvolume[k], self.knotional[k]
            out[name] = {"last": last[0] if last else None, "last_time": last[1] if last else None,
                         "volume_24h": v, "notional_24h": n, "vwap_24h": n // v if v else None,
                         "trades_24h": self.kcount[k]}
        return out


def trade_json(ev: Event) -> dict[str, Any]:
    """A trade event as the public trades channel shows it (no accounts, no order ids)."""
    d = {"seq": ev.seq, "time": ev.time, "trade_id": ev.trade_id, "kind": KIND_NAMES.get(ev.kind, ev.kind),
         "gpus": ev.gpus, "hours": ev.hours, "price": ev.price, "start": ev.start, "end": ev.end,
         "maker": SIDE_NAMES.get(ev.maker, "")}
    if ev.lease_id:
        d["resale_of"] = ev.lease_id
    return d


def fold_candle(cs: Any, start: int, price: int, gpu_h: int) -> None:
    """Fold one trade into a list of candles ``[start, open, high, low, close, volume, notional,
    trades]`` in time order: into the last one if it starts at ``start``, else a new one.  The
    one arithmetic of the live candles (`MarketStats`) and the recorded ones (`feeds.history`)."""
    if cs and cs[-1][0] == start:
        c = cs[-1]
        if price > c[2]:
            c[2] = price
        elif price < c[3]:
            c[3] = price
        c[4] = price
        c[5] += gpu_h
        c[6] += price * gpu_h
        c[7] += 1
    else:
        cs.append([start, price, price, price, price, gpu_h, price * gpu_h, 1])


def candle_json(c: list[int]) -> dict[str, int]:
    """A candle list as the candles channel and GET /v1/candles show it."""
    return {"start": c[0], "open": c[1], "high": c[2], "low": c[3], "close": c[4], "volume": c[5],
            "notional": c[6], "trades": c[7]}


# ---------------------------------------------------------------------- a class's channels
class ClassFeed:
    """Everything public about one class: the book model, the trade statistics, and the stream
    counters ``u`` (one per stream, +1 per message published on it; a snapshot carries the
    current value, so a client that sees ``u`` skip knows it missed a message)."""

    def __init__(self, name: str, book: BookModel | None = None) -> None:
        self.name = name
        self.book = book or BookModel(name)
        self.stats = MarketStats()
        self.u = dict.fromkeys(STREAMS, 0)
        self._ticker: dict[str, Any] | None = None
        self._index: dict[str | None, dict[str, Any]] = {}  # kind (None: class-wide) -> last index sent

    @property
    def seq(self) -> int:
        return self.book.seq

    @property
    def now(self) -> int:
        return self.book.now

    def _head(self, stream: str) -> dict[str, Any]:
        channel, interval, kind = stream_parts(stream)
        d: dict[str, Any] = {"type": channel, "class": self.name, "seq": self.book.seq, "time": self.book.now}
        if interval:
            d["interval"] = interval
        if kind:
            d["kind"] = kind
        return d

    def _next(self, stream: str) -> dict[str, Any]:
        self.u[stream] += 1
        d = self._head(stream)
        d["u"] = self.u[stream]
        return d

    def update(self, rows: np.ndarray | list[Event] | None, now: int,
               wanted: Callable[[str], bool] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Apply a batch's events and the class's engine time after it; the messages to publish,
        as (stream, message), in stream order.  A stream for which ``wanted(stream)`` is false
        still counts its update (``u``) but its message is not built (nobody would get it)."""
        rows = events(rows) if isinstance(rows, np.ndarray) else (rows or [])
        book, stats = self.book, self.stats
        trades = []
        if rows:
            book.apply(rows, now)
            for ev in rows:
                if ev.type == EV_TRADE:
                    stats.add(ev)
                    trades.append(ev)
        book.advance(now)
        expired = stats.expire(book.now)
        out: list[tuple[str, dict[str, Any]]] = []
        deltas = book.take_deltas()
        if deltas:
            m = self._next("book")
            m["action"] = "delta"
            m.update(deltas)
            m["checksum"] = book.checksum()
            out.append(("book", m))
        if trades:
            m = self._next("trades")
            if wanted is None or wanted("trades"):
                m["action"] = "update"
                m["trades"] = [trade_json(ev) for ev in trades]
                out.append(("trades", m))
        if deltas or trades or expired:
            ticker = self._ticker_body()
            if ticker != self._ticker:
                self._ticker = ticker
                m = self._next("ticker")
                m["action"] = "update"
                m.update(ticker)
                out.append(("ticker", m))
        if trades:
            for key, stream in zip(CANDLE_KEYS, CANDLE_STREAMS, strict=True):
                if wanted is None or wanted(stream):
                    candles = stats.take_candles(key)
                    if candles:
                        m = self._next(stream)
                        m["action"] = "update"
                        m["candles"] = candles
                        out.append((stream, m))
                elif stats.take_candles(key, build=False):
                    self.u[stream] += 1  # counted, not built: nobody would get it
        if trades or expired:
            for kind, stream in INDEX_STREAMS:
                index = stats.index(kind)
                if index != self._index.get(kind):
                    self._index[kind] = index
                    if wanted is None or wanted(stream):
                        m = self._next(stream)
                        m["action"] = "update"
                        m.update(index)
                        out.append((stream, m))
                    else:
                        self.u[stream] += 1
        return out

    def _ticker_body(self) -> dict[str, Any]:
        book, s = self.book, self.stats
        d: dict[str, Any] = {}
        for key, side in (("bid", BIDS), ("ask", ASKS), ("spot_bid", SPOT_BIDS), ("spot_ask", SPOT_ASKS)):
            b = book.best(side)
            d[f"best_{key}"] = b[0] if b else None
            d[f"best_{key}_gpus"] = b[1] if b else 0
        last = s.last
        d["last"] = last[0] if last else None
        d["last_time"] = last[1] if last else None
        d["last_kind"] = KIND_NAMES.get(last[2]) if last else None
        d["volume_24h"] = s.volume
        d["notional_24h"] = s.notional
        d["vwap_24h"] = s.notional // s.volume if s.volume else None
        d["trades_24h"] = s.count
        d["kinds"] = s.by_kind()
        return d

    def snapshot(self, stream: str) -> dict[str, Any]:
        """The message a new subscriber of ``stream`` gets first: the current state, with the
        stream's current ``u`` (the next update carries u + 1)."""
        d = self._head(stream)
        d["u"] = self.u[stream]
        d["action"] = "snapshot"
        channel, interval, kind = stream_parts(stream)
        if channel == "book":
            d.update(self.book.level2())
            d["checksum"] = self.book.checksum()
        elif channel == "trades":
            d["trades"] = [trade_json(ev) for ev in self.stats.recent]
        elif channel == "ticker":
            if self._ticker is None:
                self._ticker = self._ticker_body()
            d.update(self._ticker)
        elif channel == "candles":
            key = f"{interval}:{kind}" if kind else interval
            d["candles"] = [candle_json(c) for c in list(self.stats.candles[key])[-CANDLES_SENT:]]
        elif channel == "index":
            index = self._index.get(kind)
            if index is None:
                index = self._index[kind] = self.stats.index(kind)
            d.update(index)
        return d

    def heartbeat(self) -> dict[str, Any]:
        return {"type": "heartbeat", "class": self.name, "seq": self.book.seq, "time": self.book.now,
                "u": dict(self.u)}


def stream_name(channel: str, interval: str | None, kind: str | None = None) -> str | None:
    """The stream a subscription names, or None if there is no such channel/interval/kind."""
    if kind is not None and (channel not in KIND_CHANNELS or kind not in KIND_CODES):
        return None
    if channel == "candles":
        iv = interval or "1m"
        if iv not in INTERVALS:
            return None
        return f"candles:{iv}:{kind}" if kind else f"candles:{iv}"
    if channel in CHANNELS and interval is None:
        return f"{channel}:{kind}" if kind else channel
    return None


def stream_parts(stream: str) -> tuple[str, str | None, str | None]:
    """(channel, interval, kind) of a stream name: "candles:1m:spot" -> ("candles", "1m", "spot"),
    "index:reserved" -> ("index", None, "reserved"), "book" -> ("book", None, None)."""
    parts = stream.split(":")
    if parts[0] == "candles":
        return "candles", parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
    return parts[0], None, parts[1] if len(parts) > 1 else None


def message_stream(m: dict[str, Any]) -> str:
    """The stream of a public message (its type, interval and kind)."""
    name = m["type"]
    if name == "candles":
        name = f"candles:{m['interval']}"
    kind = m.get("kind")
    return f"{name}:{kind}" if kind and name.partition(":")[0] in KIND_CHANNELS else name
