"""Money arithmetic of settlement (R3, R17, R19): integers only, µ$, rounding written down once.

    fee(1_000_000, 25)            -> 2_500      # bps of an amount, rounded up to the µ$
    hold_fee_bps(maker, taker)                  # the fee rate a bid's escrow covers: the higher one
    hold_per_gpu(hours, limit, 25)              # escrow per GPU of a bid: its price at the limit + that fee
    hold(gpus, hours, limit, 25)                # escrow for gpus GPUs of a bid
    lease_value(gpus, price, seconds)           # what `seconds` of a lease cost, rounded down to the µ$

`lease_value` is always taken from a lease's start (or its ready time) to a point, never
summed over pieces, so that metering in any number of steps adds up to the same total.

This is the one copy of these rules in settlement: its link (the escrow check's pending
holds), its engines (`clearing.engine`, `clearing.reference`) and its jitted core, which
compiles these very functions (`clearing.core`).  So they stay plain integer arithmetic that
numba compiles: no calls but to each other, no Python-only types.
"""

from __future__ import annotations

HOUR = 3600
BPS = 10_000

# account kinds: small integers in transfer rows (the ledger's and the core's balances); an
# account is ``owner << ACCOUNT_SHIFT | kind``
AVAILABLE = 1  # what an owner can bid with or withdraw
ESCROW = 2  # held for open bids (R17)
PREPAID = 3  # lease_prepaid: paid for leases and not yet earned by their providers
RECEIVABLE = 4  # earned by a provider (or a reseller), not yet paid out
FEES = 5  # the exchange's fee income (owner EXCHANGE, R19)
EXTERNAL = 6  # the world outside: deposits come from it, payouts go to it (owner EXCHANGE)
KIND_NAMES = {AVAILABLE: "available", ESCROW: "escrow", PREPAID: "lease_prepaid", RECEIVABLE: "receivable",
              FEES: "fees", EXTERNAL: "external"}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
KINDS = tuple(KIND_NAMES)
EXCHANGE = 0  # the owner of FEES and EXTERNAL
ACCOUNT_SHIFT = 3


def kind_code(kind: int | str) -> int:
    """An account kind by code or by name ("available", "lease_prepaid", ...)."""
    code = KIND_CODES.get(kind) if isinstance(kind, str) else kind
    if code not in KIND_NAMES:
        raise ValueError(f"unknown account kind {kind!r}; kinds: {', '.join(KIND_NAMES.values())}")
    return code


def fee(amount: int, bps: int) -> int:
    """A fee of ``bps`` basis points on ``amount`` µ$, rounded up to the µ$ (0 for amount ≤ 0)."""
    if amount <= 0 or bps <= 0:
        return 0
    return -(-amount * bps // BPS)


def hold_fee_bps(maker_bps: int, taker_bps: int) -> int:
    """The fee rate a bid's escrow covers (R17): the higher of its class's maker and taker rates,
    since the bid may fill as either."""
    return max(maker_bps, taker_bps)


def hold_per_gpu(hours: int, limit: int, fee_bps: int) -> int:
    """Escrow per GPU of a bid (R17): its whole price at the limit, plus the fee at ``fee_bps``
    (`hold_fee_bps`) on it (rounded up)."""
    notional = hours * limit
    return notional + fee(notional, fee_bps)


def hold(gpus: int, hours: int, limit: int, fee_bps: int) -> int:
    """Escrow for ``gpus`` GPUs of a bid (R17): ``gpus × hold_per_gpu``."""
    return gpus * hold_per_gpu(hours, limit, fee_bps)


def lease_value(gpus: int, price: int, seconds: int) -> int:
    """What ``seconds`` of delivery of ``gpus`` GPUs at ``price`` µ$/GPU-hour cost, rounded down."""
    if seconds <= 0:
        return 0
    return gpus * price * seconds // HOUR
