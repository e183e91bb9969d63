"""Reason codes: why a command was rejected (R8).

Each code is a stable small integer (used inside the book and in event records),
a stable machine-readable name (used on the wire) and a human sentence.  Codes are
never renumbered; new ones are appended.
"""

from __future__ import annotations

OK = 0
BAD_COMMAND = 1
STALE_TIME = 2
BAD_ACCOUNT = 3
BAD_ORDER_ID = 4
BAD_GPUS = 5
BAD_HOURS = 6
BAD_PRICE = 7
OFF_TICK = 8
BAD_SPOT_PRICE = 9
BAD_MIN_HOURS = 10
BAD_WINDOW = 11
BAD_KIND = 12
BAD_TIF = 13
BAD_BLOCK = 14
UNALIGNED_START = 15
PAST_GATE = 16
BAD_EXPIRY = 17
UNKNOWN_ORDER = 18
NOT_OWNER = 19
BAD_AMEND = 20
AMEND_BELOW_SOLD = 21
UNKNOWN_LEASE = 22
NOT_LEASE_HOLDER = 23
LEASE_NOT_RESELLABLE = 24
LEASE_NOT_RELEASABLE = 25
RESALE_WINDOW = 26
RESALE_EXCEEDS_LEASE = 27
LEASE_RESOLD = 28
POST_ONLY_WOULD_TRADE = 29
MALFORMED = 30  # used by front doors (JSON lines, gateway) for undecodable input
NO_LIQUIDITY = 31  # quotes only (orderbook/quote.py): not a rejection
PARTIAL_LIQUIDITY = 32  # quotes only

# code -> (name, sentence)
REASONS: dict[int, tuple[str, str]] = {
    OK: ("OK", "accepted"),
    BAD_COMMAND: ("BAD_COMMAND", "unknown command type"),
    STALE_TIME: ("STALE_TIME", "command time is earlier than the book's time; time never goes backwards"),
    BAD_ACCOUNT: ("BAD_ACCOUNT", "account must be a positive integer"),
    BAD_ORDER_ID: ("BAD_ORDER_ID", "order id must be greater than every earlier order id of this book"),
    BAD_GPUS: ("BAD_GPUS", "gpus must be a whole number between 1 and the instrument's maximum"),
    BAD_HOURS: ("BAD_HOURS", "hours must be a whole number between 1 and the instrument's maximum"),
    BAD_PRICE: ("BAD_PRICE", "price must lie between the instrument's minimum and maximum price"),
    OFF_TICK: ("OFF_TICK", "price must be a multiple of the instrument's tick"),
    BAD_SPOT_PRICE: ("BAD_SPOT_PRICE", "spot_price must lie between the instrument's minimum price and price"),
    BAD_MIN_HOURS: ("BAD_MIN_HOURS", "min_hours must be between 1 and the instrument's maximum hours"),
    BAD_WINDOW: (
        "BAD_WINDOW",
        "ask window must end after it starts, be no longer than the maximum window and hold min_hours",
    ),
    BAD_KIND: ("BAD_KIND", "kind must be spot, on_demand or reserved"),
    BAD_TIF: ("BAD_TIF", "tif must be GTC, IOC, FOK or GTD"),
    BAD_BLOCK: ("BAD_BLOCK", "block must be at least 1 and divide gpus"),
    UNALIGNED_START: ("UNALIGNED_START", "a reserved bid must start on an hour boundary"),
    PAST_GATE: ("PAST_GATE", "a reserved bid must start at least gate_s seconds after now"),
    BAD_EXPIRY: ("BAD_EXPIRY", "a GTD bid needs expire_at later than now"),
    UNKNOWN_ORDER: ("UNKNOWN_ORDER", "no open order with that id"),
    NOT_OWNER: ("NOT_OWNER", "the order belongs to another account"),
    BAD_AMEND: ("BAD_AMEND", "amend may only reduce gpus, to at least one block and a multiple of the block"),
    AMEND_BELOW_SOLD: ("AMEND_BELOW_SOLD", "an ask cannot be reduced below the GPUs it has already sold"),
    UNKNOWN_LEASE: ("UNKNOWN_LEASE", "no running lease with that id"),
    NOT_LEASE_HOLDER: ("NOT_LEASE_HOLDER", "the lease belongs to another account"),
    LEASE_NOT_RESELLABLE: ("LEASE_NOT_RESELLABLE", "only firm (on_demand or reserved) leases can be resold"),
    LEASE_NOT_RELEASABLE: ("LEASE_NOT_RELEASABLE", "only on_demand and spot leases can be released early"),
    RESALE_WINDOW: ("RESALE_WINDOW", "a resale ask's window must lie inside the lease's remaining window"),
    RESALE_EXCEEDS_LEASE: ("RESALE_EXCEEDS_LEASE", "a resale ask cannot offer more GPUs than the lease has unsold"),
    LEASE_RESOLD: ("LEASE_RESOLD", "a lease with GPUs offered or sold for resale cannot be released"),
    POST_ONLY_WOULD_TRADE: ("POST_ONLY_WOULD_TRADE", "a post_only ask would have traded on arrival"),
    MALFORMED: ("MALFORMED", "the message could not be decoded"),
}

# Why a quote (orderbook/quote.py) cannot fill, when the request itself is valid.  Same
# numbering as REASONS, but no command is ever rejected with these, so REASONS stays the table
# of the codes a REJECTED event can carry.
QUOTE_REASONS: dict[int, tuple[str, str]] = {
    NO_LIQUIDITY: ("NO_LIQUIDITY", "no ask can fill any of it now"),
    PARTIAL_LIQUIDITY: ("PARTIAL_LIQUIDITY", "only part of it can fill now"),
}

NAME_TO_CODE: dict[str, int] = {name: code for code, (name, _) in (REASONS | QUOTE_REASONS).items()}


def _lookup(code: int) -> tuple[str, str]:
    code = int(code)
    return REASONS.get(code) or QUOTE_REASONS.get(code) or ("UNKNOWN", "unknown reason")


def reason_name(code: int) -> str:
    """The stable machine-readable name of a reason code."""
    return _lookup(code)[0]


def reason_text(code: int) -> str:
    """The human sentence of a reason code."""
    return _lookup(code)[1]
