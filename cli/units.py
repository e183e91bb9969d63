"""Money and prices as a person writes them, converted exactly to the wire's integer µ$.

The command line takes dollars everywhere — prices in dollars per GPU-hour, deposits in
dollars — and the wire, the SDK and every answer keep integer µ$ (1 USD = 1,000,000 µ$).
Parsing is integer arithmetic on the digits (never float):

    parse_price("2.10") == parse_price("$2.10") == parse_price("2.10/h") == 2_100_000
    parse_price("$2.10/GPU-hour") == parse_price("2100000µ$") == 2_100_000     # µ$ said explicitly
    parse_money("1,000.50") == parse_money("$1000.5") == 1_000_500_000

Every refusal is a UnitError whose sentence names the unit, the smallest step and the bounds.
"""

from __future__ import annotations

import re

MICRO_PER_USD = 1_000_000
MAX_MICRO = 2**62  # the most any µ$ field of the wire holds

# 2, 2.10, 1,000.50 (commas only between groups of three digits: "1,5" is refused, not 15)
_AMOUNT = re.compile(r"(?P<whole>[0-9]+|[0-9]{1,3}(?:,[0-9]{3})+)(?:\.(?P<frac>[0-9]+))?")
_MICRO_SUFFIX = re.compile(r"(?i)\s*(µ\$|u\$|µusd|uusd|micro-?usd)$")
_PER_HOUR = re.compile(r"(?i)\s*/\s*(h|hr|hour|gpu-?h|gpu-?hr|gpu-?hour|gpuh)$")

PRICE_FORMS = "dollars per GPU-hour, e.g. 2.10, $2.10 or 2.10/h (or exact µ$ with the suffix µ$: 2100000µ$)"
MONEY_FORMS = ("dollars, from 0 in steps of $0.000001 (1 µ$, so at most 6 decimals), e.g. 1000, $1,000.50 or "
               "0.000001 (or exact µ$ with the suffix µ$: 1000500000µ$)")


class UnitError(ValueError):
    """An amount that is not one; the message is one sentence."""


def format_usd(micro: int) -> str:
    """µ$ as dollars with 2 to 6 decimals and no sign of the unit: 2_100_000 -> "2.10"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    return f"{sign}{whole}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def _parse(text: str, what: str, forms: str, noun: str, *, per_hour: bool) -> int:
    raw = text
    s = text.strip()
    if s.startswith("-") or s.startswith("$-"):
        raise UnitError(f"{what} {raw!r} is negative; write {forms}")
    micro = _MICRO_SUFFIX.search(s)
    if micro:
        s = s[:micro.start()]
    if per_hour:
        hour = _PER_HOUR.search(s)
        if hour:
            s = s[:hour.start()]
    if s.startswith("$"):
        if micro:
            raise UnitError(f"{what} {raw!r} has both $ and µ$; write {forms}")
        s = s[1:]
    m = _AMOUNT.fullmatch(s)
    if m is None:
        raise UnitError(f"{what} {raw!r} is not {noun}; write {forms}")
    whole_text = m.group("whole").replace(",", "")
    frac = m.group("frac") or ""
    if micro:
        if frac.strip("0"):
            raise UnitError(f"{what} {raw!r}: µ$ are whole numbers (1 µ$ = $0.000001)")
        value = int(whole_text)
    else:
        if len(frac.rstrip("0")) > 6:
            raise UnitError(f"{what} {raw!r} has more than 6 decimals: the smallest unit is 1 µ$ = $0.000001")
        value = int(whole_text) * MICRO_PER_USD + int(frac.rstrip("0").ljust(6, "0") or "0")
    if value > MAX_MICRO:
        raise UnitError(f"{what} {raw!r} is more than the most the exchange holds, "
                        f"{format_usd(MAX_MICRO)} dollars ({MAX_MICRO} µ$)")
    return value


def parse_price(text: str, what: str = "the price") -> int:
    """A price per GPU-hour as written (dollars unless marked µ$) -> integer µ$ per GPU-hour."""
    return _parse(text, what, PRICE_FORMS, "a price", per_hour=True)


def parse_money(text: str, what: str = "the amount") -> int:
    """An amount of money as written (dollars unless marked µ$) -> integer µ$, zero or more."""
    return _parse(text, what, MONEY_FORMS, "a USD amount", per_hour=False)
