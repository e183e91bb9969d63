"""`gpux replay` and `gpux verify`: the market-data recording (feeds/, docs/feeds.md).

    gpux replay PATH [--from T] [--to T] [--class NAME] [--channel events|book|trades|ticker|candles|index]
                     [--interval 1m|1h] [--every S] [--speed X] [--format jsonl|csv|parquet] [-o FILE]
                     [--anonymize] [--progress] [--serve [HOST:]PORT]
    gpux verify DATA_DIR [--config FILE.toml] [--engine numba|reference] [--json]
    gpux feeds --redis URL [--data DIR] [--port N] [--config FILE.toml] [--exchange URL --key K --secret S]
        a market-data process of its own, fed by the core's journal stream (docs/operations.md)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any


def _replay(args: argparse.Namespace) -> int:
    from feeds.replay import main

    return main(args)


def _verify(args: argparse.Namespace) -> int:
    from feeds.verify import main

    return main(args)


def _feeds(args: argparse.Namespace) -> int:
    from app.exchange import StartupError
    from app.logs import setup_logging
    from app.marketdata import run_marketdata
    from exchange.config import load_config
    from exchange.stream import HttpJournal, JournalSource

    cfg = load_config(args.config).with_(host=args.host, port=args.port, data_dir=args.data, redis_url=args.redis,
                                         redis_prefix=args.prefix)
    backfill: JournalSource | None = None
    if args.exchange:
        from gateway.auth import Signer

        key, secret = args.key or os.environ.get("GPUX_KEY"), args.secret or os.environ.get("GPUX_SECRET")
        if not key or not secret:
            print("gpux: error: --exchange needs an admin key: --key/--secret or GPUX_KEY/GPUX_SECRET", file=sys.stderr)
            return 2
        backfill = HttpJournal(args.exchange, Signer(key, secret).headers)
    setup_logging(args.log_level)
    try:
        asyncio.run(run_marketdata(cfg, backfill))
    except StartupError as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def register(sub: Any) -> None:
    from feeds import replay, verify

    p = sub.add_parser("replay", help="replay a market-data recording (events or feed channels, or serve it)",
                       description="Replay a market-data recording: raw events or one channel's feed messages as "
                                   "JSON lines, CSV or Parquet, at a chosen speed, or serve it over WebSocket "
                                   "(docs/feeds.md).")
    replay.add_arguments(p)
    p.set_defaults(handler=_replay)
    v = sub.add_parser("verify", help="check the market-data recording against a replay of the command journal",
                       description="Replay the command journal through fresh books and check every recorded event "
                                   "byte for byte (R21); print where they first differ. Exit status 1 if they do.")
    verify.add_arguments(v)
    v.set_defaults(handler=_verify)
    f = sub.add_parser("feeds", help="a market-data process fed by the core's journal stream (scale-out)",
                       description="Serve the market data (GET /v1/feeds, /v1/replay, /v1/trades, /v1/candles, "
                                   "/v1/forward, /v1/products, /v1/book) from a process of its own: it follows the "
                                   "journal `gpux serve --redis URL` streams into a journal, an engine and a "
                                   "recording of its own (docs/operations.md).  Start as many as needed.")
    f.add_argument("--redis", required=True, metavar="URL", help="the core's Redis, e.g. redis://127.0.0.1:6379/0")
    f.add_argument("--prefix", default=None, help="Redis key prefix (default from the config: gpux)")
    f.add_argument("--config", default=None, metavar="FILE.toml", help="the exchange's configuration (classes)")
    f.add_argument("--data", default=None, metavar="DIR", help="its own data directory (not the core's)")
    f.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    f.add_argument("--port", type=int, default=None, help="port (0: a free one)")
    f.add_argument("--exchange", default=None, metavar="URL",
                   help="backfill gaps in the stream from the core's GET /v1/admin/journal (needs an admin key)")
    f.add_argument("--key", help="the admin key id for --exchange (env GPUX_KEY)")
    f.add_argument("--secret", help="its secret (env GPUX_SECRET)")
    f.add_argument("--log-level", default=os.environ.get("GPUX_LOG_LEVEL", "INFO"), help="log level (default INFO)")
    f.set_defaults(handler=_feeds)
