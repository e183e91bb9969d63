"""Hypothesis stateful test of ledger + leases (issue 5): a real (reference) book receives random
asks, bids of every kind and TIF, cancels, amends, releases, resale asks and clock jumps;
settlement receives every batch of its events, provisioning answers (ready, failed), ticks,
replays of old batches, restarts from the file, and a bid it cannot fund.

After every step:
* the sum of all balances is zero, no available balance is below zero, every balance is the
  sum of its transfers (Ledger.check_invariants);
* escrow of each account equals the open exposure of its bids *in the book* (an oracle
  independent of settlement's own bookkeeping), and lease_prepaid what its live leases hold;
* every trade is settled once: one lease row and one cost transfer per trade event;
* replaying an old batch, or restarting from the file, changes nothing;
* the jitted engine (clearing.engine, which the ledger is fed by) and the plain-Python
  reference engine (clearing.reference), given the same inputs, have made the same transfers
  and hold the same bids, leases, timetable, seq and clock.
At the end, every lease is run to its end and each account's money is checked against a
model that prices each lease from the events alone (failed: 0; reserved: its window; metered:
from ready to its final end), with its maker/taker fees.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from clearing.engine import SettlementConfig
from clearing.money import fee, hold_per_gpu, lease_value
from clearing.reference import SettlementEngine as ReferenceEngine
from orderbook.book import make_book
from orderbook.config import BookConfig
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    FOK,
    GTC,
    GTD,
    HOUR,
    IOC,
    RESERVED,
    SIDE_BID,
    SPOT,
)
from settlement.ledger import (
    ACCOUNT_SHIFT,
    AVAILABLE,
    ESCROW,
    EXCHANGE,
    FEES,
    PREPAID,
    RECEIVABLE,
    InsufficientFunds,
    Transfer,
)
from settlement.service import Settlement

CLS = "H100"
T0 = 500_000 * HOUR
TICK = 1_000
ACCOUNTS = (1, 2, 3, 4, 5)
FUNDS = 10**13
POOR = 99  # an account with no money until the test deposits some


def _cmd(**kw: int) -> tuple:
    return tuple(int(kw.get(name, 0)) for name in COMMAND_DTYPE.names)


class SettlementMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gpux-settle-"))
        self.book = make_book(BookConfig(name=CLS, max_price=20 * 100 * TICK), "reference")
        self.now = T0
        self.oid = 0
        self.batches: list[np.ndarray] = []
        self.trades: dict[int, dict] = {}  # the model of every lease, from the events
        self.marked: dict[int, tuple[str, int]] = {}  # trade id -> ("ready" | "failed", time)
        self.s: Settlement | None = None

    # ------------------------------------------------------------------ setup
    @initialize(auto_ready=st.booleans(), interval=st.sampled_from([600, HOUR, 86_400]),
                timeout=st.sampled_from([0, 0, 900]), maker=st.sampled_from([0, 10]), taker=st.sampled_from([0, 25]))
    def setup(self, auto_ready: bool, interval: int, timeout: int, maker: int, taker: int) -> None:
        self.fees = (maker, taker)
        self.config = SettlementConfig(fees={CLS: self.fees}, auto_ready=auto_ready, meter_interval_s=interval,
                                       provision_timeout_s=timeout)
        self.s = Settlement(self.dir / "ledger.db", self.config)
        self.ref = ReferenceEngine(self.config)  # fed the same inputs, after each of them committed
        self.ref.class_code = lambda name: self.s.engine.class_code(name)  # the ledger's codes (after restarts too)
        self.ref_transfers: list[tuple] = []
        self.deposits = {a: FUNDS for a in ACCOUNTS}
        for a in ACCOUNTS:
            self.s.deposit(a, FUNDS, f"init:{a}")

    def teardown(self) -> None:
        try:
            if self.s is not None:
                self._final_check()
                self.s.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ the book
    def _process(self, *rows: tuple) -> np.ndarray:
        events = self.book.process(np.array(list(rows), dtype=COMMAND_DTYPE))
        for r in events.tolist():
            ev = dict(zip(events.dtype.names, r, strict=True))
            if ev["type"] == EV_TRADE:
                self.trades[ev["trade_id"]] = {"kind": ev["kind"], "gpus": ev["gpus"], "price": ev["price"],
                                               "start": ev["start"], "end": ev["end"], "buyer": ev["account"],
                                               "provider": ev["account2"], "maker": ev["maker"]}
            elif ev["type"] in (EV_PREEMPTED, EV_RELEASED):
                self.trades[ev["trade_id"]]["end"] = ev["end"]
        self.batches.append(events)
        return events

    def _settle(self, events: np.ndarray) -> None:
        self.s.on_events(CLS, events)
        self.ref_transfers += self.ref.apply(CLS, events)

    @rule(acct=st.sampled_from(ACCOUNTS), gpus=st.integers(1, 8), price=st.integers(1, 12),
          spot=st.integers(0, 12), start_h=st.sampled_from([0, 0, 1, 2]), win_h=st.integers(1, 12),
          dt=st.integers(0, 600))
    def ask(self, acct, gpus, price, spot, start_h, win_h, dt) -> None:
        self.now += dt
        self.oid += 1
        start = (self.now // HOUR + start_h) * HOUR if start_h else 0
        end = (start or self.now) + win_h * HOUR
        self._settle(self._process(_cmd(type=CMD_ASK, time=self.now, oid=self.oid, account=acct, gpus=gpus,
                                        price=price * 100 * TICK, spot_price=spot * 100 * TICK if spot <= price else 0,
                                        start=start, end=end)))

    @rule(acct=st.sampled_from(ACCOUNTS), kind=st.integers(0, 2), gpus=st.integers(1, 6), hours=st.integers(1, 6),
          limit=st.integers(1, 12), tif=st.sampled_from([GTC, GTC, IOC, FOK, GTD]), start_h=st.integers(1, 3),
          dt=st.integers(0, 600))
    def bid(self, acct, kind, gpus, hours, limit, tif, start_h, dt) -> None:
        self.now += dt
        self.oid += 1
        start = (self.now // HOUR + start_h) * HOUR if kind == RESERVED else 0
        self._settle(self._process(_cmd(type=CMD_BID, time=self.now, oid=self.oid, account=acct, kind=kind, gpus=gpus,
                                        hours=hours, price=limit * 100 * TICK, tif=tif, start=start,
                                        expire_at=self.now + 1800 if tif == GTD else 0)))

    @rule(seller=st.sampled_from(ACCOUNTS), buyer=st.sampled_from(ACCOUNTS), kind=st.integers(0, 2),
          gpus=st.integers(1, 6), hours=st.integers(1, 5), price=st.integers(1, 10), extra=st.integers(0, 3),
          dt=st.integers(0, 600), answer=st.sampled_from(["ready", "ready", "failed", "none"]))
    def crossing_pair(self, seller, buyer, kind, gpus, hours, price, extra, dt, answer) -> None:
        """An ask and a bid that trade (unless the same account: self-trade prevention); without
        auto-ready, the agents may answer for every pending lease right away."""
        self.now += dt
        start = (self.now // HOUR + 1) * HOUR if kind == RESERVED else 0
        self.oid += 2
        p = price * 100 * TICK
        self._settle(self._process(
            _cmd(type=CMD_ASK, time=self.now, oid=self.oid - 1, account=seller, gpus=gpus + extra, price=p,
                 spot_price=p // 2, end=(self.now // HOUR + hours + 2) * HOUR),
            _cmd(type=CMD_BID, time=self.now, oid=self.oid, account=buyer, kind=kind, gpus=gpus, hours=hours,
                 price=p + extra * 100 * TICK, tif=GTC, start=start)))
        if not self.config.auto_ready and answer != "none":
            self.provisioning_answers([(0, answer, False)] * 50)

    @rule(back=st.integers(0, 6), gpus=st.integers(0, 5), amend=st.booleans())
    def cancel_or_amend(self, back, gpus, amend) -> None:
        orders = self.book.open_orders()
        if not orders:
            return
        o = orders[-1 - back % len(orders)]
        row = (_cmd(type=CMD_AMEND, time=self.now, oid=o.oid, account=o.account, gpus=gpus) if amend
               else _cmd(type=CMD_CANCEL, time=self.now, oid=o.oid, account=o.account))
        self._settle(self._process(row))

    @rule(pick=st.integers(0, 100), dt=st.integers(0, 900))
    def release(self, pick, dt) -> None:
        self.now += dt
        leases = [x for x in self.book.running_leases() if x.kind != RESERVED and not x.resold]
        if not leases:
            return
        x = leases[pick % len(leases)]
        self._settle(self._process(_cmd(type=CMD_RELEASE, time=self.now, account=x.buyer, lease_id=x.trade_id)))

    @rule(pick=st.integers(0, 100), price=st.integers(1, 14), dt=st.integers(0, 300))
    def resale(self, pick, price, dt) -> None:
        self.now += dt
        leases = [x for x in self.book.running_leases() if x.kind != SPOT and x.gpus > x.resold]
        if not leases:
            return
        x = leases[pick % len(leases)]
        start = max(x.start, self.now)
        self.oid += 1
        self._settle(self._process(_cmd(type=CMD_ASK, time=self.now, oid=self.oid, account=x.buyer,
                                        gpus=x.gpus - x.resold, price=price * 100 * TICK, start=start, end=x.end,
                                        lease_id=x.trade_id)))

    @rule(dt=st.one_of(st.integers(1, 900), st.integers(HOUR, 8 * HOUR)))
    def clock(self, dt) -> None:
        self.now += dt
        self._settle(self._process(_cmd(type=CMD_CLOCK, time=self.now)))

    # ------------------------------------------------------------------ settlement's own inputs
    @rule(dt=st.integers(0, 2 * HOUR))
    def tick(self, dt) -> None:
        """Time passes for settlement without a command (the exchange's clock)."""
        self.now += dt
        self._settle(self._process(_cmd(type=CMD_CLOCK, time=self.now)))  # the book must not fall behind
        self.s.tick(self.now)
        self.ref_transfers += self.ref.tick(self.now)

    def _pending(self) -> list[int]:
        return sorted(tid for c in self.s.engine.classes.values() for tid, x in c.leases.items()
                      if x.status in ("pending", "provisioning"))

    @precondition(lambda self: self.s is not None and not self.config.auto_ready)
    @rule(answers=st.lists(st.tuples(st.integers(0, 3 * HOUR), st.sampled_from(["ready", "ready", "failed", "none"]),
                                     st.booleans()), min_size=1, max_size=8))
    def provisioning_answers(self, answers) -> None:
        """The agents answer for the pending leases (oldest first): ready or failed at a time
        after the lease's start (not after settlement's clock), or not yet."""
        for tid, (late, answer, provisioning) in zip(self._pending(), answers, strict=False):
            lease = self.s.engine.lease(CLS, tid)
            if lease is None or lease.status not in ("pending", "provisioning"):
                continue  # a parent's failure failed it meanwhile
            if provisioning:
                self.s.mark_provisioning(f"{CLS}-{tid}")
                self.ref_transfers += self.ref.mark_provisioning(CLS, tid)
            t = min(lease.start + late, self.s.engine.classes[CLS].clock)
            if answer == "failed":
                self.s.mark_failed(f"{CLS}-{tid}", t, "test")
                self.ref_transfers += self.ref.mark_failed(CLS, tid, t, "test")
                self.marked[tid] = ("failed", t)
            elif answer == "ready":
                self.s.mark_ready(f"{CLS}-{tid}", t)
                self.ref_transfers += self.ref.mark_ready(CLS, tid, t)
                self.marked[tid] = ("ready", t)

    @rule(pick=st.integers(0, 1000))
    def replay_old_batch(self, pick) -> None:
        if not self.batches:
            return
        before = self.s.ledger.count(), self.s.ledger.balances()
        assert self.s.on_events(CLS, self.batches[pick % len(self.batches)]) == 0
        assert self.ref.apply(CLS, self.batches[pick % len(self.batches)]) == []
        assert (self.s.ledger.count(), self.s.ledger.balances()) == before

    @rule()
    def restart(self) -> None:
        """A new process on the same file: the same state, and it carries on."""
        def state() -> dict:
            return {cls: (c.seq, c.clock, dict(c.bids), dict(c.leases), sorted(c.due.items()))
                    for cls, c in self.s.engine.classes.items() if c.seq or c.clock}

        mem = state()
        self.s.close()
        self.s = Settlement(self.dir / "ledger.db", self.config)
        assert state() == mem

    @rule(dt=st.integers(0, 60))
    def unfunded_bid_waits_for_a_deposit(self, dt) -> None:
        self.now += dt
        self.oid += 1
        events = self._process(_cmd(type=CMD_BID, time=self.now, oid=self.oid, account=POOR, kind=1, gpus=1,
                                    hours=1, price=3 * 100 * TICK, tif=GTC))
        before = self.s.ledger.count(), self.s.last_seq(CLS)
        try:
            self._settle(events)
        except InsufficientFunds as e:
            assert [o for o, _, _ in e.shortfalls] == [POOR]
            assert (self.s.ledger.count(), self.s.last_seq(CLS)) == before
            amount = -e.shortfalls[0][2]
            self.s.deposit(POOR, amount, f"poor:{self.oid}")
            self.deposits[POOR] = self.deposits.get(POOR, 0) + amount
            self._settle(events)
        assert self.s.last_seq(CLS) == self.book.seq

    # ------------------------------------------------------------------ invariants
    @invariant()
    def ledger_and_leases_hold(self) -> None:
        if self.s is None:
            return
        self.s.check_invariants()
        assert self.s.last_seq(CLS) == self.book.seq  # every event settled

    @invariant()
    def same_as_the_reference_engine(self) -> None:
        if self.s is None:
            return
        named = {t.id for t in self.s.transfers() if t.id.split(":")[0] not in ("order", "trade", "lease")}
        got = sorted(t for t in self.s.transfers() if t.id not in named)
        fmt = self.s.ledger._formatter()
        want = sorted(Transfer(fmt(ref, sub), d >> ACCOUNT_SHIFT, d & 7, c >> ACCOUNT_SHIFT, c & 7, amount, time)
                      for ref, sub, d, c, amount, time in self.ref_transfers)
        assert got == want
        for cls, c in self.s.engine.classes.items():
            r = self.ref.classes[cls]
            assert (c.seq, c.clock, dict(c.bids), dict(c.leases), c.due) == \
                (r.seq, r.clock, r.bids, r.leases, r.due), cls

    @invariant()
    def escrow_equals_the_books_open_exposure(self) -> None:
        if self.s is None:
            return
        hpg_bps = max(self.fees)
        want: dict[int, int] = {}
        for o in self.book.open_orders():
            if o.side == SIDE_BID:
                want[o.account] = want.get(o.account, 0) + o.remaining * hold_per_gpu(o.hours, o.price, hpg_bps)
        got = {o: b for (o, k), b in self.s.ledger.balances().items() if k == "escrow"}
        assert got == {a: v for a, v in want.items() if v}

    @invariant()
    def every_trade_settled_once(self) -> None:
        if self.s is None:
            return
        rows = self.s.ledger.conn.execute("SELECT trade_id FROM leases").fetchall()
        assert sorted(r[0] for r in rows) == sorted(self.trades)
        costs = [t.id for t in self.s.transfers("trade:") if t.id.endswith(":cost")]
        assert len(costs) == len(set(costs)) == len(self.trades)  # every trade has hours >= 1: a cost

    # ------------------------------------------------------------------ the end
    def _final_check(self) -> None:
        """Every lease runs to its end; each account's money matches the model."""
        self.now += 400 * HOUR
        self._settle(self._process(_cmd(type=CMD_CLOCK, time=self.now)))
        self.s.tick(self.now)
        self.s.check_invariants()
        maker, taker = self.fees
        spent: dict[int, int] = {}
        earned: dict[int, int] = {}
        fees = 0
        for tid, x in self.trades.items():
            lease = self.s.lease(f"{CLS}-{tid}")
            assert lease["status"] in ("ended", "released", "preempted", "failed"), (tid, lease["status"])
            final = self._final_price(tid, x, lease)
            brate, prate = (maker, taker) if x["maker"] == SIDE_BID else (taker, maker)
            bfee, pfee = fee(final, brate), fee(final, prate)
            spent[x["buyer"]] = spent.get(x["buyer"], 0) + final + bfee
            earned[x["provider"]] = earned.get(x["provider"], 0) + final - pfee
            fees += bfee + pfee
        for a, deposited in self.deposits.items():
            assert self.s.ledger.balance(a, PREPAID) == 0
            assert (self.s.ledger.balance(a, AVAILABLE) + self.s.ledger.balance(a, ESCROW)
                    == deposited - spent.get(a, 0)), a
            assert self.s.ledger.balance(a, RECEIVABLE) == earned.get(a, 0), a
        assert self.s.ledger.balance(EXCHANGE, FEES) == fees

    def _final_price(self, tid: int, x: dict, lease: dict) -> int:
        """What the buyer pays for a lease, from the events and the provisioning answers alone."""
        mark = self.marked.get(tid)
        if lease["status"] == "failed":
            # failed: by an answer, a timeout, a parent's failure, or never ready by its end
            assert mark is None or mark[0] == "failed" or not self.config.auto_ready
            return 0
        if self.config.auto_ready:
            ready = x["start"]
        else:
            assert mark is not None and mark[0] == "ready", (tid, mark, lease)
            ready = mark[1]
        if x["kind"] == RESERVED:
            return _cost(x)
        return lease_value(x["gpus"], x["price"], x["end"] - max(ready, x["start"]))


def _cost(x: dict) -> int:
    return lease_value(x["gpus"], x["price"], x["end"] - x["start"]) if x["end"] > x["start"] else 0


SettlementMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_settlement_state_machine = SettlementMachine.TestCase
