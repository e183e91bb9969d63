"""Market data (R20-R21 of docs/market-rules.md, docs/feeds.md): events become channels, fan-out, recording, replay.

- `feeds.model` — the level-2 book model and trade statistics of a class, built from events only;
  the channel messages (book, trades, ticker, candles, index).
- `feeds.hub` — WebSocket fan-out: subscriptions, encode once, bounded buffers, heartbeats.
- `feeds.service` — the live service of a running exchange (`/v1/feeds`, `/v1/replay`, private
  channels, the recorder), started by `app.exchange.Exchange.start`.
- `feeds.recording`, `feeds.recorder` — the market-data journal: format, fast numpy loader, writer,
  catch-up from the command journal.
- `feeds.replay` — `load`, `book_at`, `gpux replay`, the WebSocket replay endpoint.
- `feeds.verify` — `gpux verify`: the recording against a replay of the command journal.
(The subscriber, snapshot + deltas with gap detection, is the SDK's: `client.feeds`.)
"""
