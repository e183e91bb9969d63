"""`gpux demo`: a small seeded market in three GPU classes, run through the books.

Providers post asks (a firm price and a cheaper spot price), traders send spot, on-demand
and reserved bids, some orders are cancelled, and the clock moves on.  Every trade and
every preemption is printed as a line, then a summary per class.  The same seed gives the
same output on either engine.  (A stand-in until the exchange itself runs: `gpux serve`.)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from orderbook.book import Book
from orderbook.codec import event_to_json
from orderbook.config import BookConfig
from orderbook.types import (
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    COMMAND_DTYPE,
    FOK,
    GTC,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SIDE_BID,
    SPOT,
)

START = 1_767_225_600  # 2026-01-01 00:00:00 UTC
TICK = 1_000  # µ$ per GPU-hour
BATCH = 32  # commands per book call


@dataclass(frozen=True)
class DemoClass:
    """A GPU class of the demo: typical prices in µ$ per GPU-hour and the node size."""

    name: str
    firm: int
    spot: int
    node: int  # GPUs per node: asks and most bids come in multiples of it


CLASSES = (
    DemoClass("H100", firm=2_000_000, spot=1_300_000, node=8),
    DemoClass("A100", firm=1_200_000, spot=750_000, node=8),
    DemoClass("RTX4090", firm=400_000, spot=250_000, node=2),
)
PROVIDERS = range(1, 6)  # provider accounts
TRADERS = range(101, 121)  # trader accounts


def _price(rng: random.Random, ref: int, lo: float, hi: float) -> int:
    return max(TICK, round(ref * rng.uniform(lo, hi) / TICK) * TICK)


def generate(cls: DemoClass, seed: int, steps: int = 60) -> np.ndarray:
    """A seeded, time-ordered command stream for one class (COMMAND_DTYPE records)."""
    rng = random.Random(f"{seed}:{cls.name}")
    cmds: list[dict[str, int]] = []
    resting: list[tuple[int, int]] = []  # (oid, account) of orders that may still rest
    oid = 0
    t = START

    def ask(now: int) -> None:
        nonlocal oid
        oid += 1
        price = _price(rng, cls.firm, 0.95, 1.15)
        spot = min(price - TICK, _price(rng, cls.spot, 0.9, 1.1)) if rng.random() < 0.8 else 0
        account = rng.choice(PROVIDERS)
        cmds.append(dict(type=CMD_ASK, time=now, oid=oid, account=account,
                         gpus=cls.node * rng.randint(1, 4), price=price, spot_price=spot,
                         end=now + rng.randint(12, 48) * HOUR))
        resting.append((oid, account))

    for _ in range(4):  # the market opens with a few providers
        ask(t)
    for _ in range(steps):
        t += rng.randint(30, 600)
        roll = rng.random()
        if roll < 0.10:
            ask(t)
            continue
        if roll < 0.20 and resting:
            target, account = resting.pop(rng.randrange(len(resting)))
            cmds.append(dict(type=CMD_CANCEL, time=t, oid=target, account=account))
            continue
        if roll < 0.32:
            t += rng.randint(5, 60) * 60
            cmds.append(dict(type=CMD_CLOCK, time=t))
            continue
        oid += 1
        account = rng.choice(TRADERS)
        gpus = rng.choice((1, 2, cls.node, cls.node, 2 * cls.node))
        bid = dict(type=CMD_BID, time=t, oid=oid, account=account, gpus=gpus, tif=GTC)
        if roll < 0.62:
            bid.update(kind=SPOT, hours=rng.randint(1, 4), price=_price(rng, cls.spot, 0.85, 1.15),
                       tif=rng.choice((GTC, GTC, IOC)))
        elif roll < 0.88:
            bid.update(kind=ON_DEMAND, hours=rng.randint(1, 8), price=_price(rng, cls.firm, 0.9, 1.12),
                       tif=rng.choice((GTC, GTC, IOC, FOK)))
        else:
            start = (t // HOUR + rng.randint(1, 6)) * HOUR
            if start - t < 300:  # the gate (R6)
                start += HOUR
            bid.update(kind=RESERVED, hours=rng.randint(2, 12), start=start,
                       price=_price(rng, cls.firm, 0.9, 1.05))
        cmds.append(bid)
        if bid["tif"] == GTC:
            resting.append((oid, account))
    out = np.zeros(len(cmds), dtype=COMMAND_DTYPE)
    for i, c in enumerate(cmds):
        for k, v in c.items():
            out[i][k] = v
    return out


@dataclass
class ClassSummary:
    """What happened in one class's book."""

    name: str
    trades: int = 0
    gpu_hours: dict[str, int] = field(default_factory=Counter)  # by lease kind
    notional: dict[str, int] = field(default_factory=Counter)  # µ$, by lease kind
    preempted: int = 0
    cancelled: int = 0
    expired: int = 0
    rejected: Counter = field(default_factory=Counter)  # by reason name
    open_orders: dict[int, int] = field(default_factory=dict)  # oid -> side

    def record(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "accepted":
            self.open_orders[ev["oid"]] = SIDE_ASK if ev["side"] == "ask" else SIDE_BID
        elif kind == "trade":
            self.trades += 1
            gpu_h = ev["gpus"] * ev["hours"]
            self.gpu_hours[ev["kind"]] += gpu_h
            self.notional[ev["kind"]] += gpu_h * ev["price"]
            if ev["remaining"] == 0:
                self.open_orders.pop(ev["bid_oid"], None)
        elif kind == "preempted":
            self.preempted += 1
        elif kind in ("cancelled", "expired"):
            self.open_orders.pop(ev["oid"], None)
            if kind == "cancelled":
                self.cancelled += 1
            else:
                self.expired += 1
        elif kind == "rejected":
            self.rejected[ev["reason"]] += 1


def _dollars(micro: int | float) -> str:
    return f"${micro / 1e6:,.3f}"


def _clock(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def describe(cls_name: str, ev: dict) -> str | None:
    """A readable line for a trade or a preemption; None for other events."""
    if ev["type"] == "trade":
        return (f"{_clock(ev['time'])}  {cls_name:<8} trade #{ev['trade_id']:<3} {ev['kind']:<9} "
                f"{ev['gpus']:>3} GPU x {ev['hours']:>2} h  @ {_dollars(ev['price'])}/GPU-h  "
                f"bid {ev['bid_oid']} (trader {ev['buyer']}) <- ask {ev['ask_oid']} "
                f"(provider {ev['provider']}), maker {ev['maker']}")
    if ev["type"] == "preempted":
        return (f"{_clock(ev['time'])}  {cls_name:<8} PREEMPTED lease #{ev['trade_id']} "
                f"({ev['gpus']} GPU spot @ {_dollars(ev['price'])}) now ends {_clock(ev['end'])}, "
                f"for firm trade #{ev['preempted_by']}")
    return None


def run_demo(open_book: Callable[[BookConfig], Book], seed: int = 7, steps: int = 60,
             write: Callable[[str], None] = print) -> dict[str, ClassSummary]:
    """Generate, run and print the demo market; returns the per-class summaries."""
    lines: list[tuple[int, int, int, str]] = []  # (time, class index, seq, text)
    summaries: dict[str, ClassSummary] = {}
    total = 0
    for ci, cls in enumerate(CLASSES):
        book = open_book(BookConfig(name=cls.name, tick=TICK))
        commands = generate(cls, seed, steps)
        total += len(commands)
        summary = summaries[cls.name] = ClassSummary(cls.name)
        for lo in range(0, len(commands), BATCH):
            for rec in book.process(commands[lo:lo + BATCH]):
                ev = event_to_json(rec)
                summary.record(ev)
                text = describe(cls.name, ev)
                if text:
                    lines.append((ev["time"], ci, ev["seq"], text))
    names = ", ".join(c.name for c in CLASSES)
    opening = datetime.fromtimestamp(START, UTC)
    write(f"gpux demo: seed {seed}, {total} commands in {len(CLASSES)} books ({names}), "
          f"starting {opening:%Y-%m-%d %H:%M} UTC")
    write("")
    for _, _, _, text in sorted(lines):
        write(text)
    write("")
    write("summary per class (prices are volume-weighted, $ per GPU-hour):")
    for s in summaries.values():
        by_kind = "  ".join(
            f"{k} {s.gpu_hours[k]} GPU-h @ {_dollars(s.notional[k] / s.gpu_hours[k])}"
            for k in ("on_demand", "reserved", "spot") if s.gpu_hours.get(k)
        ) or "no trades"
        notional = sum(s.notional.values()) / 1e6
        asks = sum(1 for side in s.open_orders.values() if side == SIDE_ASK)
        bids = len(s.open_orders) - asks
        rejected = ", ".join(f"{n} {name}" for name, n in sorted(s.rejected.items())) or "none"
        write(f"  {s.name:<8} {s.trades} trades, ${notional:,.2f} notional: {by_kind}")
        write(f"  {'':<8} {s.preempted} preempted, {s.cancelled} cancelled, {s.expired} expired, "
              f"rejected: {rejected}; resting at the end: {asks} asks, {bids} bids")
    return summaries

