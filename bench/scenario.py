"""The market simulation that tests gpux's promise (docs/scenario.md).

    python -m bench.scenario --json [--plot FILE.png] [--seed 1] [--engine numba|reference]

Participants send orders to the real order book (`orderbook.book.make_book`, the numba book by
default) faster than real time: engine time moves only by clock commands, one per simulated hour,
and everyone acts on the hour after seeing the previous hour's events.  Every figure comes from the
book's trade events (price × GPUs × hours of each fill), never from a formula of the assumptions.

(a) **The startup.**  It needs 1,000 H100 for 3 months, then 10,000 more (11,000) for 3 months, then
    500 from month 6 to the end of the year, plus a weekly evaluation burst of 200 GPUs for a day.
    On the exchange it buys a year of 1,000 reserved at the start, 10,000 reserved for months 3–6
    two weeks ahead, the weekly bursts on demand, and from month 6 resells the 500 GPUs of its
    reserved base it no longer needs with resale asks (``lease_id``, R16) that other traders buy.
    The alternatives, each through a book of its own: a fixed year-long contract for the peak it
    needed (one reserved fill at the contract price); the careful buyer's cheapest mix of a
    contract below the peak and on-demand top-ups at a cloud's list price; all on demand at the
    list price.  Around it a background market of providers (long-term and short-term asks),
    monthly reserved buyers, on-demand and spot traders.

(b) **Provider fleets.**  Eight providers with 1,000 GPUs each and five customers each, whose
    demand has a steady base and bursty training runs.  Once every provider rents only to its own
    customers (a book per provider: nobody else can buy there), once all in one book (the
    exchange).  Utilisation = GPU-hours leased / fleet GPU-hours, from the fills of each run.

(c) **Owned fleets.**  Three companies whose own teams use about 20 % of their 1,000 GPUs offer
    the idle hours: an on-demand ask (firm and spot) that planned jobs, reserved ahead, avoid,
    and a spot-only ask that unannounced jobs preempt.  Each company before (its teams only)
    and after (with the exchange's buyers), in a book of its own: utilisation and income.

Every number that goes in is a constant below, named and described in docs/scenario.md.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orderbook.book import ENGINES, make_book
from orderbook.config import BookConfig
from orderbook.types import (
    CMD_ASK,
    CMD_BID,
    CMD_CLOCK,
    COMMAND_DTYPE,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_TRADE,
    EVENT_DTYPE,
    GTC,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SPOT,
)

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC: the simulation's clock starts here
DAY = 24 * HOUR
YEAR_H = 8_760
MONTH_H = YEAR_H // 12  # 730 h: months are twelfths of a year, so they start on the hour
USD = 1_000_000  # µ$
BOOK = BookConfig(name="H100", max_price=10_000_000)

# ---------------------------------------------------------------------- (a) assumptions
A_START = T0 + HOUR  # the startup's year starts an hour in (reserved bids need the gate, R6)
A_NEED = ((0, 3, 1_000), (3, 6, 11_000), (6, 12, 500))  # (from month, to month, GPUs)
A_EVAL_GPUS, A_EVAL_HOURS, A_EVAL_EVERY_H = 200, 24, 7 * 24  # weekly evaluation burst, on demand
A_BURST_LEAD_H = 14 * 24  # the 10,000 are reserved two weeks before month 3
A_RESELL_LEAD_H = 14 * 24  # ... and the unused base is put up for resale two weeks before month 6
A_LIMIT_RESERVED = 1_950_000  # the startup's limits, µ$ per GPU-hour
A_LIMIT_ON_DEMAND = 2_400_000
A_RESALE_PRICE = 1_740_000  # its resale asks: a little below the providers' long-term asks
A_CONTRACT_PRICE = 1_650_000  # the fixed year-long contract's rate (a commitment discount)
A_LIST_PRICE = 11_000_000  # a hyperscaler's on-demand list price for one H100, µ$ per GPU-hour

A_PROVIDERS = 6
A_FLEET = 4_000  # GPUs per provider
A_LONG_SHARE = 0.6  # of each fleet offered long-term: min_hours 720, at the long-term price
A_LONG_BLOCK, A_SHORT_BLOCK = 400, 200  # GPUs per ask
A_LONG_PRICE = (1_780_000, 1_880_000)  # µ$ per GPU-hour, uniform per ask
A_SHORT_PRICE = (1_950_000, 2_150_000)
A_SPOT_PRICE = (1_250_000, 1_400_000)
A_RESERVED_BUYERS, A_RESERVED_GPUS = 15, (64, 256)  # monthly reserved blocks, a month ahead
A_RESERVED_LIMIT = (1_820_000, 1_950_000)
A_OD_TRADERS, A_OD_GPUS, A_OD_HOURS, A_OD_GAP_H = 40, (8, 128), (2, 24), (4, 16)
A_OD_LIMIT = (2_000_000, 2_400_000)
A_SPOT_TRADERS, A_SPOT_GPUS, A_SPOT_HOURS, A_SPOT_GAP_H = 10, (64, 512), (4, 24), (6, 24)
A_SPOT_LIMIT = (1_250_000, 1_450_000)

# ---------------------------------------------------------------------- (b) assumptions
B_DAYS = 180
B_PROVIDERS, B_FLEET, B_CUSTOMERS_EACH = 8, 1_000, 5
B_PRICE = (1_900_000, 2_100_000)  # each provider's firm price (one per provider)
B_ASK_BLOCK = 200
B_BASE = (40, 100)  # a customer's steady base load, GPUs (a day at a time)
B_BURST_EVERY_D = 10  # mean days between a customer's training runs (exponential)
B_BURST_GPUS, B_BURST_HOURS = (100, 500), (24, 120)
B_LIMIT = 2_400_000  # customers' on-demand limit: above every provider's price
NODE = 8  # GPUs per node: bursts and reserved blocks come in multiples of it

# ---------------------------------------------------------------------- (c) assumptions
C_DAYS = 90
C_COMPANIES, C_FLEET = 3, 1_000  # companies that own GPUs, GPUs each
C_OWN_USE = 0.20  # the share of its fleet's GPU-hours a company's own teams use, on average
C_JOB_GPUS, C_JOB_HOURS = (64, 512), (4, 48)  # an own job: GPUs (whole nodes), hours (uniform)
C_PLANNED_SHARE = 0.6  # of own jobs booked ahead (reserved bids); the rest arrive unannounced
C_LEAD_H = 48  # a planned job is reserved this long before it starts (longer than any outside lease)
C_SPOT_ONLY_SHARE = 0.5  # of the fleet offered to outsiders as spot only: own jobs preempt it
C_FIRM_PRICE = 2_000_000  # the on-demand ask: firm price, and its spot price
C_SPOT_PRICE = 1_300_000
C_OWN_PRICE = BOOK.max_price  # the spot-only ask's firm price: only the company's own teams pay it
C_OD_TRADERS, C_SPOT_TRADERS = 8, 4  # the exchange's buyers around each company (A_OD_*, A_SPOT_* sizes)


def _tick(x: float) -> int:
    return int(round(x / 1_000)) * 1_000


def _nodes(x: float) -> int:
    return max(NODE, int(round(x / NODE)) * NODE)


# ====================================================================== a book driven by the hour
class Market:
    """One book; commands are queued at the current hour and sent by `step`, followed by a clock
    command to the next hour."""

    def __init__(self, engine: str, t0: int = T0, config: BookConfig = BOOK) -> None:
        self.book = make_book(config, engine)
        self.now = t0
        self.oid = 0
        self.queue: list[dict[str, int]] = []
        self.trades: list[np.ndarray] = []
        self.preemptions: list[np.ndarray] = []
        self.commands = 0
        self.events = 0
        self.rejected = 0
        self.preempted = 0
        self.book_s = 0.0

    def _new(self, **fields: int) -> int:
        self.oid += 1
        self.queue.append(dict(time=self.now, oid=self.oid, **fields))
        return self.oid

    def ask(self, account: int, gpus: int, price: int, end: int, start: int = 0, spot: int = 0, min_hours: int = 1,
            lease_id: int = 0) -> int:
        return self._new(type=CMD_ASK, account=account, gpus=gpus, price=price, end=end, start=start,
                         spot_price=spot, min_hours=min_hours, lease_id=lease_id)

    def bid(self, account: int, kind: int, gpus: int, hours: int, limit: int, tif: int = IOC, start: int = 0,
            block: int = 1) -> int:
        return self._new(type=CMD_BID, account=account, kind=kind, gpus=gpus, hours=hours, price=limit, tif=tif,
                         start=start, block=block)

    def _send(self, clock_to: int | None) -> np.ndarray:
        """Process the queued commands at ``now``, then (if given) a clock command to ``clock_to``."""
        n = len(self.queue) + (clock_to is not None)
        cmds = np.zeros(n, dtype=COMMAND_DTYPE)
        for i, c in enumerate(self.queue):
            for k, v in c.items():
                cmds[i][k] = v
        if clock_to is not None:
            cmds[-1]["type"] = CMD_CLOCK
            cmds[-1]["time"] = clock_to
        self.queue = []
        t0 = time.perf_counter()
        ev = self.book.process(cmds)
        self.book_s += time.perf_counter() - t0
        self.commands += n
        self.events += len(ev)
        types = ev["type"]
        trades = ev[types == EV_TRADE]
        if len(trades):
            self.trades.append(trades)
        self.rejected += int((types == EV_REJECTED).sum())
        cut = ev[types == EV_PREEMPTED]
        if len(cut):
            self.preemptions.append(cut)
            self.preempted += len(cut)
        return trades

    def flush(self) -> np.ndarray:
        """Send what is queued now, without moving the clock: the trades it made."""
        return self._send(None)

    def step(self) -> np.ndarray:
        """Send what is queued now, then a clock command to the next hour (leases end, orders
        expire, asks are re-offered: R13, R14): the trades of both."""
        trades = self._send(self.now + HOUR)
        self.now += HOUR
        return trades

    def advance(self, to: int) -> np.ndarray:
        """Send what is queued now, then a clock command to ``to`` (at or after now)."""
        assert to >= self.now
        trades = self._send(to)
        self.now = to
        return trades

    def all_trades(self) -> np.ndarray:
        return np.concatenate(self.trades) if self.trades else np.zeros(0, dtype=EVENT_DTYPE)

    def all_preemptions(self) -> np.ndarray:
        return np.concatenate(self.preemptions) if self.preemptions else np.zeros(0, dtype=EVENT_DTYPE)


def gpu_hours(trades: np.ndarray, t_from: int, t_to: int) -> np.ndarray:
    """GPU-hours of each trade inside [t_from, t_to)."""
    lo = np.maximum(trades["start"], t_from)
    hi = np.minimum(trades["end"], t_to)
    return trades["gpus"].astype(np.int64) * np.maximum(hi - lo, 0) // HOUR


def cost(trades: np.ndarray) -> int:
    """µ$ of the trades: price × GPUs × hours of each fill (R11 prices, reserved and on-demand alike)."""
    return int((trades["price"].astype(np.int64) * trades["gpus"] * trades["hours"]).sum())


def held_curve(trades: np.ndarray, t0: int, hours: int) -> np.ndarray:
    """GPUs held at each hour [t0 + h, t0 + h + 1) by the given trades."""
    diff = np.zeros(hours + 1, np.int64)
    s = np.clip((trades["start"] - t0) // HOUR, 0, hours)
    e = np.clip((trades["end"] - t0) // HOUR, 0, hours)
    np.add.at(diff, s, trades["gpus"])
    np.add.at(diff, e, -trades["gpus"].astype(np.int64))
    return np.cumsum(diff)[:hours]


# ====================================================================== (a) the buyer outside the exchange
CLOUD_BOOK = BookConfig(name="H100", max_price=20_000_000)  # room for the list price
CONTRACTOR, CLOUD = 90, 91  # the contract's provider and the cloud: accounts of the baselines' books


def mix_cost(need: np.ndarray, contract_gpus: int, contract_price: int = A_CONTRACT_PRICE,
             list_price: int = A_LIST_PRICE) -> int:
    """µ$ a buyer pays over ``need`` (GPUs per hour) with a fixed contract of ``contract_gpus`` for
    all its hours at ``contract_price`` and the need above the contract bought on demand at
    ``list_price``: the planner's arithmetic, before anything is bought."""
    top_up = int(np.maximum(need - contract_gpus, 0).sum())
    return contract_gpus * len(need) * contract_price + top_up * list_price


def cheapest_contract(need: np.ndarray, contract_price: int = A_CONTRACT_PRICE,
                      list_price: int = A_LIST_PRICE) -> int:
    """The contract size (GPUs) with the lowest `mix_cost`, the smallest of equals.  The cost is
    linear in the size between two consecutive values of the need curve (each GPU more costs
    the contract's hours and saves the list price of the hours the need is above it), so the
    minimum is at 0 or at one of the curve's values: those are the candidates."""
    sizes = np.unique(np.concatenate(([0], need))).astype(np.int64)
    costs = [mix_cost(need, int(c), contract_price, list_price) for c in sizes]
    return int(sizes[int(np.argmin(costs))])


def run_outside(engine: str, need: np.ndarray, contract_gpus: int, start: int = A_START,
                contract_price: int = A_CONTRACT_PRICE, list_price: int = A_LIST_PRICE) -> Market:
    """The buyer without the exchange, through a book of its own: a fixed contract of
    ``contract_gpus`` for all of ``need``'s hours from ``start`` (one provider ask, one reserved
    bid: one fill at the contract price), and the need above the contract bought on demand from a
    cloud's ask at its list price: an on-demand bid at the start of every run of hours with the
    same top-up, for that run's hours."""
    hours = len(need)
    m = Market(engine, config=CLOUD_BOOK)
    window_end = m.now + CLOUD_BOOK.max_window_hours * HOUR
    if contract_gpus:
        m.ask(CONTRACTOR, contract_gpus, contract_price, window_end, min_hours=hours)
        m.bid(STARTUP, RESERVED, contract_gpus, hours, contract_price, tif=GTC, start=start)
    top = np.maximum(need - contract_gpus, 0)
    if top.any():
        m.ask(CLOUD, int(top.max()), list_price, window_end)
    m.flush()
    h = 0
    while h < hours:
        j = h + 1
        while j < hours and top[j] == top[h]:
            j += 1
        if top[h]:
            m.advance(start + h * HOUR)
            m.bid(STARTUP, ON_DEMAND, int(top[h]), j - h, list_price)
            m.flush()
        h = j
    return m


def outside_figures(m: Market, need: np.ndarray, contract_gpus: int, exch_cost: int,
                    start: int = A_START) -> dict[str, Any]:
    """A baseline's cost from its fills, what it held against the need, and the exchange's saving."""
    tr = m.all_trades()
    hours = len(need)
    contract = tr[tr["account2"] == CONTRACTOR]
    top_ups = tr[tr["account2"] == CLOUD]
    total = cost(tr)
    held = held_curve(tr, start, hours)
    return {
        "contract_gpus": contract_gpus,
        "contract_usd": cost(contract) / USD,
        "on_demand_usd": cost(top_ups) / USD,
        "on_demand_gpu_hours": int(gpu_hours(top_ups, start, start + hours * HOUR).sum()),
        "cost_usd": total / USD,
        "fills": len(tr),
        "unused_gpu_hours": int(np.maximum(held - need, 0).sum()),
        "shortfall_gpu_hours": int(np.maximum(need - held, 0).sum()),
        "usd_per_needed_gpu_hour": round(total / USD / int(need.sum()), 4),
        "saving_usd": (total - exch_cost) / USD,
        "saving_pct": round(100 * (total - exch_cost) / total, 1) if total else None,
    }


# ====================================================================== (a) the startup
STARTUP = 1
A_PROVIDER_BASE = 100  # provider accounts 100..
A_TRADER_BASE = 1_000  # background traders 1000..
C_OWNER_BASE, C_TEAM_BASE, C_BUYER_BASE = 200, 300, 2_000  # (c): owners, their teams, the exchange's buyers


def need_curve() -> np.ndarray:
    """The startup's need, GPUs per hour of its year (A_NEED plus the weekly evaluation bursts)."""
    need = np.zeros(YEAR_H, np.int64)
    for m0, m1, gpus in A_NEED:
        need[m0 * MONTH_H:m1 * MONTH_H] = gpus
    for h in range(0, YEAR_H, A_EVAL_EVERY_H):
        need[h:h + A_EVAL_HOURS] += A_EVAL_GPUS
    return need


def run_startup(engine: str, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}:startup")
    m = Market(engine)
    horizon = A_START + YEAR_H * HOUR
    window_end = T0 + BOOK.max_window_hours * HOUR
    # providers: long-term and short-term asks over the whole year
    for p in range(A_PROVIDERS):
        acc = A_PROVIDER_BASE + p
        long = int(A_FLEET * A_LONG_SHARE) // A_LONG_BLOCK * A_LONG_BLOCK
        for _ in range(long // A_LONG_BLOCK):
            m.ask(acc, A_LONG_BLOCK, _tick(rng.uniform(*A_LONG_PRICE)), window_end, min_hours=MONTH_H - 10)
        for _ in range((A_FLEET - long) // A_SHORT_BLOCK):
            m.ask(acc, A_SHORT_BLOCK, _tick(rng.uniform(*A_SHORT_PRICE)), window_end,
                  spot=_tick(rng.uniform(*A_SPOT_PRICE)))
    # the startup's base: a year of 1,000 reserved from A_START
    m.bid(STARTUP, RESERVED, A_NEED[0][2], YEAR_H, A_LIMIT_RESERVED, tif=GTC, start=A_START, block=NODE)

    month_start = [A_START + k * MONTH_H * HOUR for k in range(13)]
    burst_at = month_start[3] - A_BURST_LEAD_H * HOUR
    resell_at = month_start[6] - A_RESELL_LEAD_H * HOUR
    base_leases: list[tuple[int, int]] = []  # (trade id, GPUs) of the base reservation
    od_next = [T0 + rng.randint(0, A_OD_GAP_H[1]) * HOUR for _ in range(A_OD_TRADERS)]
    spot_next = [T0 + rng.randint(0, A_SPOT_GAP_H[1]) * HOUR for _ in range(A_SPOT_TRADERS)]
    burst_missing = 0
    while m.now < horizon:
        t = m.now
        rel_h = (t - A_START) // HOUR
        # --- the startup
        if rel_h >= 0 and rel_h % A_EVAL_EVERY_H == 0 and rel_h < YEAR_H:
            m.bid(STARTUP, ON_DEMAND, A_EVAL_GPUS, A_EVAL_HOURS, A_LIMIT_ON_DEMAND, block=NODE)
        if t == burst_at:
            extra = A_NEED[1][2] - A_NEED[0][2]
            m.bid(STARTUP, RESERVED, extra, 3 * MONTH_H, A_LIMIT_RESERVED, tif=GTC, start=month_start[3],
                  block=NODE)
        if month_start[3] <= t < month_start[6] and burst_missing and (t - month_start[3]) % DAY == 0:
            # what the reservation could not get: on demand, a day at a time
            m.bid(STARTUP, ON_DEMAND, burst_missing, min(24, (month_start[6] - t) // HOUR), A_LIMIT_ON_DEMAND,
                  block=NODE)
        if t == resell_at:
            left = A_NEED[0][2] - A_NEED[2][2]
            for tid, gpus in base_leases:
                if left <= 0:
                    break
                q = min(left, gpus)
                m.ask(STARTUP, q, A_RESALE_PRICE, month_start[12], start=month_start[6], lease_id=tid)
                left -= q
        # --- background: monthly reserved buyers (a month ahead), on-demand and spot traders
        k_next = next((k for k in range(13) if month_start[k] > t), None)
        if k_next is not None and k_next < 12 and t == month_start[k_next] - MONTH_H * HOUR:
            for b in range(A_RESERVED_BUYERS):
                m.bid(A_TRADER_BASE + b, RESERVED, _nodes(rng.uniform(*A_RESERVED_GPUS)), MONTH_H,
                      _tick(rng.uniform(*A_RESERVED_LIMIT)), tif=GTC, start=month_start[k_next], block=NODE)
        for i in range(A_OD_TRADERS):
            if od_next[i] <= t:
                m.bid(A_TRADER_BASE + 100 + i, ON_DEMAND, _nodes(rng.uniform(*A_OD_GPUS)),
                      rng.randint(*A_OD_HOURS), _tick(rng.uniform(*A_OD_LIMIT)), block=NODE)
                od_next[i] = t + rng.randint(*A_OD_GAP_H) * HOUR
        for i in range(A_SPOT_TRADERS):
            if spot_next[i] <= t:
                m.bid(A_TRADER_BASE + 200 + i, SPOT, _nodes(rng.uniform(*A_SPOT_GPUS)), rng.randint(*A_SPOT_HOURS),
                      _tick(rng.uniform(*A_SPOT_LIMIT)), block=NODE)
                spot_next[i] = t + rng.randint(*A_SPOT_GAP_H) * HOUR
        trades = m.step()
        mine = trades[trades["account"] == STARTUP]
        if len(mine):
            res = mine[(mine["kind"] == RESERVED)]
            for tr in res:
                if int(tr["end"]) - int(tr["start"]) == YEAR_H * HOUR:
                    base_leases.append((int(tr["trade_id"]), int(tr["gpus"])))
        if t == month_start[3] - HOUR:  # the burst reservation's gate has passed: what is missing?
            all_mine = m.all_trades()
            got = all_mine[(all_mine["account"] == STARTUP) & (all_mine["kind"] == RESERVED)
                           & (all_mine["start"] == month_start[3])]
            burst_missing = max(0, A_NEED[1][2] - A_NEED[0][2] - int(got["gpus"].sum()))

    tr = m.all_trades()
    bought = tr[tr["account"] == STARTUP]
    resold = tr[tr["account2"] == STARTUP]
    held = held_curve(bought, A_START, YEAR_H) - held_curve(resold, A_START, YEAR_H)
    need = need_curve()
    by_kind = {name: bought[bought["kind"] == k] for name, k in (("reserved", RESERVED), ("on_demand", ON_DEMAND))}
    exch_cost = cost(bought) - cost(resold)

    # the alternatives, each through a book of its own: a fixed year-long contract for the peak;
    # the careful buyer's cheapest contract below it plus on-demand top-ups at a cloud's list
    # price; everything on demand at the list price
    peak = int(need.max())
    c = run_outside(engine, need, peak)
    ct = c.all_trades()
    contract_cost = cost(ct)
    contract_held = held_curve(ct, A_START, YEAR_H)
    best = cheapest_contract(need)
    mix = run_outside(engine, need, best)
    od = run_outside(engine, need, 0)
    baselines = {
        "peak_contract": outside_figures(c, need, peak, exch_cost),
        "contract_plus_on_demand": outside_figures(mix, need, best, exch_cost),
        "all_on_demand": outside_figures(od, need, 0, exch_cost),
    }

    need_gh = int(need.sum())
    others = tr[(tr["account"] != STARTUP)]
    return {
        "need_gpu_hours": need_gh,
        "peak_gpus": peak,
        "exchange": {
            "cost_usd": exch_cost / USD,
            "bought_usd": {k: cost(v) / USD for k, v in by_kind.items()},
            "bought_gpu_hours": {k: int(gpu_hours(v, A_START, A_START + YEAR_H * HOUR).sum())
                                 for k, v in by_kind.items()},
            "resale_income_usd": cost(resold) / USD,
            "resold_gpu_hours": int(gpu_hours(resold, A_START, A_START + YEAR_H * HOUR).sum()),
            "resale_fills": len(resold),
            "held_gpu_hours": int(np.maximum(held, 0).sum()),
            "unused_gpu_hours": int(np.maximum(held - need, 0).sum()),
            "shortfall_gpu_hours": int(np.maximum(need - held, 0).sum()),
            "usd_per_needed_gpu_hour": round(exch_cost / USD / need_gh, 4),
            "fills": len(bought),
        },
        "fixed_contract": {
            "gpus": peak,
            "hours": YEAR_H,
            "price_usd": A_CONTRACT_PRICE / USD,
            "cost_usd": contract_cost / USD,
            "fills": len(ct),
            "unused_gpu_hours": int(np.maximum(contract_held - need, 0).sum()),
            "shortfall_gpu_hours": int(np.maximum(need - contract_held, 0).sum()),
            "usd_per_needed_gpu_hour": round(contract_cost / USD / need_gh, 4),
        },
        "baselines": baselines,
        "saving_usd": (contract_cost - exch_cost) / USD,
        "saving_pct": round(100 * (contract_cost - exch_cost) / contract_cost, 1) if contract_cost else None,
        "market": {
            "trades": len(tr), "background_trades": len(others), "preempted": m.preempted, "rejected": m.rejected,
            "commands": m.commands + sum(x.commands for x in (c, mix, od)),
            "events": m.events + sum(x.events for x in (c, mix, od)),
            "vwap_usd": {name: round(cost(tr[tr["kind"] == k]) / max(1, int((tr[tr["kind"] == k]["gpus"].astype(
                np.int64) * tr[tr["kind"] == k]["hours"]).sum())) / USD, 4)
                for name, k in (("reserved", RESERVED), ("on_demand", ON_DEMAND), ("spot", SPOT))},
            "book_seconds": round(m.book_s + sum(x.book_s for x in (c, mix, od)), 3),
        },
        "_curves": {"need": need, "held": held, "contract": contract_held,
                    "exchange_cost_by_month": _monthly_cost(bought, resold),
                    "contract_cost_by_month": _monthly_cost(ct, ct[:0])},
    }


def _monthly_cost(bought: np.ndarray, resold: np.ndarray) -> list[float]:
    """$ per month of the year, each lease's cost spread over its hours (resale income subtracted)."""
    out = []
    for k in range(12):
        a, b = A_START + k * MONTH_H * HOUR, A_START + (k + 1) * MONTH_H * HOUR
        spent = int((gpu_hours(bought, a, b) * bought["price"]).sum())
        earned = int((gpu_hours(resold, a, b) * resold["price"]).sum())
        out.append((spent - earned) / USD)
    return out


# ====================================================================== (b) provider fleets
@dataclass
class Job:
    customer: int
    gpus: int
    start_h: int
    hours: int
    left: int = field(init=False)  # GPUs still to get

    def __post_init__(self) -> None:
        self.left = self.gpus


def customer_jobs(seed: int) -> list[Job]:
    """Every customer's jobs over B_DAYS: a base load a day at a time, and bursty training runs."""
    rng = random.Random(f"{seed}:fleets")
    jobs = []
    hours = B_DAYS * 24
    for c in range(B_PROVIDERS * B_CUSTOMERS_EACH):
        base = _nodes(rng.uniform(*B_BASE))
        for d in range(B_DAYS):
            jobs.append(Job(c, base, d * 24, 24))
        t = rng.expovariate(1 / (B_BURST_EVERY_D * 24))
        while t < hours:
            jobs.append(Job(c, _nodes(rng.uniform(*B_BURST_GPUS)), int(t), rng.randint(*B_BURST_HOURS)))
            t += rng.expovariate(1 / (B_BURST_EVERY_D * 24))
    return sorted(jobs, key=lambda j: (j.start_h, j.customer))


def run_fleet_market(engine: str, seed: int, providers: list[int], customers: set[int]) -> Market:
    """One book with these providers' fleets and these customers' jobs; on-demand IOC bids, a job's
    missing GPUs are asked for again every hour until it ends."""
    rng = random.Random(f"{seed}:prices")
    prices = [_tick(rng.uniform(*B_PRICE)) for _ in range(B_PROVIDERS)]
    m = Market(engine)
    end = T0 + BOOK.max_window_hours * HOUR
    for p in providers:
        for _ in range(B_FLEET // B_ASK_BLOCK):
            m.ask(A_PROVIDER_BASE + p, B_ASK_BLOCK, prices[p], end)
    jobs = [j for j in customer_jobs(seed) if j.customer in customers]
    active: list[Job] = []
    ji = 0
    pending: dict[int, Job] = {}  # bid oid -> job
    for h in range(B_DAYS * 24):
        while ji < len(jobs) and jobs[ji].start_h <= h:
            active.append(jobs[ji])
            ji += 1
        active = [j for j in active if j.left > 0 and j.start_h + j.hours > h]
        for j in active:
            oid = m.bid(A_TRADER_BASE + j.customer, ON_DEMAND, j.left, j.start_h + j.hours - h, B_LIMIT, block=NODE)
            pending[oid] = j
        trades = m.step()
        for oid, gpus in zip(trades["oid"].tolist(), trades["gpus"].tolist(), strict=True):
            j = pending.get(oid)
            if j is not None:
                j.left -= gpus
        pending.clear()
    return m


def run_fleets(engine: str, seed: int) -> dict[str, Any]:
    hours = B_DAYS * 24
    t_end = T0 + hours * HOUR
    customers_of = {p: set(range(p * B_CUSTOMERS_EACH, (p + 1) * B_CUSTOMERS_EACH)) for p in range(B_PROVIDERS)}
    wanted = sum(j.gpus * j.hours for j in customer_jobs(seed))

    def measure(trades: np.ndarray) -> dict[str, Any]:
        per = []
        for p in range(B_PROVIDERS):
            mine = trades[trades["account2"] == A_PROVIDER_BASE + p]
            gh = int(gpu_hours(mine, T0, t_end).sum())
            per.append({"provider": p + 1, "utilisation": round(gh / (B_FLEET * hours), 4), "gpu_hours": gh,
                        "revenue_usd": cost(mine) / USD})
        total = sum(x["gpu_hours"] for x in per)
        weekly = []
        for w in range(0, hours, 7 * 24):
            a, b = T0 + w * HOUR, T0 + min(hours, w + 7 * 24) * HOUR
            weekly.append(round(int(gpu_hours(trades, a, b).sum()) / (B_FLEET * B_PROVIDERS * (b - a) // HOUR), 4))
        return {"utilisation": round(total / (B_FLEET * B_PROVIDERS * hours), 4), "gpu_hours": total,
                "served_share": round(total / wanted, 4), "providers": per, "weekly_utilisation": weekly}

    t0 = time.perf_counter()
    own_trades = []
    commands = events = 0
    book_s = 0.0
    for p in range(B_PROVIDERS):
        m = run_fleet_market(engine, seed, [p], customers_of[p])
        own_trades.append(m.all_trades())
        commands += m.commands
        events += m.events
        book_s += m.book_s
    own = measure(np.concatenate(own_trades))
    ex = run_fleet_market(engine, seed, list(range(B_PROVIDERS)), set(range(B_PROVIDERS * B_CUSTOMERS_EACH)))
    exchange = measure(ex.all_trades())
    return {
        "days": B_DAYS, "providers": B_PROVIDERS, "fleet_each": B_FLEET, "customers": B_PROVIDERS * B_CUSTOMERS_EACH,
        "wanted_gpu_hours": wanted,
        "own_customers_only": own,
        "exchange": exchange,
        "utilisation_gain_points": round(100 * (exchange["utilisation"] - own["utilisation"]), 2),
        "commands": commands + ex.commands, "events": events + ex.events,
        "book_seconds": round(book_s + ex.book_s, 3), "seconds": round(time.perf_counter() - t0, 2),
    }



# ====================================================================== (c) owned fleets
def own_jobs(seed: int, company: int, days: int) -> list[Job]:
    """A company's own teams' jobs over ``days``: exponential gaps whose mean makes the expected
    use C_OWN_USE of the fleet; ``customer`` is 1 for a planned job, 0 for an unannounced one."""
    rng = random.Random(f"{seed}:owned:{company}")
    mean_job = (sum(C_JOB_GPUS) / 2) * (sum(C_JOB_HOURS) / 2)  # GPU-hours
    gap_h = mean_job / (C_OWN_USE * C_FLEET)
    jobs = []
    t = 1 + rng.expovariate(1 / gap_h)  # from hour 1: a planned job's reservation clears the gate
    while t < days * 24:
        planned = rng.random() < C_PLANNED_SHARE
        jobs.append(Job(int(planned), _nodes(rng.uniform(*C_JOB_GPUS)), int(t), rng.randint(*C_JOB_HOURS)))
        t += rng.expovariate(1 / gap_h)
    return jobs


def run_owned_fleet(engine: str, seed: int, company: int, days: int, outside: bool) -> tuple[Market, list[Job]]:
    """One company's fleet in a book: an on-demand ask (firm and spot) and a spot-only ask (its firm
    price is the book's maximum, which only the company's own teams pay), both for the whole
    period; its teams' jobs as bids from the team's account (planned jobs reserved C_LEAD_H ahead,
    unannounced ones on demand when they arrive; missing GPUs asked for again every hour).  With
    ``outside``, the exchange's on-demand and spot buyers bid for the same GPUs."""
    rng = random.Random(f"{seed}:owned-buyers:{company}")
    m = Market(engine)
    owner, team = C_OWNER_BASE + company, C_TEAM_BASE + company
    end = T0 + BOOK.max_window_hours * HOUR
    spot_only = _nodes(C_FLEET * C_SPOT_ONLY_SHARE)
    m.ask(owner, C_FLEET - spot_only, C_FIRM_PRICE, end, spot=C_SPOT_PRICE)
    m.ask(owner, spot_only, C_OWN_PRICE, end, spot=C_SPOT_PRICE)
    jobs = own_jobs(seed, company, days)
    reserve_at: dict[int, list[Job]] = {}
    for j in jobs:
        if j.customer:
            reserve_at.setdefault(max(0, j.start_h - C_LEAD_H), []).append(j)
    by_start: dict[int, list[Job]] = {}
    for j in jobs:
        by_start.setdefault(j.start_h, []).append(j)
    bids: dict[int, Job] = {}  # the team's bid oid -> its job
    running: list[Job] = []
    od_next = [T0 + rng.randint(0, A_OD_GAP_H[1]) * HOUR for _ in range(C_OD_TRADERS)]
    spot_next = [T0 + rng.randint(0, A_SPOT_GAP_H[1]) * HOUR for _ in range(C_SPOT_TRADERS)]
    for h in range(days * 24):
        t = m.now
        for j in reserve_at.get(h, []):
            bids[m.bid(team, RESERVED, j.gpus, j.hours, C_OWN_PRICE, tif=GTC, start=T0 + j.start_h * HOUR,
                       block=NODE)] = j
        running += by_start.get(h, [])
        running = [j for j in running if j.left > 0 and j.start_h + j.hours > h]
        for j in running:  # unannounced jobs, and what a reservation did not get: on demand, for the hours left
            bids[m.bid(team, ON_DEMAND, j.left, j.start_h + j.hours - h, C_OWN_PRICE, block=NODE)] = j
        if outside:
            for i in range(C_OD_TRADERS):
                if od_next[i] <= t:
                    m.bid(C_BUYER_BASE + i, ON_DEMAND, _nodes(rng.uniform(*A_OD_GPUS)), rng.randint(*A_OD_HOURS),
                          _tick(rng.uniform(*A_OD_LIMIT)), block=NODE)
                    od_next[i] = t + rng.randint(*A_OD_GAP_H) * HOUR
            for i in range(C_SPOT_TRADERS):
                if spot_next[i] <= t:
                    m.bid(C_BUYER_BASE + 100 + i, SPOT, _nodes(rng.uniform(*A_SPOT_GPUS)),
                          rng.randint(*A_SPOT_HOURS), _tick(rng.uniform(*A_SPOT_LIMIT)), block=NODE)
                    spot_next[i] = t + rng.randint(*A_SPOT_GAP_H) * HOUR
        trades = m.step()
        for oid, gpus in zip(trades["oid"].tolist(), trades["gpus"].tolist(), strict=True):
            j = bids.get(oid)
            if j is not None:
                j.left -= gpus
    return m, jobs


def held_seconds(trades: np.ndarray, cuts: np.ndarray, t_from: int, t_to: int) -> np.ndarray:
    """GPU-seconds of each trade inside [t_from, t_to), a preempted lease up to its new end."""
    end = trades["end"].copy()
    if len(cuts):
        new_end = dict(zip(cuts["trade_id"].tolist(), cuts["end"].tolist(), strict=True))
        for i, tid in enumerate(trades["trade_id"].tolist()):
            if tid in new_end:
                end[i] = new_end[tid]
    lo = np.maximum(trades["start"], t_from)
    hi = np.minimum(end, t_to)
    return trades["gpus"].astype(np.int64) * np.maximum(hi - lo, 0)


def run_owned(engine: str, seed: int, days: int | None = None) -> dict[str, Any]:
    """Each company before (its fleet used by its own teams only) and after (its idle hours offered
    on the exchange), over ``days`` (C_DAYS if not given); every figure from the book's fills and
    preemptions."""
    days = C_DAYS if days is None else days
    t0 = time.perf_counter()
    t_end = T0 + days * 24 * HOUR
    companies = []
    commands = events = 0
    book_s = 0.0
    for k in range(C_COMPANIES):
        row: dict[str, Any] = {"company": k + 1}
        for when, outside in (("before", False), ("after", True)):
            m, jobs = run_owned_fleet(engine, seed, k, days, outside)
            commands, events, book_s = commands + m.commands, events + m.events, book_s + m.book_s
            tr = m.all_trades()
            tr = tr[tr["account2"] == C_OWNER_BASE + k]
            cuts = m.all_preemptions()
            secs = held_seconds(tr, cuts, T0, t_end)
            own = tr["account"] == C_TEAM_BASE + k
            outside_cut = np.isin(cuts["trade_id"], tr["trade_id"][~own])
            by_own = np.isin(cuts["lease_id"], tr["trade_id"][own])
            # what outsiders pay: each lease for the time it ran (a preempted spot lease pro rata, R12)
            paid = tr["price"].astype(np.int64) * held_seconds(tr, cuts, 0, 2**62) // HOUR
            wanted = sum(j.gpus * min(j.hours, days * 24 - j.start_h) for j in jobs)
            row[when] = {
                "utilisation": round(int(secs.sum()) / (C_FLEET * days * 24 * HOUR), 4),
                "own_use": round(int(secs[own].sum()) / (C_FLEET * days * 24 * HOUR), 4),
                "outside_gpu_hours": int(secs[~own].sum()) // HOUR,
                "income_usd": int(paid[~own].sum()) / USD,
                "income_by_kind_usd": {name: int(paid[~own & (tr["kind"] == kind)].sum()) / USD
                                       for name, kind in (("on_demand", ON_DEMAND), ("spot", SPOT))},
                "outside_fills": int((~own).sum()),
                # outsiders' spot leases cut short by a firm fill (R12): of the company's own teams, or
                # of an outsider on the ask that sells both firm and spot
                "spot_preempted_by_own_jobs": int((outside_cut & by_own).sum()),
                "spot_preempted_by_outsiders": int((outside_cut & ~by_own).sum()),
                "own_gpu_hours_wanted": wanted,
                "own_gpu_hours_short": wanted - int(secs[own].sum()) // HOUR,
            }
        companies.append(row)

    def total(when: str, key: str) -> float:
        return sum(c[when][key] for c in companies)

    return {
        "days": days, "companies": C_COMPANIES, "fleet_each": C_FLEET,
        "per_company": companies,
        "utilisation_before": round(total("before", "utilisation") / C_COMPANIES, 4),
        "utilisation_after": round(total("after", "utilisation") / C_COMPANIES, 4),
        "income_before_usd": total("before", "income_usd"),
        "income_after_usd": total("after", "income_usd"),
        "own_gpu_hours_short_before": int(total("before", "own_gpu_hours_short")),
        "own_gpu_hours_short_after": int(total("after", "own_gpu_hours_short")),
        "commands": commands, "events": events,
        "book_seconds": round(book_s, 3), "seconds": round(time.perf_counter() - t0, 2),
    }


# ====================================================================== the plot
def plot(path: Path, a: dict[str, Any], b: dict[str, Any]) -> str:
    """Write the figure; matplotlib if installed, else the built-in PNG writer.  Returns which."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_plain(path, a, b)
        return "builtin"
    cur = a["_curves"]
    fig, ax = plt.subplots(2, 2, figsize=(13, 8.5))
    days = np.arange(YEAR_H) / 24
    ax[0][0].plot(days, cur["contract"], color="#c0392b", lw=1.5, label=f"fixed contract ({a['peak_gpus']:,} GPUs)")
    ax[0][0].plot(days, cur["held"], color="#2e86de", lw=1.2, label="held on the exchange (net of resale)")
    ax[0][0].plot(days, cur["need"], color="#27ae60", lw=0.8, ls="--", label="needed")
    ax[0][0].set(title="(a) the startup: GPUs needed and held", xlabel="day", ylabel="GPUs")
    ax[0][0].legend(fontsize=8)
    months = np.arange(1, 13)
    ax[0][1].plot(months, np.cumsum(cur["contract_cost_by_month"]) / 1e6, "o-", color="#c0392b",
                  label=f"fixed contract: ${a['fixed_contract']['cost_usd'] / 1e6:,.1f}M")
    ax[0][1].plot(months, np.cumsum(cur["exchange_cost_by_month"]) / 1e6, "o-", color="#2e86de",
                  label=f"exchange (buy + resell): ${a['exchange']['cost_usd'] / 1e6:,.1f}M")
    ax[0][1].set(title="(a) cumulative cost, from the fills", xlabel="month", ylabel="$ million")
    ax[0][1].legend(fontsize=8)
    x = np.arange(b["providers"])
    own = [p["utilisation"] * 100 for p in b["own_customers_only"]["providers"]]
    ex = [p["utilisation"] * 100 for p in b["exchange"]["providers"]]
    own_u = b["own_customers_only"]["utilisation"]
    ax[1][0].bar(x - 0.2, own, 0.4, color="#95a5a6", label=f"own customers only: {own_u:.1%}")
    ax[1][0].bar(x + 0.2, ex, 0.4, color="#2e86de", label=f"exchange: {b['exchange']['utilisation']:.1%}")
    ax[1][0].set(title="(b) provider fleet utilisation", xlabel="provider", ylabel="% of fleet GPU-hours",
                 xticks=x, xticklabels=[str(i + 1) for i in x], ylim=(0, 100))
    ax[1][0].legend(fontsize=8, loc="lower right")
    weeks = np.arange(len(b["exchange"]["weekly_utilisation"]))
    ax[1][1].plot(weeks, np.array(b["own_customers_only"]["weekly_utilisation"]) * 100, color="#95a5a6",
                  label="own customers only")
    ax[1][1].plot(weeks, np.array(b["exchange"]["weekly_utilisation"]) * 100, color="#2e86de", label="exchange")
    ax[1][1].set(title="(b) all fleets, weekly utilisation", xlabel="week", ylabel="%", ylim=(0, 100))
    ax[1][1].legend(fontsize=8)
    fig.suptitle("gpux market simulation (python -m bench.scenario): every figure from the book's fills")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "matplotlib"


def _plot_plain(path: Path, a: dict[str, Any], b: dict[str, Any]) -> None:
    """A plain chart without matplotlib: (a) the needed/held/contract curves on top, (b) utilisation
    bars per provider below (grey: own customers, blue: exchange).  No text: see the JSON."""
    w, h = 900, 600
    img = np.full((h, w, 3), 255, np.uint8)
    cur = a["_curves"]
    top = 280
    ymax = max(int(cur["contract"].max()), int(cur["held"].max()), 1) * 1.1
    curves = ((cur["contract"], (192, 57, 43)), (cur["held"], (46, 134, 222)), (cur["need"], (39, 174, 96)))
    for series, color in curves:
        xs = (np.arange(len(series)) * (w - 40) / len(series) + 20).astype(int)
        ys = (top - 20 - series / ymax * (top - 40)).astype(int)
        img[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)] = color
        img[np.clip(ys + 1, 0, h - 1), np.clip(xs, 0, w - 1)] = color
    base = h - 20
    n = b["providers"]
    slot = (w - 40) // n
    for i in range(n):
        for j, (key, color) in enumerate((("own_customers_only", (149, 165, 166)), ("exchange", (46, 134, 222)))):
            u = b[key]["providers"][i]["utilisation"]
            x0 = 20 + i * slot + 10 + j * (slot - 20) // 2
            y0 = int(base - u * (h - top - 40))
            img[y0:base, x0:x0 + (slot - 20) // 2 - 4] = color
    _write_png(path, img)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path.write_bytes(png)


# ====================================================================== main
def assumptions() -> dict[str, Any]:
    return {
        "class": BOOK.name, "start": T0, "month_hours": MONTH_H, "year_hours": YEAR_H,
        "startup": {"need": [{"from_month": a, "to_month": b, "gpus": g} for a, b, g in A_NEED],
                    "eval_burst": {"gpus": A_EVAL_GPUS, "hours": A_EVAL_HOURS, "every_hours": A_EVAL_EVERY_H},
                    "reserve_burst_lead_hours": A_BURST_LEAD_H, "resell_lead_hours": A_RESELL_LEAD_H,
                    "limit_reserved_usd": A_LIMIT_RESERVED / USD, "limit_on_demand_usd": A_LIMIT_ON_DEMAND / USD,
                    "resale_price_usd": A_RESALE_PRICE / USD, "contract_price_usd": A_CONTRACT_PRICE / USD,
                    "list_price_usd": A_LIST_PRICE / USD},
        "background": {"providers": A_PROVIDERS, "fleet_each": A_FLEET, "long_share": A_LONG_SHARE,
                       "long_price_usd": [p / USD for p in A_LONG_PRICE],
                       "short_price_usd": [p / USD for p in A_SHORT_PRICE],
                       "spot_price_usd": [p / USD for p in A_SPOT_PRICE],
                       "reserved_buyers": A_RESERVED_BUYERS, "on_demand_traders": A_OD_TRADERS,
                       "spot_traders": A_SPOT_TRADERS},
        "fleets": {"days": B_DAYS, "providers": B_PROVIDERS, "fleet_each": B_FLEET,
                   "customers_each": B_CUSTOMERS_EACH, "price_usd": [p / USD for p in B_PRICE],
                   "base_gpus": list(B_BASE), "burst_every_days": B_BURST_EVERY_D, "burst_gpus": list(B_BURST_GPUS),
                   "burst_hours": list(B_BURST_HOURS), "limit_usd": B_LIMIT / USD},
        "owned_fleets": {"days": C_DAYS, "companies": C_COMPANIES, "fleet_each": C_FLEET, "own_use": C_OWN_USE,
                         "job_gpus": list(C_JOB_GPUS), "job_hours": list(C_JOB_HOURS),
                         "planned_share": C_PLANNED_SHARE, "lead_hours": C_LEAD_H,
                         "spot_only_share": C_SPOT_ONLY_SHARE, "firm_price_usd": C_FIRM_PRICE / USD,
                         "spot_price_usd": C_SPOT_PRICE / USD, "own_price_usd": C_OWN_PRICE / USD,
                         "on_demand_buyers": C_OD_TRADERS, "spot_buyers": C_SPOT_TRADERS},
    }


def run(engine: str = "numba", seed: int = 1) -> dict[str, Any]:
    t0 = time.perf_counter()
    a = run_startup(engine, seed)
    t1 = time.perf_counter()
    b = run_fleets(engine, seed)
    c = run_owned(engine, seed)
    t2 = time.perf_counter()
    a["seconds"] = round(t1 - t0, 2)
    return {"engine": engine, "seed": seed, "startup": a, "fleets": b, "owned_fleets": c,
            "assumptions": assumptions(), "seconds": round(t2 - t0, 2)}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the curves (numpy arrays) kept for the plot."""
    out = dict(result)
    out["startup"] = {k: v for k, v in result["startup"].items() if not k.startswith("_")}
    return out


BASELINE_NAMES = {
    "peak_contract": "fixed contract for the peak",
    "contract_plus_on_demand": "cheapest contract below peak + on demand at list price",
    "all_on_demand": "all on demand at list price",
}


def summary(r: dict[str, Any]) -> str:
    a, b = r["startup"], r["fleets"]
    ex, fc = a["exchange"], a["fixed_contract"]
    lines = [
        f"(a) startup, {a['need_gpu_hours']:,} GPU-hours needed (peak {a['peak_gpus']:,} GPUs):",
        f"    exchange: ${ex['cost_usd']:,.0f} (reserved ${ex['bought_usd']['reserved']:,.0f}, on demand "
        f"${ex['bought_usd']['on_demand']:,.0f}, resale income ${ex['resale_income_usd']:,.0f} for "
        f"{ex['resold_gpu_hours']:,} GPU-h in {ex['resale_fills']} fills); "
        f"${ex['usd_per_needed_gpu_hour']}/needed GPU-h, {ex['unused_gpu_hours']:,} GPU-h unused, "
        f"{ex['shortfall_gpu_hours']:,} short",
        f"    fixed contract: ${fc['cost_usd']:,.0f} ({fc['gpus']:,} GPUs x {fc['hours']:,} h at ${fc['price_usd']}); "
        f"${fc['usd_per_needed_gpu_hour']}/needed GPU-h, {fc['unused_gpu_hours']:,} GPU-h paid and unused",
        f"    saving with the exchange: ${a['saving_usd']:,.0f} ({a['saving_pct']}%)",
        "    the exchange against each way of buying outside it:",
    ]
    for name, text in BASELINE_NAMES.items():
        x = a["baselines"][name]
        lines.append(f"      {text + ':':<58} ${x['cost_usd']:>13,.0f}   saving ${x['saving_usd']:>13,.0f} "
                     f"({x['saving_pct']}%)")
    lines += [
        f"(b) fleets, {b['providers']} providers x {b['fleet_each']:,} GPUs, {b['customers']} customers, "
        f"{b['days']} days:",
        f"    utilisation: own customers only {b['own_customers_only']['utilisation']:.1%}, exchange "
        f"{b['exchange']['utilisation']:.1%} (+{b['utilisation_gain_points']} points); demand served "
        f"{b['own_customers_only']['served_share']:.1%} -> {b['exchange']['served_share']:.1%}",
    ]
    c = r["owned_fleets"]
    lines += [
        f"(c) owned fleets, {c['companies']} companies x {c['fleet_each']:,} GPUs, own teams ~{C_OWN_USE:.0%}, "
        f"{c['days']} days: utilisation {c['utilisation_before']:.1%} -> {c['utilisation_after']:.1%} offering the "
        f"idle hours; income ${c['income_before_usd']:,.0f} -> ${c['income_after_usd']:,.0f}; own jobs short "
        f"{c['own_gpu_hours_short_before']:,} -> {c['own_gpu_hours_short_after']:,} GPU-h",
    ]
    for k in c["per_company"]:
        b4, af = k["before"], k["after"]
        lines.append(f"    company {k['company']}: {b4['utilisation']:.1%} -> {af['utilisation']:.1%}, income "
                     f"${af['income_usd']:,.0f} (on demand ${af['income_by_kind_usd']['on_demand']:,.0f}, spot "
                     f"${af['income_by_kind_usd']['spot']:,.0f}; outsiders' spot leases preempted: "
                     f"{af['spot_preempted_by_own_jobs']} by own jobs, {af['spot_preempted_by_outsiders']} by "
                     f"outsiders' firm fills)")
    lines.append(f"run: {r['seconds']} s on the {r['engine']} book")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scenario", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the result as JSON (else a summary)")
    p.add_argument("--plot", metavar="FILE.png", help="write the figure")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine", choices=ENGINES, default="numba")
    args = p.parse_args(argv)
    r = run(args.engine, args.seed)
    if args.plot:
        r["plot"] = {"path": args.plot, "with": plot(Path(args.plot), r["startup"], r["fleets"])}
    out = public(r)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(summary(out))
    if args.plot:
        print(f"plot: {args.plot} ({r['plot']['with']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
