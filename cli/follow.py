"""What `gpux feeds`, `gpux gateway`, `gpux settle` and `gpux serve --standby` share: following
the core's journal stream, with gaps backfilled from the core's journal-tail endpoint."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any


class NeedsKey(ValueError):
    """--exchange without an admin key."""


def backfill_from(args: argparse.Namespace) -> Any:
    """The backfill source of ``--exchange URL`` (an admin key: --key/--secret or GPUX_KEY/
    GPUX_SECRET), or None; NeedsKey without a key."""
    if not getattr(args, "exchange", None):
        return None
    from exchange.stream import HttpJournal
    from gateway.auth import Signer

    key, secret = args.key or os.environ.get("GPUX_KEY"), args.secret or os.environ.get("GPUX_SECRET")
    if not key or not secret:
        raise NeedsKey("--exchange needs an admin key: --key/--secret or GPUX_KEY/GPUX_SECRET")
    return HttpJournal(args.exchange, Signer(key, secret).headers)


def add_follow_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a process that follows the core and serves HTTP."""
    p.add_argument("--redis", required=True, metavar="URL", help="the core's Redis (gpux serve --redis URL)")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default from the config: gpux)")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="the exchange's configuration (classes)")
    p.add_argument("--data", default=None, metavar="DIR", help="its own data directory (not the core's)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (0: a free one)")
    p.add_argument("--exchange", default=None, metavar="URL",
                   help="backfill gaps in the stream from the core's GET /v1/admin/journal (needs an admin key)")
    p.add_argument("--key", help="the admin key id for --exchange (env GPUX_KEY)")
    p.add_argument("--secret", help="its secret (env GPUX_SECRET)")
    p.add_argument("--log-level", default=os.environ.get("GPUX_LOG_LEVEL", "INFO"), help="log level (default INFO)")


def run_follower_command(args: argparse.Namespace, run: Callable[[Any, Any], Coroutine[Any, Any, None]]) -> int:
    """Load the configuration, then ``run(cfg, backfill)`` until stopped; the exit status."""
    from app.exchange import StartupError
    from app.logs import setup_logging
    from exchange.config import load_config

    cfg = load_config(args.config).with_(host=args.host, port=args.port, data_dir=args.data, redis_url=args.redis,
                                         redis_prefix=args.prefix)
    try:
        backfill = backfill_from(args)
    except NeedsKey as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    try:
        asyncio.run(run(cfg, backfill))
    except StartupError as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
