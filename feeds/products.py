"""Products: executable books per kind of lease (docs/feeds.md, "Products").

The class-wide ladders (`book` channel) put every ask's free GPUs beside every bid, though a
bid for 168 hours cannot use an ask whose window ends in 36, a block-of-8 bid cannot use 3 free
GPUs, and a reserved bid for next week cannot use GPUs free now (R9): they look crossed and are
not.  A product is what makes orders compatible — kind, duration, block, and for reserved its
start — and its book is executable:

* an ask level is what a bid of the product could get **now** at that price: the book's own
  quote (`book.quote_fills`, R9–R11) of the biggest bid of the product, its fills summed by price;
* a bid level is the resting bids of exactly that product (kind, hours, block, start), kept by
  `BidLadders` from the events.

The book is quiescent after every command (R9/R10: a bid that could trade has traded), so no
product's best bid reaches its best ask, and a bid at the best ask for the size shown there
fills now at that price.  Bids of other durations are in no product (the class-wide ladders
still show them).

    feed = ProductFeed("H100", cfg, BidLadders.from_state("H100", state.open_records("H100")))
    feed.ladders.apply(events)                     # every batch's events, as the book takes them
    for stream, msg in feed.refresh(book, seq, now, loop.time()):   # the book at that seq
        ...                                        # "products" and "quotes" updates
    feed.snapshot("products"); feed.full           # every product's book, all its levels
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from feeds.model import DAY, KIND_CODES
from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.rules import bid_code
from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_TRADE,
    IOC,
    KIND_NAMES,
    ON_DEMAND,
    RESERVED,
    SIDE_BID,
    SPOT,
    Event,
)

HOURS = (1, 8, 24, 168)  # firm (on demand) and spot: durations ...
BLOCKS = (1, 8)  # ... and blocks; every pair is a product
RESERVED_DAYS = 14  # reserved: 24 hours, block 1, starting at each of the next 14 UTC midnights
SIZES = (1, 8, 64)  # standard sizes quoted per product, in blocks


@dataclass(frozen=True, slots=True)
class Product:
    kind: int
    hours: int
    block: int
    start: int = 0  # reserved: the lease's start

    @property
    def id(self) -> str:
        """``on_demand:24h:x1``, ``spot:8h:x8``, ``reserved:24h:x1@1765238400``."""
        base = f"{KIND_NAMES[self.kind]}:{self.hours}h:x{self.block}"
        return f"{base}@{self.start}" if self.start else base


def first_day(now: int) -> int:
    """The first UTC midnight after engine time ``now``."""
    return (now // DAY + 1) * DAY


def products(now: int) -> list[Product]:
    """The products of a class at engine time ``now``: a fixed set, the reserved ones rolling
    with the days."""
    out = [Product(kind, h, b) for kind in (ON_DEMAND, SPOT) for h in HOURS for b in BLOCKS]
    first = first_day(now)
    out += [Product(RESERVED, 24, 1, first + k * DAY) for k in range(RESERVED_DAYS)]
    return out


def parse(product_id: str) -> Product | None:
    """The product a ``Product.id`` names (None: not one)."""
    try:
        head, _, start = product_id.partition("@")
        kind, hours, block = head.split(":")
        if not hours.endswith("h") or not block.startswith("x"):
            return None
        p = Product(KIND_CODES[kind], int(hours[:-1]), int(block[1:]), int(start) if start else 0)
    except (KeyError, ValueError):
        return None
    return p if p.id == product_id else None


def asks(book: Any, cfg: BookConfig, now: int, p: Product, depth: int | None = None) -> list[list[int]]:
    """``[price, gpus]`` a bid of the product could get now, cheapest first (``depth`` levels)."""
    most = cfg.max_gpus - cfg.max_gpus % p.block
    if not most or bid_code(cfg, now, p.kind, IOC, most, p.hours, cfg.max_price, p.block, p.start, 0):
        return []  # no bid of the product can be placed now (e.g. a reserved start inside the gate)
    _, fills = book.quote_fills(p.kind, most, p.hours, start=p.start, block=p.block)
    if not len(fills):
        return []
    order = np.argsort(fills[:, 3], kind="stable")
    prices, gpus = fills[order, 3], fills[order, 2]
    first = np.flatnonzero(np.concatenate(([True], prices[1:] != prices[:-1])))  # each price's first fill
    sums = np.add.reduceat(gpus, first)  # int64 throughout: no float near the book
    n = len(first) if depth is None else min(depth, len(first))
    return [[int(prices[first[i]]), int(sums[i])] for i in range(n)]


def size_quote(book: Any, cfg: BookConfig, now: int, kind: int, gpus: int, hours: int, block: int = 1,
               start: int = 0) -> tuple[int | None, int | None, int]:
    """What a bid of these fields for ``gpus`` GPUs would pay if it filled now in full: (limit,
    average, 0) — the highest price among its fills and the average per GPU-hour (rounded down),
    as GET /v1/quote answers — or (None, None, reason code) when it would not fill in full."""
    code = bid_code(cfg, now, kind, IOC, gpus, hours, cfg.max_price, block, start, 0)
    if code:
        return None, None, code
    req, fills = book.quote_fills(kind, gpus, hours, start=start, block=block)
    filled = int(fills[:, 2].sum()) if len(fills) else 0
    if req.reason or filled < gpus:
        return None, None, req.reason or (R.PARTIAL_LIQUIDITY if filled else R.NO_LIQUIDITY)
    cost = int((fills[:, 2] * fills[:, 3]).sum())
    return int(fills[:, 3].max()), cost // filled, 0


def bid_key(kind: int, hours: int, block: int, start: int) -> tuple[int, int, int, int]:
    """What makes resting bids the same product: kind, hours, block (0 is 1) and, for a
    reserved bid only, its start."""
    return kind, hours, block or 1, start if kind == RESERVED else 0


class BidLadders:
    """The resting bids of one class, summed by product and limit, kept from its events
    (accepted, traded, amended, cancelled, expired).

        ladders = BidLadders.from_state("H100", engine.state.open_records("H100"))
        ladders.apply(events)                       # a batch's Event tuples, in seq order
        ladders.levels(Product(ON_DEMAND, 24, 1))   # [[limit, GPUs], ...], highest first
    """

    def __init__(self) -> None:
        # oid -> (*bid_key, limit, remaining): flat tuples of ints, replaced when they change; the
        # collector stops tracking such a tuple at the first collection that sees it (a nested key
        # tuple could still be tracked then, and keep its bid tracked into the older generations)
        self.bids: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.by_key: dict[tuple[int, int, int, int], dict[int, int]] = {}  # bid_key -> limit -> GPUs (> 0)

    @classmethod
    def from_state(cls, name: str, orders: Iterable[Any]) -> BidLadders:
        """The open bids of class ``name`` among the exchange state's orders (a starting exchange)."""
        out = cls()
        for o in orders:
            if o.book == name and o.side == "bid" and o.status == "open" and o.remaining:
                out._put(o.oid, bid_key(KIND_CODES[o.kind], o.hours, o.block, o.start), o.price, o.remaining)
        return out

    def _put(self, oid: int, key: tuple[int, int, int, int], limit: int, remaining: int) -> None:
        self._set(oid, (*key, limit, 0), remaining)

    def _set(self, oid: int, b: tuple[int, int, int, int, int, int], remaining: int) -> None:
        """Bid ``oid`` (``b``: as it was) now has ``remaining`` GPUs resting (0: gone)."""
        key, limit = b[:4], b[4]
        lv = self.by_key.setdefault(key, {})
        v = lv.get(limit, 0) + remaining - b[5]
        if v:
            lv[limit] = v
        else:
            del lv[limit]
            if not lv:
                del self.by_key[key]
        if remaining:
            self.bids[oid] = (*key, limit, remaining)
        else:
            self.bids.pop(oid, None)

    def apply(self, rows: Iterable[Event]) -> None:
        bids = self.bids
        for ev in rows:
            t = ev.type
            if t == EV_TRADE or (t == EV_AMENDED and ev.side == SIDE_BID):
                b = bids.get(ev.oid)
                if b is not None:
                    self._set(ev.oid, b, ev.remaining)
            elif t == EV_ACCEPTED and ev.side == SIDE_BID:
                if ev.remaining:
                    self._put(ev.oid, bid_key(ev.kind, ev.hours, ev.block, ev.start), ev.price, ev.remaining)
            elif (t == EV_CANCELLED or t == EV_EXPIRED) and ev.side == SIDE_BID:
                b = bids.get(ev.oid)
                if b is not None:
                    self._set(ev.oid, b, 0)

    def levels(self, p: Product) -> list[list[int]]:
        """``[limit, GPUs]`` of the resting bids of exactly the product, highest first."""
        lv = self.by_key.get(bid_key(p.kind, p.hours, p.block, p.start))
        return [[price, lv[price]] for price in sorted(lv, reverse=True)] if lv else []


def quotes(book: Any, cfg: BookConfig, now: int, p: Product) -> list[dict[str, Any]]:
    """What filling each standard size (``SIZES`` blocks) of the product would cost now: the
    book's own quote (GET /v1/quote) — ``limit``, the highest price among its fills (what a bid
    needs as its limit), and ``average`` (rounded down) — or both null when it would not fill."""
    out = []
    for n in SIZES:
        gpus = n * p.block
        limit = average = None
        if gpus <= cfg.max_gpus:
            limit, average, _ = size_quote(book, cfg, now, p.kind, gpus, p.hours, p.block, p.start)
        out.append({"gpus": gpus, "limit": limit, "average": average})
    return out


def product_row(book: Any, cfg: BookConfig, now: int, ladders: BidLadders, p: Product,
                depth: int | None) -> dict[str, Any]:
    """One product's book: its fields, best bid and ask, ``depth`` levels a side (None: all)."""
    a, b = asks(book, cfg, now, p, depth), ladders.levels(p)
    return {"product": p.id, "kind": KIND_NAMES[p.kind], "hours": p.hours, "block": p.block,
            "start": p.start or None, "best_bid": b[0][0] if b else None, "best_ask": a[0][0] if a else None,
            "bids": b[:depth] if depth is not None else b, "asks": a}


# ---------------------------------------------------------------------- the live streams
STREAMS = ("products", "quotes")  # the products' channels of a class (live only)
DEPTH = 10  # levels a side in a products message
INTERVAL_S = 0.2  # a class's products are recomputed at most this often (wall-clock seconds)


class ProductFeed:
    """The ``products`` and ``quotes`` streams of one class (docs/feeds.md, "Products"): every
    product's executable book and its standard-size quotes, computed from the book itself — so
    they are live only: a recording of events cannot replay them — at a moment when the book
    holds exactly what is durable (the feed service sees to that), at most every ``interval_s``.
    An update lists the rows that changed, whole, and the products that left the set (a reserved
    day that began); every message carries the book's seq and engine time it was computed at.
    ``u`` counts each stream's messages as in `feeds.model.ClassFeed`.
    """

    def __init__(self, name: str, cfg: BookConfig, ladders: BidLadders, depth: int = DEPTH,
                 interval_s: float = INTERVAL_S) -> None:
        self.name = name
        self.cfg = cfg
        self.ladders = ladders
        self.depth = depth
        self.interval_s = interval_s
        self.u = dict.fromkeys(STREAMS, 0)
        self.rows: dict[str, dict[str, Any]] = {}  # product id -> its book, `depth` levels a side (no quotes)
        self.full: dict[str, dict[str, Any]] = {}  # ... every level (GET /v1/products?depth=)
        self.quotes: dict[str, list[dict[str, Any]]] = {}  # product id -> its size quotes
        self.at: tuple[int, int] | None = None  # (book seq, engine time) of rows and quotes
        self.next_at = 0.0  # monotonic time before which no recomputation is due
        self.waiting: list[tuple[Any, str]] = []  # (connection, stream) waiting for a first snapshot

    def _head(self, stream: str) -> dict[str, Any]:
        assert self.at is not None
        return {"type": stream, "class": self.name, "seq": self.at[0], "time": self.at[1]}

    def refresh(self, book: Any, seq: int, now: int, mono: float) -> list[tuple[str, dict[str, Any]]]:
        """Recompute every product at the book's (seq, now); the update messages of the streams
        whose rows changed, as (stream, message)."""
        first = self.at is None
        self.at = (seq, now)
        self.next_at = mono + self.interval_s
        cfg, ladders, depth = self.cfg, self.ladders, self.depth
        rows: dict[str, dict[str, Any]] = {}
        full: dict[str, dict[str, Any]] = {}
        sizes: dict[str, list[dict[str, Any]]] = {}
        for p in products(now):
            row = full[p.id] = product_row(book, cfg, now, ladders, p, None)
            rows[p.id] = {**row, "bids": row["bids"][:depth], "asks": row["asks"][:depth]}
            sizes[p.id] = quotes(book, cfg, now, p)
        out = []
        for stream, new, old in (("products", rows, self.rows), ("quotes", sizes, self.quotes)):
            changed = [k for k, v in new.items() if old.get(k) != v]
            gone = [k for k in old if k not in new]
            if not first and (changed or gone):
                self.u[stream] += 1
                m = self._head(stream)
                m["u"] = self.u[stream]
                m["action"] = "update"
                m[stream] = self._entries(stream, new, changed)
                if gone:
                    m["removed"] = gone
                out.append((stream, m))
        self.rows, self.full, self.quotes = rows, full, sizes
        return out

    @staticmethod
    def _entries(stream: str, new: dict[str, Any], ids: Iterable[str]) -> list[dict[str, Any]]:
        if stream == "products":
            return [new[k] for k in ids]
        return [{"product": k, "quotes": new[k]} for k in ids]

    def snapshot(self, stream: str) -> dict[str, Any] | None:
        """The stream's state as last computed (None: never computed yet)."""
        if self.at is None:
            return None
        m = self._head(stream)
        m["u"] = self.u[stream]
        m["action"] = "snapshot"
        store = self.rows if stream == "products" else self.quotes
        m[stream] = self._entries(stream, store, store.keys())
        return m
