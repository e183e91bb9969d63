"""Record types and constants of the order book (R1–R16, docs/market-rules.md).

Plain module-level integers so that numba-jitted code can use them directly
(hftbacktest style).  Commands and events are numpy structured records; a batch
of commands goes into a book, a batch of events comes out.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import NamedTuple

import numpy as np

# --- command types -----------------------------------------------------------
CMD_ASK = 1  # provider posts capacity (R5)
CMD_BID = 2  # trader bids for GPU-hours (R6)
CMD_CANCEL = 3  # cancel an order by id (R7)
CMD_AMEND = 4  # reduce an order's GPUs, keeping priority (R7)
CMD_CLOCK = 5  # advance engine time (R4, R13, R14)
CMD_RELEASE = 6  # release an on-demand or spot lease early (R16)

CMD_NAMES = {
    CMD_ASK: "ask",
    CMD_BID: "bid",
    CMD_CANCEL: "cancel",
    CMD_AMEND: "amend",
    CMD_CLOCK: "clock",
    CMD_RELEASE: "release",
}

# --- bid kinds (R6); also the kind of the lease a fill creates --------------
SPOT = 0
ON_DEMAND = 1
RESERVED = 2
KIND_NAMES = {SPOT: "spot", ON_DEMAND: "on_demand", RESERVED: "reserved"}

# --- time in force (R14) -----------------------------------------------------
GTC = 0
IOC = 1
FOK = 2
GTD = 3
TIF_NAMES = {GTC: "GTC", IOC: "IOC", FOK: "FOK", GTD: "GTD"}

# --- sides ---------------------------------------------------------------------
SIDE_BID = 1
SIDE_ASK = 2
SIDE_NAMES = {0: "", SIDE_BID: "bid", SIDE_ASK: "ask"}

# --- event types ---------------------------------------------------------------
EV_ACCEPTED = 1  # an order entered the book (then it may trade, rest or end)
EV_REJECTED = 2  # a command was refused; nothing changed (R8)
EV_TRADE = 3  # a fill; creates a lease whose id is trade_id (R10, R11, R16)
EV_PREEMPTED = 4  # a spot lease now ends earlier, at `end` (R12)
EV_CANCELLED = 5  # an order left the book: user cancel, IOC/FOK remainder
EV_EXPIRED = 6  # an order left the book by time (R14)
EV_AMENDED = 7  # an order's GPUs were reduced (R7)
EV_RELEASED = 8  # a lease was released early and now ends at `end` (R16)
EV_NAMES = {
    EV_ACCEPTED: "accepted",
    EV_REJECTED: "rejected",
    EV_TRADE: "trade",
    EV_PREEMPTED: "preempted",
    EV_CANCELLED: "cancelled",
    EV_EXPIRED: "expired",
    EV_AMENDED: "amended",
    EV_RELEASED: "released",
}

# --- why an order left the book (reason field of CANCELLED / EXPIRED) ---------
END_USER = 1  # cancelled by its owner
END_IOC = 2  # IOC remainder
END_FOK = 3  # FOK could not fill in full
END_GTD = 4  # GTD expire_at reached
END_GATE = 5  # reserved bid reached start - gate_s
END_WINDOW = 6  # ask reached the end of its window
END_NAMES = {
    END_USER: "user",
    END_IOC: "ioc",
    END_FOK: "fok",
    END_GTD: "gtd",
    END_GATE: "gate",
    END_WINDOW: "window_end",
}

HOUR = 3600

# --- records ---------------------------------------------------------------------
# A command.  Which fields matter depends on `type`; unused fields are 0.
# 0 in min_hours / block means the default (1); start 0 on an ask means "now".
COMMAND_DTYPE = np.dtype(
    [
        ("time", "<i8"),  # engine time, int seconds UTC (R4)
        ("oid", "<i8"),  # new order's id (ask/bid) or target order (cancel/amend)
        ("account", "<i8"),  # who sends it (> 0)
        ("price", "<i8"),  # ask: firm price; bid: limit (µ$ per GPU-hour)
        ("spot_price", "<i8"),  # ask: spot price, 0 = not offered to spot
        ("start", "<i8"),  # ask: window start (0 = now); reserved bid: start
        ("end", "<i8"),  # ask: window end (exclusive)
        ("expire_at", "<i8"),  # GTD bid
        ("lease_id", "<i8"),  # resale ask: lease resold; release: lease released
        ("gpus", "<i4"),  # GPUs; amend: the new (smaller) value
        ("hours", "<i4"),  # bid: duration in whole hours
        ("min_hours", "<i4"),  # ask: shortest lease accepted (0 = 1)
        ("block", "<i4"),  # bid: fill granularity in GPUs (0 = 1)
        ("type", "i1"),  # CMD_*
        ("kind", "i1"),  # bid: SPOT / ON_DEMAND / RESERVED
        ("tif", "i1"),  # bid: GTC / IOC / FOK / GTD
        ("post_only", "i1"),  # ask: 1 = reject instead of trading on arrival
    ]
)

# An event.  Every event carries its book's sequence number and engine time (R15, R20).
EVENT_DTYPE = np.dtype(
    [
        ("seq", "<i8"),  # consecutive per book, from 1
        ("time", "<i8"),  # engine time of the command that produced it
        ("oid", "<i8"),  # order concerned (trade/preempt/release: the bid)
        ("oid2", "<i8"),  # trade/preempt/release: the ask
        ("trade_id", "<i8"),  # trade: new lease id; preempt/release: lease concerned
        ("account", "<i8"),  # order owner; trade: buyer
        ("account2", "<i8"),  # trade: provider (owner of the ask)
        ("price", "<i8"),  # accepted: price / limit; trade: trade price
        ("price2", "<i8"),  # accepted ask: spot price
        ("start", "<i8"),  # window start (accepted order, lease)
        ("end", "<i8"),  # window end; preempted/released: the new end
        ("expire_at", "<i8"),  # accepted bid: when it expires if still resting (0 = never)
        ("lease_id", "<i8"),  # resale: parent lease; preempted: the firm trade that caused it
        ("gpus", "<i4"),  # order GPUs, fill quantity, new GPUs after amend
        ("remaining", "<i4"),  # bid GPUs still open after this event
        ("hours", "<i4"),  # bid hours
        ("block", "<i4"),  # bid block
        ("min_hours", "<i4"),  # ask min_hours
        ("reason", "<i2"),  # rejected: reason code; cancelled/expired: END_*
        ("type", "i1"),  # EV_*
        ("kind", "i1"),  # bid / lease kind
        ("side", "i1"),  # SIDE_*
        ("tif", "i1"),  # bid TIF
        ("maker", "i1"),  # trade: SIDE_* of the maker (R11)
        ("cmd", "i1"),  # rejected: the command type refused
    ]
)


def empty_commands(n: int) -> np.ndarray:
    """A zeroed array of ``n`` command records."""
    return np.zeros(n, dtype=COMMAND_DTYPE)


def empty_events(n: int) -> np.ndarray:
    """A zeroed array of ``n`` event records."""
    return np.zeros(n, dtype=EVENT_DTYPE)


# --- typed views of one record ------------------------------------------------------------
# Projections (exchange state, feeds, settlement, the gateway's pushes) read records as these
# named tuples instead of by position: `ev.type`, `cmd.gpus`.  They are the records' field
# layout, written once here and checked against the dtypes below the classes; a named tuple
# reads a field as fast as an index does.  `events(array)` / `commands(array)` turn a batch
# into them (`ndarray.tolist()` gives plain tuples in the same order).
class Command(NamedTuple):
    """One COMMAND_DTYPE record; every field defaults to 0 (`Command(type=CMD_CLOCK)`)."""

    time: int = 0
    oid: int = 0
    account: int = 0
    price: int = 0
    spot_price: int = 0
    start: int = 0
    end: int = 0
    expire_at: int = 0
    lease_id: int = 0
    gpus: int = 0
    hours: int = 0
    min_hours: int = 0
    block: int = 0
    type: int = 0
    kind: int = 0
    tif: int = 0
    post_only: int = 0


class Event(NamedTuple):
    """One EVENT_DTYPE record; every field defaults to 0."""

    seq: int = 0
    time: int = 0
    oid: int = 0
    oid2: int = 0
    trade_id: int = 0
    account: int = 0
    account2: int = 0
    price: int = 0
    price2: int = 0
    start: int = 0
    end: int = 0
    expire_at: int = 0
    lease_id: int = 0
    gpus: int = 0
    remaining: int = 0
    hours: int = 0
    block: int = 0
    min_hours: int = 0
    reason: int = 0
    type: int = 0
    kind: int = 0
    side: int = 0
    tif: int = 0
    maker: int = 0
    cmd: int = 0


if Command._fields != COMMAND_DTYPE.names:
    raise ImportError(f"orderbook.types: Command fields {Command._fields} differ from COMMAND_DTYPE "
                      f"{COMMAND_DTYPE.names}")
if Event._fields != EVENT_DTYPE.names:
    raise ImportError(f"orderbook.types: Event fields {Event._fields} differ from EVENT_DTYPE {EVENT_DTYPE.names}")

_as_command = partial(tuple.__new__, Command)
_as_event = partial(tuple.__new__, Event)


def commands(records: np.ndarray) -> list[Command]:
    """A COMMAND_DTYPE array as Command tuples, in order."""
    return list(map(_as_command, records.tolist()))


def events(records: np.ndarray) -> list[Event]:
    """An EVENT_DTYPE array as Event tuples, in order."""
    return list(map(_as_event, records.tolist()))


def join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Record arrays of one dtype end to end, as one writable array.  (``np.concatenate`` of
    structured arrays promotes their dtypes field by field: ~100× slower for these records.)"""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(bytearray(b"".join([p.tobytes() for p in parts])), dtype=dtype)


def as_event(values: Iterable[int]) -> Event:
    """Field values in EVENT_DTYPE order (a record's ``tolist()``) as an Event."""
    return _as_event(values)


# --- commands as a client sends them (time, and a new order's oid, are stamped by the sequencer) ---
# Built here, where the field order is defined: a tuple in field order is what numpy takes, and
# far cheaper to make than a Command by keywords (the gateway makes one per request).
def ask_command(account: int, gpus: int, price: int, end: int, spot_price: int = 0, start: int = 0,
                min_hours: int = 0, lease_id: int = 0, post_only: int = 0) -> Command:
    """An ask (R5): ``gpus`` from ``start`` (0: now) to ``end`` at ``price`` (and ``spot_price``)."""
    return _as_command((0, 0, account, price, spot_price, start, end, 0, lease_id, gpus, 0, min_hours, 0,
                        CMD_ASK, 0, 0, post_only))


def bid_command(account: int, kind: int, gpus: int, hours: int, limit: int, block: int = 0, tif: int = GTC,
                start: int = 0, expire_at: int = 0) -> Command:
    """A bid (R6) for ``gpus`` GPUs × ``hours`` at most ``limit``."""
    return _as_command((0, 0, account, limit, 0, start, 0, expire_at, 0, gpus, hours, 0, block, CMD_BID, kind,
                        tif, 0))


def cancel_command(account: int, oid: int) -> Command:
    """Cancel order ``oid`` (R7)."""
    return _as_command((0, oid, account, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, CMD_CANCEL, 0, 0, 0))


def amend_command(account: int, oid: int, gpus: int) -> Command:
    """Reduce order ``oid`` to ``gpus`` GPUs (R7)."""
    return _as_command((0, oid, account, 0, 0, 0, 0, 0, 0, gpus, 0, 0, 0, CMD_AMEND, 0, 0, 0))


def release_command(account: int, lease_id: int) -> Command:
    """Release lease ``lease_id`` early (R16)."""
    return _as_command((0, 0, account, 0, 0, 0, 0, 0, lease_id, 0, 0, 0, 0, CMD_RELEASE, 0, 0, 0))


def clock_command(time: int = 0) -> Command:
    """Move engine time to ``time`` (R4; the sequencer stamps it)."""
    return _as_command((time, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, CMD_CLOCK, 0, 0, 0))
