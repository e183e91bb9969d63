"""The pipelined settlement (settlement.pipeline): the same ledger as one transaction per
hand-over; a failed commit leaves nothing half-done, is raised to the caller, and the engine
is reloaded at the last committed seq, from which feeding again completes the ledger."""

from __future__ import annotations

import pytest

from bench.settlement import accounts_of, fund_accounts, ledger_digest, workload_events
from settlement.engine import SettlementConfig, SettlementEngine
from settlement.ledger import AVAILABLE, InsufficientFunds, page_deltas
from settlement.pipeline import PipelinedSettlement
from settlement.service import Settlement

CONFIG = SettlementConfig(fees={"H100": (10, 25), "A100": (0, 30)}, meter_interval_s=6 * 3600)


@pytest.fixture(scope="module")
def handovers():
    return workload_events(6000, seed=11, batch=500)


@pytest.fixture(scope="module")
def want(tmp_path_factory, handovers):
    s = Settlement(tmp_path_factory.mktemp("sync") / "a.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    for h in handovers:
        s.apply([h])
    s.check_invariants()
    digest = ledger_digest(s)
    s.close()
    return digest


@pytest.mark.parametrize("depth,max_merge", [(1, 1), (4, 8)])
def test_pipelined_gives_the_same_ledger(tmp_path, handovers, want, depth, max_merge):
    s = PipelinedSettlement(tmp_path / "p.db", CONFIG, depth=depth, max_merge=max_merge)
    fund_accounts(s.ledger, accounts_of(handovers))
    made = sum(s.apply_async([h]) for h in handovers)
    new = s.flush()
    assert new == made == len(want["transfers"]) - len(accounts_of(handovers))
    assert ledger_digest(s) == want
    s.check_invariants()
    assert s.apply_async(handovers[:5]) == 0 and s.flush() == 0  # a replay: skipped by the seq cursor
    assert ledger_digest(s) == want
    s.close()
    again = Settlement(tmp_path / "p.db", CONFIG)  # and it reads back
    assert ledger_digest(again) == want
    again.check_invariants()
    again.close()


def test_sync_methods_flush_first_and_mix_with_async(tmp_path, handovers, want):
    s = PipelinedSettlement(tmp_path / "p.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    half = len(handovers) // 2
    for h in handovers[:half]:
        s.apply_async([h])
    cls = handovers[half - 1][0]
    assert s.cursors()[cls][0] == s.last_seq(cls)  # cursors (from the file) flushed first
    for h in handovers[half:]:
        s.apply([h])  # synchronous
    assert ledger_digest(s) == want
    s.close()


def _fund_all_but(s, handovers, poor):
    fund_accounts(s.ledger, [a for a in accounts_of(handovers) if a != poor])


def test_a_failed_commit_is_raised_nothing_half_done_and_feeding_again_completes(tmp_path, handovers, want):
    """An account without money: the commit of the hand-over that needs it fails whole; the
    error comes out of a later call; the engine is reloaded at the last committed seq; funded,
    the same events fed from there give the same ledger as a clean run."""
    engine = SettlementEngine(CONFIG)  # a buyer whose first hold is half-way through
    half = len(handovers) // 2
    earlier = {int(a) for _, ev in handovers[:half] for a in (*ev["account"], *ev["account2"])}
    for cls, ev in handovers[:half + 1]:
        rows = engine.apply(cls, ev)
    poor = next(a >> 3 for a, d in page_deltas(rows).items() if a & 7 == AVAILABLE and d < 0
                and a >> 3 not in earlier)
    s = PipelinedSettlement(tmp_path / "p.db", CONFIG, depth=2, max_merge=1)
    _fund_all_but(s, handovers, poor)
    with pytest.raises(InsufficientFunds):
        for h in handovers:
            s.apply_async([h])
        s.flush()
    s.ledger.check_invariants()
    s.check_invariants()  # the engine is the file's state again
    stored = Settlement(tmp_path / "p.db", CONFIG)
    assert {c: q for c, (q, _) in stored.cursors().items()} == {c: s.last_seq(c) for c, _ in handovers}
    stored.close()
    fund_accounts(s.ledger, [poor])
    for h in handovers:  # everything again: what was committed is skipped
        s.apply_async([h])
    s.flush()
    got = ledger_digest(s)
    assert got["leases"] == want["leases"] and got["cursors"] == want["cursors"] and got["bids"] == want["bids"]
    assert len(got["transfers"]) == len(want["transfers"])  # (the deposit of `poor` came later: other balances
    s.check_invariants()  # are the same, checked by the invariants)
    s.close()


def test_a_crash_before_commit_in_the_writer_commits_nothing_of_it(tmp_path, handovers):
    s = PipelinedSettlement(tmp_path / "p.db", CONFIG, max_merge=1)
    fund_accounts(s.ledger, accounts_of(handovers))
    s.apply_async([handovers[0]])
    s.flush()
    seq = {c: s.last_seq(c) for c, _ in handovers}
    n = s.ledger.count()

    def crash() -> None:
        raise OSError("disk gone")

    s.before_commit = crash
    s.apply_async([handovers[1]])
    with pytest.raises(OSError):
        s.flush()
    assert s.ledger.count() == n and {c: s.last_seq(c) for c, _ in handovers} == seq
    s.check_invariants()
    s.before_commit = None
    s.apply_async([handovers[1]])
    assert s.flush() > 0
    s.check_invariants()
    s.close()
