"""Regression: R12 preemption in the numba book was cubic in an ask's leases (a server hang).

A live server spun for 18 minutes inside `NumbaBook.process` on a bench journal (H100: 100
asks of 10,000 GPUs at firm $2 / spot $1; then 1-GPU 1-hour spot bids, on-demand IOC bids and
cancels from 50 accounts).  The spot bids filled ask 1 with ~10,000 spot leases; from then on
every on-demand fill on ask 1 overcommitted it and preempted one spot lease (R12).

It was no infinite loop but a cubic one.  `_preempt` ran one pass per victim (plus a last pass
that finds none); each pass listed one breakpoint per lease start or end inside (T0, end of the
fill) — with duplicates, so one per lease that started a second earlier — and summed the usage
at every breakpoint by walking the ask's whole lease list (`_usage_at`): (victims + 1) ×
leases × leases steps, ~10^8 per on-demand fill in the journal (0.1 s, then 1.5 s as leases of
later seconds came), and thousands of such fills.  The stream below is the smallest shape of it:
one ask, N spot leases from one second, and one firm fill a second later that has to preempt all
N of them, ~2 N³ steps: N = 5,000 took minutes (N = 4,000: 123 s; N = 2,000: 16 s).

Now the usage over [T0, end of the fill) is built once as sorted, distinct breakpoints and the
spot leases are taken from a heap in preemption order: O(n log n) per preempting fill.  The
reference book (the specification) had the same shape, quadratic there (it recounted every
lease after each victim: 11 s for 4,000 victims); it now passes over its spot leases once, too.
Both must still give the same events: R12's order (cheapest, then newest) and T0 = now + notice.
"""

from __future__ import annotations

import numpy as np
import pytest

from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import EV_PREEMPTED, EV_TRADE, IOC, ON_DEMAND, RESERVED, SPOT
from tests.helpers import PROV, P, S, T, ask, bid

N = 5_000
DAYS30 = 30 * 24 * 3_600


def _spot_leases(n: int, at: int = T) -> list[np.ndarray]:
    """One ask of n GPUs (firm P, spot S) and n 1-GPU 1-hour spot bids from 50 accounts, at `at`."""
    cmds = [ask(at, 1, PROV, n, P, T + DAYS30, spot_price=S)]
    cmds += [bid(at, 2 + i, 100 + i % 50, SPOT, 1, 1, S) for i in range(n)]
    return cmds


def _same_events(cmds: list[np.ndarray], one_by_one: bool = False) -> np.ndarray:
    """Both books, the same events and state.  one_by_one: a process() call per command to the
    numba book, so that pytest-timeout can stop a slow run between two (numba code holds the GIL
    and cannot be interrupted)."""
    commands = np.array(cmds)
    ref = make_book(BookConfig(), "reference")
    fast = make_book(BookConfig(), "numba")
    events = ref.process(commands)
    if one_by_one:
        got = np.concatenate([fast.process(commands[i : i + 1]) for i in range(len(commands))])
    else:
        got = fast.process(commands)
    assert np.array_equal(got, events)
    assert fast.state_hash() == ref.state_hash()
    return events


@pytest.mark.timeout(60)
def test_r12_firm_fill_preempting_thousands_of_spot_leases_finishes():
    """R12: an on-demand fill for all N GPUs, a second later, preempts all N spot leases."""
    events = _same_events([*_spot_leases(N), bid(T + 1, N + 2, 99, ON_DEMAND, N, 1, P, tif=IOC)])
    trades = events[events["type"] == EV_TRADE]
    assert len(trades) == N + 1 and trades[-1]["gpus"] == N
    preempted = events[events["type"] == EV_PREEMPTED]
    # all of them, newest first (equal prices), each now ending at T0 = now + notice_s
    assert np.array_equal(preempted["trade_id"], np.arange(N, 0, -1))
    assert (preempted["end"] == T + 1 + 120).all()
    assert (preempted["lease_id"] == N + 1).all()


@pytest.mark.timeout(60)
def test_r12_many_firm_fills_each_preempting_one_spot_lease():
    """R12, as in the journal: 1-GPU on-demand fills one after the other, a second or more
    after the spot leases were sold, each preempting a spot lease (~100 s before the fix).  A
    reserved lease sold ahead starts inside the fills' windows, so the usage has more
    breakpoints than T0 (the general path), and the spot leases it preempted (to end at its
    start) are still running at T0."""
    n, k = 5_000, 600
    b = T + 1_800
    cmds = _spot_leases(n, at=b)  # spot leases over [T + 30 min, T + 90 min)
    oid = n + 2
    for h in (1, 2):  # 5 GPUs over [T + 1 h, T + 2 h), then 5 over [T + 2 h, T + 3 h)
        cmds.append(bid(b + 1, oid, 98, RESERVED, 5, 1, P, start=T + h * 3_600))
        oid += 1
    for i in range(k):
        cmds.append(bid(b + 2 + i // 50, oid, 200 + i % 50, ON_DEMAND, 1, 1, P, tif=IOC))
        oid += 1
    events = _same_events(cmds, one_by_one=True)
    pre = events[events["type"] == EV_PREEMPTED]
    # the first reserved fill (trade n + 1) ends the 5 newest spot leases at its start; the
    # second overlaps no spot lease
    assert np.array_equal(pre[:5]["trade_id"], np.arange(n, n - 5, -1))
    assert (pre[:5]["end"] == T + 3_600).all() and (pre[:5]["lease_id"] == n + 1).all()
    # the first on-demand fill (trade n + 3, T0 = its time + 120) overcommits the ask at T0 and
    # from T + 1 h on: the newest lease (n, now running until T + 1 h) goes again, to end at T0,
    # then n - 5 (the newest that runs past T + 1 h)
    assert np.array_equal(pre[5:7]["trade_id"], [n, n - 5])
    assert (pre[5:7]["end"] == b + 2 + 120).all() and (pre[5:7]["lease_id"] == n + 3).all()
    # every later fill preempts the newest lease left that runs past T + 1 h
    assert np.array_equal(pre[7:]["trade_id"], np.arange(n - 6, n - 6 - (k - 1), -1))
