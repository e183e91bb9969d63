"""R8: every reason code the book can produce, and a rejected command changes nothing."""

from __future__ import annotations

import pytest

from orderbook import reasons as R
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_RELEASE,
    GTD,
    HOUR,
    ON_DEMAND,
    RESERVED,
    SPOT,
)
from tests.helpers import (
    BUYER,
    BUYER2,
    BUYER3,
    PROV,
    PROV2,
    P,
    S,
    T,
    amend,
    ask,
    assert_rejection_changes_nothing,
    bid,
    cancel,
    clock,
    raw,
    rejected,
    release,
    run,
)

MAXG = 100_000  # BookConfig().max_gpus
MAXH = 8_784  # BookConfig().max_hours

# A small market with one lease of every sort, then each case at time T:
#   ask 1 (PROV, 8 GPUs, spot S)      lease 1: on-demand, BUYER, 2 GPUs [T, T+2h), 1 GPU of it for resale
#   lease 2: spot, BUYER2, 1 GPU      lease 3: reserved, BUYER3, [T+2h, T+3h)
#   lease 4: on-demand, BUYER2        ask 5: BUYER's resale of lease 1 (1 GPU)
#   bid 6: BUYER2, 2 GPUs in blocks of 2 at S (below every ask's price: rests)
PREFIX = [
    ask(T, 1, PROV, 8, P, T + 10 * HOUR, spot_price=S),
    bid(T, 2, BUYER, ON_DEMAND, 2, 2, P),
    bid(T, 3, BUYER2, SPOT, 1, 1, S),
    bid(T, 4, BUYER3, RESERVED, 1, 1, P, start=T + 2 * HOUR),
    ask(T, 5, BUYER, 1, 3 * P, T + 2 * HOUR, lease_id=1),
    bid(T, 6, BUYER2, ON_DEMAND, 2, 1, S, block=2),
    bid(T, 7, BUYER2, ON_DEMAND, 1, 1, P),
]
# what follows each case, on the book and on its twin: must give the same events
PROBE = [
    bid(T + 1, 100, BUYER3, ON_DEMAND, 2, 1, P),
    ask(T + 2, 101, PROV2, 4, S, T + 3 * HOUR),
    amend(T + 3, 1, PROV, 7),
    release(T + 4, BUYER2, 4),
    clock(T + 4 * HOUR),
]

# (reason, command): the REJECTED event echoes the command's oid, account and lease_id
CASES = [
    (R.BAD_COMMAND, raw(type=9, time=T, oid=50, account=BUYER)),
    (R.BAD_COMMAND, raw(type=0, time=T, oid=50, account=BUYER)),
    (R.STALE_TIME, bid(T - 1, 50, BUYER, ON_DEMAND, 1, 1, P)),
    (R.STALE_TIME, clock(T - 1)),
    (R.BAD_ACCOUNT, ask(T, 50, 0, 1, P, T + HOUR)),
    (R.BAD_ACCOUNT, bid(T, 50, -3, ON_DEMAND, 1, 1, P)),
    (R.BAD_ORDER_ID, ask(T, 7, PROV, 1, P, T + HOUR)),
    (R.BAD_ORDER_ID, bid(T, 3, BUYER, ON_DEMAND, 1, 1, P)),
    (R.BAD_GPUS, ask(T, 50, PROV, 0, P, T + HOUR)),
    (R.BAD_GPUS, ask(T, 50, PROV, MAXG + 1, P, T + HOUR)),
    (R.BAD_GPUS, bid(T, 50, BUYER, ON_DEMAND, -1, 1, P)),
    (R.BAD_HOURS, bid(T, 50, BUYER, ON_DEMAND, 1, 0, P)),
    (R.BAD_HOURS, bid(T, 50, BUYER, SPOT, 1, MAXH + 1, P)),
    (R.BAD_PRICE, ask(T, 50, PROV, 1, 0, T + HOUR)),
    (R.BAD_PRICE, ask(T, 50, PROV, 1, -1_000, T + HOUR)),
    (R.BAD_PRICE, bid(T, 50, BUYER, ON_DEMAND, 1, 1, 100_001_000)),
    (R.OFF_TICK, ask(T, 50, PROV, 1, P + 1, T + HOUR)),
    (R.OFF_TICK, bid(T, 50, BUYER, SPOT, 1, 1, S + 500)),
    (R.OFF_TICK, ask(T, 50, PROV, 1, P, T + HOUR, spot_price=S + 10)),
    (R.BAD_SPOT_PRICE, ask(T, 50, PROV, 1, P, T + HOUR, spot_price=P + 1_000)),
    (R.BAD_SPOT_PRICE, ask(T, 50, PROV, 1, P, T + HOUR, spot_price=-1_000)),
    (R.BAD_MIN_HOURS, ask(T, 50, PROV, 1, P, T + 10 * HOUR, min_hours=-1)),
    (R.BAD_MIN_HOURS, ask(T, 50, PROV, 1, P, T + 10 * HOUR, min_hours=MAXH + 1)),
    (R.BAD_WINDOW, ask(T, 50, PROV, 1, P, T)),
    (R.BAD_WINDOW, ask(T, 50, PROV, 1, P, T + 2 * HOUR, min_hours=3)),
    (R.BAD_WINDOW, ask(T, 50, PROV, 1, P, T + (MAXH + 1) * HOUR)),
    (R.BAD_KIND, bid(T, 50, BUYER, 7, 1, 1, P)),
    (R.BAD_TIF, bid(T, 50, BUYER, ON_DEMAND, 1, 1, P, tif=9)),
    (R.BAD_BLOCK, bid(T, 50, BUYER, ON_DEMAND, 4, 1, P, block=3)),
    (R.BAD_BLOCK, bid(T, 50, BUYER, ON_DEMAND, 4, 1, P, block=-1)),
    (R.UNALIGNED_START, bid(T, 50, BUYER, RESERVED, 1, 1, P, start=T + 2 * HOUR + 1)),
    (R.PAST_GATE, bid(T, 50, BUYER, RESERVED, 1, 1, P, start=T)),
    (R.PAST_GATE, bid(T, 50, BUYER, RESERVED, 1, 1, P, start=T - HOUR)),
    (R.BAD_EXPIRY, bid(T, 50, BUYER, ON_DEMAND, 1, 1, S, tif=GTD, expire_at=T)),
    (R.BAD_EXPIRY, bid(T, 50, BUYER, ON_DEMAND, 1, 1, S, tif=GTD)),
    (R.UNKNOWN_ORDER, cancel(T, 999, BUYER)),
    (R.UNKNOWN_ORDER, cancel(T, 2, BUYER)),  # filled and gone
    (R.UNKNOWN_ORDER, amend(T, 999, BUYER, 1)),
    (R.NOT_OWNER, cancel(T, 6, BUYER)),
    (R.NOT_OWNER, amend(T, 1, BUYER, 7)),
    (R.BAD_AMEND, amend(T, 6, BUYER2, 1)),  # not a multiple of the block
    (R.BAD_AMEND, amend(T, 6, BUYER2, 2)),  # not smaller
    (R.BAD_AMEND, amend(T, 1, PROV, 8)),
    (R.BAD_AMEND, amend(T, 1, PROV, 0)),
    (R.AMEND_BELOW_SOLD, amend(T, 1, PROV, 3)),  # 2 + 1 firm and 1 spot run now
    (R.UNKNOWN_LEASE, release(T, BUYER, 99)),
    (R.UNKNOWN_LEASE, ask(T, 50, BUYER, 1, P, T + HOUR, lease_id=99)),
    (R.NOT_LEASE_HOLDER, release(T, BUYER2, 1)),
    (R.NOT_LEASE_HOLDER, ask(T, 50, BUYER, 1, P, T + HOUR, lease_id=4)),
    (R.LEASE_NOT_RESELLABLE, ask(T, 50, BUYER2, 1, P, T + HOUR, lease_id=2)),
    (R.LEASE_NOT_RELEASABLE, release(T, BUYER3, 3)),
    (R.RESALE_WINDOW, ask(T, 50, BUYER, 1, P, T + 3 * HOUR, lease_id=1)),
    (R.RESALE_WINDOW, ask(T, 50, BUYER3, 1, P, T + 3 * HOUR, lease_id=3)),  # starts before the lease
    (R.RESALE_EXCEEDS_LEASE, ask(T, 50, BUYER, 2, P, T + 2 * HOUR, lease_id=1)),
    (R.LEASE_RESOLD, release(T, BUYER, 1)),
    (R.POST_ONLY_WOULD_TRADE, ask(T, 50, PROV2, 2, S, T + 2 * HOUR, post_only=1)),
]


def _expected(cmd, code: int) -> dict:
    return rejected(time=T, oid=int(cmd["oid"]), account=int(cmd["account"]), reason=code,
                    cmd=int(cmd["type"]), lease_id=int(cmd["lease_id"]))


CASE_IDS = [f"{R.reason_name(code)}-{i}" for i, (code, _) in enumerate(CASES)]


@pytest.mark.parametrize(("code", "cmd"), CASES, ids=CASE_IDS)
def test_r8_rejection_reason_and_nothing_changes(make_book, code, cmd):
    """R8, R15: each refused command gets its stable reason code and leaves the book unchanged."""
    assert_rejection_changes_nothing(make_book, PREFIX, cmd, _expected(cmd, code), PROBE)


def test_r8_every_book_reason_code_is_exercised():
    """R8: the table above covers every reason code a book can give (MALFORMED is the front doors')."""
    book_codes = set(R.REASONS) - {R.OK, R.MALFORMED}
    assert {code for code, _ in CASES} == book_codes


def test_r8_prefix_builds_the_intended_market(book):
    """R8: the shared market really holds the leases and orders the cases rely on."""
    evs = run(book, *PREFIX)
    tr = [(e["trade_id"], e["oid"], e["account"], e.get("kind", 0)) for e in evs if e["type"] == "trade"]
    assert tr == [(1, 2, BUYER, ON_DEMAND), (2, 3, BUYER2, SPOT), (3, 4, BUYER3, RESERVED),
                  (4, 7, BUYER2, ON_DEMAND)]
    assert [e["type"] for e in evs if e["oid"] in (5, 6)] == ["accepted", "accepted"]


def test_r8_reason_names_and_sentences_are_stable():
    """R8: each code has a machine-readable name and a human sentence; names are unique."""
    names = [name for name, _ in R.REASONS.values()]
    assert len(names) == len(set(names))
    assert all(sentence for _, sentence in R.REASONS.values())
    assert R.reason_name(R.PAST_GATE) == "PAST_GATE"
    assert R.NAME_TO_CODE["LEASE_RESOLD"] == R.LEASE_RESOLD == 28


def test_r8_rejected_event_names_the_refused_command(book):
    """R8: the REJECTED event says which command type was refused, and the side of new orders."""
    evs = run(book, ask(T, 1, PROV, 0, P, T + HOUR), bid(T, 2, BUYER, ON_DEMAND, 0, 1, P),
              cancel(T, 3, BUYER), amend(T, 3, BUYER, 1), release(T, BUYER, 3))
    assert [(e["cmd"], e.get("side", 0)) for e in evs] == [
        (CMD_ASK, 2), (CMD_BID, 1), (CMD_CANCEL, 0), (CMD_AMEND, 0), (CMD_RELEASE, 0)]
    assert evs[-1]["lease_id"] == 3
