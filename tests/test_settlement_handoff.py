"""Handing events to settlement: the JSON form reads back to the records, the journal's stream
chunks read back to the entries, the exchange's settlement on its bus (`settlement.link`), and
any batching of the same events gives the same ledger."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import BUYER, PROV, P, T, ask, bid

from bench.settlement import accounts_of, fund_accounts, ledger_digest, workload_events
from clearing.engine import SettlementConfig
from clearing.events import as_events, from_json
from exchange.bus import Bus, Published
from exchange.config import Instrument, ServerConfig
from exchange.entries import Fund
from orderbook.book import make_book
from orderbook.codec import event_from_json, events_to_json
from orderbook.config import BookConfig
from orderbook.types import COMMAND_DTYPE, EV_NAMES, ON_DEMAND
from settlement.ledger import ESCROW, InsufficientFunds
from settlement.link import SettlementLink
from settlement.service import Settlement

CONFIG = SettlementConfig(fees={"H100": (10, 25), "A100": (0, 30)}, meter_interval_s=6 * 3600)


@pytest.fixture(scope="module")
def handovers():
    return workload_events(6000, seed=11, batch=500)


def test_json_events_read_back_to_their_records(handovers):
    """`from_json` gives exactly `codec.event_from_json(d).tolist()` for every event type."""
    seen = set()
    for _, arr in handovers:
        for rec, d in zip(arr.tolist(), events_to_json(arr), strict=True):
            assert from_json(d) == rec == event_from_json(d).tolist()
            seen.add(d["type"])
    assert seen >= {"accepted", "rejected", "trade", "preempted", "cancelled", "expired", "amended"}
    assert set(EV_NAMES.values()) - seen <= {"released"}  # the mixed workload sends no releases


def test_stream_chunks_keep_the_journal_entries(handovers):
    """What the Redis stream and the journal-tail endpoint carry (`exchange.stream` chunks) reads
    back to the very journal entries (was: the JSON stream entries kept what settlement needs)."""
    from exchange.entries import Cmd, Prov, decode_entry, encode_entry
    from exchange.stream import decode_chunk, encode_chunk

    entries = [Cmd("H100", bytes(range(80)), "c1"), Prov("H100", 7, True, T, 3, '{"host":"n1"}'),
               Cmd("A100", b"\0" * 80)]
    first, payloads = decode_chunk(encode_chunk(11, [encode_entry(e) for e in entries]))
    assert first == 11 and [decode_entry(p) for p in payloads] == entries


def _settle(path, handovers, chunks) -> Settlement:
    s = Settlement(path, CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    for part in chunks:
        s.apply(part)
    return s


def test_any_batching_and_any_form_gives_the_same_ledger(tmp_path, handovers):
    """One transaction per hand-over, per event, or everything at once; arrays, JSON dicts or
    tuples: the same transfers, balances, leases and cursors."""
    one = _settle(tmp_path / "a.db", handovers, [[h] for h in handovers])
    one.check_invariants()
    want = ledger_digest(one)
    assert len(want["transfers"]) > 5000 and len(want["leases"]) > 1000
    per_event = [[(cls, arr[i:i + 1])] for cls, arr in handovers[:40] for i in range(len(arr))]
    rest = [[(cls, events_to_json(arr)) if k % 2 else (cls, as_events(arr))] for k, (cls, arr) in
            enumerate(handovers[40:])]
    other = _settle(tmp_path / "b.db", handovers, per_event + rest)
    assert ledger_digest(other) == want
    whole = _settle(tmp_path / "c.db", handovers, [handovers])
    assert ledger_digest(whole) == want
    for s in (one, other, whole):
        s.close()


def test_settlement_on_the_bus_keeps_a_refused_batch_until_it_can_apply(tmp_path):
    """A batch settlement cannot apply (a bid it cannot fund) is not lost: it waits in the
    backlog, later batches queue behind it, in order, and all of them apply once the money is
    there; meanwhile settlement reports itself unhealthy.  (The core's escrow check makes such
    a batch impossible; the ledger must still not lose one if it ever met one.)"""
    cfg = ServerConfig(data_dir=str(tmp_path), instruments={
        "H100": Instrument(BookConfig(name="H100"), maker_fee_bps=10, taker_fee_bps=25)})
    link = SettlementLink(cfg)
    bus = Bus()
    link.attach(bus)
    book = make_book(BookConfig(name="H100"), "reference")

    def deposit(account: int, amount: int, ref: str) -> None:  # a journaled deposit, as the sequencer publishes it
        bus.publish(Published(results=[], events={}, origins=[], funds=[Fund("deposit", account, amount, ref, T)]))

    deposit(PROV, 10**12, "test:p")

    def publish(*cmds):
        events = book.process(np.array(list(cmds), dtype=COMMAND_DTYPE))
        bus.publish(Published(results=[], events={"H100": events}, origins=[]))

    publish(ask(T, 1, PROV, gpus=8, price=P, end=T + 10 * 3600))
    publish(bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=1, limit=P))  # BUYER has no money yet
    assert isinstance(link.last_error, InsufficientFunds) and len(link.backlog) == 1
    assert not link.healthy and link.health() != "ok"
    publish(bid(T + 1, 3, BUYER, ON_DEMAND, gpus=1, hours=1, limit=P))
    assert len(link.backlog) == 2 and link.cursor("H100") == 1
    deposit(BUYER, 3 * P + 10**6, "test:b")  # its transfer first, then the backlog, in order
    link.flush()
    assert link.healthy and link.last_error is None and not link.backlog
    assert link.cursor("H100") == book.seq
    s = link.settlement
    assert s.ledger.balance(BUYER, ESCROW) == 0 and s.ledger.balance(BUYER) == 10**6 - fee_of(3 * P)
    s.check_invariants()
    link.close()


def fee_of(amount: int) -> int:
    from clearing.money import fee

    return fee(amount, 25)
