"""`gpux accounts`: create accounts, list them, record deposits, issue and revoke API keys.

    gpux accounts create NAME --role ROLE [--deposit USD] [--ssh-key FILE_OR_KEY] [--data DIR] [--json]
    gpux accounts list [--data DIR] [--json]
    gpux accounts deposit NAME USD [--note TEXT] [--data DIR]
    gpux accounts key NAME [--data DIR] [--json]
    gpux accounts revoke KEY_ID [--data DIR]

The store is DIR/accounts.db; DIR is --data, else $GPUX_DATA, else ./gpux-data. Amounts are
given in USD as decimal strings and kept as integer µ$ (at most 6 decimals). `register()` hooks
the command into `gpux`'s parser; `main()` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cli.units import UnitError, format_usd, parse_money
from gateway.accounts import ROLES, Account, AccountError, AccountStore, accounts_path

DEFAULT_DATA = "./gpux-data"


class CliError(Exception):
    """A refused command line; the message is one sentence."""


def parse_usd(text: str) -> int:
    """A non-negative USD amount as written, exactly as integer µ$ (`cli.units.parse_money`):
    "12.345678" -> 12_345_678, "$1,000" -> 1_000_000_000."""
    try:
        return parse_money(text)
    except UnitError as e:
        raise CliError(str(e)) from None


def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("GPUX_DATA") or DEFAULT_DATA)


def _open(args: argparse.Namespace, *, create: bool) -> AccountStore:
    path = accounts_path(data_dir(args.data))
    if not create and not path.exists():
        raise CliError(f"there is no account store at {path}; `gpux accounts create` makes one")
    if create and not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    return AccountStore(path)


def _find(store: AccountStore, ref: str) -> Account:
    """An account by name, or by id if ``ref`` is all digits and no account has that name."""
    account = store.account(ref)
    if account is None and ref.isdigit():
        account = store.account(int(ref))
    if account is None:
        raise CliError(f"there is no account named {ref}")
    return account


def _ssh_key(value: str) -> str:
    """--ssh-key: a file holding the key, or the key itself."""
    path = Path(value).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read the SSH key file {value}: {e}") from None
    if value.lstrip().startswith(("ssh-", "ecdsa-", "sk-")):
        return value
    raise CliError(f"--ssh-key {value}: no such file, and not an OpenSSH public key either")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj))


def _print_secret(key_id: str, secret: str) -> None:
    print(f"key id:  {key_id}")
    print(f"secret:  {secret}")
    print("The secret is not shown again: store it now (`gpux accounts key NAME` makes another key).")


def cmd_create(args: argparse.Namespace) -> int:
    deposit = parse_usd(args.deposit) if args.deposit is not None else 0
    ssh = _ssh_key(args.ssh_key) if args.ssh_key is not None else None
    with _open(args, create=True) as store:
        account, key_id, secret = store.create_account(args.name, args.role, deposit=deposit,
                                                       ssh_public_key=ssh)
    if args.json:
        _print_json({"account_id": account.id, "name": account.name, "role": account.role,
                     "key_id": key_id, "secret": secret})
        return 0
    print(f"account {account.id}: {account.name} ({account.role})")
    if deposit:
        print(f"deposit: {format_usd(deposit)} USD")
    _print_secret(key_id, secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        accounts = store.accounts()
        totals = store.deposits()
        keys = {a.id: len(store.key_ids(a.id)) for a in accounts}
    if args.json:
        _print_json([{"account_id": a.id, "name": a.name, "role": a.role, "deposited": totals.get(a.id, 0),
                      "keys": keys[a.id]} for a in accounts])
        return 0
    if not accounts:
        print("no accounts")
        return 0
    rows = [("ID", "NAME", "ROLE", "DEPOSITED USD", "KEYS")]
    rows += [(str(a.id), a.name, a.role, format_usd(totals.get(a.id, 0)), str(keys[a.id])) for a in accounts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.rjust(w) if i in (0, 3, 4) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    return 0


def cmd_deposit(args: argparse.Namespace) -> int:
    amount = parse_usd(args.usd)
    with _open(args, create=False) as store:
        account = _find(store, args.name)
        total = store.deposit(account.id, amount, note=args.note)
    print(f"deposited {format_usd(amount)} USD to {account.name} (account {account.id}); "
          f"total deposited {format_usd(total)} USD")
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        account = _find(store, args.name)
        key_id, secret = store.create_key(account.id)
    if args.json:
        _print_json({"account_id": account.id, "name": account.name, "role": account.role,
                     "key_id": key_id, "secret": secret})
        return 0
    print(f"new key for account {account.id}: {account.name} ({account.role})")
    _print_secret(key_id, secret)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        store.revoke_key(args.key_id)
    print(f"revoked {args.key_id}")
    return 0


Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """Run a handler; a refused command prints `gpux: error: ...` to stderr and returns 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (CliError, AccountError) as e:
            print(f"gpux: error: {e}", file=sys.stderr)
        except (sqlite3.Error, OSError) as e:
            print(f"gpux: error: the account store cannot be used: {e}", file=sys.stderr)
        return 2

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `accounts` and its subcommands to a parser's subparsers (each sets ``handler``)."""
    accounts = subparsers.add_parser("accounts", help="accounts, deposits and API keys",
                                     description="Manage the exchange's accounts, deposits and API keys "
                                                 "(docs/auth.md).")
    sub = accounts.add_subparsers(dest="accounts_command", required=True, metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", metavar="DIR", default=None,
                       help=f"data directory holding accounts.db (default: $GPUX_DATA or {DEFAULT_DATA})")

    create = sub.add_parser("create", help="create an account and its first API key",
                            description="Create an account and its first API key; "
                                        "the secret is printed once.")
    create.add_argument("name", metavar="NAME", help="1-64 characters of A-Z a-z 0-9 _ . -")
    create.add_argument("--role", required=True, choices=ROLES, help="what the account may do (docs/auth.md)")
    create.add_argument("--deposit", metavar="USD", default=None,
                        help="initial deposit in dollars: 1000, 1000.50 or $1,000.50 (at most 6 decimals)")
    create.add_argument("--ssh-key", metavar="FILE_OR_KEY", default=None,
                        help="OpenSSH public key (a .pub file or the key line) for the account's leases")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    common(create)
    create.set_defaults(handler=_guarded(cmd_create))

    lst = sub.add_parser("list", help="list accounts with their deposits",
                         description="List the accounts, their roles, deposits (USD) and live keys.")
    lst.add_argument("--json", action="store_true", help="print one JSON array (deposited in integer µ$)")
    common(lst)
    lst.set_defaults(handler=_guarded(cmd_list))

    dep = sub.add_parser("deposit", help="record a deposit for an account",
                         description="Record a deposit for an account, in USD (at most 6 decimals).")
    dep.add_argument("name", metavar="NAME", help="account name (or id)")
    dep.add_argument("usd", metavar="USD", help="amount in dollars, e.g. 250, $1,000 or 12.345678")
    dep.add_argument("--note", default="", help="a note kept with the deposit")
    common(dep)
    dep.set_defaults(handler=_guarded(cmd_deposit))

    key = sub.add_parser("key", help="issue another API key for an account",
                         description="Issue another API key for an account; the secret is printed once.")
    key.add_argument("name", metavar="NAME", help="account name (or id)")
    key.add_argument("--json", action="store_true", help="print one JSON object")
    common(key)
    key.set_defaults(handler=_guarded(cmd_key))

    revoke = sub.add_parser("revoke", help="revoke an API key",
                            description="Revoke an API key for good; the account's other keys keep working.")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key id, gk_...")
    common(revoke)
    revoke.set_defaults(handler=_guarded(cmd_revoke))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpux", description="gpux: an exchange for GPU-hours")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`gpux accounts ...` alone: ``main(["accounts", "list"])``."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
