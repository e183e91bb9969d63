"""`gpux settle` (settlement as a replica of the journal) and `gpux statement` (an account's ledger).

    gpux settle --redis URL [--config FILE] [--ledger FILE] [--exchange URL --key K --secret S | --journal DIR]
        keep a ledger from the journal `gpux serve --redis URL` streams, gaps backfilled from the exchange
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
from cli.status import serve_metrics


def _cmd_settle(args: argparse.Namespace) -> int:
    from app.logs import setup_logging
    from cli.follow import NeedsKey, backfill_from
    from exchange.config import load_config
    from settlement.link import LEDGER_FILE
    from settlement.replica import FileJournal, JournalSource, run_replica

    cfg = load_config(args.config).with_(data_dir=args.data, redis_prefix=args.prefix)
    setup_logging(args.log_level)
    ledger = Path(args.ledger) if args.ledger else cfg.data_path / LEDGER_FILE
    if (ledger.parent / "journal").is_dir():
        print(f"gpux: error: {ledger.parent} is an exchange's data directory (it has a journal): its ledger is the "
              "exchange's own; give gpux settle a directory of its own (--data DIR or --ledger FILE)", file=sys.stderr)
        return 2
    ledger.parent.mkdir(parents=True, exist_ok=True)
    backfill: JournalSource | None = None
    if args.journal:
        backfill = FileJournal(args.journal)
    else:
        try:
            backfill = backfill_from(args)
        except NeedsKey as e:
            print(f"gpux: error: {e}", file=sys.stderr)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"gpux: settling {', '.join(cfg.instruments)} from {args.redis} (stream {cfg.redis_prefix}:journal) into "
          f"{ledger}; gaps backfilled from {backfill.name if backfill else 'nowhere (no --exchange or --journal)'}",
          flush=True)
    server = None

    def started(runner: Any) -> None:
        nonlocal server
        if args.metrics:
            server = serve_metrics(args.metrics, runner)

    c = run_replica(cfg, args.redis, ledger, backfill=backfill, stop=stop, snapshot_every=args.snapshot_every,
                    on_start=started)
    if server is not None:
        server.shutdown()
    logging.getLogger("gpux.settle").info("stopped", extra={"seq": c.replica.engine.seq, "applied": c.replica.applied,
                                                             "gaps": c.gaps, "backfilled": c.backfilled})
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
    p = sub.add_parser("settle", help="keep a settlement ledger from the exchange's journal (a replica)",
                       description="Remote settlement (docs/settlement.md): a replica of the exchange that reads "
                                   "its journal from the Redis stream `gpux serve --redis URL` writes, applies it to "
                                   "an engine of its own and keeps a SQLite ledger equal to the exchange's.  A gap in "
                                   "the stream is backfilled from --exchange (the journal-tail endpoint, admin key) "
                                   "or --journal (the files).")
    p.add_argument("--redis", required=True, metavar="URL", help="e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--config", default=None, metavar="FILE", help="the exchange's TOML configuration (classes, fees)")
    p.add_argument("--data", default=None, metavar="DIR", help="data directory (default from the config)")
    p.add_argument("--ledger", default=None, metavar="FILE",
                   help="ledger file (default DIR/ledger.db); the replica's snapshots go to FILE-replica/")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default from the config: gpux)")
    p.add_argument("--exchange", default=None, metavar="URL",
                   help="backfill gaps from the exchange's GET /v1/admin/journal (needs an admin key)")
    p.add_argument("--key", help="the admin key id for --exchange (env GPUX_KEY)")
    p.add_argument("--secret", help="its secret (env GPUX_SECRET)")
    p.add_argument("--journal", default=None, metavar="DIR", help="backfill gaps from the journal files in DIR")
    p.add_argument("--snapshot-every", type=int, default=50_000, metavar="N",
                   help="write a replica snapshot every N journal entries (restarts replay from it)")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="serve /metrics and /healthz there")
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
