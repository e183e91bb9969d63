"""Clearing: the money rules of a trade, from the books' events to the transfers they cause.

Escrow holds for resting bids (R17), a lease's prepayment, metering, refunds and fees (R18,
R19), as a deterministic state machine — `clearing.engine.SettlementEngine`, jitted in
`clearing.core`, with its plain-Python specification in `clearing.reference` — and the
arithmetic and account kinds they share (`clearing.money`, `clearing.ids`, `clearing.leases`).
No I/O and no clock: the core keeps the money with it (`exchange.money`), and settlement's
ledger projections (`settlement/`) run the same engine over the same journal.
"""
