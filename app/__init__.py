"""The composition roots (docs/architecture.md): `app.exchange.Exchange` builds every part of
`gpux serve` and hands each what it needs; `app.standby` (`gpux serve --standby`),
`app.marketdata` (`gpux feeds`) and `app.ordergateway` (`gpux gateway`) build the processes that
follow it, on `app.follower`; `app.logs` sets up logging for the programs."""
