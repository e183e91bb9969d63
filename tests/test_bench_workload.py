"""The benchmark workload (bench/workload.py) is deterministic, has the documented mix, and is
valid: run through the reference book, asks and bids are accepted and rejections are only the
expected ones (cancels of orders that are gone, amends that no longer fit, post-only crosses)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from bench import book as bench_book
from bench.workload import (
    DEFAULT_CLASSES,
    EPOCH,
    GATE_S,
    TICK,
    generate,
    generate_resting,
    generate_workload,
    ref_price,
)
from orderbook import reasons as R
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    END_USER,
    EV_ACCEPTED,
    EV_CANCELLED,
    EV_REJECTED,
    EV_TRADE,
    FOK,
    GTC,
    HOUR,
    IOC,
    ON_DEMAND,
    RESERVED,
    SPOT,
)

N = 60_000


@pytest.fixture(scope="module")
def workload():
    return generate_workload(N, seed=3)


def share(mask: np.ndarray, of: np.ndarray | None = None) -> float:
    return float(mask.sum() / (mask.size if of is None else of.sum()))


def test_deterministic_for_a_seed():
    a, b = generate(5_000, seed=11), generate(5_000, seed=11)
    assert list(a) == list(DEFAULT_CLASSES)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes()
    c = generate(5_000, seed=12)
    assert any(a[name].tobytes() != c[name].tobytes() for name in a)


def test_split_partitions_the_global_stream(workload):
    parts = workload.split()
    assert sum(len(p) for p in parts.values()) == N
    assert set(parts) == set(DEFAULT_CLASSES)
    for i, name in enumerate(workload.classes):
        assert abs(len(parts[name]) / N - 1 / 3) < 0.02
        assert parts[name].tobytes() == workload.commands[workload.book == i].tobytes()
    prefix = workload.split(upto=1000)
    assert sum(len(p) for p in prefix.values()) == 1000


def test_command_mix(workload):
    t = workload.commands["type"]
    assert abs(share(t == CMD_ASK) - 0.25) < 0.01
    assert abs(share(t == CMD_BID) - 0.45) < 0.01
    assert abs(share((t == CMD_CANCEL) | (t == CMD_AMEND)) - 0.25) < 0.01
    assert abs(share(t == CMD_CLOCK) - 0.05) < 0.005
    amend = share(t == CMD_AMEND, (t == CMD_CANCEL) | (t == CMD_AMEND))
    assert 0.06 < amend < 0.11  # 10 % drawn, the unreducible ones become cancels


def test_time_and_order_ids(workload):
    c = workload.commands
    assert c["time"][0] >= EPOCH
    steps = np.diff(c["time"])
    assert steps.min() >= 0
    clock = c["type"][1:] == CMD_CLOCK
    assert steps[~clock].max() <= 2
    assert 1 <= steps[clock].min() and steps[clock].max() <= 6 * HOUR
    for cmds in workload.split().values():
        assert np.all(np.diff(cmds["time"]) >= 0)
        orders = cmds[(cmds["type"] == CMD_ASK) | (cmds["type"] == CMD_BID)]
        assert orders["oid"].min() >= 1
        assert np.all(np.diff(orders["oid"]) > 0)


def test_asks(workload):
    c, book = workload.commands, workload.book
    is_ask = c["type"] == CMD_ASK
    a = c[is_ask]
    ref = np.array([ref_price(n) for n in workload.classes])[book[is_ask]]
    assert np.all(a["price"] % TICK == 0) and np.all(a["spot_price"] % TICK == 0)
    assert np.all(a["price"] >= ref * 0.8 - TICK) and np.all(a["price"] <= ref * 1.6 + TICK)
    spot = a["spot_price"] > 0
    assert abs(share(spot) - 0.5) < 0.02
    assert np.all(a["spot_price"][spot] < a["price"][spot])
    assert np.all((a["gpus"] >= 1) & (a["gpus"] <= 64))
    now = a["start"] == 0
    assert abs(share(now) - 0.4) < 0.02
    start = np.where(now, a["time"], a["start"])
    assert np.all(a["start"][~now] % HOUR == 0)
    assert np.all((a["start"][~now] > a["time"][~now]) & (a["start"][~now] <= a["time"][~now] + 72 * HOUR))
    length = a["end"] - start
    assert np.all(length % HOUR == 0)
    assert length.min() >= HOUR and length.max() <= 720 * HOUR
    assert np.all(a["min_hours"] * HOUR <= length)
    h100 = a[book[is_ask] == 0]
    assert len(np.unique(h100["price"])) > 500  # fine-grained price levels


def test_bids(workload):
    c, book = workload.commands, workload.book
    is_bid = c["type"] == CMD_BID
    b = c[is_bid]
    assert abs(share(b["kind"] == SPOT) - 0.30) < 0.02
    assert abs(share(b["kind"] == ON_DEMAND) - 0.50) < 0.02
    assert abs(share(b["kind"] == RESERVED) - 0.20) < 0.02
    assert abs(share(b["tif"] == GTC) - 0.70) < 0.02
    assert abs(share(b["tif"] == IOC) - 0.20) < 0.02
    assert abs(share(b["tif"] == FOK) - 0.10) < 0.02
    assert set(np.unique(b["block"]).tolist()) == {1, 8}
    assert np.all(b["gpus"] % b["block"] == 0)
    assert np.all((b["gpus"] >= 1) & (b["gpus"] <= 64))
    assert np.all((b["hours"] >= 1) & (b["hours"] <= 168))
    ref = np.array([ref_price(n) for n in workload.classes])[book[is_bid]]
    assert np.all(b["price"] % TICK == 0)
    assert np.all(b["price"] >= ref * 0.5 - TICK) and np.all(b["price"] <= ref * 1.2 + TICK)
    r = b[b["kind"] == RESERVED]
    assert np.all(r["start"] % HOUR == 0)
    ahead = r["start"] - r["time"]
    assert ahead.min() >= GATE_S and ahead.max() <= 170 * HOUR
    assert np.all(b["start"][b["kind"] != RESERVED] == 0)


def test_cancels_target_own_earlier_orders(workload):
    c = workload.commands
    by_oid = {int(o["oid"]): o for o in c[(c["type"] == CMD_ASK) | (c["type"] == CMD_BID)]}
    targets = np.flatnonzero((c["type"] == CMD_CANCEL) | (c["type"] == CMD_AMEND))
    for i in targets[::50]:
        oid = int(c["oid"][i])
        if oid == 0:  # nothing to cancel yet in that book
            continue
        target = by_oid[oid]
        assert target["account"] == c["account"][i]
        assert target["time"] <= c["time"][i]
        assert target["type"] == CMD_ASK or target["tif"] != IOC
    amends = c[c["type"] == CMD_AMEND]
    assert np.all(amends["gpus"] >= 1)


EXPECTED_REJECTIONS = {
    CMD_ASK: {R.POST_ONLY_WOULD_TRADE},
    CMD_BID: set(),
    CMD_CANCEL: {R.UNKNOWN_ORDER},
    CMD_AMEND: {R.UNKNOWN_ORDER, R.BAD_AMEND, R.AMEND_BELOW_SOLD},
}


def test_reference_book_accepts_the_workload():
    w = generate_workload(6_000, seed=5)
    rejected: Counter[tuple[int, int]] = Counter()
    accepted = cancels_ok = trades = 0
    for name, cmds in w.split().items():
        book = make_book(BookConfig(name=name), "reference")
        ev = book.process(cmds)
        rej = ev[ev["type"] == EV_REJECTED]
        rejected.update(zip(rej["cmd"].tolist(), rej["reason"].tolist(), strict=True))
        accepted += int((ev["type"] == EV_ACCEPTED).sum())
        trades += int((ev["type"] == EV_TRADE).sum())
        cancels_ok += int(((ev["type"] == EV_CANCELLED) & (ev["reason"] == END_USER)).sum())
    for (cmd, code), _ in rejected.items():
        assert code in EXPECTED_REJECTIONS[cmd], (cmd, R.reason_name(code))
    orders = int(((w.commands["type"] == CMD_ASK) | (w.commands["type"] == CMD_BID)).sum())
    order_rejections = sum(n for (cmd, _), n in rejected.items() if cmd in (CMD_ASK, CMD_BID))
    assert order_rejections / orders < 0.02
    assert accepted == orders - order_rejections
    cancels = int((w.commands["type"] == CMD_CANCEL).sum())
    assert cancels_ok / cancels > 0.2  # many cancels find their order still open
    assert trades > 0.2 * orders  # the market trades, and is not one-sided


def test_resting_workload_never_crosses():
    w = generate_resting(3_000, seed=2)
    total = 0
    for name, cmds in w.split().items():
        book = make_book(BookConfig(name=name), "reference")
        ev = book.process(cmds)
        assert set(ev["type"].tolist()) == {EV_ACCEPTED}
        assert len(book.orders) == len(cmds)
        total += len(cmds)
    assert total == 3_000


def test_bench_runs_with_the_reference_engine(capsys):
    argv = "--commands 3000 --prefix 1500 --batch 500 --engine reference --json --no-warm-start"
    code = bench_book.main(argv.split())
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["prefix_identical"] is True and result["prefix_state_hash_equal"] is True
    assert result["commands"] == 3000
    assert result["resting_orders"] == result["resting_orders_book"]
    assert result["trades"] > 0 and result["events"] > result["trades"]
    assert result["resting_curve"][-1] == [1.0, result["resting_orders"]]
    for key in ("numba_cmds_per_s", "reference_cmds_per_s", "speedup", "peak_rss_mb", "jit_compile_s"):
        assert result[key] > 0


def test_bench_resting_mode_with_the_reference_engine(capsys):
    assert bench_book.main(["--resting", "2000", "--engine", "reference", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["resting_orders"] == 2000 == result["resting_orders_book"]
    assert result["trades"] == 0


def test_warm_start_subprocess_with_the_reference_engine():
    assert 0 < bench_book.warm_start_seconds("reference") < 60


def test_bench_threaded_run_equals_the_serial_run(capsys):
    """Class books on worker threads (each book's batches still in order, one at a time) end in
    the same states as on one thread; the run reports both rates."""
    argv = "--commands 20000 --prefix 0 --batch 700 --threads 2 --json --no-warm-start"
    code = bench_book.main(argv.split())
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["threads"] == 2
    assert result["threads_state_hash_equal"] is True
    assert result["numba_cmds_per_s"] > 0 and result["numba_1thread_cmds_per_s"] > 0


def test_threaded_books_see_their_batches_in_order():
    w = generate_workload(9_000, seed=4)
    parts = w.split()
    serial = {n: make_book(BookConfig(name=n), "reference") for n in parts}
    for n, cmds in parts.items():
        for i in range(0, len(cmds), 300):
            serial[n].process(cmds[i:i + 300])
    threaded = {n: make_book(BookConfig(name=n), "reference") for n in parts}
    assert bench_book.run_books_threaded(threaded, parts, 300, threads=3) > 0
    assert {n: b.state_hash() for n, b in threaded.items()} == {n: b.state_hash() for n, b in serial.items()}
