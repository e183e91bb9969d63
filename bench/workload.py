"""Seeded synthetic workload for the order-book benchmark (`python -m bench.book`).

The same ``(n_commands, seed, classes, ...)`` always gives the same commands, bit for
bit (numpy ``default_rng(seed)``, fully vectorised: 1M commands take about a second).

Global stream
-------------
One global, time-ordered stream of ``n_commands`` records of ``COMMAND_DTYPE`` is drawn;
every record belongs to exactly one class book (chosen uniformly, or by ``class_weights``)
and ``split`` routes it there.  Clock commands are routed to one book like every other
command: the other books catch up at their next command, which R4 defines to be the same
as a clock command.  So the per-class streams partition the global stream; each one is
time-ordered (``time`` nondecreasing) and its order ids are strictly increasing (order ids
are one global counter over asks and bids, so per class they increase with gaps).

Time
----
Engine time starts at ``EPOCH`` = 1,799,996,400 (1,800,000,000 rounded down to an hour)
plus the first step.  Between two commands it advances by 0, 1 or 2 s (uniform).  A clock
command advances it by a jump: log-uniform over 1..3600 s (so mostly seconds to minutes,
mean ~7 min), and 2 % of jumps are 1..6 whole hours (mean jump ~11.5 min).  On average
engine time advances by ~36 s per command, so 1M commands cover ~13 months of engine time
and asks (windows of at most 30 days) start, fill up and expire all through the run.

Command mix (shares of the global stream)
-----------------------------------------
=========  =====  ===========================================================================
ask         25 %  provider capacity (R5)
bid         45 %  trader demand (R6)
cancel      25 %  of which ``amend_share`` (default 10 %) are amends instead (R7)
clock        5 %  clock jump (R4, R13, R14)
=========  =====  ===========================================================================

No releases and no resale asks: the workload is open-loop (drawn before anything is
matched), and both need lease ids that only the book's trades reveal.

Accounts
--------
``n_providers`` = 300 providers with accounts 1..300 send every ask; ``n_traders`` = 2000
traders with accounts 10,001..12,000 send every bid.  Both are drawn uniformly per order.
The two sets are disjoint, so self-trade prevention never triggers.

Prices
------
Per-class reference price ``ref`` (µ$ per GPU-hour): H100 2,000,000, A100 1,200,000,
RTX4090 400,000 (``REF_PRICES``; other class names get 1,000,000).  Every price is drawn
uniformly from its range and rounded to the tick (1,000 µ$), so there are hundreds to
thousands of distinct levels per side and class.

Asks (25 %)
-----------
- ``gpus``: half uniform over 1..64, half a power of two in {1, 2, 4, ..., 64}.
- ``price`` uniform in ``ref * [0.8, 1.6]``.
- half offer spot: ``spot_price`` uniform in ``price * [0.5, 0.95]`` (rounded to the tick,
  strictly below ``price``); the other half have ``spot_price`` 0 (no spot).
- window: 40 % start now (``start`` = 0), 60 % start on an hour boundary 1..72 h ahead.
  Length log-uniform over 1..720 h (median ~27 h).  ``end = start + length``.
- ``min_hours``: 75 % default (0, meaning 1); 25 % one of 2, 4, 8, 12, 24 (capped at the
  window length).
- ``post_only``: 5 % (those that would trade are rejected, POST_ONLY_WOULD_TRADE).

Bids (45 %)
-----------
- ``kind``: 30 % spot, 50 % on_demand, 20 % reserved.
- ``block``: 75 % 1 with ``gpus`` log-uniform over 1..64; 25 % 8 with ``gpus`` = 8 * (1..8).
- ``hours``: log-uniform over 1..168 (median ~13 h), so many bids outlast many asks'
  remaining windows.
- ``price`` (limit) uniform in ``ref * [0.5, 1.2]``: most bids cannot pay most asks, and
  resting bids accumulate (spot and on_demand GTC bids never expire).
- reserved ``start``: on an hour boundary 1..168 h after the current hour, pushed one more
  hour if it would be less than the gate (300 s) away; never rejected for the gate.
- ``tif``: 70 % GTC, 20 % IOC, 10 % FOK (``tif_mix``; GTD share 0 by default, GTD bids
  would expire 1 min..1 day later, log-uniform).

Cancels and amends (25 %)
-------------------------
A cancel targets an earlier order of the same class that its sender could believe is
still open (an ask or a GTC/GTD bid), sent by that order's owner: 60 % of the time one of
the most recent such orders (exponential offset, mean 200 orders back), 40 % of the time
any earlier one uniformly.  Many targets have filled, expired or been cancelled already:
those are rejected UNKNOWN_ORDER, as they would be in production.  A cancel with no
earlier eligible order targets order id 0 (also UNKNOWN_ORDER).
An amend (``amend_share`` of this slot) picks its target the same way and asks for fewer
GPUs (a bid: a smaller multiple of its block; an ask: 1..gpus-1).  A target whose original
size cannot be reduced turns the amend into a cancel.  Amends of bids that have partly
filled below the new size are rejected BAD_AMEND; of asks that sold more, AMEND_BELOW_SOLD.

Expected rejections
-------------------
UNKNOWN_ORDER (cancels and amends of gone orders), BAD_AMEND, AMEND_BELOW_SOLD and
POST_ONLY_WOULD_TRADE.  Nothing else: every ask and bid is valid by construction (R8).

Resting-only workload
---------------------
``generate_resting(n, seed)`` fills books with ``n`` orders that can never cross: 30 % asks
priced ``ref * [2, 4]`` (spot at ``ref * [1.5, 2)``), starting now with the longest window
(8,784 h), and 70 % GTC spot/on_demand bids with limits ``ref * [0.05, 0.5]``; time advances
0..2 s per command, no clock jumps, so nothing expires.  It measures memory per resting order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    COMMAND_DTYPE,
    FOK,
    GTC,
    GTD,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SPOT,
)

EPOCH = 1_800_000_000 // HOUR * HOUR  # 1_799_996_400
TICK = 1_000
GATE_S = 300  # BookConfig().gate_s
MAX_WINDOW_HOURS = 8_784  # BookConfig().max_window_hours
DEFAULT_CLASSES = ("H100", "A100", "RTX4090")
REF_PRICES = {"H100": 2_000_000, "A100": 1_200_000, "RTX4090": 400_000}
DEFAULT_REF_PRICE = 1_000_000
PROVIDER_BASE = 1  # providers are accounts 1..n_providers
TRADER_BASE = 10_001  # traders are accounts 10_001..10_000 + n_traders

# shares of the global stream: ask, bid, cancel (incl. amends), clock
MIX = (0.25, 0.45, 0.25, 0.05)
KIND_MIX = (0.30, 0.50, 0.20)  # spot, on_demand, reserved
TIF_MIX = (0.70, 0.20, 0.10, 0.0)  # GTC, IOC, FOK, GTD


@dataclass(frozen=True)
class Workload:
    """The global stream and which class book each record goes to."""

    commands: np.ndarray  # COMMAND_DTYPE, global order
    book: np.ndarray  # int8 index into `classes`, one per command
    classes: tuple[str, ...]

    def split(self, upto: int | None = None) -> dict[str, np.ndarray]:
        """Per-class command arrays of the first ``upto`` global commands (all if None)."""
        cmds = self.commands if upto is None else self.commands[:upto]
        book = self.book if upto is None else self.book[:upto]
        return {name: np.ascontiguousarray(cmds[book == i]) for i, name in enumerate(self.classes)}


def ref_price(name: str) -> int:
    """Reference price of a class in µ$ per GPU-hour."""
    return REF_PRICES.get(name, DEFAULT_REF_PRICE)


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int, size: int) -> np.ndarray:
    """Integers in [lo, hi], log-uniformly distributed."""
    x = np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size))
    return np.clip(np.floor(x), lo, hi).astype(np.int64)


def _ticks(x: np.ndarray) -> np.ndarray:
    """Round µ$ amounts to the tick (at least one tick)."""
    return np.maximum(np.rint(x / TICK).astype(np.int64), 1) * TICK


def _choose(rng: np.random.Generator, shares: tuple[float, ...], size: int) -> np.ndarray:
    p = np.asarray(shares, dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum())


def generate_workload(
    n_commands: int,
    seed: int = 1,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    *,
    class_weights: tuple[float, ...] | None = None,
    mix: tuple[float, float, float, float] = MIX,
    amend_share: float = 0.10,
    kind_mix: tuple[float, float, float] = KIND_MIX,
    tif_mix: tuple[float, float, float, float] = TIF_MIX,
    n_traders: int = 2_000,
    n_providers: int = 300,
    epoch: int = EPOCH,
) -> Workload:
    """Draw the global stream described in the module docstring."""
    n = int(n_commands)
    classes = tuple(classes)
    rng = np.random.default_rng(seed)
    cmds = np.zeros(n, dtype=COMMAND_DTYPE)

    # --- which command, which book -------------------------------------------------
    slot = _choose(rng, mix, n)  # 0 ask, 1 bid, 2 cancel/amend, 3 clock
    is_ask, is_bid, is_cxl, is_clock = (slot == k for k in range(4))
    is_amend = is_cxl & (rng.random(n) < amend_share)
    weights = class_weights or (1.0,) * len(classes)
    book = _choose(rng, tuple(weights), n).astype(np.int8)
    typ = np.full(n, CMD_CANCEL, dtype=np.int8)
    typ[is_ask] = CMD_ASK
    typ[is_bid] = CMD_BID
    typ[is_amend] = CMD_AMEND
    typ[is_clock] = CMD_CLOCK

    # --- time ------------------------------------------------------------------------
    step = rng.integers(0, 3, n)
    n_clock = int(is_clock.sum())
    jump = _log_uniform_int(rng, 1, 3600, n_clock)
    long_jump = rng.random(n_clock) < 0.02
    jump[long_jump] = rng.integers(1, 7, int(long_jump.sum())) * HOUR
    step[is_clock] = jump
    time = epoch + np.cumsum(step)
    cmds["time"] = time
    cmds["type"] = typ

    # --- order ids: one global counter over new orders -------------------------------
    is_order = is_ask | is_bid
    oid = np.cumsum(is_order).astype(np.int64)
    cmds["oid"][is_order] = oid[is_order]

    refs = np.array([ref_price(c) for c in classes], dtype=np.float64)

    # --- asks ------------------------------------------------------------------------
    ia = np.flatnonzero(is_ask)
    na = ia.size
    t = time[ia]
    ref = refs[book[ia]]
    gpus = np.where(rng.random(na) < 0.5, rng.integers(1, 65, na), 2 ** rng.integers(0, 7, na))
    price = _ticks(ref * rng.uniform(0.8, 1.6, na))
    spot = _ticks(price * rng.uniform(0.5, 0.95, na))
    spot = np.minimum(spot, price - TICK)
    spot[rng.random(na) >= 0.5] = 0
    future = rng.random(na) < 0.6
    start = np.where(future, (t // HOUR + rng.integers(1, 73, na)) * HOUR, 0)
    length = _log_uniform_int(rng, 1, 720, na)
    end = np.where(future, start, t) + length * HOUR
    min_hours = np.array([2, 4, 8, 12, 24])[rng.integers(0, 5, na)]
    min_hours = np.where(rng.random(na) < 0.25, np.minimum(min_hours, length), 0)
    cmds["account"][ia] = PROVIDER_BASE + rng.integers(0, n_providers, na)
    cmds["price"][ia] = price
    cmds["spot_price"][ia] = spot
    cmds["start"][ia] = start
    cmds["end"][ia] = end
    cmds["gpus"][ia] = gpus
    cmds["min_hours"][ia] = min_hours
    cmds["post_only"][ia] = rng.random(na) < 0.05

    # --- bids ------------------------------------------------------------------------
    ib = np.flatnonzero(is_bid)
    nb = ib.size
    t = time[ib]
    ref = refs[book[ib]]
    kind = np.array([SPOT, ON_DEMAND, RESERVED], dtype=np.int8)[_choose(rng, kind_mix, nb)]
    tif = np.array([GTC, IOC, FOK, GTD], dtype=np.int8)[_choose(rng, tif_mix, nb)]
    block = np.where(rng.random(nb) < 0.25, 8, 1)
    gpus = np.where(block == 8, 8 * rng.integers(1, 9, nb), _log_uniform_int(rng, 1, 64, nb))
    hours = _log_uniform_int(rng, 1, 168, nb)
    limit = _ticks(ref * rng.uniform(0.5, 1.2, nb))
    rstart = (t // HOUR + rng.integers(1, 169, nb)) * HOUR
    rstart = np.where(rstart - t < GATE_S, rstart + HOUR, rstart)
    expire = t + _log_uniform_int(rng, 60, 86_400, nb)
    cmds["account"][ib] = TRADER_BASE + rng.integers(0, n_traders, nb)
    cmds["price"][ib] = limit
    cmds["kind"][ib] = kind
    cmds["tif"][ib] = tif
    cmds["block"][ib] = block
    cmds["gpus"][ib] = gpus
    cmds["hours"][ib] = hours
    cmds["start"][ib] = np.where(kind == RESERVED, rstart, 0)
    cmds["expire_at"][ib] = np.where(tif == GTD, expire, 0)

    # --- cancels and amends: target an earlier live-looking order of the same class ----
    live_looking = is_ask | (is_bid & ((cmds["tif"] == GTC) | (cmds["tif"] == GTD)))
    for k in range(len(classes)):
        targets = np.flatnonzero(live_looking & (book == k))
        ic = np.flatnonzero(is_cxl & (book == k))
        if ic.size == 0:
            continue
        before = np.searchsorted(targets, ic)  # eligible orders earlier in the stream
        recent = rng.random(ic.size) < 0.6
        back = np.floor(rng.exponential(200.0, ic.size)).astype(np.int64)
        j = np.where(recent, before - 1 - back, np.floor(rng.random(ic.size) * before).astype(np.int64))
        j = np.clip(j, 0, None)
        has = before > 0
        tgt = targets[np.minimum(j, max(targets.size - 1, 0))] if targets.size else np.zeros_like(ic)
        cmds["oid"][ic] = np.where(has, cmds["oid"][tgt], 0)
        account = np.where(is_ask[tgt], PROVIDER_BASE, TRADER_BASE)
        cmds["account"][ic] = np.where(has, cmds["account"][tgt], account)
        # amends: fewer GPUs, a multiple of the block for bids
        am = is_amend[ic] & has
        ia_, tg = ic[am], tgt[am]
        g = cmds["gpus"][tg].astype(np.int64)
        blk = np.maximum(cmds["block"][tg].astype(np.int64), 1)
        units = g // blk
        ok = units >= 2
        new = blk * (1 + np.floor(rng.random(ia_.size) * np.maximum(units - 1, 1)).astype(np.int64))
        cmds["gpus"][ia_] = np.where(ok, new, 0)
        cmds["type"][ia_[~ok]] = CMD_CANCEL
        cmds["type"][ic[is_amend[ic] & ~has]] = CMD_CANCEL

    return Workload(commands=cmds, book=book, classes=classes)


def generate(
    n_commands: int,
    seed: int = 1,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    **kwargs: object,
) -> dict[str, np.ndarray]:
    """The mixed workload, split per class book: ``{class_name: COMMAND_DTYPE array}``.

    See the module docstring for the exact distribution; keyword arguments are those of
    `generate_workload`.
    """
    return generate_workload(n_commands, seed, classes, **kwargs).split()  # type: ignore[arg-type]


def generate_resting(
    n_orders: int,
    seed: int = 1,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    *,
    epoch: int = EPOCH,
) -> Workload:
    """``n_orders`` asks and bids that never cross and never expire during the run."""
    n = int(n_orders)
    classes = tuple(classes)
    rng = np.random.default_rng(seed)
    cmds = np.zeros(n, dtype=COMMAND_DTYPE)
    book = rng.integers(0, len(classes), n).astype(np.int8)
    time = epoch + np.cumsum(rng.integers(0, 3, n))
    ref = np.array([ref_price(c) for c in classes], dtype=np.float64)[book]
    is_ask = rng.random(n) < 0.3
    cmds["time"] = time
    cmds["oid"] = np.arange(1, n + 1)
    cmds["type"] = np.where(is_ask, CMD_ASK, CMD_BID)
    cmds["account"] = np.where(
        is_ask, PROVIDER_BASE + rng.integers(0, 300, n), TRADER_BASE + rng.integers(0, 2000, n)
    )
    gpus = rng.integers(1, 65, n)
    cmds["gpus"] = gpus
    ask_price = _ticks(ref * rng.uniform(2.0, 4.0, n))
    spot = _ticks(ref * rng.uniform(1.5, 2.0, n))
    bid_price = _ticks(ref * rng.uniform(0.05, 0.5, n))
    cmds["price"] = np.where(is_ask, ask_price, bid_price)
    cmds["spot_price"] = np.where(is_ask & (rng.random(n) < 0.5), spot, 0)
    cmds["end"] = np.where(is_ask, time + MAX_WINDOW_HOURS * HOUR, 0)
    cmds["kind"] = np.where(is_ask, 0, np.where(rng.random(n) < 0.4, SPOT, ON_DEMAND))
    cmds["tif"] = GTC
    cmds["block"] = np.where(is_ask, 0, 1)
    cmds["hours"] = np.where(is_ask, 0, _log_uniform_int(rng, 1, 168, n))
    return Workload(commands=cmds, book=book, classes=classes)
