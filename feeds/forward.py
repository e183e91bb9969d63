"""The forward curve of a GPU class: what a GPU-day costs by the day it starts (docs/feeds.md,
"Forward curve").

    days = curve(book, cfg, now, trades, days=28, gpus=1, hours=24)

For each of the next ``days`` UTC days from the first midnight after the book's time ``now``:

* ``best`` — the limit, µ$ per GPU-hour, at which a reserved bid for ``gpus`` × ``hours``
  starting at that midnight fills now in full (the book's own quote: the asks whose windows hold
  it, in priority order, R9–R11; the highest price among its fills), and ``average``, what the
  GPU-hours would cost on average; both null, with ``reason``, when it would not fill in full;
* ``traded_*`` — the reserved trades of ``trades`` (the recent tape) whose lease starts that
  day: their volume-weighted price (notional // GPU-hours, rounded down), GPU-hours and count.

Both sides are integers (µ$, seconds, GPU-hours); nothing here changes the book.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from feeds.model import DAY
from feeds.products import first_day, size_quote
from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.types import RESERVED, Event


def curve(book: Any, cfg: BookConfig, now: int, trades: Iterable[Event], days: int, gpus: int,
          hours: int) -> list[dict[str, Any]]:
    """The forward curve's rows, one per start day (see the module's text)."""
    d0 = first_day(now)
    traded: dict[int, list[int]] = {}  # start day -> [notional µ$, GPU-hours, trades]
    for ev in trades:
        if ev.kind == RESERVED and d0 <= ev.start < d0 + days * DAY:
            row = traded.setdefault(ev.start - ev.start % DAY, [0, 0, 0])
            gh = ev.gpus * ev.hours
            row[0] += ev.price * gh
            row[1] += gh
            row[2] += 1
    out = []
    for k in range(days):
        start = d0 + k * DAY
        best, average, code = size_quote(book, cfg, now, RESERVED, gpus, hours, start=start)
        notional, gpu_hours, n = traded.get(start, (0, 0, 0))
        out.append({"start": start, "best": best, "average": average, "reason": R.reason_name(code) if code else None,
                    "traded_vwap": notional // gpu_hours if gpu_hours else None,
                    "traded_gpu_hours": gpu_hours, "trades": n})
    return out
