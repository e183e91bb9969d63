"""The jitted settlement engine (clearing.engine over clearing.core) against the plain-Python
reference engine (clearing.reference) on the benchmark's mixed workload: every hand-over
gives the same transfers, and the same bids, leases and timetable are left (R16–R19 as the
reference writes them).  The hypothesis state machine (test_settlement_stateful) does the same
on random streams with provisioning answers, resale, restarts and replays."""

from __future__ import annotations

import numpy as np
import pytest

from bench.settlement import DEFAULT_FEES, workload_events
from clearing.engine import SettlementConfig, SettlementEngine
from clearing.leases import STATUSES
from clearing.reference import SettlementEngine as ReferenceEngine
from orderbook.types import EV_TRADE, EVENT_DTYPE, SIDE_BID


@pytest.fixture(scope="module")
def handovers() -> list:
    return workload_events(12_000, seed=7, batch=512)


@pytest.mark.parametrize(("config", "tiny"), [
    (SettlementConfig(fees=DEFAULT_FEES, meter_interval_s=3600), False),
    (SettlementConfig(fees={}, meter_interval_s=86_400), False),
    (SettlementConfig(fees=DEFAULT_FEES, auto_ready=False, provision_timeout_s=900, meter_interval_s=600), False),
    (SettlementConfig(fees=DEFAULT_FEES, meter_interval_s=600), True),
], ids=["fees-hourly", "no-fees-daily", "provisioning-timeouts", "transfers-buffer-growing"])
def test_same_transfers_and_state_as_the_reference(handovers: list, config: SettlementConfig, tiny: bool) -> None:
    """``tiny``: the transfers' buffer is one row long at every call, so the core grows it many
    times inside an apply and inside a tick (a grown buffer replaces the borrowed one mid-event)."""
    fast, ref = SettlementEngine(config), ReferenceEngine(config)
    trades = 0
    for i, (cls, ev) in enumerate(handovers):
        if tiny:
            fast._out = np.empty((1, 6), np.int64)
        got, want = fast.apply(cls, ev), ref.apply(cls, ev)
        assert sorted(map(tuple, got)) == sorted(want), f"hand-over {i} ({cls})"
        trades += int(np.count_nonzero(ev["type"] == EV_TRADE))
        if i % 7 == 0:  # a tick between hand-overs, as the exchange's clock does
            now = int(ev["time"].max()) + 1800
            if tiny:
                fast._out = np.empty((1, 6), np.int64)
            assert sorted(map(tuple, fast.tick(now, cls))) == sorted(ref.tick(now, cls))
        changes, ref_changes = fast.take_changes(), ref.take_changes()
        assert {c: {x.trade_id: x for x in xs} for c, xs in changes.leases.items()} == ref_changes.leases
        assert changes.bids == ref_changes.bids and changes.cursors == ref_changes.cursors
    assert fast.trades == ref.trades == trades > 1000
    for cls, c in fast.classes.items():
        r = ref.classes[cls]
        assert (c.seq, c.clock, dict(c.bids), dict(c.leases), c.due) == (r.seq, r.clock, r.bids, r.leases, r.due)
        by_tid = sorted(r.leases.values(), key=lambda x: x.trade_id)
        for status in STATUSES:  # the masked lookup provisioning uses
            assert c.find(status=status) == [x for x in by_tid if x.status == status]
        some = by_tid[len(by_tid) // 2].provider if by_tid else 0
        assert c.find(provider=some) == [x for x in by_tid if x.provider == some]
    assert fast.exposure() == ref.exposure() and fast.prepaid() == ref.prepaid()


def test_money_beyond_int64_is_refused_and_changes_nothing() -> None:
    """The core computes in int64: a trade whose lease value would reach 2**62 µ$ is refused
    (ValueError naming it) before anything of its batch is applied."""
    e = SettlementEngine(SettlementConfig())
    ev = np.zeros(2, EVENT_DTYPE)
    ev["seq"] = [1, 2]
    ev["time"] = 100
    ev["type"] = EV_TRADE
    ev["side"] = SIDE_BID
    ev["trade_id"] = [1, 2]
    ev["oid"] = [10, 11]
    ev["account"], ev["account2"] = 1, 2
    ev["gpus"] = [1, 1_000_000]
    ev["price"] = [1_000_000, 10**12]
    ev["start"], ev["end"] = 100, 100 + 3600 * 24 * 365
    with pytest.raises(ValueError, match="2\\*\\*62"):
        e.apply("H100", ev)
    assert e.last_seq("H100") == 0 and not e.classes["H100"].leases and e.trades == 0
    assert len(e.apply("H100", ev[:1])) == 1  # the first alone is fine (its cost from available)
