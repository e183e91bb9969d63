"""Settlement's ledger inside the exchange (settlement/link.py): a projection of the journal.
Batches queue and commit together; the money the escrow check (R17) reads is the core's
(exchange.money), exact at once, and the ledger ends with the same balances."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exchange.bus import Published
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.entries import Cmd, Fund
from gateway.accounts import AccountStore
from orderbook.types import CMD_ASK, CMD_BID, CMD_CANCEL, COMMAND_DTYPE, GTC, ON_DEMAND, Command
from settlement.link import SettlementLink

USD = 1_000_000
T = 1_767_225_600
P = 2_000_000


class Market:
    """A real engine over one class, its batches handed to a real SettlementLink."""

    def __init__(self, tmp: Path) -> None:
        self.cfg = ServerConfig(data_dir=str(tmp), engine="numba")
        self.store = AccountStore(tmp / "accounts.db")
        self.engine = Engine(self.cfg.instruments, "numba")
        self.oid = 0
        self.prov = self.store.create_account("prov", "provider")[0].id
        self.alice = self.store.create_account("alice", "trader")[0].id
        self.link = SettlementLink(self.cfg)
        self.funded = self.publish([Fund("deposit", self.alice, 100 * USD, "accounts:1", T)])

    def entry(self, rec: Command) -> Cmd:
        """A journal entry as the sequencer makes it: engine time and a new order id stamped."""
        rec = rec._replace(time=T)
        if rec.type in (CMD_BID, CMD_ASK):
            self.oid += 1
            rec = rec._replace(oid=self.oid)
        return Cmd("H100", np.array([rec], dtype=COMMAND_DTYPE).tobytes())

    def batch(self, *recs: Command) -> Published:
        return self.publish([self.entry(rec) for rec in recs])

    def publish(self, entries: list) -> Published:
        results, arrays = self.engine.apply(entries)
        batch = Published(results, arrays, [None] * len(entries), [],
                          [e for e in entries if type(e) is Fund])
        self.link.on_published(batch)
        return batch

    def available(self) -> int:
        return self.engine.money.available(self.alice)

    def ledger_matches_core(self) -> bool:
        return self.link.settlement.ledger.balances() == self.engine.money.all()

    def bid(self, gpus: int, hours: int, limit: int) -> Command:
        return Command(type=CMD_BID, account=self.alice, price=limit, gpus=gpus, hours=hours, block=1, kind=ON_DEMAND,
                       tif=GTC)

    def close(self) -> None:
        self.link.close()
        self.store.close()


def test_queued_batches_commit_together_and_end_with_the_cores_balances(tmp_path: Path) -> None:
    m = Market(tmp_path)
    try:
        m.link.start()  # deferred: batches queue until flush
        assert m.available() == 100 * USD
        m.batch(m.bid(gpus=5, hours=3, limit=P))  # rests (no asks): holds 5 × 3 h × $2 = $30
        assert m.link.handed == 2 and m.link.committed == 1  # the deposit, before start: at once
        assert m.link.settlement.ledger.balance(m.alice, "available") == 100 * USD  # the hold: not yet
        assert m.available() == 70 * USD  # ... the core has it at once
        m.batch(m.bid(gpus=1, hours=10, limit=P))  # $20 more
        assert m.available() == 50 * USD
        m.link.flush()  # one transaction for both batches
        assert m.link.committed == 3 and m.link.batches == 2
        assert m.link.settlement.ledger.balance(m.alice, "available") == 50 * USD
        assert m.link.balances(m.alice) == {"available": 50 * USD, "escrow": 50 * USD}
        assert m.ledger_matches_core()
        # a provider's ask fills the first bid at the ask's price: the hold becomes the lease's cost
        m.batch(Command(type=CMD_ASK, account=m.prov, price=P, gpus=8, start=T, end=T + 86_400, min_hours=1))
        m.link.flush()
        assert m.link.balances(m.alice) == {"available": 50 * USD, "lease_prepaid": 50 * USD}  # zeros left out
        assert m.engine.money.of(m.alice) == {"available": 50 * USD, "lease_prepaid": 50 * USD}
        assert m.ledger_matches_core()
        m.link.settlement.check_invariants()
    finally:
        m.close()


def test_a_cancel_frees_escrow_in_the_core_at_once_and_in_the_ledger_once_committed(tmp_path: Path) -> None:
    m = Market(tmp_path)
    try:
        m.link.start()
        m.batch(m.bid(gpus=10, hours=5, limit=P))  # $100: everything
        m.link.flush()
        assert m.available() == 0
        m.batch(Command(type=CMD_CANCEL, account=m.alice, oid=1))
        assert m.available() == 100 * USD  # the core: at once
        assert m.link.settlement.ledger.balance(m.alice, "available") == 0  # the ledger: not committed yet
        m.link.flush()
        assert m.link.settlement.ledger.balance(m.alice, "available") == 100 * USD
        assert m.ledger_matches_core()
        m.link.settlement.check_invariants()
    finally:
        m.close()


def test_a_batch_the_ledger_refuses_is_kept_and_marks_the_link_unhealthy(tmp_path: Path) -> None:
    """A gap in the events (a bug) must not be papered over: the batch waits, the link says so;
    the core's money, which the escrow check reads, is not the ledger's and goes on."""
    m = Market(tmp_path)
    try:
        m.batch(m.bid(gpus=1, hours=1, limit=P))  # not started: committed at once
        assert m.link.healthy and m.link.committed == 2
        m.engine.apply([m.entry(m.bid(1, 1, P))])  # its events never reach settlement
        m.batch(m.bid(gpus=1, hours=1, limit=P))
        assert not m.link.healthy and m.link.backlog and m.link.committed == 2
        assert "refuses" in m.link.health()
        assert m.available() == 100 * USD - 3 * P  # the core saw all three bids
        assert m.link.settlement.ledger.balance(m.alice, "available") == 100 * USD - P
    finally:
        m.close()
