"""`gpux serve` and the trading commands over the SDK: ask, bid, cancel, release, orders, leases,
book, quote, instruments.  Credentials come from --key/--secret or GPUX_KEY/GPUX_SECRET, the
server from --url or GPUX_URL (default http://127.0.0.1:8080).  Prices are written in dollars per
GPU-hour (``2.10``, ``$2.10``, ``2.10/h``; exact µ$ as ``2100000µ$``) and sent as the wire's integer
µ$ (`cli.units`).  Answers print as JSON, as the API gives them (µ$, UTC seconds); a list
endpoint's list prints bare.  Every failure prints one line, ``gpux: error: ...`` (a refusal:
``gpux: error: CODE: sentence``), and exits non-zero: 1 for a refusal or an exchange that cannot
be reached or does not answer within --timeout, 2 for a command line that cannot be sent.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cli.units import UnitError, parse_price

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
PRICE_CODES = ("BAD_PRICE", "OFF_TICK", "BAD_SPOT_PRICE")


class UsageError(Exception):
    """A command line that cannot be sent; the message is one sentence that says what to do."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from app.exchange import Deposed, StartupError, run_server
    from app.logs import setup_logging
    from exchange.config import load_config
    from exchange.journal import JournalError

    cfg = load_config(args.config).with_(host=args.host, port=args.port, data_dir=args.data,
                                         engine=args.engine, redis_url=args.redis, redis_prefix=args.prefix)
    if args.fsync is not None:
        cfg = cfg.with_(fsync=args.fsync)
    if args.ha or args.standby:
        if not cfg.redis_url:
            print("gpux: error: --ha and --standby need the Redis the leader and its standby share: --redis URL",
                  file=sys.stderr)
            return 2
        cfg = cfg.with_(ha=True)
    setup_logging(args.log_level)
    lease = engine = sock = None
    try:
        if args.standby:
            from app.exchange import listen_socket

            # the port reserved now (a clash is found at start, not at take-over), listened on then
            sock = listen_socket(cfg.host, cfg.port, listen=False)
            cfg = cfg.with_(port=sock.getsockname()[1])
            taken = _follow_as_standby(cfg, args)
            if taken is None:
                sock.close()
                return 0
            lease, engine = taken
        asyncio.run(run_server(cfg, lease=lease, engine=engine, sock=sock))
    except Deposed as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 3
    except (UsageError, StartupError) as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    except JournalError as e:
        print(f"gpux: error: the journal in {cfg.data_path} cannot be used: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _follow_as_standby(cfg: Any, args: argparse.Namespace) -> Any:
    """`gpux serve --standby`: follow the leader until this process takes its lease (returned, with
    the standby's engine) or is stopped (None)."""
    import signal
    import threading

    from app.standby import Standby
    from cli.follow import NeedsKey, backfill_from
    from cli.status import serve_metrics

    try:
        backfill = backfill_from(args)
    except NeedsKey as e:
        raise UsageError(str(e)) from None
    standby = Standby(cfg, backfill=backfill)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    server = serve_metrics(args.metrics, standby) if args.metrics else None
    print(f"gpux: standby of the leader at {cfg.redis_url} (stream {cfg.redis_prefix}:journal), data in "
          f"{cfg.data_path}; it takes over on port {cfg.port} when the leader's lease lapses", flush=True)
    try:
        lease = standby.follow(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for s, h in old.items():
            signal.signal(s, h)
    if lease is None:
        return None
    print(f"gpux: took over as the leader ({lease.token})", flush=True)
    return lease, standby.engine


def _cmd_gateway(args: argparse.Namespace) -> int:
    from app.ordergateway import run_gateway
    from cli.follow import run_follower_command

    return run_follower_command(args, run_gateway)


def _url(args: argparse.Namespace) -> str:
    return getattr(args, "url", None) or os.environ.get("GPUX_URL") or DEFAULT_URL


def _client(args: argparse.Namespace, signed: bool = True) -> Any:
    """The SDK's client for the command line's exchange and key; UsageError without a key when
    the command is ``signed``, ClientError BAD_URL for a URL that is not http(s)."""
    from client.api import Client

    key = getattr(args, "key", None) or os.environ.get("GPUX_KEY")
    secret = getattr(args, "secret", None) or os.environ.get("GPUX_SECRET")
    if signed and not (key and secret):
        missing = " and ".join(n for n, v in (("a key id", key), ("a secret", secret)) if not v)
        raise UsageError(f"this command needs an API key, and {missing} is missing: give --key and --secret, or "
                         "set GPUX_KEY and GPUX_SECRET (`gpux accounts create NAME --role ROLE` makes an account "
                         "and its key)")
    return Client(_url(args), key, secret, timeout=getattr(args, "timeout", None) or DEFAULT_TIMEOUT_S)


def _run(args: argparse.Namespace, fn: Callable[[Any], Awaitable[Any]],
         render: Callable[[Any], str] | None = None, signed: bool = True) -> int:
    """Call ``fn(client)``; print its result as JSON (or ``render(result)``).  Every failure prints
    one line and returns non-zero: a refusal ``gpux: error: CODE: sentence`` (1); an exchange that
    cannot be reached or does not answer in time (1); a command line that cannot be sent (2)."""
    import aiohttp

    from client.api import ClientError

    url = _url(args)
    timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT_S

    async def go() -> Any:
        async with _client(args, signed) as c:
            return await fn(c)

    def fail(message: str, code: int = 1) -> int:
        print(f"gpux: error: {message}", file=sys.stderr)
        return code

    try:
        out = asyncio.run(go())
    except UsageError as e:
        return fail(str(e), 2)
    except ClientError as e:
        if e.code == "BAD_URL":
            return fail(f"{e.message} (from {'--url' if getattr(args, 'url', None) else 'GPUX_URL'})", 2)
        hint = ""
        if e.code in PRICE_CODES:
            hint = " (the command line takes dollars per GPU-hour: 2.10, $2.10 or 2.10/h; exact µ$: 2100000µ$)"
        return fail(f"{e.code}: {e.message}{hint}")
    except TimeoutError:
        return fail(f"the exchange at {url} did not answer within {timeout:g} s; is it overloaded or stuck? "
                    "(--timeout S waits longer)")
    except aiohttp.ClientConnectorError as e:
        why = "nothing listens there" if e.os_error and e.os_error.errno == errno.ECONNREFUSED else str(e.os_error)
        return fail(f"cannot reach the exchange at {url}: {why}; start it with `gpux serve`, or point "
                    "--url or GPUX_URL at it")
    except (aiohttp.ClientError, OSError) as e:
        return fail(f"cannot talk to the exchange at {url}: {e or type(e).__name__}; check --url or GPUX_URL")
    print(render(out) if render is not None else json.dumps(out, indent=2))
    return 0


async def _price(c: Any, gpu_class: str, flag: str, text: str) -> int:
    """A price option as µ$; UsageError naming the unit, and the class's bounds and tick when the
    exchange can tell them."""
    try:
        return parse_price(text, flag)
    except UnitError as e:
        raise UsageError(f"{e}; {await _bounds(c, gpu_class)}") from None


async def _bounds(c: Any, gpu_class: str) -> str:
    from gateway.explain import usd

    try:
        instruments = await asyncio.wait_for(c.instruments(), 5)
    except Exception:  # the bounds are a courtesy: the error stands without them
        instruments = []
    for inst in instruments:
        if inst.get("name") == gpu_class:
            lo, hi, tick = inst["min_price"], inst["max_price"], inst["tick"]
            return (f"{gpu_class} prices are {usd(lo)} to {usd(hi)} per GPU-hour in steps of {usd(tick)} "
                    f"({lo} to {hi} µ$, tick {tick} µ$)")
    return "each class's price bounds and tick: `gpux instruments`"


def _time(text: str) -> int:
    """UTC seconds, or +N[s|m|h|d] from now."""
    try:
        if text.startswith("+"):
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1], 1)
            num = text[1:-1] if text[-1] in "smhd" else text[1:]
            return int(time.time()) + int(num) * unit
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: write UTC seconds (1767225600) or from now, "
                                         "+N with s, m, h or d (+2d)") from None


PRICE_HELP = "dollars per GPU-hour: 2.10, $2.10 or 2.10/h (exact µ$: 2100000µ$)"


def register(sub: Any) -> None:
    from cli.follow import add_follow_arguments
    from exchange.config import FSYNC_POLICIES
    from orderbook.book import ENGINES

    serve = sub.add_parser("serve", help="run the exchange (embedded: one process, one data directory)",
                           description="Run the whole exchange in one process over one data directory "
                                       "(docs/operations.md).  Nothing is created on disk before the port is "
                                       "bound and the data directory is free.")
    serve.add_argument("--config", metavar="FILE.toml", help="configuration (docs/operations.md)")
    serve.add_argument("--data", metavar="DIR", help="data directory (default gpux-data)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--engine", choices=ENGINES, help="book engine (default numba)")
    serve.add_argument("--redis", metavar="URL", help="also publish the journal to the Redis stream at URL")
    serve.add_argument("--prefix", default=None, help="Redis key prefix (default from the config: gpux)")
    serve.add_argument("--ha", action="store_true",
                       help="lead with a hot standby: take the leader's lease in Redis, answer a batch once it is "
                            "in the Redis stream too (docs/operations.md)")
    serve.add_argument("--standby", action="store_true",
                       help="follow the leader sharing --redis and take over when its lease lapses")
    serve.add_argument("--exchange", metavar="URL",
                       help="with --standby: backfill gaps in the stream from the leader's GET /v1/admin/journal")
    serve.add_argument("--key", help="with --exchange: an admin key id (env GPUX_KEY)")
    serve.add_argument("--secret", help="its secret (env GPUX_SECRET)")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="with --standby: /metrics and /healthz while it follows")
    serve.add_argument("--fsync", choices=FSYNC_POLICIES, help="journal fsync policy (default batch)")
    serve.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    serve.set_defaults(handler=_cmd_serve)

    gw = sub.add_parser("gateway", help="an order gateway in front of the core, over Redis (scale-out)",
                        description="Serve the trading API (REST and the trader WebSocket, as `gpux serve` does) "
                                    "from a process of its own: requests go to the core over Redis, reads come from "
                                    "a replica of the journal kept in --data (docs/operations.md).  Run any number.")
    add_follow_arguments(gw)
    gw.set_defaults(handler=_cmd_gateway)

    def conn(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help=f"exchange URL (env GPUX_URL, default {DEFAULT_URL})")
        p.add_argument("--key", help="API key id (env GPUX_KEY)")
        p.add_argument("--secret", help="API secret (env GPUX_SECRET)")
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"give up when the exchange has not answered within S seconds "
                            f"(default {DEFAULT_TIMEOUT_S:g})")
        return p

    ask = conn(sub.add_parser("ask", help="post an ask (providers; traders: resale with --lease)",
                              description="Post an ask: GPUs of CLASS from --start to --end at a firm price per "
                                          "GPU-hour, and optionally a cheaper spot price (docs/market-rules.md R5)."))
    ask.add_argument("gpu_class", metavar="CLASS", help="GPU class, e.g. H100 (`gpux instruments` lists them)")
    ask.add_argument("--gpus", type=int, required=True, help="how many GPUs")
    ask.add_argument("--price", required=True, help=f"firm price, {PRICE_HELP}")
    ask.add_argument("--spot-price", default=None, help=f"spot price, {PRICE_HELP} (default: no spot)")
    ask.add_argument("--start", type=_time, default=0, help="UTC seconds or +N[smhd] (default now)")
    ask.add_argument("--end", type=_time, required=True, help="UTC seconds or +N[smhd]")
    ask.add_argument("--min-hours", type=int, default=1, help="shortest lease sold from the ask, hours (default 1)")
    ask.add_argument("--post-only", action="store_true", help="refuse the ask if it would trade at once")
    ask.add_argument("--lease", type=int, default=0, help="resell this lease (its trade id in CLASS)")
    ask.add_argument("--client-order-id", metavar="ID",
                     help="your id for the order (1-64 of A-Z a-z 0-9 _ . : -): a retry with it creates nothing new")

    def ask_handler(a: argparse.Namespace) -> int:
        async def go(c: Any) -> Any:
            price = await _price(c, a.gpu_class, "--price", a.price)
            spot = await _price(c, a.gpu_class, "--spot-price", a.spot_price) if a.spot_price is not None else 0
            return await c.ask(a.gpu_class, a.gpus, price, a.end, spot, a.start, a.min_hours, a.post_only, a.lease,
                               a.client_order_id)
        return _run(a, go)

    ask.set_defaults(handler=ask_handler)

    bid = conn(sub.add_parser("bid", help="place a bid over the WebSocket (traders)",
                              description="Place a bid for GPUs of CLASS: spot, on-demand (both start now) or "
                                          "reserved (from --start), paying at most --limit per GPU-hour "
                                          "(docs/market-rules.md R6)."))
    bid.add_argument("gpu_class", metavar="CLASS", help="GPU class, e.g. H100 (`gpux instruments` lists them)")
    bid.add_argument("--kind", choices=("spot", "on_demand", "reserved"), required=True, help="what kind of GPU time")
    bid.add_argument("--gpus", type=int, required=True, help="how many GPUs")
    bid.add_argument("--hours", type=int, required=True, help="for how many hours")
    bid.add_argument("--limit", required=True, help=f"the highest price to pay, {PRICE_HELP}")
    bid.add_argument("--block", type=int, default=1,
                     help="fill in blocks of this many GPUs (divides --gpus; default 1)")
    bid.add_argument("--tif", choices=("GTC", "IOC", "FOK", "GTD"), default="GTC",
                     help="time in force: GTC rests until filled or cancelled (default), IOC fills what it can now, "
                          "FOK all now or nothing, GTD rests until --expire-at")
    bid.add_argument("--start", type=_time, default=0, help="reserved: UTC seconds or +N[smhd], on the hour")
    bid.add_argument("--expire-at", type=_time, default=0, help="GTD: when the bid expires, UTC seconds or +N[smhd]")
    bid.add_argument("--client-order-id", metavar="ID",
                     help="your id for the order (1-64 of A-Z a-z 0-9 _ . : -): a retry with it creates nothing new")

    def bid_handler(a: argparse.Namespace) -> int:
        async def go(c: Any) -> Any:
            limit = await _price(c, a.gpu_class, "--limit", a.limit)
            async with await c.trader() as t:
                return await t.bid(a.gpu_class, a.kind, a.gpus, a.hours, limit, a.block, a.tif, a.start,
                                   a.expire_at, a.client_order_id)
        return _run(a, go)

    bid.set_defaults(handler=bid_handler)

    cancel = conn(sub.add_parser("cancel", help="cancel an order by id",
                                 description="Cancel one of your open orders, bid or ask (R7)."))
    cancel.add_argument("oid", type=int, help="the order id (oid in the answer to ask or bid, or `gpux orders`)")
    cancel.set_defaults(handler=lambda a: _run(a, lambda c: c.cancel(a.oid)))

    release = conn(sub.add_parser("release", help="end an on-demand or spot lease now (traders)",
                                  description="Release one of your on-demand or spot leases now (R16): it ends at "
                                              "once and what it did not use is refunded."))
    release.add_argument("lease", metavar="LEASE", help="the lease's name, CLASS-TRADE_ID (e.g. H100-1, "
                                                          "from `gpux leases`)")

    def release_handler(a: argparse.Namespace) -> int:
        gpu_class, _, trade_id = a.lease.rpartition("-")
        if not gpu_class or not trade_id.isdigit():
            print(f"gpux: error: {a.lease!r} is not a lease name: write CLASS-TRADE_ID, e.g. H100-1 "
                  "(`gpux leases` lists yours)", file=sys.stderr)
            return 2
        return _run(a, lambda c: c.release(gpu_class, int(trade_id)))

    release.set_defaults(handler=release_handler)

    orders = conn(sub.add_parser("orders", help="your open orders",
                                 description="Your open orders, bids and asks, as a JSON array."))
    orders.set_defaults(handler=lambda a: _run(a, lambda c: c.orders()))

    leases = conn(sub.add_parser("leases", help="your leases, as buyer or provider",
                                 description="Your leases, as buyer or provider, as a JSON array "
                                             "(the fields: docs/api.md, Leases)."))
    leases.set_defaults(handler=lambda a: _run(a, lambda c: c.leases()))

    book = conn(sub.add_parser("book", help="the public order book of a class",
                               description="Level 2 of CLASS: [price µ$, GPUs] per price, each side."))
    book.add_argument("gpu_class", metavar="CLASS", help="GPU class, e.g. H100")
    book.add_argument("--depth", type=int, default=20, help="price levels per side (default 20)")
    book.set_defaults(handler=lambda a: _run(a, lambda c: c.book(a.gpu_class, a.depth), signed=False))

    instruments = conn(sub.add_parser("instruments", help="the GPU classes, their price bounds, tick and fees",
                                      description="The exchange's GPU classes with their tick, price bounds "
                                                  "(µ$ per GPU-hour), size limits, gate and fees."))
    instruments.set_defaults(handler=lambda a: _run(a, lambda c: c.instruments(), signed=False))

    quote = conn(sub.add_parser("quote", help="what GPUs x hours of a kind would cost now",
                                description="What GPUS x HOURS of a kind would cost now (the fills an IOC bid "
                                            "would get), or why it cannot fill."))
    quote.add_argument("gpu_class", metavar="CLASS", help="GPU class, e.g. H100")
    quote.add_argument("--kind", choices=("spot", "on_demand", "reserved"), required=True, help="what kind of GPU time")
    quote.add_argument("--gpus", type=int, required=True, help="how many GPUs")
    quote.add_argument("--hours", type=int, required=True, help="for how many hours")
    quote.add_argument("--start", type=_time, default=0, help="reserved: UTC seconds or +N[smhd], on the hour")
    quote.add_argument("--block", type=int, default=1, help="in blocks of this many GPUs (default 1)")
    quote.add_argument("--limit", default=None, help=f"the highest price, {PRICE_HELP} (default: any)")

    def quote_handler(a: argparse.Namespace) -> int:
        async def go(c: Any) -> Any:
            limit = await _price(c, a.gpu_class, "--limit", a.limit) if a.limit is not None else 0
            return await c.quote(a.gpu_class, a.kind, a.gpus, a.hours, a.start, a.block, limit)
        return _run(a, go, signed=False)

    quote.set_defaults(handler=quote_handler)
