"""A read-only price quote: what a bid would fill right now, and for how much.

    q = book.quote(ON_DEMAND, gpus=8, hours=4, block=2)    # either engine, same answer
    q.fills     # (QuoteFill(ask_oid, provider, gpus, price), ...) in the order the bid would fill
    q.cost      # µ$: sum of gpus × hours × price
    q.complete  # all 8 GPUs would fill; otherwise q.reason says why not

A quote answers as if a bid with tif=IOC and these fields arrived at the book's time: the same
validation as a bid (R8, same reason codes), the same walk over the asks in priority order
(R10) with the same per-ask quantity rule, the ask's price as the trade price (R11: a new bid
is never the maker).  It changes nothing: no event, no sequence number, no order id, no clock.

This module holds what both engines share: the request check and the answer's assembly.  Each
book does the walk itself (`ReferenceBook.quote`, `NumbaBook.quote`).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import index

from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.rules import bid_code
from orderbook.types import HOUR, IOC, RESERVED


@dataclass(frozen=True, slots=True)
class QuoteFill:
    """One fill the quoted bid would get: GPUs from one ask at the ask's price (µ$/GPU-hour)."""

    ask_oid: int
    provider: int
    gpus: int
    price: int


@dataclass(frozen=True, slots=True)
class Quote:
    """What a bid would fill now, what it would cost, and why not all of it."""

    fills: tuple[QuoteFill, ...]
    filled: int  # GPUs that would fill
    cost: int  # µ$: sum of gpus × hours × price over the fills
    complete: bool  # filled == the GPUs asked for
    reason: int  # 0 when complete; a validation code (R8), NO_LIQUIDITY or PARTIAL_LIQUIDITY
    window: tuple[int, int]  # the lease window [start, end) it would get; (0, 0) if invalid
    hours: int


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """A quote's fields after the bid's checks: defaults resolved, the window worked out."""

    reason: int  # 0 = valid, else the code `_on_bid` would reject the same bid with
    kind: int
    gpus: int
    hours: int
    block: int
    account: int  # 0 = nobody: no ask is skipped as a self-trade
    limit: int  # the limit the walk uses (0 on input = the instrument's max_price)
    start: int  # the window [start, end)
    end: int

    def refused(self) -> Quote:
        return Quote(fills=(), filled=0, cost=0, complete=False, reason=self.reason, window=(0, 0),
                     hours=self.hours)

    def answer(self, fills: list[QuoteFill]) -> Quote:
        """The quote for a valid request, from the fills its walk found."""
        filled = sum(f.gpus for f in fills)
        if filled == self.gpus:
            reason = R.OK
        else:
            reason = R.PARTIAL_LIQUIDITY if filled else R.NO_LIQUIDITY
        return Quote(fills=tuple(fills), filled=filled,
                     cost=sum(f.gpus * f.price for f in fills) * self.hours,
                     complete=filled == self.gpus, reason=reason, window=(self.start, self.end),
                     hours=self.hours)


def check_request(cfg: BookConfig, now: int, kind: int, gpus: int, hours: int, start: int = 0,
                  block: int = 1, account: int = 0, limit: int = 0) -> QuoteRequest:
    """The checks `_on_bid` makes of a bid, in its order and with its codes (R6, R8): the
    account's sign, then `orderbook.rules.bid_code` for an IOC bid.

    What a quote does not have is not checked: order id, time in force, expiry.  block 0 means
    1 as in a command; limit 0 means no limit (max_price); account 0 means nobody, a negative
    account is BAD_ACCOUNT as for a bid; start matters only for reserved."""
    kind, gpus, hours, start, block, account, limit = (
        index(v) for v in (kind, gpus, hours, start, block, account, limit))
    block = block or 1
    limit = limit or cfg.max_price
    # an IOC bid: its time in force passes and it has no expiry to check
    code = R.BAD_ACCOUNT if account < 0 else bid_code(cfg, now, kind, IOC, gpus, hours, limit, block, start, 0)
    ws = start if kind == RESERVED else now
    return QuoteRequest(reason=code, kind=kind, gpus=gpus, hours=hours, block=block, account=account,
                        limit=limit, start=ws, end=ws + hours * HOUR)
