"""Terse builders for book commands and a runner that checks what every run must hold.

    book = make_book(BookConfig(), "reference")
    evs = run(book, ask(T, 1, PROV, gpus=4, price=P, end=T + 4 * HOUR),
                    bid(T, 2, BUYER, ON_DEMAND, gpus=2, hours=1, limit=P))
    assert evs[-1] == {"type": "trade", ...}

`run` turns event records into dicts holding only the nonzero fields (``seq`` removed,
``type`` as its name) after checking that sequence numbers are consecutive from the last
event the book produced (R15) and that the book is quiescent afterwards: no resting bid
could trade with a resting ask (R9, R10, R13).
"""

from __future__ import annotations

import weakref

import numpy as np

from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
    EV_NAMES,
    EVENT_DTYPE,
    GTC,
    HOUR,
    SIDE_ASK,
    SIDE_BID,
    SPOT,
)

# A base time on an hour boundary, so reserved starts are easy to write.
T = 1_000 * HOUR
P = 2_000_000  # a firm price, µ$ per GPU-hour ($2)
S = 1_000_000  # a spot price ($1)

# accounts
PROV = 1  # a provider
PROV2 = 2  # another provider
BUYER = 11
BUYER2 = 12
BUYER3 = 13

_last_seq: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cmd(**fields: int) -> np.ndarray:
    rec = np.zeros((), dtype=COMMAND_DTYPE)
    for k, v in fields.items():
        rec[k] = v
    return rec


def ask(time: int, oid: int, account: int, gpus: int, price: int, end: int, *, spot_price: int = 0,
        start: int = 0, min_hours: int = 0, post_only: int = 0, lease_id: int = 0) -> np.ndarray:
    """A provider's ask (R5); a resale ask when lease_id is set (R16)."""
    return _cmd(type=CMD_ASK, time=time, oid=oid, account=account, gpus=gpus, price=price, end=end,
                spot_price=spot_price, start=start, min_hours=min_hours, post_only=post_only,
                lease_id=lease_id)


def bid(time: int, oid: int, account: int, kind: int, gpus: int, hours: int, limit: int, *,
        tif: int = GTC, block: int = 0, start: int = 0, expire_at: int = 0) -> np.ndarray:
    """A trader's bid (R6)."""
    return _cmd(type=CMD_BID, time=time, oid=oid, account=account, kind=kind, gpus=gpus,
                hours=hours, price=limit, tif=tif, block=block, start=start, expire_at=expire_at)


def cancel(time: int, oid: int, account: int) -> np.ndarray:
    return _cmd(type=CMD_CANCEL, time=time, oid=oid, account=account)


def amend(time: int, oid: int, account: int, gpus: int) -> np.ndarray:
    return _cmd(type=CMD_AMEND, time=time, oid=oid, account=account, gpus=gpus)


def clock(time: int) -> np.ndarray:
    return _cmd(type=CMD_CLOCK, time=time)


def release(time: int, account: int, lease_id: int) -> np.ndarray:
    return _cmd(type=CMD_RELEASE, time=time, account=account, lease_id=lease_id)


def raw(**fields: int) -> np.ndarray:
    """Any command record, for malformed input."""
    return _cmd(**fields)


def to_dicts(events: np.ndarray) -> list[dict]:
    """Event records as dicts of their nonzero fields; `type` by name, `seq` kept."""
    out = []
    for rec in events:
        d = {name: int(rec[name]) for name in events.dtype.names if int(rec[name]) != 0}
        d["type"] = EV_NAMES.get(int(rec["type"]), str(int(rec["type"])))
        out.append(d)
    return out


def run_raw(book, *cmds: np.ndarray) -> list[dict]:
    """Process commands one batch; events as dicts with `seq` (checked consecutive, R15)."""
    batch = np.array(list(cmds), dtype=COMMAND_DTYPE) if cmds else np.zeros(0, COMMAND_DTYPE)
    events = book.process(batch)
    assert events.dtype == EVENT_DTYPE
    evs = to_dicts(events)
    prev = _last_seq.get(book, 0)
    seqs = [e.get("seq", 0) for e in evs]
    assert seqs == list(range(prev + 1, prev + 1 + len(evs))), f"seq not consecutive after {prev}: {seqs}"
    if evs:
        _last_seq[book] = seqs[-1]
    return evs


def continue_seq(book, last_seq: int) -> None:
    """Tell `run` that `book` (e.g. restored from a snapshot) already used seq up to last_seq."""
    _last_seq[book] = last_seq


def run(book, *cmds: np.ndarray) -> list[dict]:
    """Process commands; their events without `seq`.  Asserts seq continuity and quiescence."""
    evs = run_raw(book, *cmds)
    for e in evs:
        del e["seq"]
    assert book.crossing_pairs() == [], "book not quiescent: a resting bid could trade"
    return evs


def types(evs: list[dict]) -> list[str]:
    return [e["type"] for e in evs]


def pick(evs: list[dict], *fields: str) -> list[tuple]:
    """Project events onto a few fields (missing = 0), for compact assertions."""
    return [tuple(e.get(f, 0) for f in fields) for e in evs]


def trades(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["type"] == "trade"]


# --- expected events ------------------------------------------------------------------
# Builders for the dicts `run` returns: the fields a book must set, zero fields left out.


def E(type_: str, **fields: int) -> dict:
    """An expected event: its nonzero fields plus its type name."""
    d = {k: int(v) for k, v in fields.items() if v}
    d["type"] = type_
    return d


def accepted_ask(*, time: int, oid: int, account: int, gpus: int, price: int, start: int, end: int,
                 spot: int = 0, min_hours: int = 1, lease_id: int = 0) -> dict:
    return E("accepted", time=time, oid=oid, account=account, side=SIDE_ASK, gpus=gpus, price=price,
             price2=spot, start=start, end=end, expire_at=end, min_hours=min_hours, lease_id=lease_id)


def accepted_bid(*, time: int, oid: int, account: int, kind: int, gpus: int, hours: int, limit: int,
                 tif: int = GTC, block: int = 1, start: int = 0, expire_at: int = 0) -> dict:
    return E("accepted", time=time, oid=oid, account=account, side=SIDE_BID, kind=kind, tif=tif,
             gpus=gpus, remaining=gpus, hours=hours, price=limit, block=block, start=start,
             end=start + hours * HOUR if start else 0, expire_at=expire_at)


def trade(*, time: int, tid: int, bid: int, ask: int, buyer: int, provider: int, kind: int, gpus: int,
          price: int, start: int, hours: int, maker: int, remaining: int = 0, lease_id: int = 0) -> dict:
    return E("trade", time=time, trade_id=tid, oid=bid, oid2=ask, account=buyer, account2=provider,
             kind=kind, gpus=gpus, remaining=remaining, price=price, start=start,
             end=start + hours * HOUR, hours=hours, maker=maker, lease_id=lease_id)


def preempted(*, time: int, tid: int, bid: int, ask: int, buyer: int, provider: int, gpus: int,
              price: int, start: int, end: int, by: int) -> dict:
    return E("preempted", time=time, trade_id=tid, oid=bid, oid2=ask, account=buyer,
             account2=provider, kind=SPOT, gpus=gpus, price=price, start=start, end=end, lease_id=by)


def released(*, time: int, tid: int, bid: int, ask: int, buyer: int, provider: int, kind: int,
             gpus: int, price: int, start: int) -> dict:
    return E("released", time=time, trade_id=tid, oid=bid, oid2=ask, account=buyer,
             account2=provider, kind=kind, gpus=gpus, price=price, start=start, end=time)


def cancelled(*, time: int, oid: int, account: int, side: int, reason: int, kind: int = 0,
              remaining: int = 0) -> dict:
    return E("cancelled", time=time, oid=oid, account=account, side=side, kind=kind, reason=reason,
             remaining=remaining)


def expired(*, time: int, oid: int, account: int, side: int, reason: int, kind: int = 0,
            remaining: int = 0) -> dict:
    return E("expired", time=time, oid=oid, account=account, side=side, kind=kind, reason=reason,
             remaining=remaining)


def amended(*, time: int, oid: int, account: int, side: int, gpus: int, kind: int = 0,
            remaining: int = 0) -> dict:
    return E("amended", time=time, oid=oid, account=account, side=side, kind=kind, gpus=gpus,
             remaining=remaining)


def rejected(*, time: int, oid: int, account: int, reason: int, cmd: int, lease_id: int = 0) -> dict:
    side = SIDE_ASK if cmd == CMD_ASK else SIDE_BID if cmd == CMD_BID else 0
    return E("rejected", time=time, oid=oid, account=account, reason=reason, cmd=cmd, side=side,
             lease_id=lease_id)


def noop(time: int) -> np.ndarray:
    """A command every book refuses without touching anything: cancel of an unknown order."""
    return cancel(time, 2**62, PROV)


def assert_rejection_changes_nothing(new_book, prefix: list, cmd: np.ndarray, expected: dict,
                                     probe: list) -> None:
    """R8, R15: after `prefix`, `cmd` is rejected with exactly `expected` and changes nothing.

    A rejection still uses one sequence number (R15: every event has one), so the book is
    compared with a twin that got a trivially refused command instead: same state hash, and
    the same events for the `probe` commands that follow.
    """
    a, b = new_book(), new_book()
    run(a, *prefix)
    run(b, *prefix)
    assert run(a, cmd) == [expected]
    assert [e["type"] for e in run(b, noop(expected["time"]))] == ["rejected"]
    assert a.state_hash() == b.state_hash()
    assert run_raw(a, *probe) == run_raw(b, *probe)
    assert a.state_hash() == b.state_hash()
