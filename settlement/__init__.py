"""Settlement's ledger (docs/settlement.md): a SQLite projection of the journal for statements, leases
and provisioning (`settlement.link` in the exchange, `settlement.replica` as `gpux settle` elsewhere).
"""
