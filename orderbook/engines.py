"""Which book engine to run: the numba book when it can be loaded, else the reference book
(with a warning through the caller's ``warn``: the command line prints it, the server logs it)."""

from __future__ import annotations

from collections.abc import Callable

from orderbook.book import ENGINES, Book, make_book
from orderbook.config import BookConfig


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot be loaded."""


def _quiet(message: str) -> None:
    pass


def resolve_engine(requested: str | None, warn: Callable[[str], None] = _quiet) -> str:
    """The engine to use.  ``None`` means numba, falling back to the reference book with a
    warning when ``orderbook.fast`` cannot be imported; an explicit choice never falls back."""
    if requested is not None and requested not in ENGINES:
        raise EngineUnavailable(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES)}")
    if requested == "reference":
        return "reference"
    try:
        import orderbook.fast  # noqa: F401
    except Exception as e:  # a missing or broken module alike
        if requested == "numba":
            raise EngineUnavailable(f"the numba book (orderbook.fast) cannot be imported: {e!r}") from e
        warn(f"gpux: warning: the numba book (orderbook.fast) cannot be imported ({e!r}); "
             "using the reference book")
        return "reference"
    return "numba"


def open_book(config: BookConfig, requested: str | None, warn: Callable[[str], None] = _quiet) -> Book:
    """A fresh book for ``config`` on the engine `resolve_engine` picks."""
    return make_book(config, engine=resolve_engine(requested, warn))
