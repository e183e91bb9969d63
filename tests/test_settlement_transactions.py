"""Several hand-overs in one ledger transaction, as the exchange's settlement commits them
(`settlement.link.SettlementLink` groups the batches that queued meanwhile): the same ledger as
one transaction per hand-over; a failed commit leaves nothing half-done, is raised to the
caller, and the engine is reloaded at the last committed seq, from which feeding again
completes the ledger; a crash before COMMIT commits nothing of the group."""

from __future__ import annotations

import pytest

from bench.settlement import accounts_of, fund_accounts, ledger_digest, workload_events
from clearing.engine import SettlementConfig, SettlementEngine
from settlement.ledger import AVAILABLE, InsufficientFunds, page_deltas
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


def groups(handovers, size):
    return [handovers[i:i + size] for i in range(0, len(handovers), size)]


@pytest.mark.parametrize("size", [1, 8])
def test_grouped_hand_overs_give_the_same_ledger(tmp_path, handovers, want, size):
    s = Settlement(tmp_path / "p.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    made = sum(s.apply(group) for group in groups(handovers, size))
    assert made == len(want["transfers"]) - len(accounts_of(handovers))
    assert ledger_digest(s) == want
    s.check_invariants()
    assert s.apply(handovers[:5]) == 0  # a replay: skipped by the seq cursor
    assert ledger_digest(s) == want
    s.close()
    again = Settlement(tmp_path / "p.db", CONFIG)  # and it reads back
    assert ledger_digest(again) == want
    again.check_invariants()
    again.close()


def test_groups_and_single_hand_overs_mix(tmp_path, handovers, want):
    s = Settlement(tmp_path / "p.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    half = len(handovers) // 2
    for group in groups(handovers[:half], 5):
        s.apply(group)
    cls = handovers[half - 1][0]
    assert s.cursors()[cls][0] == s.last_seq(cls)  # the cursors in the file are the engine's
    for h in handovers[half:]:
        s.apply([h])
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
    s = Settlement(tmp_path / "p.db", CONFIG)
    _fund_all_but(s, handovers, poor)
    with pytest.raises(InsufficientFunds):
        for group in groups(handovers, 4):
            s.apply(group)
    s.ledger.check_invariants()
    s.check_invariants()  # the engine is the file's state again
    stored = Settlement(tmp_path / "p.db", CONFIG)
    assert {c: q for c, (q, _) in stored.cursors().items()} == {c: s.last_seq(c) for c, _ in handovers}
    stored.close()
    fund_accounts(s.ledger, [poor])
    for group in groups(handovers, 4):  # everything again: what was committed is skipped
        s.apply(group)
    got = ledger_digest(s)
    assert got["leases"] == want["leases"] and got["cursors"] == want["cursors"] and got["bids"] == want["bids"]
    assert len(got["transfers"]) == len(want["transfers"])  # (the deposit of `poor` came later: other balances
    s.check_invariants()  # are the same, checked by the invariants)
    s.close()


def test_a_crash_before_commit_commits_nothing_of_the_group(tmp_path, handovers):
    s = Settlement(tmp_path / "p.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    s.apply(handovers[:1])
    seq = {c: s.last_seq(c) for c, _ in handovers}
    n = s.ledger.count()

    def crash() -> None:
        raise OSError("disk gone")

    s.before_commit = crash
    with pytest.raises(OSError):
        s.apply(handovers[1:4])
    assert s.ledger.count() == n and {c: s.last_seq(c) for c, _ in handovers} == seq
    s.check_invariants()
    s.before_commit = None
    assert s.apply(handovers[1:4]) > 0
    s.check_invariants()
    s.close()
