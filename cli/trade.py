"""`gpux serve` and the trading commands over the SDK: ask, bid, cancel, orders, book, quote,
leases.  Credentials come from --key/--secret or GPUX_KEY/GPUX_SECRET, the server from --url or
GPUX_URL (default http://127.0.0.1:8080).  Answers print as JSON; refusals print
``gpux: error: CODE: sentence`` and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.exchange import run_server
    from app.logs import setup_logging
    from exchange.config import load_config

    cfg = load_config(args.config).with_(host=args.host, port=args.port, data_dir=args.data,
                                         engine=args.engine, redis_url=args.redis)
    if args.fsync is not None:
        cfg = cfg.with_(fsync=args.fsync)
    setup_logging(args.log_level)
    asyncio.run(run_server(cfg))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from client.api import Client

    return Client(args.url or os.environ.get("GPUX_URL", DEFAULT_URL),
                  args.key or os.environ.get("GPUX_KEY"), args.secret or os.environ.get("GPUX_SECRET"))


def _run(args: argparse.Namespace, fn: Callable[[Any], Awaitable[Any]],
         render: Callable[[Any], str] | None = None) -> int:
    """Call ``fn(client)``; print its result as JSON (or ``render(result)``); a refusal prints
    ``gpux: error: CODE: sentence`` and returns 1."""
    from client.api import ClientError

    async def go() -> Any:
        async with _client(args) as c:
            return await fn(c)

    try:
        out = asyncio.run(go())
    except ClientError as e:
        print(f"gpux: error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gpux: error: cannot reach the exchange: {e}", file=sys.stderr)
        return 1
    print(render(out) if render is not None else json.dumps(out, indent=2))
    return 0


def _time(text: str) -> int:
    """UTC seconds, or +N[s|m|h|d] from now."""
    if text.startswith("+"):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1], 1)
        num = text[1:-1] if text[-1] in "smhd" else text[1:]
        return int(time.time()) + int(num) * unit
    return int(text)


def register(sub: Any) -> None:
    from exchange.config import FSYNC_POLICIES
    from orderbook.book import ENGINES

    serve = sub.add_parser("serve", help="run the exchange (embedded: one process, one data directory)")
    serve.add_argument("--config", metavar="FILE.toml", help="configuration (docs/operations.md)")
    serve.add_argument("--data", metavar="DIR", help="data directory (default gpux-data)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--engine", choices=ENGINES, help="book engine (default numba)")
    serve.add_argument("--redis", metavar="URL", help="also publish events to Redis streams at URL")
    serve.add_argument("--fsync", choices=FSYNC_POLICIES, help="journal fsync policy (default batch)")
    serve.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    serve.set_defaults(handler=_cmd_serve)

    def conn(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help=f"exchange URL (env GPUX_URL, default {DEFAULT_URL})")
        p.add_argument("--key", help="API key id (env GPUX_KEY)")
        p.add_argument("--secret", help="API secret (env GPUX_SECRET)")
        return p

    ask = conn(sub.add_parser("ask", help="post an ask (providers; traders: resale with --lease)"))
    ask.add_argument("gpu_class", metavar="CLASS")
    ask.add_argument("--gpus", type=int, required=True)
    ask.add_argument("--price", type=int, required=True, help="firm price, µ$ per GPU-hour")
    ask.add_argument("--spot-price", type=int, default=0, help="spot price, µ$ per GPU-hour (0: no spot)")
    ask.add_argument("--start", type=_time, default=0, help="UTC seconds or +N[smhd] (default now)")
    ask.add_argument("--end", type=_time, required=True, help="UTC seconds or +N[smhd]")
    ask.add_argument("--min-hours", type=int, default=1)
    ask.add_argument("--post-only", action="store_true")
    ask.add_argument("--lease", type=int, default=0, help="resell this lease (its trade id in CLASS)")
    ask.add_argument("--client-order-id")
    ask.set_defaults(handler=lambda a: _run(a, lambda c: c.ask(
        a.gpu_class, a.gpus, a.price, a.end, a.spot_price, a.start, a.min_hours, a.post_only, a.lease,
        a.client_order_id)))

    bid = conn(sub.add_parser("bid", help="place a bid over the WebSocket (traders)"))
    bid.add_argument("gpu_class", metavar="CLASS")
    bid.add_argument("--kind", choices=("spot", "on_demand", "reserved"), required=True)
    bid.add_argument("--gpus", type=int, required=True)
    bid.add_argument("--hours", type=int, required=True)
    bid.add_argument("--limit", type=int, required=True, help="highest price, µ$ per GPU-hour")
    bid.add_argument("--block", type=int, default=1)
    bid.add_argument("--tif", choices=("GTC", "IOC", "FOK", "GTD"), default="GTC")
    bid.add_argument("--start", type=_time, default=0, help="reserved: UTC seconds or +N[smhd], on the hour")
    bid.add_argument("--expire-at", type=_time, default=0)
    bid.add_argument("--client-order-id")

    def bid_handler(a: argparse.Namespace) -> int:
        async def go(c: Any) -> Any:
            async with await c.trader() as t:
                return await t.bid(a.gpu_class, a.kind, a.gpus, a.hours, a.limit, a.block, a.tif, a.start,
                                   a.expire_at, a.client_order_id)
        return _run(a, go)

    bid.set_defaults(handler=bid_handler)

    cancel = conn(sub.add_parser("cancel", help="cancel an order by id"))
    cancel.add_argument("oid", type=int)
    cancel.set_defaults(handler=lambda a: _run(a, lambda c: c.cancel(a.oid)))

    orders = conn(sub.add_parser("orders", help="your open orders"))
    orders.set_defaults(handler=lambda a: _run(a, lambda c: c.orders()))

    leases = conn(sub.add_parser("leases", help="your leases, as buyer or provider"))
    leases.set_defaults(handler=lambda a: _run(a, lambda c: c.leases()))

    book = conn(sub.add_parser("book", help="the public order book of a class"))
    book.add_argument("gpu_class", metavar="CLASS")
    book.add_argument("--depth", type=int, default=20)
    book.set_defaults(handler=lambda a: _run(a, lambda c: c.book(a.gpu_class, a.depth)))

    quote = conn(sub.add_parser("quote", help="what GPUs x hours of a kind would cost now"))
    quote.add_argument("gpu_class", metavar="CLASS")
    quote.add_argument("--kind", choices=("spot", "on_demand", "reserved"), required=True)
    quote.add_argument("--gpus", type=int, required=True)
    quote.add_argument("--hours", type=int, required=True)
    quote.add_argument("--start", type=_time, default=0)
    quote.add_argument("--block", type=int, default=1)
    quote.add_argument("--limit", type=int, default=0)
    quote.set_defaults(handler=lambda a: _run(a, lambda c: c.quote(a.gpu_class, a.kind, a.gpus, a.hours,
                                                                    a.start, a.block, a.limit)))
