"""Settlement of real book events, rule by rule (R16–R19): escrow, leases, metering, fees,
preemption, release, failure, resale, and exactly-once replays.  Events come from the
reference book (the numba book gives the same, tests/test_differential.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BUYER, BUYER2, PROV, PROV2, P, S, T, amend, ask, bid, cancel, release

from clearing.engine import LeaseStateError, SequenceGap, SettlementConfig
from clearing.money import fee, hold_per_gpu, lease_value
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import COMMAND_DTYPE, EV_PREEMPTED, EV_TRADE, FOK, HOUR, IOC, ON_DEMAND, RESERVED, SPOT
from settlement.ledger import AVAILABLE, ESCROW, EXCHANGE, FEES, PREPAID, RECEIVABLE, InsufficientFunds
from settlement.service import Settlement

USD = 1_000_000
FUNDS = 10_000 * USD


class Market:
    """A reference book for one class and a settlement fed with every batch of its events."""

    def __init__(self, path, config: SettlementConfig | None = None, cls: str = "H100") -> None:
        self.cls = cls
        self.book = make_book(BookConfig(name=cls), "reference")
        self.path = path
        self.s = Settlement(path, config or SettlementConfig())
        self.batches: list[np.ndarray] = []
        for acc in (PROV, PROV2, BUYER, BUYER2):
            self.s.deposit(acc, FUNDS, f"test:{acc}")

    def do(self, *cmds: np.ndarray) -> list[dict]:
        events = self.book.process(np.array(list(cmds), dtype=COMMAND_DTYPE))
        self.batches.append(events)
        self.s.on_events(self.cls, events)
        self.s.check_invariants()
        return [{n: int(r[n]) for n in events.dtype.names} for r in events]

    def trades(self, evs: list[dict]) -> list[dict]:
        return [e for e in evs if e["type"] == EV_TRADE]

    def bal(self, owner: int, kind: int = AVAILABLE) -> int:
        return self.s.ledger.balance(owner, kind)

    def lease(self, tid: int) -> dict:
        return self.s.lease(f"{self.cls}-{tid}")

    def tick(self, now: int) -> None:
        self.s.tick(now)
        self.s.check_invariants()


@pytest.fixture
def m(tmp_path):
    mk = Market(tmp_path / "ledger.db")
    yield mk
    mk.s.close()


def test_bid_holds_escrow_and_cancel_releases_it(m):
    """R17: an accepted bid holds gpus × hours × limit from available; a cancel gives it back."""
    m.do(bid(T, 1, BUYER, ON_DEMAND, gpus=4, hours=3, limit=P))
    assert m.bal(BUYER, ESCROW) == 4 * 3 * P
    assert m.bal(BUYER) == FUNDS - 4 * 3 * P
    m.do(amend(T + 1, 1, BUYER, gpus=1))
    assert m.bal(BUYER, ESCROW) == 1 * 3 * P
    m.do(cancel(T + 2, 1, BUYER))
    assert m.bal(BUYER, ESCROW) == 0 and m.bal(BUYER) == FUNDS
    ids = [t.id for t in m.s.transfers("order:")]
    assert ids == ["order:H100:1:hold", "order:H100:1:amend:2", "order:H100:1:release"]


def test_on_demand_fill_pays_into_the_lease_and_the_provider_earns_it_by_the_end(m):
    """A fill moves the lease's cost (trade price) from escrow to lease_prepaid and releases the
    rest of those GPUs' hold; the provider earns it per second from ready (its start) to the end."""
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
    evs = m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P + 500_000))
    (tr,) = m.trades(evs)
    cost = 2 * 3 * P
    assert m.bal(BUYER, PREPAID) == cost
    assert m.bal(BUYER, ESCROW) == 0
    assert m.bal(BUYER) == FUNDS - cost
    lease = m.lease(tr["trade_id"])
    assert lease["status"] == "ready" and lease["ready_at"] == T and lease["cost"] == cost
    m.tick(T + 3 * HOUR - 1)
    assert m.bal(PROV, RECEIVABLE) == 0  # metered daily and at the end: nothing moved yet
    m.tick(T + 3 * HOUR)
    assert m.bal(PROV, RECEIVABLE) == cost and m.bal(BUYER, PREPAID) == 0
    assert m.lease(tr["trade_id"])["status"] == "ended"


def test_metering_at_every_interval_boundary_adds_up_to_the_whole(tmp_path):
    m = Market(tmp_path / "l.db", SettlementConfig(meter_interval_s=HOUR))
    m.do(ask(T + 600, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
    evs = m.do(bid(T + 600, 2, BUYER, ON_DEMAND, gpus=3, hours=2, limit=P))
    tid = m.trades(evs)[0]["trade_id"]
    m.tick(T + 5 * HOUR)
    legs = [(t.id, t.amount, t.time) for t in m.s.transfers(f"lease:H100:{tid}:")]
    def upto(t: int) -> int:
        return lease_value(3, P, t - (T + 600))

    assert legs == [
        (f"lease:H100:{tid}:meter:{T + HOUR}:earn", upto(T + HOUR), T + HOUR),
        (f"lease:H100:{tid}:meter:{T + 2 * HOUR}:earn", upto(T + 2 * HOUR) - upto(T + HOUR), T + 2 * HOUR),
        (f"lease:H100:{tid}:end:earn", upto(T + 2 * HOUR + 600) - upto(T + 2 * HOUR), T + 2 * HOUR + 600),
    ]
    assert m.bal(PROV, RECEIVABLE) == 3 * 2 * P


def test_the_same_metering_however_often_time_is_told(tmp_path):
    """Metering points are multiples of the interval and the end, whenever the clock passes
    them: ticking every minute or once gives the same transfers."""
    ledgers = []
    for i, step in enumerate((60, 7 * HOUR)):
        m = Market(tmp_path / f"l{i}.db", SettlementConfig(meter_interval_s=HOUR))
        m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
        m.do(bid(T + 17, 2, BUYER, ON_DEMAND, gpus=1, hours=5, limit=P))
        for now in [*range(T + 17, T + 7 * HOUR, step), T + 7 * HOUR]:
            m.tick(now)
        ledgers.append([tuple(t) for t in m.s.transfers()])
    assert ledgers[0] == ledgers[1]


def test_fees_maker_and_taker_rates_go_to_the_fee_account(tmp_path):
    """R19: the ask rested first, so it is the maker (provider pays the maker rate on what it
    earns), the bid is the taker (buyer pays the taker rate on its cost, out of escrow)."""
    m = Market(tmp_path / "l.db", SettlementConfig(fees={"H100": (10, 25)}))
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
    evs = m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P))
    cost = 2 * 3 * P
    assert m.bal(BUYER, ESCROW) == 0
    assert m.bal(BUYER) == FUNDS - cost - fee(cost, 25)
    assert m.bal(EXCHANGE, FEES) == fee(cost, 25)
    m.tick(T + 3 * HOUR)
    assert m.bal(PROV, RECEIVABLE) == cost - fee(cost, 10)
    assert m.bal(EXCHANGE, FEES) == fee(cost, 25) + fee(cost, 10)
    lease = m.lease(m.trades(evs)[0]["trade_id"])
    assert (lease["buyer_fee_bps"], lease["provider_fee_bps"]) == (25, 10)


def test_bid_as_maker_pays_the_maker_rate_and_hold_covers_the_higher_rate(tmp_path):
    m = Market(tmp_path / "l.db", SettlementConfig(fees={"H100": (10, 25)}))
    m.do(bid(T, 1, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P))
    assert m.bal(BUYER, ESCROW) == 2 * hold_per_gpu(3, P, 25)
    m.do(ask(T + 5, 2, PROV, gpus=8, price=P - 100_000, end=T + 10 * HOUR))
    cost = 2 * 3 * P  # the maker's price: the bid's limit (R11)
    assert m.bal(BUYER) == FUNDS - cost - fee(cost, 10)
    assert m.bal(BUYER, ESCROW) == 0


def test_preempted_spot_pays_pro_rata_and_is_refunded_the_rest(m):
    """R12/R17: a spot lease preempted at T0 pays for [start, T0) only, refunded the rest at once."""
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR, spot_price=S))
    spot = m.trades(m.do(bid(T, 2, BUYER, SPOT, gpus=4, hours=5, limit=S)))[0]
    assert m.bal(BUYER, PREPAID) == 4 * 5 * S
    evs = m.do(bid(T + 1800, 3, BUYER2, ON_DEMAND, gpus=4, hours=2, limit=P))
    pre = [e for e in evs if e["type"] == EV_PREEMPTED]
    assert pre and pre[0]["trade_id"] == spot["trade_id"]
    t0 = T + 1800 + 120  # notice_s
    assert pre[0]["end"] == t0
    used = lease_value(4, S, t0 - T)
    assert m.bal(BUYER, PREPAID) == used
    assert m.bal(BUYER) == FUNDS - used
    m.tick(t0)
    assert m.bal(PROV, RECEIVABLE) == used
    lease = m.lease(spot["trade_id"])
    assert lease["status"] == "preempted" and lease["end"] == t0 and lease["booked_end"] == T + 5 * HOUR


def test_released_on_demand_pays_only_what_it_used(m):
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    tr = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=4, limit=P)))[0]
    m.do(release(T + 5000, BUYER, tr["trade_id"]))
    used = lease_value(2, P, 5000)
    assert m.bal(BUYER) == FUNDS - used
    assert m.bal(PROV, RECEIVABLE) == used
    assert m.bal(BUYER, PREPAID) == 0
    assert m.lease(tr["trade_id"])["status"] == "released"


def test_reserved_is_paid_up_front_and_earned_in_full_once_ready(m):
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    evs = m.do(bid(T, 2, BUYER, RESERVED, gpus=2, hours=3, limit=P, start=T + 2 * HOUR))
    tid = m.trades(evs)[0]["trade_id"]
    assert m.bal(BUYER, PREPAID) == 2 * 3 * P
    assert m.lease(tid)["status"] == "pending"
    m.tick(T + 2 * HOUR)  # auto-ready at its start
    assert m.lease(tid)["status"] == "ready"
    assert m.bal(PROV, RECEIVABLE) == 2 * 3 * P and m.bal(BUYER, PREPAID) == 0
    m.tick(T + 5 * HOUR)
    assert m.lease(tid)["status"] == "ended"


def _manual(tmp_path, **kw) -> Market:
    return Market(tmp_path / "l.db", SettlementConfig(auto_ready=False, fees={"H100": (10, 25)}, **kw))


def test_failed_provisioning_refunds_in_full_and_the_provider_earns_nothing(tmp_path):
    """R18: failed -> the renter gets back the cost and the fee; nothing for the provider."""
    m = _manual(tmp_path)
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    tid = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P)))[0]["trade_id"]
    m.s.mark_provisioning(f"H100-{tid}")
    assert m.lease(tid)["status"] == "provisioning"
    m.s.mark_failed(f"H100-{tid}", T + 60, "no GPUs")
    m.s.check_invariants()
    assert m.bal(BUYER) == FUNDS and m.bal(BUYER, PREPAID) == 0
    assert m.bal(PROV, RECEIVABLE) == 0 and m.bal(EXCHANGE, FEES) == 0
    lease = m.lease(tid)
    assert lease["status"] == "failed" and lease["failed_reason"] == "no GPUs"
    assert m.s.mark_failed(f"H100-{tid}", T + 61) == 0  # a repeat changes nothing
    with pytest.raises(LeaseStateError):
        m.s.mark_ready(f"H100-{tid}", T + 62)


def test_metering_starts_when_ready_and_the_late_part_is_refunded(tmp_path):
    m = _manual(tmp_path)
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    tid = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P)))[0]["trade_id"]
    m.s.mark_ready(f"H100-{tid}", T + 900)
    late = lease_value(2, P, 900)
    cost = 2 * 3 * P
    assert m.bal(BUYER, PREPAID) == cost - late
    m.tick(T + 3 * HOUR)
    paid = cost - late
    assert m.bal(PROV, RECEIVABLE) == paid - fee(paid, 10)
    assert m.bal(BUYER) == FUNDS - paid - fee(paid, 25)
    with pytest.raises(LeaseStateError):
        m.s.mark_failed(f"H100-{tid}", T + 3 * HOUR)


def test_not_ready_within_the_provision_timeout_fails(tmp_path):
    m = _manual(tmp_path, provision_timeout_s=300)
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    tid = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=3, limit=P)))[0]["trade_id"]
    m.tick(T + 299)
    assert m.lease(tid)["status"] == "pending"
    m.tick(T + 300)
    assert m.lease(tid)["status"] == "failed" and m.lease(tid)["failed_reason"] == "provision timeout"
    assert m.bal(BUYER) == FUNDS
    failed = [t for t in m.s.transfers(f"lease:H100:{tid}:failed:")]
    assert failed and all(t.time == T + 300 for t in failed)


def test_resale_pays_the_reseller_and_the_original_lease_stays_paid(m):
    """R16: BUYER resells part of its lease; BUYER2's sub-lease pays BUYER, PROV still earns
    the whole original lease."""
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    orig = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=4, hours=6, limit=P)))[0]
    m.do(ask(T + 10, 3, BUYER, gpus=2, price=P + 1_000_000, end=T + 6 * HOUR, lease_id=orig["trade_id"]))
    sub = m.trades(m.do(bid(T + 20, 4, BUYER2, ON_DEMAND, gpus=2, hours=2, limit=P + 1_000_000)))[0]
    assert sub["lease_id"] == orig["trade_id"] and sub["account2"] == BUYER
    m.tick(T + 6 * HOUR)
    assert m.bal(PROV, RECEIVABLE) == 4 * 6 * P
    assert m.bal(BUYER, RECEIVABLE) == 2 * 2 * (P + 1_000_000)
    assert m.bal(BUYER2) == FUNDS - 2 * 2 * (P + 1_000_000)
    assert m.lease(sub["trade_id"])["resale_of"] == orig["trade_id"]


def test_a_failed_lease_fails_its_sub_leases(tmp_path):
    m = _manual(tmp_path)
    m.do(ask(T, 1, PROV, gpus=4, price=P, end=T + 10 * HOUR))
    orig = m.trades(m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=4, hours=6, limit=P)))[0]["trade_id"]
    m.do(ask(T + 10, 3, BUYER, gpus=2, price=P, end=T + 6 * HOUR, lease_id=orig))
    sub = m.trades(m.do(bid(T + 20, 4, BUYER2, ON_DEMAND, gpus=2, hours=2, limit=P)))[0]["trade_id"]
    m.s.mark_failed(f"H100-{orig}", T + 30)
    m.s.check_invariants()
    assert m.lease(sub)["status"] == "failed"
    assert m.bal(BUYER) == FUNDS and m.bal(BUYER2) == FUNDS


def test_ioc_and_fok_holds_are_released_in_the_same_command(m):
    m.do(ask(T, 1, PROV, gpus=2, price=P, end=T + 10 * HOUR))
    m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=4, hours=1, limit=P, tif=IOC))
    assert m.bal(BUYER, ESCROW) == 0 and m.bal(BUYER) == FUNDS - 2 * P
    m.do(bid(T + 1, 3, BUYER2, ON_DEMAND, gpus=4, hours=1, limit=P, tif=FOK))
    assert m.bal(BUYER2, ESCROW) == 0 and m.bal(BUYER2) == FUNDS


def test_replaying_events_changes_nothing(m):
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR, spot_price=S))
    m.do(bid(T, 2, BUYER, SPOT, gpus=4, hours=5, limit=S), bid(T + 3, 3, BUYER2, ON_DEMAND, gpus=6, hours=2, limit=P))
    before = [tuple(t) for t in m.s.transfers()]
    balances = m.s.ledger.balances()
    for ev in m.batches:
        assert m.s.on_events("H100", ev) == 0
    assert [tuple(t) for t in m.s.transfers()] == before and m.s.ledger.balances() == balances
    assert m.s.engine.events_skipped == sum(len(b) for b in m.batches)


def test_a_gap_in_seq_is_refused_and_changes_nothing(m):
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
    book = m.book
    lost = book.process(np.array([bid(T, 2, BUYER, ON_DEMAND, gpus=1, hours=1, limit=P)], dtype=COMMAND_DTYPE))
    later = book.process(np.array([bid(T, 3, BUYER, ON_DEMAND, gpus=1, hours=1, limit=P)], dtype=COMMAND_DTYPE))
    before = m.s.ledger.count()
    with pytest.raises(SequenceGap) as e:
        m.s.on_events("H100", later)
    assert e.value.expected == lost["seq"][0]
    assert m.s.ledger.count() == before and m.s.last_seq("H100") == lost["seq"][0] - 1
    m.s.on_events("H100", np.concatenate([lost, later]))
    assert m.s.last_seq("H100") == later["seq"][-1]
    m.s.check_invariants()


def test_insufficient_funds_refuse_the_whole_batch(tmp_path):
    m = Market(tmp_path / "l.db")
    poor = 99
    events = m.book.process(np.array([bid(T, 1, BUYER, ON_DEMAND, gpus=1, hours=1, limit=P),
                                      bid(T, 2, poor, ON_DEMAND, gpus=1, hours=1, limit=P)], dtype=COMMAND_DTYPE))
    with pytest.raises(InsufficientFunds) as e:
        m.s.on_events("H100", events)
    assert e.value.shortfalls == [(poor, 0, -P)] and "account 99" in str(e.value)
    assert m.bal(BUYER, ESCROW) == 0 and m.s.last_seq("H100") == 0
    m.s.deposit(poor, P, "late")
    m.s.on_events("H100", events)
    assert m.bal(poor) == 0 and m.bal(poor, ESCROW) == P and m.bal(BUYER, ESCROW) == P
    m.s.check_invariants()


def test_restart_resumes_from_the_stored_state(tmp_path):
    """A new Settlement on the same file continues exactly where the last commit left it."""
    m = Market(tmp_path / "l.db", SettlementConfig(meter_interval_s=HOUR))
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR, spot_price=S))
    m.do(bid(T, 2, BUYER, SPOT, gpus=4, hours=5, limit=S), bid(T + 3, 3, BUYER2, ON_DEMAND, gpus=2, hours=8, limit=P))
    m.s.close()
    m.s = Settlement(tmp_path / "l.db", SettlementConfig(meter_interval_s=HOUR))
    m.s.check_invariants()
    m.do(bid(T + 4000, 4, BUYER2, ON_DEMAND, gpus=4, hours=1, limit=P))
    m.tick(T + 12 * HOUR)
    restarted = [tuple(t) for t in m.s.transfers()]
    ref = Market(tmp_path / "ref.db", SettlementConfig(meter_interval_s=HOUR))
    for ev in m.batches:
        ref.s.on_events("H100", ev)
    ref.tick(T + 12 * HOUR)
    assert [tuple(t) for t in ref.s.transfers()] == restarted


def test_statement_lists_an_accounts_transfers_and_leases(m):
    m.do(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * HOUR))
    m.do(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=1, limit=P + 1000))
    m.tick(T + HOUR)
    st = m.s.statement(BUYER)
    assert st["balances"] == {"available": FUNDS - 2 * P}
    assert [(x["id"], x["account"], x["amount"]) for x in st["transfers"]] == [
        ("deposit:test:11", "available", FUNDS),
        ("order:H100:2:hold", "available", -2 * (P + 1000)),
        ("order:H100:2:hold", "escrow", 2 * (P + 1000)),
        ("trade:H100:1:release", "escrow", -2000),  # in the order the ledger applied them
        ("trade:H100:1:release", "available", 2000),
        ("trade:H100:1:cost", "escrow", -2 * P),
        ("trade:H100:1:cost", "lease_prepaid", 2 * P),
        ("lease:H100:1:end:earn", "lease_prepaid", -2 * P),
    ]
    assert all(x["balance"] >= 0 for x in st["transfers"])
    assert [x["lease"] for x in st["leases"]] == ["H100-1"]
    assert m.s.statement(PROV)["leases"][0]["provider"] == PROV
