"""Random command streams for differential tests (reference book vs numba book).

`command_streams()` is a hypothesis strategy; `random_stream(rng, n)` gives the same kind of
stream from a numpy Generator (for quick fuzz loops and replays from a seed).  Few accounts,
few price levels and short windows, so that self-trade, priority ties, capacity running out,
preemption, re-offers, expiry, resale, release and every rejection show up often.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from orderbook.config import BookConfig
from orderbook.reference import ReferenceBook
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
    GTD,
    HOUR,
    RESERVED,
    SPOT,
)

EPOCH = 1_800_000_000 - 1_800_000_000 % HOUR
TICK = 1_000


def _row(**kw: int) -> tuple:
    return tuple(int(kw.get(name, 0)) for name in COMMAND_DTYPE.names)


def build(intents: list[tuple], shadow: ReferenceBook | None = None) -> np.ndarray:
    """Turn drawn intents into a time-ordered command array with increasing order ids.

    With a `shadow` book, every row is also run through it, so that "resale_of" and
    "release_of" intents can aim at leases that really run (their holder, window and unsold
    GPUs), which random lease ids and accounts almost never hit."""
    rows: list[tuple] = []
    now = EPOCH
    oid = 0
    for intent in intents:
        kind, dt, a = intent[0], intent[1], intent[2:]
        now += dt
        if kind in ("resale_of", "release_of"):
            lease = _pick_lease(shadow, a[0], firm=kind == "resale_of") if shadow is not None else None
            if lease is None:
                rows.append(_row(type=CMD_CLOCK, time=now))
            elif kind == "release_of":
                rows.append(_row(type=CMD_RELEASE, time=now, lease_id=lease.trade_id, account=lease.buyer))
            else:
                _, gpus_cut, win_h, price, spot = a
                oid += 1
                start = max(lease.start, now)
                rows.append(_row(type=CMD_ASK, time=now, oid=oid, account=lease.buyer,
                                 gpus=max(lease.gpus - lease.resold - gpus_cut, 1), price=price * TICK,
                                 spot_price=spot * TICK if spot <= price else 0,
                                 start=start, end=min(lease.end, start + win_h * HOUR),
                                 lease_id=lease.trade_id))
        elif kind == "ask":
            gpus, price, spot, start_h, win_h, minh, post, lease, acct = a
            oid += 1
            start = now + start_h * HOUR - (now % HOUR if start_h else 0)
            rows.append(_row(type=CMD_ASK, time=now, oid=oid, account=acct, gpus=gpus,
                             price=price * TICK, spot_price=spot * TICK if spot <= price else 0,
                             start=start if start_h else 0, end=start + win_h * HOUR,
                             min_hours=minh, post_only=post, lease_id=lease))
        elif kind == "bid":
            bkind, gpus_blocks, block, hours, price, tif, start_h, exp_s, acct = a
            oid += 1
            start = (now // HOUR + start_h) * HOUR if bkind == RESERVED else 0
            rows.append(_row(type=CMD_BID, time=now, oid=oid, account=acct, kind=bkind,
                             gpus=gpus_blocks * block, block=block, hours=hours,
                             price=price * TICK, tif=tif, start=start,
                             expire_at=now + exp_s if tif == GTD else 0))
        elif kind == "cancel":
            back, acct = a
            rows.append(_row(type=CMD_CANCEL, time=now, oid=max(oid - back, 0), account=acct))
        elif kind == "amend":
            back, gpus, acct = a
            rows.append(_row(type=CMD_AMEND, time=now, oid=max(oid - back, 0), gpus=gpus, account=acct))
        elif kind == "release":
            tid, acct = a
            rows.append(_row(type=CMD_RELEASE, time=now, lease_id=tid, account=acct))
        elif kind == "clock":
            rows.append(_row(type=CMD_CLOCK, time=now))
        elif kind in ("raw", "rawask"):  # hostile values straight into a bid's or an ask's record
            field, value = a
            if kind == "rawask":
                base = _row(type=CMD_ASK, time=now, oid=oid + 1, account=1, gpus=1, price=5 * TICK,
                            end=now + 2 * HOUR)
            elif field == "start":  # a reserved bid, its start off the next-but-one hour by value
                base = _row(type=CMD_BID, time=now, oid=oid + 1, account=1, kind=RESERVED, gpus=1, hours=1,
                            price=5 * TICK, start=(now // HOUR + 2) * HOUR)
            else:
                base = _row(type=CMD_BID, time=now, oid=oid + 1, account=1, kind=1, gpus=1, hours=1,
                            price=5 * TICK)
            r = dict(zip(COMMAND_DTYPE.names, base, strict=True))
            if field in ("start", "end"):
                value += r[field]
            elif field == "time":  # never ahead of the stream: a later time would stale the rest
                value = min(value, now)
            info = np.iinfo(COMMAND_DTYPE[field])
            r[field] = min(max(value, info.min), info.max)  # fit the record's field
            if field != "oid":
                oid += 1
            rows.append(tuple(r[n] for n in COMMAND_DTYPE.names))
        if shadow is not None and rows:
            shadow.process(np.array(rows[-1:], dtype=COMMAND_DTYPE))
    return np.array(rows, dtype=COMMAND_DTYPE) if rows else np.zeros(0, dtype=COMMAND_DTYPE)


def _pick_lease(shadow: ReferenceBook, pick: int, firm: bool):
    leases = [x for x in shadow.running_leases() if not firm or x.kind != SPOT]
    return leases[pick % len(leases)] if leases else None


ACCT = st.integers(1, 5)
DT = st.one_of(st.integers(0, 30), st.integers(0, 900), st.sampled_from([HOUR, 2 * HOUR, 7 * HOUR]))
PRICE = st.integers(1, 12)

ASK = st.tuples(
    st.just("ask"), DT, st.integers(1, 12), PRICE, st.integers(0, 12), st.sampled_from([0, 0, 1, 3]),
    st.integers(1, 30), st.sampled_from([0, 1, 1, 2, 4]), st.sampled_from([0, 0, 0, 0, 1]),
    st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 12)), ACCT,
)
BID = st.tuples(
    st.just("bid"), DT, st.sampled_from([0, 1, 2]), st.integers(1, 4), st.sampled_from([1, 1, 2, 4]),
    st.integers(1, 10), PRICE, st.sampled_from([0, 0, 0, 1, 2, 3]), st.integers(0, 6),
    st.integers(-5, 4 * HOUR), ACCT,
)
CANCEL = st.tuples(st.just("cancel"), DT, st.integers(0, 8), ACCT)
AMEND = st.tuples(st.just("amend"), DT, st.integers(0, 8), st.integers(0, 10), ACCT)
RELEASE = st.tuples(st.just("release"), DT, st.integers(0, 15), ACCT)
CLOCK = st.tuples(st.just("clock"), st.one_of(st.integers(1, 4 * HOUR), st.integers(HOUR, 30 * HOUR)))
RAW = st.tuples(
    st.just("raw"), DT,
    st.sampled_from(["gpus", "hours", "price", "block", "kind", "tif", "account", "oid", "start", "type",
                     "time"]),
    st.sampled_from([-1, 0, 3, 7, 1001, 2**31 - 1, -(2**31), 2**40, -(2**40), 6 * HOUR, 10**9]),
)
INTENT = st.one_of(
    ASK, ASK, BID, BID, BID, CANCEL, AMEND, RELEASE, CLOCK, RAW,
)


def command_streams(max_size: int = 400) -> st.SearchStrategy[np.ndarray]:
    """Hypothesis strategy: long command streams (a quarter of them exactly max_size).

    Drawn as a seed and a length through `random_stream`; `drawn_streams` gives short
    streams drawn intent by intent, which hypothesis shrinks to a minimal failing case."""
    length = st.one_of(st.just(max_size), st.integers(max(1, max_size // 4), max_size))
    return st.tuples(st.integers(0, 2**32 - 1), length).map(
        lambda s: random_stream(np.random.default_rng(s[0]), s[1])
    )


def drawn_streams(max_size: int = 60) -> st.SearchStrategy[np.ndarray]:
    """Hypothesis strategy: streams drawn intent by intent (shrinkable)."""
    return st.lists(INTENT, min_size=1, max_size=max_size).map(build)


def random_stream(rng: np.random.Generator, n: int) -> np.ndarray:
    """A stream like `command_streams()` draws, from a numpy Generator (for fuzz loops)."""
    intents: list[tuple] = []
    for _ in range(n):
        r = rng.random()
        dt = int(rng.choice([rng.integers(0, 30), rng.integers(0, 900), HOUR]))
        acct = int(rng.integers(1, 6))
        if r < 0.3:
            price = int(rng.integers(1, 13))
            intents.append(("ask", dt, int(rng.integers(1, 13)), price, int(rng.integers(0, 13)),
                            int(rng.choice([0, 0, 1, 3])), int(rng.integers(1, 31)),
                            int(rng.choice([0, 1, 1, 2, 4])), int(rng.random() < 0.2),
                            int(rng.integers(1, 13)) if rng.random() < 0.25 else 0, acct))
        elif r < 0.7:
            intents.append(("bid", dt, int(rng.integers(0, 3)), int(rng.integers(1, 5)),
                            int(rng.choice([1, 1, 2, 4])), int(rng.integers(1, 11)), int(rng.integers(1, 13)),
                            int(rng.choice([0, 0, 0, 1, 2, 3])), int(rng.integers(0, 7)),
                            int(rng.integers(-5, 4 * HOUR)), acct))
        elif r < 0.8:
            intents.append(("cancel", dt, int(rng.integers(0, 9)), acct))
        elif r < 0.85:
            intents.append(("amend", dt, int(rng.integers(0, 9)), int(rng.integers(0, 11)), acct))
        elif r < 0.9:
            intents.append(("release", dt, int(rng.integers(0, 16)), acct))
        elif r < 0.93:
            intents.append(("clock", int(rng.integers(1, 6 * HOUR))))
        elif r < 0.955:
            intents.append(("resale_of", dt, int(rng.integers(0, 1000)), int(rng.integers(0, 3)),
                            int(rng.integers(1, 12)), int(rng.integers(1, 13)), int(rng.integers(0, 13))))
        elif r < 0.97:
            intents.append(("release_of", dt, int(rng.integers(0, 1000))))
        elif r < 0.985:
            field = str(rng.choice(["gpus", "hours", "price", "block", "kind", "tif", "account", "oid",
                                    "start", "time", "expire_at"]))
            intents.append(("raw", dt, field, int(rng.choice([-1, 0, 3, 7, 1001, 2**31 - 1]))))
        else:
            intents.append(("rawask", dt, str(rng.choice(["gpus", "price", "spot_price", "min_hours", "start",
                                                           "end", "account", "oid", "post_only"])),
                            int(rng.choice([-1, 0, 3, 7, 1001, 2**31 - 1]))))
    return build(intents, ReferenceBook(BookConfig(name="T", max_price=20_000)))
