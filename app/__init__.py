"""The composition root (docs/architecture.md): `app.exchange.Exchange` builds every part of
`gpux serve` and hands each what it needs; `app.logs` sets up logging for the programs."""
