"""What the exchange remembers of an order and of a lease, beyond the books: the records the
exchange state keeps (`exchange.state`) and the client views are built from (`exchange.views`)."""

from __future__ import annotations

import msgspec


class OrderInfo(msgspec.Struct, kw_only=True, gc=False):  # ints and strs only: no cycles to collect
    """An order as its owner sees it."""

    oid: int
    book: str
    account: int
    side: str  # "bid" | "ask"
    gpus: int  # current size (after amends)
    price: int  # bid: limit; ask: firm price
    time: int  # engine time it was accepted
    status: str = "open"  # open | filled | cancelled | expired
    remaining: int = 0  # bid: GPUs still wanted; ask: gpus (its capacity)
    filled: int = 0  # GPUs traded (bid: bought; ask: sold, summed over leases)
    kind: str = ""  # bid kind
    tif: str = ""
    hours: int = 0
    block: int = 1
    spot_price: int = 0
    start: int = 0
    end: int = 0
    min_hours: int = 1
    expire_at: int = 0
    lease_id: int = 0  # resale ask: the lease resold
    reason: str = ""  # why it ended (user, ioc, fok, gtd, gate, window_end)
    client_order_id: str = ""
    hold: int = 0  # µ$ of escrow held for it now (bids)
    hold_per_gpu: int = 0


class LeaseInfo(msgspec.Struct, kw_only=True, gc=False):
    """A lease (R16): the trade that created it and how it ends."""

    book: str
    trade_id: int
    bid_oid: int
    ask_oid: int
    buyer: int
    provider: int
    kind: str
    gpus: int
    start: int
    end: int
    price: int
    time: int  # engine time of the trade
    resale_of: int = 0  # the parent lease, for a sub-lease sold by a reseller
    ended_by: str = ""  # "" | "preempted" | "released"
    cost: int = 0  # the lease's price × GPUs × hours it runs (µ$, before fees; settlement's ledger moves the money)

    @property
    def ref(self) -> str:
        return lease_ref(self.book, self.trade_id)

    def status(self, now: int) -> str:
        if now >= self.end:
            return self.ended_by or "ended"
        if self.ended_by:
            return f"{self.ended_by}_pending"  # ends at `end`, already decided
        return "running" if now >= self.start else "scheduled"


def lease_ref(book: str, trade_id: int) -> str:
    """A lease's id across the exchange: trade ids count per book (R16)."""
    return f"{book}-{trade_id}"
