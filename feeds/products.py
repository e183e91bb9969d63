"""Products: executable books per kind of lease (docs/feeds.md, "Products").

The class-wide ladders (`book` channel) put every ask's free GPUs beside every bid, though a
bid for 168 hours cannot use an ask whose window ends in 36, a block-of-8 bid cannot use 3 free
GPUs, and a reserved bid for next week cannot use GPUs free now (R9): they look crossed and are
not.  A product is what makes orders compatible — kind, duration, block, and for reserved its
start — and its book is executable:

* an ask level is what a bid of the product could get **now** at that price: the book's own
  quote (`book.quote`, R9–R11) of the biggest bid of the product, its fills summed by price;
* a bid level is the resting bids of exactly that product (kind, hours, block, start).

The book is quiescent after every command (R9/R10: a bid that could trade has traded), so no
product's best bid reaches its best ask, and a bid at the best ask for the size shown there
fills now at that price.  Bids of other durations are in no product (the class-wide ladders
still show them).

    rows = product_books(book, cfg, now, open_bids, depth=10)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orderbook.config import BookConfig
from orderbook.rules import bid_code
from orderbook.types import IOC, KIND_NAMES, ON_DEMAND, RESERVED, SPOT

DAY = 86_400
HOURS = (1, 8, 24, 168)  # firm (on demand) and spot: durations ...
BLOCKS = (1, 8)  # ... and blocks; every pair is a product
RESERVED_DAYS = 14  # reserved: 24 hours, block 1, starting at each of the next 14 UTC midnights
SIZES = (1, 8, 64)  # standard sizes quoted per product, in blocks
_KIND_CODES = {name: code for code, name in KIND_NAMES.items()}


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


def products(now: int) -> list[Product]:
    """The products of a class at engine time ``now``: a fixed set, the reserved ones rolling
    with the days."""
    out = [Product(kind, h, b) for kind in (ON_DEMAND, SPOT) for h in HOURS for b in BLOCKS]
    first = (now // DAY + 1) * DAY
    out += [Product(RESERVED, 24, 1, first + k * DAY) for k in range(RESERVED_DAYS)]
    return out


def parse(product_id: str) -> Product | None:
    """The product a ``Product.id`` names (None: not one)."""
    try:
        head, _, start = product_id.partition("@")
        kind, hours, block = head.split(":")
        if not hours.endswith("h") or not block.startswith("x"):
            return None
        p = Product(_KIND_CODES[kind], int(hours[:-1]), int(block[1:]), int(start) if start else 0)
    except (KeyError, ValueError):
        return None
    return p if p.id == product_id else None


def asks(book: Any, cfg: BookConfig, now: int, p: Product) -> list[list[int]]:
    """``[price, gpus]`` a bid of the product could get now, cheapest first."""
    most = cfg.max_gpus - cfg.max_gpus % p.block
    if not most or bid_code(cfg, now, p.kind, IOC, most, p.hours, cfg.max_price, p.block, p.start, 0):
        return []  # no bid of the product can be placed now (e.g. a reserved start inside the gate)
    levels: dict[int, int] = {}
    for f in book.quote(p.kind, most, p.hours, start=p.start, block=p.block).fills:
        levels[f.price] = levels.get(f.price, 0) + f.gpus
    return [[price, levels[price]] for price in sorted(levels)]


def bids(orders: Iterable[Any], p: Product) -> list[list[int]]:
    """``[limit, gpus]`` of the resting bids of exactly the product, highest first."""
    kind = KIND_NAMES[p.kind]
    levels: dict[int, int] = {}
    for o in orders:
        if (o.side == "bid" and o.kind == kind and o.hours == p.hours and max(o.block, 1) == p.block
                and (p.kind != RESERVED or o.start == p.start)):
            levels[o.price] = levels.get(o.price, 0) + o.remaining
    return [[price, levels[price]] for price in sorted(levels, reverse=True)]


def quotes(book: Any, cfg: BookConfig, now: int, p: Product) -> list[dict[str, Any]]:
    """What filling each standard size (``SIZES`` blocks) of the product would cost now: the
    book's own quote (GET /v1/quote) — ``limit``, the highest price among its fills (what a bid
    needs as its limit), and ``average`` (rounded down) — or both null when it would not fill."""
    out = []
    for n in SIZES:
        gpus = n * p.block
        limit = average = None
        if gpus <= cfg.max_gpus and not bid_code(cfg, now, p.kind, IOC, gpus, p.hours, cfg.max_price, p.block,
                                                 p.start, 0):
            q = book.quote(p.kind, gpus, p.hours, start=p.start, block=p.block)
            if q.complete:
                limit = max(f.price for f in q.fills)
                average = q.cost // (q.filled * p.hours)
        out.append({"gpus": gpus, "limit": limit, "average": average})
    return out


def product_books(book: Any, cfg: BookConfig, now: int, open_bids: list[Any], depth: int,
                  only: Product | None = None) -> list[dict[str, Any]]:
    """Every product's book (or ``only`` one's), ``depth`` levels a side."""
    out = []
    for p in [only] if only is not None else products(now):
        a, b = asks(book, cfg, now, p), bids(open_bids, p)
        out.append({"product": p.id, "kind": KIND_NAMES[p.kind], "hours": p.hours, "block": p.block,
                    "start": p.start or None, "best_bid": b[0][0] if b else None,
                    "best_ask": a[0][0] if a else None, "bids": b[:depth], "asks": a[:depth],
                    "quotes": quotes(book, cfg, now, p)})
    return out
