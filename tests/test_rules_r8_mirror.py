"""R8: the numba book's field checks mirror `orderbook.rules`, code for code.

The reference book, the quote and the gateway call `orderbook.rules` for the field checks of a
bid and an ask; the numba book cannot call plain Python and repeats them in `fast._on_bid` /
`fast._on_ask`.  Here random bids and asks, their fields drawn around every bound the checks
have (and anywhere else), go through both books one at a time, and each gets the code rules
gives it: BAD_ACCOUNT / BAD_ORDER_ID first when the account or order id is bad, then rules'
code; an order whose fields pass is accepted (no lease to resell, not post-only here).

Int64 fields are drawn within ±2**62, the range the front doors let through (orderbook/codec.py,
gateway/wire.py): beyond it the numba book's int64 arithmetic (`start - now`) would wrap.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderbook import reasons as R
from orderbook import rules
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.quote import check_request
from orderbook.types import (
    CMD_ASK,
    CMD_BID,
    CMD_CLOCK,
    COMMAND_DTYPE,
    EV_ACCEPTED,
    EV_REJECTED,
    FOK,
    GTC,
    GTD,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SPOT,
)

NOW = 500_000 * HOUR + 1_234  # not on an hour: "the next hour" and "now" differ
I62 = 2**62
I32 = (-(2**31), 2**31 - 1)
I8 = (-128, 127)
EXAMPLES = int(os.environ.get("GPUX_MIRROR_EXAMPLES", "150"))

CONFIGS = [
    BookConfig(name="M", tick=1_000, min_price=5_000, max_price=20_000, max_gpus=64, max_hours=100,
               max_window_hours=50, gate_s=300, notice_s=120),
    # the largest max_hours whose hours * HOUR fits the record's int32: under NUMBA_DISABLE_JIT
    # (`make test` runs this file so) fast.py multiplies the record's int32 fields as numpy does
    BookConfig(name="M", tick=500, min_price=500, max_price=1_000_000, max_gpus=2**31 - 1,
               max_hours=(2**31 - 1) // HOUR, max_window_hours=3, gate_s=0, notice_s=0),
    BookConfig(),  # the defaults
    # now + gate_s on an hour: a reserved start exactly at the gate
    BookConfig(name="M", tick=1_000, min_price=1_000, max_price=9_000, max_gpus=8, max_hours=24,
               max_window_hours=24, gate_s=HOUR - NOW % HOUR, notice_s=0),
]


def _near(*points: int) -> list[int]:
    """Each point and its neighbours."""
    return sorted({p + d for p in points for d in (-1, 0, 1)})


def _tick(draw, cfg: BookConfig, hi: int) -> int:
    """A price on the tick between min_price and hi."""
    return draw(st.integers(cfg.min_price // cfg.tick, hi // cfg.tick)) * cfg.tick


# Each order is drawn valid, then 0 to 3 of its fields are replaced by a value at or next to a
# bound of that field (or by any value its record field holds): every check is reached often.
@st.composite
def _bid(draw, cfg: BookConfig) -> dict[str, int]:
    gate = NOW + cfg.gate_s
    hour = (gate + HOUR - 1) // HOUR * HOUR  # the first start on an hour at or after the gate
    kind = draw(st.sampled_from([SPOT, ON_DEMAND, RESERVED]))
    tif = draw(st.sampled_from([GTC, IOC, FOK, GTD]))
    block = draw(st.integers(1, 4))
    gpus = block * draw(st.integers(1, max(1, min(cfg.max_gpus, 64) // block)))
    if gpus > cfg.max_gpus:
        block = gpus = 1
    start = hour + HOUR * draw(st.integers(0, 3)) if kind == RESERVED else draw(st.sampled_from([0, 0, NOW, 7]))
    expire_at = NOW + draw(st.sampled_from([1, HOUR, 10**9])) if tif == GTD else draw(st.sampled_from([0, NOW - 1]))
    o = dict(
        type=CMD_BID, kind=kind, tif=tif, gpus=gpus, block=draw(st.sampled_from([block, 0 if block == 1 else block])),
        hours=draw(st.one_of(st.integers(1, min(cfg.max_hours, 50)), st.just(cfg.max_hours))),
        price=_tick(draw, cfg, cfg.max_price), start=start, expire_at=expire_at,
    )
    edges = dict(
        kind=([-1, 3, *I8], I8),
        tif=([-1, 4, *I8], I8),
        gpus=(_near(0, cfg.max_gpus, *I32), I32),
        hours=(_near(0, cfg.max_hours, *I32), I32),
        price=(_near(0, cfg.min_price, cfg.max_price, cfg.max_price + cfg.tick, -I62, I62)
               + [cfg.min_price + cfg.tick // 2], (-I62, I62)),
        block=([*_near(0, 1, 2, 3), gpus + 1, 2 * gpus, *I32], I32),
        start=([0, hour - 2 * HOUR, *_near(NOW, gate, hour, hour - HOUR, -I62 // HOUR * HOUR, I62 // HOUR * HOUR)],
               (-I62, I62)),
        expire_at=([0, *_near(NOW, -I62, I62)], (-I62, I62)),
    )
    o = _perturb(draw, o, edges)
    if o["start"] != start and o["kind"] == kind:  # a start matters only for a reserved bid
        o["kind"] = RESERVED
    if o["expire_at"] != expire_at and o["tif"] == tif:  # an expiry only for a GTD one
        o["tif"] = GTD
    return o


@st.composite
def _ask(draw, cfg: BookConfig) -> dict[str, int]:
    price = _tick(draw, cfg, cfg.max_price)
    spot = draw(st.sampled_from([0, 0, cfg.min_price, price, _tick(draw, cfg, price)]))
    min_hours = draw(st.sampled_from([0, 1, 2, cfg.max_window_hours, min(cfg.max_hours, cfg.max_window_hours)]))
    start = draw(st.sampled_from([0, NOW - 1, NOW, NOW + 1, NOW + HOUR]))
    s = max(start, NOW)
    span = max(min_hours, 1)
    if span > cfg.max_window_hours:
        min_hours = span = 1
    hours = draw(st.sampled_from([span, cfg.max_window_hours, draw(st.integers(span, cfg.max_window_hours))]))
    o = dict(type=CMD_ASK, gpus=draw(st.sampled_from([1, cfg.max_gpus, min(cfg.max_gpus, 8)])), price=price,
             spot_price=spot, start=start, end=s + hours * HOUR, min_hours=min_hours)
    span = max(o["min_hours"], 1) * HOUR
    edges = dict(
        gpus=(_near(0, cfg.max_gpus, *I32), I32),
        price=(_near(0, cfg.min_price, cfg.max_price, cfg.max_price + cfg.tick, spot, -I62, I62)
               + [cfg.min_price + cfg.tick // 2], (-I62, I62)),
        spot_price=(_near(0, cfg.min_price, price, price + cfg.tick, -I62, I62) + [price - cfg.tick // 2],
                    (-I62, I62)),
        start=([0, *_near(NOW, o["end"] - span, -I62, I62)], (-I62, I62)),
        end=(_near(s, s + span, s + cfg.max_window_hours * HOUR, -I62, I62), (-I62, I62)),
        min_hours=(_near(0, cfg.max_hours, (o["end"] - s) // HOUR, *I32), I32),
    )
    return _perturb(draw, o, edges)


def _perturb(draw, order: dict[str, int], edges: dict[str, tuple[list[int], tuple[int, int]]]) -> dict[str, int]:
    for name in draw(st.lists(st.sampled_from(sorted(edges)), max_size=3)):
        values, (lo, hi) = edges[name]
        inside = [v for v in values if lo <= v <= hi]
        order[name] = draw(st.one_of(st.sampled_from(inside), st.sampled_from(inside), st.integers(lo, hi)))
    return order


@st.composite
def _orders(draw) -> tuple[BookConfig, list[dict[str, int]]]:
    cfg = draw(st.sampled_from(CONFIGS))
    orders = draw(st.lists(st.one_of(_bid(cfg), _ask(cfg)), min_size=5, max_size=30))
    oid = 0
    for o in orders:
        o["time"] = NOW
        o["account"] = draw(st.sampled_from([1, 2, 3, 4] * 5 + [0, -1]))
        if draw(st.integers(0, 19)) == 0:  # an id at or below one already used: stale if that one was accepted
            o["oid"] = draw(st.integers(0, oid))
        else:
            oid = o["oid"] = oid + 1 + draw(st.integers(0, 2))
    return cfg, orders


def _record(fields: dict[str, int]) -> np.ndarray:
    rec = np.zeros(1, dtype=COMMAND_DTYPE)
    for k, v in fields.items():
        rec[0][k] = v
    return rec


def _rules_code(cfg: BookConfig, c: np.void) -> int:
    """The code `orderbook.rules` gives the record's fields, read as the books read them."""
    f = {name: int(c[name]) for name in COMMAND_DTYPE.names}
    if f["type"] == CMD_BID:
        return rules.bid_code(cfg, NOW, f["kind"], f["tif"], f["gpus"], f["hours"], f["price"],
                              f["block"] or 1, f["start"], f["expire_at"])
    return rules.ask_code(cfg, NOW, f["gpus"], f["price"], f["spot_price"], f["start"], f["end"],
                          f["min_hours"] or 1)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_orders())
def test_r8_numba_reference_and_rules_give_the_same_codes(drawn) -> None:
    """R8: for every bid and ask, both books give the code rules gives (after account and oid)."""
    cfg, orders = drawn
    books = {engine: make_book(cfg, engine=engine) for engine in ("reference", "numba")}
    start = _record(dict(type=CMD_CLOCK, time=NOW))
    for book in books.values():
        book.process(start)
    last_oid = 0
    for fields in orders:
        rec = _record(fields)
        c = rec[0]
        events = {engine: book.process(rec) for engine, book in books.items()}
        assert np.array_equal(events["numba"], events["reference"]), fields
        first = events["reference"][0]
        if c["account"] <= 0:
            want = R.BAD_ACCOUNT
        elif c["oid"] <= last_oid:
            want = R.BAD_ORDER_ID
        else:
            want = _rules_code(cfg, c)
        if want:
            assert (first["type"], first["reason"]) == (EV_REJECTED, want), (fields, R.reason_name(want))
        else:
            assert first["type"] == EV_ACCEPTED, (fields, R.reason_name(int(first["reason"])))
            last_oid = int(c["oid"])
        if c["type"] == CMD_BID and c["tif"] == IOC and c["account"] > 0 and c["price"] != 0:
            # a quote checks what an IOC bid's fields get (its limit 0 would mean none: left out)
            q = check_request(cfg, NOW, int(c["kind"]), int(c["gpus"]), int(c["hours"]), int(c["start"]),
                              int(c["block"]), int(c["account"]), int(c["price"]))
            assert q.reason == _rules_code(cfg, c), fields
