"""The core (docs/architecture.md): one writer, deterministic, the journal its only source of truth.

- `exchange.sequencer` — takes requests in batches, checks what depends on order (halts, escrow,
  withdrawals), journals each batch (`exchange.journal`) and applies it (`exchange.engine`);
- `exchange.engine` — the books, the exchange state (`exchange.tables`) and the money
  (`exchange.money`) as stages of one `apply`; `exchange.recovery` replays the journal through them;
- `exchange.stream`, `exchange.follow` — the journal over Redis to replicas; `exchange.inbox` — the
  order gateways' requests over Redis to the core.
"""
