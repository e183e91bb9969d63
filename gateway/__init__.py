"""The HTTP edge of the exchange (docs/architecture.md, layer 4): REST and the traders' WebSocket
sessions (`gateway.gateway`), wire types (`gateway.wire`), accounts and signing
(`gateway.accounts`, `gateway.auth`), OpenAPI, metrics and health (`gateway.metrics`), the
dashboard (`gateway.dashboard`, `static/`)."""
