"""The sentence of a market-rule refusal (R8): what field, what value, what bounds, what unit.

The book's reason codes (`orderbook.reasons`) come with one generic sentence each ("price must
lie between the instrument's minimum and maximum price"); the gateway knows the instrument and
the request, so it says which field was refused and what it should be, in the wire's units
(µ$ per GPU-hour for prices, with dollars beside them; seconds UTC for times):

    raise rule_error(R.BAD_PRICE, cfg, now, limit=2)
    -> BAD_PRICE: limit must be between 1000 and 100000000 µ$ per GPU-hour ($0.001 to $100.00), a
       multiple of the tick, 1000 µ$ ($0.001); it is 2 µ$ ($0.000002)

The code and HTTP status are those of `exchange.errors.book_error`.
"""

from __future__ import annotations

from exchange.errors import ApiError, book_error
from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.types import HOUR

MICRO = 1_000_000


def usd(micro: int) -> str:
    """µ$ as dollars, exactly: 2_100_000 -> "$2.10", 1_000 -> "$0.001", -5 -> "-$0.000005"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    decimals = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole:,}.{decimals}"


def price_bounds(cfg: BookConfig) -> str:
    """The price rule of an instrument in one clause."""
    return (f"between {cfg.min_price} and {cfg.max_price} µ$ per GPU-hour ({usd(cfg.min_price)} to "
            f"{usd(cfg.max_price)}), a multiple of the tick, {cfg.tick} µ$ ({usd(cfg.tick)})")


def _price(field: str, value: int, cfg: BookConfig) -> str:
    return f"{field} must be {price_bounds(cfg)}; it is {value} µ$ ({usd(value)})"


def _off_tick(field: str, value: int, cfg: BookConfig) -> str:
    lo = value - value % cfg.tick
    return (f"{field} must be a multiple of the tick, {cfg.tick} µ$ ({usd(cfg.tick)}) per GPU-hour; it is "
            f"{value} µ$ ({usd(value)}): the nearest are {lo} and {lo + cfg.tick}")


def rule_error(code: int, cfg: BookConfig, now: int, **f: int) -> ApiError:
    """The ApiError of a rule check's code (``bid_code``, ``ask_code``) with a sentence naming the
    field, its value and its bounds; ``f`` holds the request's fields by their wire names."""
    err = book_error(code)
    msg = _sentence(code, cfg, now, f)
    if msg:
        err.message = msg
    return err


def _sentence(code: int, cfg: BookConfig, now: int, f: dict[str, int]) -> str | None:
    name = cfg.name
    if code == R.BAD_GPUS:
        return f"gpus must be between 1 and {cfg.max_gpus} (the {name} maximum per order); it is {f['gpus']}"
    if code == R.BAD_HOURS:
        return f"hours must be between 1 and {cfg.max_hours} (the {name} maximum per bid); it is {f['hours']}"
    if code == R.BAD_MIN_HOURS:
        return f"min_hours must be between 1 and {cfg.max_hours}; it is {f['min_hours']}"
    if code == R.BAD_BLOCK:
        return (f"block must be at least 1 and divide gpus ({f['gpus']}): GPUs are filled in blocks of that "
                f"many; it is {f['block']}")
    price_field = "limit" if "limit" in f else "price"
    if code == R.BAD_PRICE:
        return _price(price_field, f[price_field], cfg)
    if code == R.OFF_TICK:
        field = price_field if f[price_field] % cfg.tick else "spot_price"
        return _off_tick(field, f[field], cfg)
    if code == R.BAD_SPOT_PRICE:
        return (f"spot_price must be 0 (no spot) or between {cfg.min_price} µ$ ({usd(cfg.min_price)}) and the ask's "
                f"price, {f['price']} µ$ ({usd(f['price'])}) per GPU-hour, a multiple of the tick, {cfg.tick} µ$; "
                f"it is {f['spot_price']} µ$ ({usd(f['spot_price'])})")
    if code == R.BAD_WINDOW:
        start = max(f.get("start", 0), now)
        return (f"the ask's window from its start ({start}, UTC seconds; now if earlier) to end ({f['end']}) must "
                f"hold min_hours ({f.get('min_hours', 1)} h) and at most {cfg.max_window_hours} h; it is "
                f"{f['end'] - start} s")
    if code == R.UNALIGNED_START:
        nxt = (f["start"] // HOUR + 1) * HOUR
        return (f"a reserved bid's start must be on the hour (a multiple of 3600 UTC seconds, e.g. {nxt}); "
                f"it is {f['start']}")
    if code == R.PAST_GATE:
        earliest = -(-(now + cfg.gate_s) // HOUR) * HOUR
        return (f"a reserved bid's start must be on the hour and at least {cfg.gate_s} s after now ({now}): "
                f"the earliest is {earliest}; it is {f['start']}")
    if code == R.BAD_EXPIRY:
        return f"a GTD bid needs expire_at (UTC seconds) later than now ({now}); it is {f['expire_at']}"
    return None


def amend_error(gpus: int) -> ApiError | None:
    """An amend's gpus that no order can be reduced to (the rest of BAD_AMEND needs the order)."""
    if 1 <= gpus <= 2**31 - 1:
        return None
    err = book_error(R.BAD_AMEND)
    err.message = f"amend reduces gpus to at least one block (1 or more) and below what the order has; it is {gpus}"
    return err
