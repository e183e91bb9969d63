"""The `gpux` command line.  Handlers parse arguments and call one function each.

    gpux simulate [--engine numba|reference] [--class H100] [--config FILE.toml] [--batch N]
        JSON-lines commands on stdin -> JSON-lines events on stdout (docs/formats.md)
    gpux demo [--port 8080] [--data DIR] [--seconds N] [--every S] [--seed N] [--engine numba|reference]
              [--log-level LEVEL]
        the embedded exchange, a simulated market trading on it and the dashboard (docs/demo.md)

and, registered by their modules: serve, ask, bid, cancel, release, orders, leases, book, quote,
instruments (cli.trade; prices in dollars as written, `cli.units`); accounts (cli.accounts);
replay, verify (cli.feeds); settle, statement (cli.settle); agent (cli.agent); journal check,
journal salvage (cli.journal).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from exchange.instruments import ConfigError, instrument_config
from orderbook.book import ENGINES
from orderbook.engines import EngineUnavailable, open_book


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from cli.simulate import simulate, stream_lines

    book = open_book(instrument_config(args.gpu_class, args.config), args.engine, warn=_stderr)

    def open_class(name: str):  # a class named on a command line ({"class": ...}): its own book
        return open_book(instrument_config(name, args.config), args.engine, warn=_stderr)

    stats = simulate(stream_lines(sys.stdin.fileno()), sys.stdout.buffer, book, batch=args.batch,
                     default_class=args.gpu_class, open_class=open_class)
    return 0 if stats.errors == 0 or not args.strict else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.offline or args.steps is not None:
        _stderr("gpux: error: `gpux demo --offline` is gone: `gpux demo` runs a live market; to run commands "
                "through the books without a server, use `gpux simulate` (docs/formats.md)")
        return 2
    from app.logs import setup_logging
    from demo.live import run_live

    setup_logging(args.log_level)
    return run_live(port=args.port, data=args.data, seconds=args.seconds, seed=args.seed, engine=args.engine,
                    every=args.every)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpux", description="gpux: an exchange for GPU-hours")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    engine_help = "book engine (default: numba, or reference with a warning if numba cannot be loaded)"

    sim = sub.add_parser("simulate", help="run JSON-lines commands from stdin through one book",
                         description="Read JSON-lines commands from stdin, run them through one book "
                                     "and print one JSON event per line (docs/formats.md).")
    sim.add_argument("--engine", choices=ENGINES, default=None, help=engine_help)
    sim.add_argument("--class", dest="gpu_class", default="H100", metavar="NAME",
                     help="GPU class of the lines that name none (default H100); a line's \"class\" picks its own")
    sim.add_argument("--config", metavar="FILE.toml", default=None,
                     help="instrument settings, [instruments.NAME] tables of BookConfig fields")
    sim.add_argument("--batch", type=_positive, default=4096, metavar="N",
                     help="commands per book call (default 4096)")
    sim.add_argument("--strict", action="store_true", help="exit 1 if any line was malformed")
    sim.set_defaults(handler=_cmd_simulate)

    demo = sub.add_parser("demo", help="a live market: the exchange, simulated traders and the dashboard",
                          description="Start the embedded exchange with simulated providers and traders "
                                      "trading on it through the API, and the dashboard (docs/demo.md).")
    demo.add_argument("--port", type=int, default=8080,
                      help="port (default 8080, or a free one if it is taken; 0: a free one)")
    demo.add_argument("--data", metavar="DIR", default=None,
                      help="data directory to use and keep (default: a fresh temporary one, removed at exit)")
    demo.add_argument("--seconds", type=float, default=0, metavar="N", help="stop after N seconds (default: Ctrl-C)")
    demo.add_argument("--every", type=float, default=10.0, metavar="S", help="status line every S seconds")
    demo.add_argument("--log-level", default="WARNING", help="exchange log level on stderr (default WARNING)")
    demo.add_argument("--engine", choices=ENGINES, default=None, help=engine_help)
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--offline", action="store_true", help=argparse.SUPPRESS)  # removed: says so
    demo.add_argument("--steps", default=None, help=argparse.SUPPRESS)
    demo.set_defaults(handler=_cmd_demo)

    from cli import accounts as cli_accounts
    from cli import agent as agent_cli
    from cli import feeds as cli_feeds
    from cli import journal as cli_journal
    from cli import settle as cli_settle
    from cli import trade as cli_trade

    cli_trade.register(sub)
    cli_accounts.register(sub)
    cli_feeds.register(sub)
    cli_journal.register(sub)
    cli_settle.register(sub)
    agent_cli.register(sub)
    return parser


# what gpux writes (journal, snapshots, ledger, recording, keys) is the owner's alone: new
# directories 0700, new files 0600
UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(UMASK)
    try:
        return args.handler(args)
    except (ConfigError, EngineUnavailable) as e:
        print(f"gpux: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `gpux simulate ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
