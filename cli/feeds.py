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
from typing import Any


def _replay(args: argparse.Namespace) -> int:
    from feeds.replay import main

    return main(args)


def _verify(args: argparse.Namespace) -> int:
    from feeds.verify import main

    return main(args)


def _feeds(args: argparse.Namespace) -> int:
    from app.marketdata import run_marketdata
    from cli.follow import run_follower_command

    return run_follower_command(args, run_marketdata)


def register(sub: Any) -> None:
    from cli.follow import add_follow_arguments
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
    add_follow_arguments(f)
    f.set_defaults(handler=_feeds)
