"""`gpux replay` and `gpux verify`: the market-data recording (feeds/, docs/feeds.md).

    gpux replay PATH [--from T] [--to T] [--class NAME] [--channel events|book|trades|ticker|candles|index]
                     [--interval 1m|1h] [--every S] [--speed X] [--format jsonl|csv|parquet] [-o FILE]
                     [--anonymize] [--progress] [--serve [HOST:]PORT]
    gpux verify DATA_DIR [--config FILE.toml] [--engine numba|reference] [--json]
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
