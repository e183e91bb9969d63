"""The one interface both books implement, and how to get one.

    book = make_book(BookConfig(name="H100"), engine="numba")   # or "reference"
    events = book.process(commands)     # COMMAND_DTYPE array in, EVENT_DTYPE array out
    book.process(commands, firsts)      # and where each command's events start (int64, n + 1)
    book.state_hash()                   # equal for equal states, across engines
    book.quote(ON_DEMAND, gpus=8, hours=4)  # what such a bid would fill now; changes nothing
    book.validate()                     # derived structures agree with the orders and leases
    blob = book.snapshot(); book2 = type(book).restore(config, blob)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from orderbook.config import BookConfig
from orderbook.invariants import BookInvariantError
from orderbook.quote import Quote, QuoteRequest

ENGINES = ("numba", "reference")


__all__ = ["ENGINES", "Book", "BookInvariantError", "make_book", "restore_book"]


class Book(Protocol):
    cfg: BookConfig

    def process(self, commands: np.ndarray, firsts: np.ndarray | None = None) -> np.ndarray:
        """The events of ``commands``, in order; ``firsts`` (int64, one more than the commands),
        when given, gets where each command's events start, then their count."""
        ...

    def state_hash(self) -> int: ...

    def snapshot(self) -> bytes: ...

    def crossing_pairs(self) -> list[tuple[int, int]]: ...

    def resting_orders(self) -> int: ...

    def quote(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
              account: int = 0, limit: int = 0) -> Quote:
        """What an IOC bid of these fields would fill now, and why not all; changes nothing."""
        ...

    def quote_fills(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
                    account: int = 0, limit: int = 0) -> tuple[QuoteRequest, np.ndarray]:
        """The same walk as `quote`: its checked request and its fills as int64 rows
        ``ask_oid, provider, gpus, price`` (none when refused), without a Python object per fill."""
        ...

    def validate(self) -> None:
        """Check every derived structure (ladders, indexes, bounds, maps, caches, timers) against
        the orders and leases; raise `BookInvariantError` naming the first that disagrees.
        For tests: it reads the whole book."""
        ...


def make_book(config: BookConfig | None = None, engine: str = "numba") -> Book:
    """A fresh book for one GPU class."""
    config = config or BookConfig()
    if engine == "reference":
        from orderbook.reference import ReferenceBook

        return ReferenceBook(config)
    if engine == "numba":
        from orderbook.fast import NumbaBook

        return NumbaBook(config)
    raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")


def restore_book(config: BookConfig, blob: bytes, engine: str = "numba") -> Book:
    """A book restored from `snapshot()` bytes of the same engine."""
    if engine == "reference":
        from orderbook.reference import ReferenceBook

        return ReferenceBook.restore(config, blob)
    from orderbook.fast import NumbaBook

    return NumbaBook.restore(config, blob)
