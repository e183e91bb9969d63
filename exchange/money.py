"""Money in the core: balances, escrow holds, lease prepayment, metering, refunds and fees,
kept in memory from the same journal entries as the books (R17, R18, R19).

    money = Money(instruments, SettlementConfig(...))
    money.post(money.apply_class("H100", events, answers, tick))   # what one apply did in a class
    money.fund(Fund("deposit", 42, 100_000_000, "accounts:7", t))
    money.available(42)                               # what a new bid of 42 may hold (R17)

The settlement state machine (`clearing.engine`, jitted) turns events into transfers; here the
transfers move balances (``owner << 3 | kind`` -> µ$), nothing is written anywhere.  So the
money is part of the deterministic core: replaying the journal gives the same balances, a
snapshot carries them (`MoneySnap`) and `state_hash` covers them.  The sequencer decides R17
from `available`, synchronously, before a bid enters the journal; the SQLite ledger is a
projection of the same journal (`settlement.link`), which must end with these balances.

Order within one `Engine.apply`: deposits and withdrawals first, then each class's events with
its provisioning answers at their place (``after``), then the class's clock.  Balances are sums,
so where funding entries fall among the events of the same apply changes nothing: a withdrawal
is checked by the sequencer (against the balance and the holds of its batch) before it is
journaled, and applied here unconditionally, so a replay in chunks of any size gives the same
balances.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import numpy as np

from clearing import core, intmap
from clearing.engine import (
    NO_TRANSFERS,
    Bid,
    Changes,
    ClassState,
    LeaseStateError,
    SettlementConfig,
    SettlementEngine,
    fees_from_instruments,
    join_transfers,
)
from clearing.leases import Lease
from clearing.money import ACCOUNT_SHIFT, AVAILABLE, EXCHANGE, EXTERNAL, KIND_NAMES
from exchange.config import ServerConfig
from exchange.entries import Fund, Prov

DEPOSIT, WITHDRAW = "deposit", "withdraw"
ACCOUNTS_REF = "accounts:"  # a deposit request of the account store: "accounts:{row}"
JOURNAL_REF = "journal:"  # a withdrawal, named by its journal seq
POST_VECTOR_MIN = 256  # transfers of one apply posted with numpy from this many on


class ClassSnap(msgspec.Struct, array_like=True):
    """Settlement's state of one class: the last event seq and clock, open bids, live leases."""

    name: str
    seq: int
    clock: int
    bids: list[tuple[int, Bid]]
    leases: list[Lease]


class MoneySnap(msgspec.Struct, array_like=True):
    """The snapshot form of `Money`."""

    balances: list[tuple[int, int]]  # (owner << 3 | kind, µ$), sorted, zeros left out
    deposit_row: int  # the last account-store deposit row journaled
    classes: list[ClassSnap]
    refs: list[str] = []  # other funding refs applied (each applies once), sorted


def settlement_config(cfg: ServerConfig) -> SettlementConfig:
    """How the exchange settles: fees from its instruments; leases ready at their start unless
    providers' agents provision them (``[settlement] provisioning = "agent"``)."""
    return SettlementConfig(fees=fees_from_instruments(cfg.instruments), auto_ready=cfg.provisioning == "auto",
                            provision_timeout_s=cfg.provision_timeout_s, meter_interval_s=cfg.meter_interval_s)


def _copy_class(c: Any) -> Any:
    """A settlement class state with its own copy of every array and map (`Money.copy`)."""
    twin = copy.copy(c)
    for name, value in vars(c).items():
        if isinstance(value, np.ndarray) or callable(getattr(value, "copy", None)):
            setattr(twin, name, value.copy())
    return twin


def _open_bids(c: ClassState) -> list[tuple[int, Bid]]:
    """``sorted(c.bids.items())``, read from the class's arrays at once: a snapshot's bids are
    made in its writer thread, and record by record they held the GIL ~2 µs each."""
    oids, slots = intmap.items(c.bmap)
    order = np.argsort(oids, kind="stable")
    rows = c.B[slots[order]][:, core.B_ACCOUNT:core.B_REM + 1].tolist()
    return [(o, Bid(a, h, r)) for o, (a, h, r) in zip(oids[order].tolist(), rows, strict=True)]


def _live_leases(c: ClassState) -> list[Lease]:
    """``[c.leases[t] for t in c.leases]`` (by trade id), read from the class's arrays at once."""
    slots = c.live_slots()
    slots = slots[np.argsort(c.L[slots, core.TID], kind="stable")]
    rows = c.L[slots, :core.LEASE_FIELDS].tolist()
    args = c.L[slots, core.FAIL_ARG].tolist()
    return [c.lease_from_row(r, a) for r, a in zip(rows, args, strict=True)]


_warmed = False


def warm_reads() -> None:
    """Load, once per process, the jitted reads that `Money.copy` and `Money.to_snap` (a
    snapshot's thread) and settlement's `ClassState.slot` (the ledger's thread, at the first
    lease it provisions) call from Python.  numba loads a function at its first call, holding
    the GIL; when these were typed dicts' methods, which numba compiles there and does not
    cache, that first call stopped the event loop for up to a second (the ~120 ms stalls of
    docs/perf/order-path.md §12 and §14).  Called at start-up."""
    global _warmed
    if _warmed:
        return
    c = ClassState("warm")
    _copy_class(c)
    _open_bids(c)
    _live_leases(c)
    c.reserve(1)
    intmap.put(c.lmap, 1, 1)
    _ = (c.slot(1), intmap.items(c.lmap), intmap.get_many(c.lmap, np.ones(1, np.int64)))
    _warmed = True


class Money:
    """The core's money: a settlement engine and the balances its transfers move."""

    def __init__(self, instruments: Mapping[str, Any], config: SettlementConfig | None = None) -> None:
        self.config = config or SettlementConfig(fees=fees_from_instruments(instruments))
        self._codes = {name: i + 1 for i, name in enumerate(instruments)}  # in transfer ids: fixed, replayable
        self.engine = self._new_engine()
        self.balances: dict[int, int] = {}  # owner << 3 | kind -> µ$
        self.deposit_row = 0
        self.refs: set[str] = set()  # refs of funding entries applied, but for accounts: and journal: ones
        self.transfers = 0  # counted, for /metrics
        self.on_changes: Callable[[Changes], None] | None = None  # the bids and leases each apply changed

    def _new_engine(self) -> SettlementEngine:
        engine = SettlementEngine(self.config)
        engine.class_code = self._codes.__getitem__
        return engine

    # ------------------------------------------------------------------ reading
    def available(self, account: int) -> int:
        """What a new bid or a withdrawal of ``account`` may take (µ$)."""
        return self.balances.get(account << ACCOUNT_SHIFT | AVAILABLE, 0)

    def of(self, account: int) -> dict[str, int]:
        """The account's balances by kind name (only kinds it has a balance in)."""
        base = account << ACCOUNT_SHIFT
        out = {}
        for kind, name in KIND_NAMES.items():
            v = self.balances.get(base | kind, 0)
            if v:
                out[name] = v
        return out

    def all(self) -> dict[tuple[int, str], int]:
        """Every non-zero balance: ``(owner, kind name) -> µ$`` (the ledger's `balances()` form)."""
        return {(k >> ACCOUNT_SHIFT, KIND_NAMES[k & ((1 << ACCOUNT_SHIFT) - 1)]): v
                for k, v in sorted(self.balances.items()) if v}

    # ------------------------------------------------------------------ applying
    def post(self, transfers: np.ndarray) -> None:
        """Move the balances by ``transfers`` (rows of `clearing.core`)."""
        n = len(transfers)
        if not n:
            return
        bal = self.balances
        if n < POST_VECTOR_MIN:
            for debit, credit, amount in transfers[:, 2:5].tolist():
                bal[debit] = bal.get(debit, 0) - amount
                bal[credit] = bal.get(credit, 0) + amount
        else:  # a replay's big batch: each account's net change once, summed by jitted code
            # (int64 can hold it: all the money there is stays under the deposit cap, far below 2**63)
            keys, net = core.net_moves(np.ascontiguousarray(transfers, dtype=np.int64))
            for k, v in zip(keys.tolist(), net.tolist(), strict=True):
                bal[k] = bal.get(k, 0) + v
        self.transfers += n

    def fresh(self, ref: str) -> bool:
        """Whether a funding entry named ``ref`` would apply (it was not applied before)."""
        if ref.startswith(ACCOUNTS_REF):
            return int(ref[len(ACCOUNTS_REF):]) > self.deposit_row
        return ref.startswith(JOURNAL_REF) or ref not in self.refs

    def fund(self, f: Fund) -> bool:
        """A journaled deposit or withdrawal; False (and nothing changes) for one whose ref was
        applied before (as the ledger, whose transfer id is made of the ref, takes it once)."""
        if f.ref.startswith(ACCOUNTS_REF):
            row = int(f.ref[len(ACCOUNTS_REF):])
            if row <= self.deposit_row:
                return False
            self.deposit_row = row
        elif not f.ref.startswith(JOURNAL_REF):  # (a journal seq is unique by itself)
            if f.ref in self.refs:
                return False
            self.refs.add(f.ref)
        if f.op == DEPOSIT:
            debit, credit = EXCHANGE << ACCOUNT_SHIFT | EXTERNAL, f.account << ACCOUNT_SHIFT | AVAILABLE
        else:  # checked by the sequencer before it was journaled
            debit, credit = f.account << ACCOUNT_SHIFT | AVAILABLE, EXCHANGE << ACCOUNT_SHIFT | EXTERNAL
        bal = self.balances
        bal[debit] = bal.get(debit, 0) - f.amount
        bal[credit] = bal.get(credit, 0) + f.amount
        self.transfers += 1
        return True

    def apply_class(self, cls: str, events: np.ndarray | None, answers: list[Prov], tick: int) -> np.ndarray:
        """One class's events of an apply (EVENT_DTYPE, in seq order) with the provisioning
        answers among them, each right after the event it follows, then its clock moved to
        ``tick`` (0: no clock command).  Returns the transfers, for `post` (balances are sums:
        an apply posts every class's transfers at once)."""
        engine = self.engine
        out: list[np.ndarray] = []
        n = 0 if events is None else len(events)
        i = 0
        if answers:
            seqs = events["seq"] if n else None
            for a in sorted(answers, key=lambda a: a.after):
                j = int(np.searchsorted(seqs, a.after, side="right")) if n else 0
                if j > i:
                    out.append(engine.apply(cls, events[i:j]))
                    i = j
                out.append(self._answer(cls, a))
        if i < n:
            out.append(engine.apply(cls, events[i:] if i else events))
        if tick:
            out.append(engine.tick(tick, cls))
        transfers = join_transfers(out)
        if self.on_changes is not None:  # someone keeps the leases that ended (an order gateway's view)
            self.on_changes(engine.take_changes())
        else:  # nobody: their slots are free again (else the tables grow with every lease there was)
            engine.drop_changes(cls)
        return transfers

    def _answer(self, cls: str, a: Prov) -> np.ndarray:
        """A provider agent's answer (R18): ready from its time, or failed (refund in full); one
        the lease cannot take any more (ended, failed or ready already) changes nothing."""
        engine = self.engine
        if engine.lease(cls, a.trade_id) is None:
            return NO_TRANSFERS
        try:
            if a.ready:
                return engine.mark_ready(cls, a.trade_id, a.time)
            reason = a.reason or "the provider's agent could not provision it"
            return engine.mark_failed(cls, a.trade_id, a.time, reason)
        except LeaseStateError:
            return NO_TRANSFERS

    # ------------------------------------------------------------------ snapshots
    def to_snap(self) -> MoneySnap:
        classes = []
        for name in sorted(self.engine.classes):
            c = self.engine.classes[name]
            classes.append(ClassSnap(name, c.seq, c.clock, _open_bids(c), _live_leases(c)))
        return MoneySnap(sorted((k, v) for k, v in self.balances.items() if v), self.deposit_row, classes,
                         sorted(self.refs))

    def copy(self) -> Money:
        """What `to_snap` reads, copied (each class's arrays and maps, the balances, the refs),
        so that a snapshot can be made from it later in another thread while this one moves on:
        a few milliseconds, where `to_snap` builds a record per open bid and live lease."""
        twin = copy.copy(self)
        twin.balances = dict(self.balances)
        twin.refs = set(self.refs)
        twin.engine = copy.copy(self.engine)
        twin.engine.classes = {name: _copy_class(c) for name, c in self.engine.classes.items()}
        return twin

    def load_snap(self, snap: MoneySnap) -> None:
        self.engine = self._new_engine()
        for c in snap.classes:
            self.engine.restore(c.name, c.seq, c.clock, c.bids, c.leases)
        self.balances = dict(snap.balances)
        self.deposit_row = snap.deposit_row
        self.refs = set(snap.refs)

    def state_hash(self) -> int:
        """A 64-bit hash of the money state (balances, bids' escrow, leases): equal cores have equal ones."""
        return int.from_bytes(hashlib.blake2b(msgspec.msgpack.encode(self.to_snap()), digest_size=8).digest(), "little")

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        ext = -self.balances.get(EXCHANGE << ACCOUNT_SHIFT | EXTERNAL, 0)
        return [("gpux_money_transfers_total", self.transfers, "transfers the core's money has applied", "counter"),
                ("gpux_money_deposited", ext, "µ$ deposited less withdrawn, over every account", "gauge")]
