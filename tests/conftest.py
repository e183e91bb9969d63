"""Fixtures: every rule test runs against each engine (the numba book must pass them too).
Before the first test, the jitted code is compiled (or loaded from numba's cache): tests that
start `gpux serve` as a subprocess wait for it a limited time, less than a cold compile."""

from __future__ import annotations

import os
import weakref

import numpy as np
import pytest

from orderbook.book import make_book as _make_book
from orderbook.config import BookConfig


def _engine_or_skip(engine: str) -> str:
    if engine == "numba":
        try:
            import orderbook.fast  # noqa: F401
        except ImportError:
            pytest.skip("orderbook.fast not available yet")
    return engine


@pytest.fixture(params=["reference", "numba"])
def engine(request) -> str:
    """The engine under test."""
    return _engine_or_skip(request.param)


def validating(book):
    """The book, its `process` applying the commands one at a time and checking the book's
    invariants (`validate()`) after each; the events are those of one batch (tested in
    tests/test_differential.py)."""
    batch = type(book).process
    ref = weakref.ref(book)  # no cycle through the book: a numba book's arrays go when the test drops it

    def process(commands: np.ndarray) -> np.ndarray:
        b = ref()
        if len(commands) == 0:
            events = batch(b, commands)
            b.validate()
            return events
        parts = []
        for i in range(len(commands)):
            parts.append(batch(b, commands[i : i + 1]))
            b.validate()
        return np.concatenate(parts)

    book.process = process
    return book


@pytest.fixture
def make_book(engine):
    """Factory: a fresh book of the engine under test, for a given BookConfig; it validates
    its invariants after every command (`validating`)."""

    def factory(config: BookConfig | None = None):
        return validating(_make_book(config or BookConfig(), engine=engine))

    return factory


@pytest.fixture
def book(make_book):
    """A fresh book with the default configuration (tick 1,000 µ$, gate 300 s, notice 120 s)."""
    return make_book(BookConfig())


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        from cli.warm import warm

        warm()
