"""The account store: accounts, their API keys and their deposits, in one SQLite file.

The file is ``accounts.db`` in the exchange's data directory (:func:`accounts_path`). It is
opened in WAL mode with a busy timeout, so the gateway, the settlement process and the
``gpux accounts`` command line can all use it at the same time; it is created with mode 0600
because it holds the API secrets.

Account ids are the integer ``account`` ids of the order book: SQLite hands them out from 1.
Money is integer µ$ (1 USD = 1_000_000 µ$).

Roles (one per account; docs/auth.md has the table the gateway enforces):

- ``trader``: place bids, cancel or amend its own orders, release its own leases, post
  *resale* asks for leases it holds;
- ``provider``: post, cancel and amend asks, list its leases;
- ``analyst``: read public data and market data, nothing that trades;
- ``admin``: everything, plus halt/resume, the kill switch and account management.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ROLES = ("trader", "provider", "analyst", "admin")
ROLE_RIGHTS = {
    "trader": "bid; cancel or amend its own orders; release its own leases; "
              "post resale asks for leases it holds",
    "provider": "post, cancel and amend asks; list its leases",
    "analyst": "read public data and market data",
    "admin": "everything, plus halt/resume, the kill switch and account management",
}

ACCOUNTS_DB = "accounts.db"
MICRO_PER_USD = 1_000_000
MAX_TOTAL = 10**18  # µ$ (10^12 USD): an account's deposits add up to at most this, far from SQLite's 2^63
MAX_ALL = 4 * 10**18  # µ$: all accounts' deposits together (the exchange's external balance is their sum)
KEY_PREFIX = "gk_"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KEY_ID_RE = re.compile(r"gk_[A-Za-z0-9_-]{16}")
_SSH_TYPE_RE = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+")
MAX_SSH_KEY = 16_384
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ({", ".join(f"'{r}'" for r in ROLES)})),
    created_at INTEGER NOT NULL,
    ssh_public_key TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS deposits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    created_at INTEGER NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deposits_account ON deposits(account_id);
"""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class ApiKey:
    """A live API key with its account's role. The secret never shows in repr() or str()."""

    key_id: str
    account_id: int
    role: str
    secret: str = field(repr=False)


class AccountError(ValueError):
    """A refused account operation: a stable ``code`` and a one-sentence ``message``.

    Codes: NAME_TAKEN, BAD_NAME, BAD_ROLE, BAD_AMOUNT, BAD_SSH_KEY, UNKNOWN_ACCOUNT, UNKNOWN_KEY,
    CLOSED (the store was used after close()).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def accounts_path(data_dir: str | Path) -> Path:
    """Where the account store of a data directory lives."""
    return Path(data_dir) / ACCOUNTS_DB


def new_key_id() -> str:
    """``gk_`` and 16 url-safe characters (96 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(12)


def new_secret() -> str:
    """32 random bytes, url-safe base64 (43 characters), never beginning with "-": after
    ``--secret`` on a command line such a secret would be read as an option (1 secret in 64)."""
    while True:
        s = secrets.token_urlsafe(32)
        if s[0] != "-":
            return s


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AccountError("BAD_NAME", "an account name is 1 to 64 characters of A-Z a-z 0-9 _ . -")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError("BAD_ROLE", f"the role must be one of {', '.join(ROLES)}")
    return role


def check_ssh_key(key: str) -> str:
    """One OpenSSH public key line, ``TYPE BASE64 [COMMENT]``; returned stripped."""
    if not isinstance(key, str):
        raise AccountError("BAD_SSH_KEY", "the SSH public key must be text")
    key = key.strip()
    if not key or len(key) > MAX_SSH_KEY or "\n" in key or "\r" in key:
        raise AccountError("BAD_SSH_KEY", "the SSH public key must be one line of an OpenSSH .pub file")
    parts = key.split()
    if len(parts) < 2 or not _SSH_TYPE_RE.fullmatch(parts[0]):
        raise AccountError("BAD_SSH_KEY", "the SSH public key must look like 'ssh-ed25519 AAAA... comment'")
    try:
        base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise AccountError("BAD_SSH_KEY", "the SSH public key's second field is not base64") from None
    return key


def _check_amount(amount: int, *, allow_zero: bool) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise AccountError("BAD_AMOUNT", "an amount is an integer number of µ$")
    if amount < 0:
        raise AccountError("BAD_AMOUNT", "a deposit must not be negative")
    if amount == 0 and not allow_zero:
        raise AccountError("BAD_AMOUNT", "a deposit must be positive")
    if amount > MAX_TOTAL:
        raise AccountError("BAD_AMOUNT", f"a deposit is at most {MAX_TOTAL} µ$")
    return amount


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_T = TypeVar("_T")


class AccountStore:
    """Accounts, API keys and deposits in a SQLite file; safe to open from several processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # created 0600 before SQLite touches it; SQLite gives the -wal and -shm files the same mode
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:  # another process was first
                pass
        self._lock = threading.RLock()
        self._writes = 0  # commits through this object (data_version counts other connections' only)
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._retry(lambda: self._db.execute("PRAGMA journal_mode = WAL").fetchone())
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as e:
            problems = [str(e)]
        if problems != ["ok"]:
            self._db.close()
            self._db = None
            raise AccountError("CORRUPT", f"{self.path} is damaged ({'; '.join(problems[:3])}): restore it from a "
                                          "backup (it holds the accounts and API keys; money is in the journal)")
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if "taken_by" not in {r[1] for r in db.execute("PRAGMA table_info(deposits)")}:
                # the exchange (its journal) a deposit request was journaled by: one only
                db.execute("ALTER TABLE deposits ADD COLUMN taken_by TEXT")

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, op: Callable[[], _T]) -> _T:
        """Changing the journal mode does not always wait on the busy handler: retry it a while."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return op()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (BEGIN IMMEDIATE) so it never has to upgrade."""
        with self._lock:
            db = self._conn()
            self._retry(lambda: db.execute("BEGIN IMMEDIATE"))
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._writes += 1

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AccountError("CLOSED", "the account store is closed")
        return self._db

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn().execute(sql, params).fetchall()

    @staticmethod
    def _account_in(db: sqlite3.Connection, account_id: int) -> Account:
        row = db.execute("SELECT id, name, role FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise AccountError("UNKNOWN_ACCOUNT", f"there is no account {account_id}")
        return Account(*row)

    @staticmethod
    def _insert_key(db: sqlite3.Connection, account_id: int) -> tuple[str, str]:
        secret = new_secret()
        while True:
            key_id = new_key_id()
            try:
                db.execute("INSERT INTO api_keys (key_id, account_id, secret, created_at) "
                           "VALUES (?, ?, ?, ?)", (key_id, account_id, secret, _now_ms()))
                return key_id, secret
            except sqlite3.IntegrityError:  # a key id drawn twice: 2^-96, but cheap to handle
                continue

    @staticmethod
    def _insert_deposit(db: sqlite3.Connection, account_id: int, amount: int, note: str) -> int:
        (total,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM deposits WHERE account_id = ?",
                              (account_id,)).fetchone()
        if total + amount > MAX_TOTAL:
            raise AccountError("BAD_AMOUNT", f"an account's deposits add up to at most {MAX_TOTAL} µ$")
        (everyone,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM deposits").fetchone()
        if everyone + amount > MAX_ALL:
            raise AccountError("BAD_AMOUNT", f"the deposits of all accounts add up to at most {MAX_ALL} µ$ "
                                             "(the ledger's balances are 64-bit integers)")
        db.execute("INSERT INTO deposits (account_id, amount, created_at, note) VALUES (?, ?, ?, ?)",
                   (account_id, amount, _now_ms(), str(note)))
        return total + amount

    # -- accounts ------------------------------------------------------------------------------

    def create_account(self, name: str, role: str, deposit: int = 0,
                       ssh_public_key: str | None = None) -> tuple[Account, str, str]:
        """A new account with its first API key: (account, key_id, secret). The secret is not kept
        anywhere the caller can read it back later: show it once."""
        check_name(name)
        check_role(role)
        _check_amount(deposit, allow_zero=True)
        ssh = None if ssh_public_key is None else check_ssh_key(ssh_public_key)
        with self._write() as db:
            try:
                cur = db.execute("INSERT INTO accounts (name, role, created_at, ssh_public_key) "
                                 "VALUES (?, ?, ?, ?)", (name, role, _now_ms(), ssh))
            except sqlite3.IntegrityError:
                raise AccountError("NAME_TAKEN", f"the account name {name!r} is taken") from None
            account = Account(int(cur.lastrowid), name, role)
            key_id, secret = self._insert_key(db, account.id)
            if deposit:
                self._insert_deposit(db, account.id, deposit, "initial deposit")
        return account, key_id, secret

    def account(self, ref: int | str) -> Account | None:
        """The account with this id (int) or name (str), or None."""
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise TypeError("an account is looked up by its int id or its str name")
        column = "id" if isinstance(ref, int) else "name"
        rows = self._read(f"SELECT id, name, role FROM accounts WHERE {column} = ?", (ref,))
        return Account(*rows[0]) if rows else None

    def accounts(self) -> list[Account]:
        """Every account, by id."""
        return [Account(*row) for row in self._read("SELECT id, name, role FROM accounts ORDER BY id")]

    def set_ssh_key(self, account_id: int, key: str) -> None:
        """Set (or replace) the OpenSSH public key that the account's leases are provisioned with."""
        key = check_ssh_key(key)
        with self._write() as db:
            self._account_in(db, account_id)
            db.execute("UPDATE accounts SET ssh_public_key = ? WHERE id = ?", (key, account_id))

    def ssh_key(self, account_id: int) -> str | None:
        """The account's OpenSSH public key, or None if it has none (or there is no such account)."""
        rows = self._read("SELECT ssh_public_key FROM accounts WHERE id = ?", (account_id,))
        return rows[0][0] if rows else None

    # -- keys ----------------------------------------------------------------------------------

    def create_key(self, account_id: int) -> tuple[str, str]:
        """Another API key for an account: (key_id, secret). Earlier keys stay valid."""
        with self._write() as db:
            self._account_in(db, account_id)
            return self._insert_key(db, account_id)

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key for good. Revoking a revoked key does nothing; an unknown one is an error."""
        with self._write() as db:
            cur = db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
            if cur.rowcount == 0:
                raise AccountError("UNKNOWN_KEY", "there is no such API key")

    def key(self, key_id: str) -> ApiKey | None:
        """The live key with this id and its account's role; None if unknown or revoked."""
        if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
            return None
        rows = self._read("SELECT k.key_id, k.account_id, a.role, k.secret FROM api_keys k "
                          "JOIN accounts a ON a.id = k.account_id WHERE k.key_id = ? AND k.revoked = 0",
                          (key_id,))
        return ApiKey(*rows[0]) if rows else None

    def health(self) -> str:
        """"ok" while the store can be read (every signed request reads it)."""
        try:
            self._read("SELECT count(*) FROM api_keys")
        except (sqlite3.Error, AccountError) as e:
            return f"the account store cannot be read: {e}"
        return "ok"

    def revoked_keys(self) -> set[str]:
        """The ids of every revoked key."""
        return {r[0] for r in self._read("SELECT key_id FROM api_keys WHERE revoked = 1")}

    def data_version(self) -> tuple[int, int]:
        """Changes whenever anything is committed to the file, by another process (`gpux accounts
        revoke`: SQLite's PRAGMA data_version) or through this object: a cheap "anything new?"."""
        return self._read("PRAGMA data_version")[0][0], self._writes

    def export_rows(self) -> dict[str, list[tuple]]:
        """The accounts, their API keys and the deposit requests, row by row (what a standby or a
        gateway elsewhere needs: keys are not in the journal; a deposit request is journaled once,
        by its ref, whichever exchange journals it)."""
        with self._lock:
            db = self._conn()
            return {"accounts": db.execute("SELECT id, name, role, created_at, ssh_public_key FROM accounts "
                                           "ORDER BY id").fetchall(),
                    "api_keys": db.execute("SELECT key_id, account_id, secret, created_at, revoked FROM api_keys "
                                           "ORDER BY key_id").fetchall(),
                    "deposits": db.execute("SELECT id, account_id, amount, created_at, note, taken_by FROM deposits "
                                           "ORDER BY id").fetchall()}

    def import_rows(self, rows: dict[str, list]) -> int:
        """Make the accounts and keys equal to ``rows`` (`export_rows` of the leader's store): new
        ones added, changed ones (a revocation, an SSH key, a deposit taken) updated; returns how many
        rows changed."""
        if self.export_rows() == {k: [tuple(r) for r in v] for k, v in {"deposits": [], **rows}.items()}:
            return 0
        with self._write() as db:
            before = db.total_changes
            db.executemany("INSERT INTO accounts (id, name, role, created_at, ssh_public_key) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT(id) DO UPDATE SET name = excluded.name, role = excluded.role, "
                           "ssh_public_key = excluded.ssh_public_key", rows["accounts"])
            db.executemany("INSERT INTO api_keys (key_id, account_id, secret, created_at, revoked) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key_id) DO UPDATE SET revoked = excluded.revoked",
                           rows["api_keys"])
            db.executemany("INSERT INTO deposits (id, account_id, amount, created_at, note, taken_by) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET taken_by = excluded.taken_by",
                           rows.get("deposits", []))
            return db.total_changes - before

    def key_ids(self, account_id: int, *, include_revoked: bool = False) -> list[str]:
        """The ids of an account's keys (live ones unless asked), oldest first."""
        sql = "SELECT key_id FROM api_keys WHERE account_id = ?"
        if not include_revoked:
            sql += " AND revoked = 0"
        return [row[0] for row in self._read(sql + " ORDER BY created_at, rowid", (account_id,))]

    # -- deposits ------------------------------------------------------------------------------

    def deposit(self, account_id: int, amount: int, note: str = "") -> int:
        """Record a deposit of ``amount`` µ$ (> 0); returns the account's deposits total in µ$."""
        _check_amount(amount, allow_zero=False)
        with self._write() as db:
            self._account_in(db, account_id)
            return self._insert_deposit(db, account_id, amount, note)

    def deposits(self) -> dict[int, int]:
        """Account id -> total deposited in µ$, for every account (0 where none)."""
        rows = self._read("SELECT a.id, COALESCE(SUM(d.amount), 0) FROM accounts a "
                          "LEFT JOIN deposits d ON d.account_id = a.id GROUP BY a.id ORDER BY a.id")
        return {account_id: total for account_id, total in rows}

    def deposit_rows(self, after_id: int = 0, taken_by: str | None = None) -> list[tuple[int, int, int, int]]:
        """Deposit requests recorded after row ``after_id`` (only those ``taken_by`` an exchange,
        if given), as (id, account, amount µ$, created_at ms), in order."""
        if taken_by is None:
            return [tuple(r) for r in self._read("SELECT id, account_id, amount, created_at FROM deposits "
                                                 "WHERE id > ? ORDER BY id", (after_id,))]
        return [tuple(r) for r in self._read("SELECT id, account_id, amount, created_at FROM deposits "
                                             "WHERE id > ? AND taken_by = ? ORDER BY id", (after_id, taken_by))]

    def claim_deposits(self, owner: str, after_id: int = 0) -> list[tuple[int, int, int]]:
        """The deposit requests after row ``after_id`` that ``owner`` (an exchange's id) may
        journal, as (id, account, amount µ$), in order: those no exchange has taken yet are taken
        by ``owner`` first, in one transaction.  So a deposit goes into one exchange's money
        only, however many exchanges share this store; one that ``owner`` took and did not
        journal (it stopped in between) comes back to it here."""
        with self._write() as db:
            db.execute("UPDATE deposits SET taken_by = ? WHERE id > ? AND taken_by IS NULL", (owner, after_id))
            rows = db.execute("SELECT id, account_id, amount FROM deposits WHERE id > ? AND taken_by = ? "
                              "ORDER BY id", (after_id, owner)).fetchall()
        return [tuple(r) for r in rows]

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> AccountStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AccountStore({str(self.path)!r})"
