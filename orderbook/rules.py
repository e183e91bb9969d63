"""R8: the field checks of a bid and an ask, written once.

Each function returns the reason code (`orderbook.reasons`) the book gives a new order for its
fields alone, 0 when they pass: the checks in the book's order, the first that fails decides.
Only what needs no book state is here; the book checks before these the account (> 0) and the
order id (above every earlier one), and after them a resale ask's lease (R16) and a post-only
ask's would-be trades.

    code = bid_code(cfg, now, kind, tif, gpus, hours, limit, block, start, expire_at)
    code = ask_code(cfg, now, gpus, price, spot_price, start, end, min_hours)

Used by the reference book (`ReferenceBook._on_bid`, `_on_ask`), the quote's request check
(`orderbook.quote.check_request`) and the gateway's prechecks (`gateway.gateway`, before the sequencer).  The
numba book (`orderbook.fast._on_bid`, `_on_ask`) cannot call plain Python and repeats them;
`tests/test_rules_r8_mirror.py` holds it to these functions on random fields.

Fields are plain integers, as a command record holds them, with the command's defaults already
applied where the book applies them: `block` and `min_hours` arrive here as 1 when the command
said 0.  An ask's start before now (0 included) means now.
"""

from __future__ import annotations

from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.types import FOK, GTC, GTD, HOUR, IOC, ON_DEMAND, RESERVED, SPOT

__all__ = ["ask_code", "bid_code", "price_code"]


def price_code(cfg: BookConfig, price: int) -> int:
    """R3, R8: a price (an ask's price, a bid's limit) between the instrument's bounds, on its tick."""
    if price < cfg.min_price or price > cfg.max_price:
        return R.BAD_PRICE
    if price % cfg.tick:
        return R.OFF_TICK
    return R.OK


def bid_code(cfg: BookConfig, now: int, kind: int, tif: int, gpus: int, hours: int, limit: int,
             block: int, start: int, expire_at: int) -> int:
    """R6, R8, R14: the code of a bid's fields at book time `now` (0 = valid).

    Order: kind, tif, gpus, hours, limit (price), block, then for a reserved bid its start
    (on an hour, at least gate_s after now), then for a GTD bid its expiry (after now).
    `start` matters only for a reserved bid, `expire_at` only for a GTD one."""
    if kind != SPOT and kind != ON_DEMAND and kind != RESERVED:
        return R.BAD_KIND
    if tif != GTC and tif != IOC and tif != FOK and tif != GTD:
        return R.BAD_TIF
    if not 1 <= gpus <= cfg.max_gpus:
        return R.BAD_GPUS
    if not 1 <= hours <= cfg.max_hours:
        return R.BAD_HOURS
    code = price_code(cfg, limit)
    if code:
        return code
    if block < 1 or gpus % block:
        return R.BAD_BLOCK
    if kind == RESERVED:
        if start % HOUR:
            return R.UNALIGNED_START
        if start - now < cfg.gate_s:
            return R.PAST_GATE
    if tif == GTD and expire_at <= now:
        return R.BAD_EXPIRY
    return R.OK


def ask_code(cfg: BookConfig, now: int, gpus: int, price: int, spot_price: int, start: int, end: int,
             min_hours: int) -> int:
    """R5, R8: the code of an ask's fields at book time `now` (0 = valid).

    Order: gpus, price, spot price (when offered: at least min_price, at most price, on the
    tick), min_hours, then the window [max(start, now), end): it holds min_hours and is no
    longer than max_window_hours."""
    start = max(start, now)
    if not 1 <= gpus <= cfg.max_gpus:
        return R.BAD_GPUS
    code = price_code(cfg, price)
    if code:
        return code
    if spot_price:
        if spot_price < cfg.min_price or spot_price > price:
            return R.BAD_SPOT_PRICE
        if spot_price % cfg.tick:
            return R.OFF_TICK
    if not 1 <= min_hours <= cfg.max_hours:
        return R.BAD_MIN_HOURS
    if end - start < min_hours * HOUR or end - start > cfg.max_window_hours * HOUR:
        return R.BAD_WINDOW
    return R.OK
