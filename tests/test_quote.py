"""Quotes (orderbook/quote.py): what an IOC bid would fill now, read-only, equal in both engines.

Every quote in this file goes through `quote()`, which asks twice and checks that asking
changed nothing at all: not the state hash, not the snapshot, not the numba book's arrays
(work counters and free lists included).  Where it matters, the same bid is then really
placed, as IOC, and must fill exactly what was quoted.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderbook import reasons as R
from orderbook.book import make_book, restore_book
from orderbook.config import BookConfig
from orderbook.quote import Quote, QuoteFill
from orderbook.types import (
    COMMAND_DTYPE,
    END_IOC,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SPOT,
)
from tests.helpers import (
    BUYER,
    BUYER2,
    PROV,
    PROV2,
    P,
    S,
    T,
    ask,
    bid,
    clock,
    pick,
    run,
    to_dicts,
    trades,
)
from tests.streams import random_stream

NOBODY = 10**12  # the account a real bid uses for a quote without account: no ask has it
REAL_OID = 2**50  # above every order id a stream uses
VALIDATION = set(R.REASONS) - {R.OK}  # the request itself is invalid


def _frozen(book, full: bool = True) -> object:
    """Everything a book holds, comparable: the reference's snapshot, the numba book's arrays
    (all but the scratch rows W, which hold nothing between calls); full=False: of the numba
    book only its scalars S (clocks, counters, heads of the free lists), much cheaper."""
    if not hasattr(book, "st"):
        return book.snapshot()
    return {k: v.copy() for k, v in book.st._asdict().items() if k != "W" and (full or k == "S")}


def _same(x: object, y: object) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    return x == y


def quote(book, kind: int, gpus: int, hours: int, *, full: bool = True, **kw: int) -> Quote:
    """book.quote(...), asked twice: the same answer, and nothing in the book changed."""
    h, before = book.state_hash(), _frozen(book, full)
    q = book.quote(kind, gpus, hours, **kw)
    assert book.quote(kind, gpus, hours, **kw) == q
    assert book.state_hash() == h
    assert _same(_frozen(book, full), before), "quote changed the book"
    return q


def fills(q: Quote) -> list[tuple[int, int, int, int]]:
    return [(f.ask_oid, f.provider, f.gpus, f.price) for f in q.fills]


def real_ioc(book, cfg: BookConfig, engine: str, kind: int, gpus: int, hours: int, start: int = 0,
             block: int = 1, account: int = 0, limit: int = 0) -> list[dict]:
    """The events of the quoted bid really placed as IOC now, on a twin of the book."""
    twin = restore_book(cfg, book.snapshot(), engine=engine)
    cmd = bid(twin.now, REAL_OID, account or NOBODY, kind, gpus, hours, limit or cfg.max_price,
              tif=IOC, block=block, start=start)
    return to_dicts(twin.process(np.array([cmd], dtype=COMMAND_DTYPE)))


def assert_real_ioc_fills_as_quoted(book, cfg: BookConfig, engine: str, q: Quote, kind: int, gpus: int,
                                    hours: int, **kw: int) -> None:
    """The quote's promise: the same bid placed now gets exactly the quoted fills (R10, R11, R14)."""
    evs = real_ioc(book, cfg, engine, kind, gpus, hours, **kw)
    if q.reason in VALIDATION:
        assert [(e["type"], e.get("reason")) for e in evs] == [("rejected", q.reason)]
        return
    assert evs[0]["type"] == "accepted"
    evs = [e for e in evs if e["oid"] == REAL_OID]  # not the trades of re-offers it may cause (R13)
    tr = trades(evs)
    assert [(e["oid2"], e["account2"], e["gpus"], e["price"]) for e in tr] == fills(q)
    assert all((e["start"], e["end"], e["maker"]) == (*q.window, SIDE_ASK) for e in tr)
    assert sum(e["gpus"] * e["price"] * hours for e in tr) == q.cost
    ended = [e for e in evs if e["type"] == "cancelled"]
    if q.complete:
        assert q.reason == R.OK and q.filled == gpus and ended == []
    else:
        assert pick(ended, "reason", "remaining") == [(END_IOC, gpus - q.filled)]


# --- examples ---------------------------------------------------------------------------------
def test_quote_on_an_empty_book_has_no_liquidity(book):
    run(book, clock(T))
    q = quote(book, ON_DEMAND, 4, 2)
    assert q == Quote(fills=(), filled=0, cost=0, complete=False, reason=R.NO_LIQUIDITY,
                      window=(T, T + 2 * HOUR), hours=2)
    assert R.reason_name(q.reason) == "NO_LIQUIDITY"


def test_quote_fills_asks_in_price_time_order_at_their_prices(book, engine):
    """R10, R11: cheapest first, equal prices oldest first, each at its ask's price; cost exact."""
    run(book, ask(T, 1, PROV, 2, 3 * P, T + 5 * HOUR), ask(T, 2, PROV2, 2, 2 * P, T + 5 * HOUR),
        ask(T, 3, PROV, 2, 2 * P, T + 5 * HOUR), ask(T, 4, PROV2, 9, 4 * P, T + 5 * HOUR))
    q = quote(book, ON_DEMAND, 5, 3)
    assert fills(q) == [(2, PROV2, 2, 2 * P), (3, PROV, 2, 2 * P), (1, PROV, 1, 3 * P)]
    assert (q.filled, q.complete, q.reason, q.window, q.hours) == (5, True, R.OK, (T, T + 3 * HOUR), 3)
    assert q.cost == (2 * 2 * P + 2 * 2 * P + 1 * 3 * P) * 3
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 5, 3)


def test_quote_partial_liquidity_says_how_much(book, engine):
    """Only 3 of 5 GPUs can fill now: the fills, their cost, and PARTIAL_LIQUIDITY."""
    run(book, ask(T, 1, PROV, 1, P, T + 5 * HOUR), ask(T, 2, PROV2, 2, 2 * P, T + 5 * HOUR),
        ask(T, 3, PROV, 8, P, T + 2 * HOUR))  # too short a window for 3 hours
    q = quote(book, ON_DEMAND, 5, 3)
    assert fills(q) == [(1, PROV, 1, P), (2, PROV2, 2, 2 * P)]
    assert (q.filled, q.cost, q.complete, q.reason) == (3, (P + 4 * P) * 3, False, R.PARTIAL_LIQUIDITY)
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 5, 3)


def test_quote_rounds_each_fill_down_to_the_block(book, engine):
    """R10: q rounded down to a multiple of block per ask; an ask with less than a block is skipped."""
    run(book, ask(T, 1, PROV, 1, P, T + 5 * HOUR), ask(T, 2, PROV2, 3, 2 * P, T + 5 * HOUR),
        ask(T, 3, PROV, 5, 3 * P, T + 5 * HOUR))
    q = quote(book, ON_DEMAND, 6, 1, block=2)
    assert fills(q) == [(2, PROV2, 2, 2 * P), (3, PROV, 4, 3 * P)]
    assert q.complete and q.cost == 4 * P + 12 * P
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 6, 1, block=2)
    q = quote(book, ON_DEMAND, 8, 1, block=4)  # only ask 3 holds a block of 4
    assert fills(q) == [(3, PROV, 4, 3 * P)] and q.reason == R.PARTIAL_LIQUIDITY


def test_quote_spot_walks_spot_prices_firm_ignores_spot_leases(book, engine):
    """R9–R12: spot quotes rank and price by spot_price and need GPUs free of spot leases too;
    firm quotes use the firm price and count only firm leases (a real fill would preempt)."""
    run(book, ask(T, 1, PROV, 4, 2 * P, T + 5 * HOUR, spot_price=S),
        ask(T, 2, PROV2, 4, P, T + 5 * HOUR, spot_price=2 * S),
        ask(T, 3, PROV, 4, P // 2, T + 5 * HOUR))  # not offered to spot
    q = quote(book, SPOT, 6, 2)
    assert fills(q) == [(1, PROV, 4, S), (2, PROV2, 2, 2 * S)] and q.cost == (4 * S + 4 * S) * 2
    assert fills(quote(book, ON_DEMAND, 6, 2)) == [(3, PROV, 4, P // 2), (2, PROV2, 2, P)]
    run(book, bid(T, 4, BUYER, SPOT, 4, 3, S), bid(T, 5, BUYER, SPOT, 4, 3, 2 * S))  # all spot GPUs leased
    assert quote(book, SPOT, 1, 1).reason == R.NO_LIQUIDITY
    q = quote(book, ON_DEMAND, 10, 1, limit=2 * P)
    assert fills(q) == [(3, PROV, 4, P // 2), (2, PROV2, 4, P), (1, PROV, 2, 2 * P)]
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 10, 1, limit=2 * P)


def test_quote_reserved_window_and_gate(book, engine):
    """R6: a reserved quote's window is [start, start + hours), inside the ask's window; the gate
    and hour alignment are checked exactly as for a bid."""
    start = T + 2 * HOUR
    run(book, ask(T, 1, PROV, 4, P, T + 4 * HOUR), ask(T, 2, PROV2, 4, 2 * P, T + 6 * HOUR))
    q = quote(book, RESERVED, 3, 3, start=start)
    assert q.window == (start, start + 3 * HOUR)
    assert fills(q) == [(2, PROV2, 3, 2 * P)]  # ask 1 ends before the window does
    assert fills(quote(book, RESERVED, 3, 2, start=start)) == [(1, PROV, 3, P)]
    assert quote(book, ON_DEMAND, 3, 2, start=start).window == (T, T + 2 * HOUR)  # start: reserved only
    assert quote(book, RESERVED, 3, 3, start=start + 1).reason == R.UNALIGNED_START
    run(book, clock(start - 300))  # exactly at the gate: still allowed
    q = quote(book, RESERVED, 3, 3, start=start)
    assert fills(q) == [(2, PROV2, 3, 2 * P)]
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, RESERVED, 3, 3, start=start)
    run(book, clock(start - 299))
    q = quote(book, RESERVED, 3, 3, start=start)
    assert q == Quote(fills=(), filled=0, cost=0, complete=False, reason=R.PAST_GATE, window=(0, 0), hours=3)
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, RESERVED, 3, 3, start=start)


def test_quote_skips_the_accounts_own_asks(book, engine):
    """R9: with an account, its own asks are skipped (self-trade prevention); account 0: none."""
    run(book, ask(T, 1, PROV, 2, P, T + 5 * HOUR), ask(T, 2, PROV2, 2, 2 * P, T + 5 * HOUR))
    assert fills(quote(book, ON_DEMAND, 2, 1)) == [(1, PROV, 2, P)]
    q = quote(book, ON_DEMAND, 2, 1, account=PROV)
    assert fills(q) == [(2, PROV2, 2, 2 * P)]
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 2, 1, account=PROV)
    assert quote(book, ON_DEMAND, 4, 1, account=PROV2).reason == R.PARTIAL_LIQUIDITY


def test_quote_limit(book, engine):
    """R9: limit below the best ask fills nothing; between asks, only the cheaper ones; 0 = none."""
    run(book, ask(T, 1, PROV, 2, 2 * P, T + 5 * HOUR), ask(T, 2, PROV2, 2, 3 * P, T + 5 * HOUR))
    assert quote(book, ON_DEMAND, 2, 1, limit=2 * P - 1000).reason == R.NO_LIQUIDITY
    q = quote(book, ON_DEMAND, 4, 1, limit=2 * P + 1000)
    assert fills(q) == [(1, PROV, 2, 2 * P)] and q.reason == R.PARTIAL_LIQUIDITY
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 4, 1, limit=2 * P + 1000)
    assert quote(book, ON_DEMAND, 4, 1, limit=3 * P).complete
    assert quote(book, ON_DEMAND, 4, 1).complete


# R8: a request a bid would be refused for is refused with the bid's code
INVALID = [
    (R.BAD_ACCOUNT, dict(kind=ON_DEMAND, gpus=1, hours=1, account=-1)),
    (R.BAD_KIND, dict(kind=3, gpus=1, hours=1)),
    (R.BAD_KIND, dict(kind=-1, gpus=0, hours=0)),  # the first failing check decides, as for a bid
    (R.BAD_GPUS, dict(kind=ON_DEMAND, gpus=0, hours=1)),
    (R.BAD_GPUS, dict(kind=SPOT, gpus=100_001, hours=1)),
    (R.BAD_HOURS, dict(kind=ON_DEMAND, gpus=1, hours=0)),
    (R.BAD_HOURS, dict(kind=ON_DEMAND, gpus=1, hours=8_785)),
    (R.BAD_PRICE, dict(kind=ON_DEMAND, gpus=1, hours=1, limit=-1000)),
    (R.BAD_PRICE, dict(kind=ON_DEMAND, gpus=1, hours=1, limit=100_001_000)),
    (R.OFF_TICK, dict(kind=ON_DEMAND, gpus=1, hours=1, limit=P + 1)),
    (R.BAD_BLOCK, dict(kind=ON_DEMAND, gpus=4, hours=1, block=3)),
    (R.BAD_BLOCK, dict(kind=ON_DEMAND, gpus=4, hours=1, block=-2)),
    (R.UNALIGNED_START, dict(kind=RESERVED, gpus=1, hours=1, start=T + HOUR + 1)),
    (R.PAST_GATE, dict(kind=RESERVED, gpus=1, hours=1, start=T)),
    (R.PAST_GATE, dict(kind=RESERVED, gpus=1, hours=1, start=0)),
    # two faults: the first check that fails decides, in the bid's order of checks
    (R.BAD_ACCOUNT, dict(kind=3, gpus=1, hours=1, account=-1)),
    (R.BAD_GPUS, dict(kind=SPOT, gpus=0, hours=0)),
    (R.BAD_HOURS, dict(kind=SPOT, gpus=1, hours=0, limit=1)),
    (R.OFF_TICK, dict(kind=ON_DEMAND, gpus=4, hours=1, limit=P + 1, block=3)),
    (R.BAD_BLOCK, dict(kind=RESERVED, gpus=4, hours=1, block=3, start=T + 1)),
    (R.UNALIGNED_START, dict(kind=RESERVED, gpus=1, hours=1, start=T + 1)),
]


@pytest.mark.parametrize(("code", "req"), INVALID, ids=[f"{R.reason_name(c)}-{i}" for i, (c, _) in enumerate(INVALID)])
def test_quote_of_an_invalid_request_gives_the_bids_reason(book, engine, code, req):
    run(book, ask(T, 1, PROV, 8, P, T + 5 * HOUR, spot_price=S))
    q = quote(book, **req)
    assert q == Quote(fills=(), filled=0, cost=0, complete=False, reason=code, window=(0, 0), hours=req["hours"])
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, **req)


def test_quote_defaults_block_0_and_limit_0(book):
    """As in a command, block 0 means 1; limit 0 means no limit (max_price), not BAD_PRICE."""
    run(book, ask(T, 1, PROV, 3, 40 * P, T + 5 * HOUR))
    assert quote(book, ON_DEMAND, 3, 1, block=0, limit=0) == quote(book, ON_DEMAND, 3, 1)
    assert fills(quote(book, ON_DEMAND, 3, 1, block=0)) == [(1, PROV, 3, 40 * P)]


def test_quote_sees_leases_sold_ahead(book, engine):
    """R9: an on-demand quote gets only the GPUs free over its whole window (a reserved lease
    starting later holds some of them)."""
    run(book, ask(T, 1, PROV, 4, P, T + 10 * HOUR), bid(T, 2, BUYER, RESERVED, 3, 2, P, start=T + 2 * HOUR),
        ask(T, 3, PROV2, 4, 2 * P, T + 10 * HOUR))
    assert fills(quote(book, ON_DEMAND, 4, 2)) == [(1, PROV, 4, P)]  # ends as the reserved one starts
    q = quote(book, ON_DEMAND, 4, 3, account=BUYER2)
    assert fills(q) == [(1, PROV, 1, P), (3, PROV2, 3, 2 * P)]
    assert_real_ioc_fills_as_quoted(book, BookConfig(), engine, q, ON_DEMAND, 4, 3, account=BUYER2)


def test_quote_of_values_beyond_any_record(book):
    """Python ints beyond int64 (no command could carry them) give plain answers, not errors."""
    run(book, ask(T, 1, PROV, 2, P, T + 5 * HOUR))
    far = (2**70 // HOUR) * HOUR
    q = quote(book, RESERVED, 1, 1, start=far)
    assert (q.reason, q.window) == (R.NO_LIQUIDITY, (far, far + HOUR))
    assert fills(quote(book, ON_DEMAND, 2, 1, account=2**70)) == [(1, PROV, 2, P)]


def test_quote_reasons_are_appended_not_rejections():
    assert (R.NO_LIQUIDITY, R.PARTIAL_LIQUIDITY) == (31, 32)
    assert R.NAME_TO_CODE["PARTIAL_LIQUIDITY"] == R.PARTIAL_LIQUIDITY
    assert R.reason_text(R.PARTIAL_LIQUIDITY) == "only part of it can fill now"
    assert R.reason_name(R.MALFORMED) == "MALFORMED" and R.reason_name(99) == "UNKNOWN"
    assert not set(R.QUOTE_REASONS) & set(R.REASONS)


# --- random streams: both engines, and the real bid -----------------------------------------
CONFIGS = [BookConfig(name="T", max_price=20_000), BookConfig(name="T", max_price=20_000, notice_s=0),
           BookConfig(name="T", max_price=20_000, gate_s=7_200, notice_s=3_599)]
TICK = 1_000
EXAMPLES = int(os.environ.get("GPUX_QUOTE_EXAMPLES", "100"))
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _random_request(rng: np.random.Generator, now: int) -> dict[str, int]:
    """Mostly requests like the streams' bids (same accounts and prices), a few invalid."""
    odd = rng.random() < 0.15
    block = int(rng.choice([0, 1, 1, 2, 4]))
    req = dict(kind=int(rng.choice([SPOT, ON_DEMAND, RESERVED])), gpus=int(rng.integers(1, 5)) * (block or 1),
               hours=int(rng.integers(1, 11)), block=block, account=int(rng.integers(0, 6)),
               limit=int(rng.integers(0, 13)) * TICK, start=(now // HOUR + int(rng.integers(0, 7))) * HOUR)
    faults = [("kind", 3), ("gpus", 0), ("gpus", req["gpus"] + 1), ("hours", 0), ("limit", 25 * TICK),
              ("limit", req["limit"] + 1), ("account", -1), ("start", req["start"] + 60)]
    for _ in range(int(rng.integers(1, 3)) if odd else 0):  # one or two fields off
        field, value = faults[int(rng.integers(0, len(faults)))]
        req[field] = value
    return req


def _quote_a_stream(seed: int, n: int, cfg: BookConfig) -> Counter:
    """Run a random stream through both books, quoting at random points: equal quotes, nothing
    changed, and the real IOC bid fills as quoted.  Returns the quote outcomes seen."""
    rng = np.random.default_rng(seed)
    commands = random_stream(rng, n)
    books = {"reference": make_book(cfg, "reference"), "numba": make_book(cfg, "numba")}
    events: dict[str, list[np.ndarray]] = {name: [] for name in books}
    seen: Counter = Counter()
    for i in range(len(commands)):
        for name, book in books.items():
            events[name].append(book.process(commands[i : i + 1]))
        if rng.random() < 0.2:
            for _ in range(2):
                req = _random_request(rng, books["reference"].now)
                q = quote(books["reference"], full=False, **req)
                assert quote(books["numba"], full=False, **req) == q, (i, req)
                # and so does the numba book, which the differential tests hold to the reference
                assert_real_ioc_fills_as_quoted(books["reference"], cfg, "reference", q, **req)
                seen[R.reason_name(q.reason)] += 1
                seen["fills"] += len(q.fills)
    # the quotes changed nothing later either: the same events as books never asked
    for name in books:
        assert np.array_equal(np.concatenate(events[name]), make_book(cfg, name).process(commands))
    return seen


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW)
@given(st.integers(0, 2**32 - 1), st.integers(10, 200), st.sampled_from(CONFIGS))
def test_quote_numba_equals_reference_and_the_real_ioc_bid(seed: int, n: int, cfg: BookConfig) -> None:
    _quote_a_stream(seed, n, cfg)


def test_quote_streams_reach_every_outcome_numba() -> None:
    """The random test above does see complete, partial and empty quotes, and refusals."""
    seen: Counter = Counter()
    for seed in range(8):
        seen += _quote_a_stream(seed, 150, CONFIGS[seed % len(CONFIGS)])
    for name in ("OK", "PARTIAL_LIQUIDITY", "NO_LIQUIDITY", "BAD_KIND", "BAD_GPUS", "BAD_BLOCK", "BAD_HOURS",
                 "BAD_PRICE", "OFF_TICK", "BAD_ACCOUNT", "UNALIGNED_START", "PAST_GATE"):
        assert seen[name] > 0, (name, seen)
    assert seen["fills"] > seen["OK"] + seen["PARTIAL_LIQUIDITY"]  # some quotes fill from several asks


def test_quote_fill_is_a_plain_record():
    f = QuoteFill(ask_oid=1, provider=PROV, gpus=2, price=P)
    with pytest.raises(AttributeError):
        f.gpus = 3  # type: ignore[misc]
