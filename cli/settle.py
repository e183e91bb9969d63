"""`gpux settle` (settlement as a Redis consumer group) and `gpux statement` (an account's ledger).

    gpux settle --redis URL [--config FILE] [--ledger FILE] [--group G] [--consumer NAME]
        settle the events `gpux serve --redis URL` streams, exactly once, into a ledger file
    gpux statement [ACCOUNT] [--key K --secret S | --data DIR] [--json]
        balances, transfers with running balances, and leases: over REST with the account's
        key (admin/analyst keys may name any ACCOUNT), or straight from DIR/ledger.db
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cli.accounts import format_usd


def _cmd_settle(args: argparse.Namespace) -> int:
    from app.logs import setup_logging
    from exchange.config import load_config
    from settlement.consumer import run_consumer
    from settlement.link import LEDGER_FILE, settlement_config

    cfg = load_config(args.config).with_(data_dir=args.data, redis_prefix=args.prefix)
    setup_logging(args.log_level)
    ledger = Path(args.ledger) if args.ledger else cfg.data_path / LEDGER_FILE
    ledger.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"gpux: settling {', '.join(cfg.instruments)} from {args.redis} (group {args.group}) into {ledger}",
          flush=True)
    c = run_consumer(args.redis, cfg.redis_prefix, list(cfg.instruments), ledger, group=args.group,
                     consumer=args.consumer, config=settlement_config(cfg), stop=stop,
                     claim_idle_ms=args.claim_idle_ms, synchronous=cfg.ledger_synchronous)
    logging.getLogger("gpux.settlement").info("stopped", extra={"applied": c.applied, "commits": c.commits,
                                                                "claimed": c.claimed})
    return 0


def _statement_offline(data: Path, account: str) -> dict[str, Any]:
    from gateway.accounts import AccountStore
    from settlement.link import LEDGER_FILE
    from settlement.service import Settlement

    path = data / LEDGER_FILE
    if not path.exists():
        raise SystemExit(f"gpux: error: no ledger at {path}")
    store = AccountStore(data / "accounts.db")
    try:
        acc = store.account(int(account) if account.isdigit() else account)
    finally:
        store.close()
    if acc is None:
        raise SystemExit(f"gpux: error: no account {account!r}")
    s = Settlement(path)
    try:
        return s.statement(acc.id)
    finally:
        s.close()


def _cmd_statement(args: argparse.Namespace) -> int:
    if args.data:
        if not args.account:
            print("gpux: error: name the ACCOUNT (id or name) when reading --data", file=sys.stderr)
            return 2
        st = _statement_offline(Path(args.data), args.account)
    else:
        from cli.trade import _run

        query = {"account": args.account} if args.account else None
        return _run(args, lambda c: c.request("GET", "/v1/account/statement", query=query),
                    None if args.json else render_statement)
    print(json.dumps(st, indent=2) if args.json else render_statement(st))
    return 0


def render_statement(st: dict[str, Any]) -> str:
    """A statement as text: balances, then transfers (newest last), then leases."""
    lines = [f"account {st['account']}", "", "balances (USD)"]
    for kind, amount in sorted(st["balances"].items()):
        lines.append(f"  {kind:<14} {format_usd(amount):>18}")
    lines += ["", f"transfers ({len(st['transfers'])})",
              f"  {'time':>10}  {'amount':>16}  {'account':<14} {'balance':>16}  id"]
    for t in st["transfers"]:
        lines.append(f"  {t.get('time', 0):>10}  {format_usd(t['amount']):>16}  {t.get('account', ''):<14} "
                     f"{format_usd(t.get('balance', 0)):>16}  {t['id']}")
    lines += ["", f"leases ({len(st['leases'])})"]
    for x in st["leases"]:
        lines.append(f"  {x['lease']:<12} {x['status']:<12} {x['kind']:<9} {x['gpus']:>5} GPUs  "
                     f"{x['start']}..{x['end']}  price {format_usd(x['price'])}  paid {format_usd(x['paid'])}  "
                     f"buyer {x['buyer']} provider {x['provider']}")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("settle", help="settle the exchange's events from Redis (consumer group), exactly once",
                       description="Distributed settlement (docs/settlement.md): a member of a Redis Streams "
                                   "consumer group on the streams `gpux serve --redis URL` writes, committing every "
                                   "event exactly once to a SQLite ledger.")
    p.add_argument("--redis", required=True, metavar="URL", help="e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--config", default=None, metavar="FILE", help="the exchange's TOML configuration (classes, fees)")
    p.add_argument("--data", default=None, metavar="DIR", help="data directory (default from the config)")
    p.add_argument("--ledger", default=None, metavar="FILE", help="ledger file (default DIR/ledger.db)")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default from the config: gpux)")
    p.add_argument("--group", default="settlement", help="the consumer group's name (default settlement)")
    p.add_argument("--consumer", default=None, help="this member's name (default host-pid)")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="claim entries another member left pending this long (it died)")
    p.add_argument("--log-level", default=os.environ.get("GPUX_LOG_LEVEL", "INFO"),
                   help="log level (default $GPUX_LOG_LEVEL or INFO)")
    p.set_defaults(handler=_cmd_settle)

    p = sub.add_parser("statement", help="an account's ledger: balances, transfers, leases",
                       description="Print an account's statement from the ledger (R17): its balances, every "
                                   "transfer that touched it with running balances, and its leases.  Over REST with "
                                   "the account's key, or read straight from a data directory with --data.")
    p.add_argument("account", nargs="?", default=None,
                   help="account id (or name with --data); admin and analyst keys may name any account")
    p.add_argument("--data", default=None, metavar="DIR", help="read DIR/ledger.db directly (no server needed)")
    p.add_argument("--json", action="store_true", help="print the statement as JSON (amounts in integer µ$)")
    p.add_argument("--url", help="exchange URL (env GPUX_URL, default http://127.0.0.1:8080)")
    p.add_argument("--key", help="API key id (env GPUX_KEY)")
    p.add_argument("--secret", help="API secret (env GPUX_SECRET)")
    p.set_defaults(handler=_cmd_statement)
