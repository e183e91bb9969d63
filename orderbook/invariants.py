"""What `Book.validate()` raises (both books): a derived structure that disagrees with the book's
orders and leases.  A leaf module, so that the books and the interface can all name it."""

from __future__ import annotations


class BookInvariantError(AssertionError):
    """`Book.validate()` found a derived structure that disagrees with the book's orders and
    leases; `invariant` names it (e.g. "bitmap", "order-map", "usage-cache")."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail
