"""The double-entry ledger (R17): immutable transfers between accounts, integer µ$, in SQLite.

    ledger = Ledger(data_dir / "ledger.db")
    ledger.deposit(42, 100_000_000, "accounts:deposit:17")      # external -> 42/available
    ledger.apply([Transfer("order:H100:9:hold", 42, AVAILABLE, 42, ESCROW, 5_000_000, t)])
    ledger.post([(ref, sub, 42 * 8 + AVAILABLE, 42 * 8 + ESCROW, 5_000_000, t)], checked=True)  # settlement's rows
    ledger.balance(42, AVAILABLE), ledger.balances(42), ledger.statement(42)
    ledger.check_invariants()

Accounts are (owner, kind).  Owners are the exchange's account ids (> 0); owner 0 is the
exchange itself, with its ``fees`` account and the ``external`` account that deposits come
from and payouts go to, so that a deposit is a transfer like any other and **the sum of all
balances is zero at every commit** (each transfer takes ``amount`` from its debit account
and adds it to its credit account; balances are from the holder's point of view, so the
external account is minus everything that ever came in).

A transfer's id names what caused it (``order:H100:9:hold``, ``trade:H100:7:cost``,
``lease:H100:7:end:refund``, ``deposit:…``) and is UNIQUE: applying the same cause twice
changes nothing (TigerBeetle's idempotent ids).  It is stored as two integers (`clearing.ids`:
origin, class, order or trade id / cause, leg, seq or time; other ids by their row in
``transfer_names``) and accounts as ``owner * 8 + kind``: the strings are what `transfers`,
`statement`, `get` and the view ``transfers_named`` show.  A batch of transfers is one transaction:
INSERT OR IGNORE, and the balances of the rows actually inserted change in the same
transaction.  A batch that would leave any ``available`` balance below zero is refused
whole (`InsufficientFunds`, naming the accounts) and changes nothing.  An id that exists
with different fields is a bug in whoever made it: `TransferConflict`, nothing changes.

Settlement's own transfers (an int64 array of the same six columns from its engine) are
stored as *pages*, one ``transfer_pages`` row per post (schema 3): no row and no primary-key
insert per transfer.  A page is checked (positive amounts, known kinds, no id twice in it)
and moves balances exactly as rows do; that its causes are new rests on settlement's seq
cursor, committed in the same transaction.  `transfers`, `statement`, `get`, `count` and
`check_invariants` read pages and rows together; the SQL view shows rows only.

Durability: WAL mode.  ``synchronous="NORMAL"`` (the default here) makes every commit
atomic and consistent, but the last commits before a power loss or OS crash may be lost
(not on a process crash: the WAL is in the OS's page cache); ``"FULL"`` fsyncs the WAL at
every commit.  Whoever feeds the ledger must then resume from what it reports as applied
(settlement records the last applied event seq per class in the same transaction).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from clearing import ids

# account kinds, owners and the account encoding are money rules (clearing.money): the
# core's balances use them as well as the ledger's rows
from clearing.money import (  # noqa: F401 (the ledger's users name them from here too)
    ACCOUNT_SHIFT,
    AVAILABLE,
    ESCROW,
    EXCHANGE,
    EXTERNAL,
    FEES,
    KIND_CODES,
    KIND_NAMES,
    KINDS,
    PREPAID,
    RECEIVABLE,
    kind_code,
)

SCHEMA_VERSION = 4  # 1: text ids and four account columns (see _migrate_v1); 2: no transfer_pages; 3: no ``at``


class Transfer(NamedTuple):
    """``amount`` µ$ from (debit_owner, debit_kind) to (credit_owner, credit_kind)."""

    id: str
    debit_owner: int
    debit_kind: int
    credit_owner: int
    credit_kind: int
    amount: int
    time: int = 0  # engine time of the cause (seconds, UTC)

    def named(self) -> dict[str, Any]:
        return {"id": self.id, "from": f"{self.debit_owner}/{KIND_NAMES[self.debit_kind]}",
                "to": f"{self.credit_owner}/{KIND_NAMES[self.credit_kind]}", "amount": self.amount,
                "time": self.time}


class LedgerError(RuntimeError):
    """A batch of transfers that was refused; nothing of it was applied."""


class InsufficientFunds(LedgerError):
    """The batch would leave an available balance below zero."""

    def __init__(self, shortfalls: list[tuple[int, int, int]]) -> None:
        self.shortfalls = shortfalls  # (owner, balance before, balance it would end at)
        parts = [f"account {o}: available {b} µ$ would become {a} µ$" for o, b, a in shortfalls[:5]]
        more = f" (and {len(shortfalls) - 5} more)" if len(shortfalls) > 5 else ""
        super().__init__("insufficient funds, batch refused: " + "; ".join(parts) + more)


class TransferConflict(LedgerError):
    """A transfer id that is already in the ledger with different fields."""

    def __init__(self, id: str, new: tuple, old: tuple) -> None:
        self.id, self.new, self.old = id, new, old  # (debit owner, debit kind, credit owner, credit kind, amount)
        super().__init__(f"transfer {id!r} exists with different fields: {tuple(old)} != {tuple(new)}")


class BadTransfer(LedgerError):
    """A transfer that cannot be: amount ≤ 0, unknown kind, same account on both sides."""


PAGE_SIZE = 16_384  # bigger pages: fewer B-tree splits per inserted transfer (~+25 % inserts/s)

_SCHEMA = (
    f"PRAGMA page_size={PAGE_SIZE}",  # only takes effect on a new file, before its first table
    # (ref, sub): the id (clearing.ids); debit and credit: owner << 3 | kind
    """CREATE TABLE IF NOT EXISTS transfers (
        ref INTEGER NOT NULL,
        sub INTEGER NOT NULL,
        debit INTEGER NOT NULL,
        credit INTEGER NOT NULL,
        amount INTEGER NOT NULL CHECK (amount > 0),
        time INTEGER NOT NULL,     -- engine time of the cause
        at INTEGER,                -- the ledger's transfer count before it: the order applied (NULL before schema 4)
        PRIMARY KEY (ref, sub)
    ) WITHOUT ROWID""",
    # settlement's transfers, one page per post: ``n`` rows of the columns of ``transfers``
    # (ref, sub, debit, credit, amount, time), frame-of-reference encoded (encode_page)
    # ``at``: the ledger's transfer count before the page (its rows were applied at at, at + 1, ...)
    "CREATE TABLE IF NOT EXISTS transfer_pages (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL, "
    "at INTEGER)",
    "CREATE TABLE IF NOT EXISTS id_classes (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS transfer_names (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    f"""CREATE TABLE IF NOT EXISTS balances (
        owner INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        balance INTEGER NOT NULL,
        PRIMARY KEY (owner, kind),
        CHECK (kind <> {AVAILABLE} OR balance >= 0)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kinds (kind INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    f"""CREATE VIEW IF NOT EXISTS transfers_named AS
        SELECT {ids.sql_format("t", "c")} AS id, t.debit >> 3 AS debit_owner, d.name AS debit_kind,
               t.credit >> 3 AS credit_owner, k.name AS credit_kind, t.amount, t.time
        FROM transfers t LEFT JOIN id_classes c ON c.code = (t.ref >> {ids.CLASS_SHIFT}) & {ids.CLASS_LIMIT - 1}
        JOIN kinds d ON d.kind = t.debit & 7 JOIN kinds k ON k.kind = t.credit & 7""",
)

_INSERT = "INSERT OR IGNORE INTO transfers (ref, sub, debit, credit, amount, time) VALUES (?, ?, ?, ?, ?, ?)"
_SELECT = "SELECT ref, sub, debit, credit, amount, time FROM transfers"
# multi-row inserts: one statement (one sqlite3_step, which releases the GIL) per CHUNK rows
# instead of one per row; 6 variables a row stays under SQLite's portable limit of 32,766
CHUNK = 4096
_flat = chain.from_iterable


@cache
def _insert_many(n: int, table: str = "transfers", width: int = 6, verb: str = "INSERT OR IGNORE") -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{verb} INTO {table} VALUES " + ",".join([row] * n)


def insert_rows(conn: sqlite3.Connection, rows: list, table: str = "transfers", width: int = 6,
                verb: str = "INSERT OR IGNORE") -> None:
    """``rows`` (tuples of ``width`` values, a table's columns in order) with one statement per
    `CHUNK` rows."""
    for i in range(0, len(rows), CHUNK):
        part = rows[i:i + CHUNK]
        conn.execute(_insert_many(len(part), table, width, verb), list(_flat(part)))


def _insert_transfers(conn: sqlite3.Connection, rows: list, at: int) -> None:
    """The ledger's rows (its six columns) into ``transfers``, the i-th with ``at + i``: the
    ledger's count of transfers before it, so the order they were applied in."""
    insert_rows(conn, [(*r, at + i) for i, r in enumerate(rows)], "transfers", 7)


# (not an UPSERT: SQLite checks the CHECK constraint on the row an UPSERT tries to insert, a negative delta)
_NEW_BALANCE = "INSERT INTO balances (balance, owner, kind) VALUES (?, ?, ?)"
_SET_BALANCE = "UPDATE balances SET balance = ? WHERE owner = ? AND kind = ?"


def class_code(conn: sqlite3.Connection, name: str, create: bool = True) -> int | None:
    """The code of a GPU class in transfer ids (``id_classes``), assigned on first use (inside
    the caller's transaction: a rollback forgets it, and whoever cached it must too)."""
    row = conn.execute("SELECT code FROM id_classes WHERE name = ?", (name,)).fetchone()
    if row is not None:
        return row[0]
    if not create:
        return None
    code = conn.execute("SELECT COALESCE(MAX(code), 0) + 1 FROM id_classes").fetchone()[0]
    if code >= ids.CLASS_LIMIT:
        raise LedgerError(f"too many GPU classes for transfer ids ({code})")
    conn.execute("INSERT INTO id_classes VALUES (?, ?)", (code, name))
    return code


class Ledger:
    """A double-entry ledger in one SQLite file (WAL).  One writer at a time (SQLite's lock);
    every public method that writes is one transaction, or joins the one `transaction()` opened."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL", cache_mb: int = 256) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        self.conn.execute(_SCHEMA[0])
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.conn.execute(f"PRAGMA cache_size={-1024 * cache_mb}")
        self.synchronous = synchronous.upper()
        self._lock = threading.RLock()
        self._depth = 0
        # balances as committed, and the transfer count they belong to: a batch's new balances
        # are computed (and checked) here, written with one UPDATE each, and take effect here
        # at COMMIT; a count that differs at the next batch means another writer: reload
        self._balances: dict[int, int] | None = None  # keyed by account, owner << 3 | kind
        self._balances_at = -1
        self._staged: list[tuple[dict[int, int], int]] = []
        self._classes: dict[str, int] = {}  # id_classes as read in this process (forgotten on rollback)
        with self.transaction():
            old = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
                if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() else None
            if old is not None and old[0] > SCHEMA_VERSION:
                raise LedgerError(f"{path}: ledger schema {old[0]} is newer than this code's ({SCHEMA_VERSION})")
            if old is not None and old[0] == 1:
                self.conn.execute("ALTER TABLE transfers RENAME TO transfers_v1")
                self.conn.execute("DROP VIEW IF EXISTS transfers_named")
            for stmt in _SCHEMA[1:]:
                self.conn.execute(stmt)
            self.conn.executemany("INSERT OR IGNORE INTO kinds VALUES (?, ?)", list(KIND_NAMES.items()))
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('transfers', 0)")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('commits', 0)")
            if old is not None and old[0] == 1:
                self._migrate_v1()
            elif old is not None and old[0] in (2, 3):  # 2: transfer_pages is new; 3: the ``at`` columns are
                for table in ("transfers", "transfer_pages"):
                    columns = [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]
                    if "at" not in columns:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN at INTEGER")
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def close(self) -> None:
        self.conn.close()

    def _migrate_v1(self) -> None:
        """Schema 1 (text ids, owner and kind columns) -> 2, in the opening transaction."""
        rows = self.conn.execute("SELECT id, debit_owner, debit_kind, credit_owner, credit_kind, amount, time "
                                 "FROM transfers_v1").fetchall()
        self.conn.executemany(_INSERT, self._rows([Transfer(*r) for r in rows]))
        self.conn.execute("DROP TABLE transfers_v1")
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); nested uses join the outer one.
        An exception inside rolls everything back."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            self._staged = []
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self._staged = []
                self._classes = {}
                self.conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self.conn.execute("COMMIT")
            if self._staged and self._balances is not None:
                for new, count in self._staged:
                    self._balances.update(new)
                    self._balances_at = count
            self._staged = []

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    # ------------------------------------------------------------------ writing
    def apply(self, transfers: Iterable[Transfer | tuple]) -> int:
        """Apply a batch of transfers in one transaction; returns how many were new (the
        others were applied before and change nothing).  Refuses the whole batch with
        `InsufficientFunds`, `TransferConflict` or `BadTransfer`."""
        with self.transaction():
            return self.post(transfers)

    def post(self, transfers: Iterable[Transfer | tuple], checked: bool = False,
             deltas: dict[int, int] | None = None) -> int:
        """`apply` inside the caller's `transaction()` (settlement writes its state in the same
        one).  ``checked``: the transfers are the ledger's own rows, ``(ref, sub, debit account,
        credit account, amount, time)`` (settlement's engine makes them so), well-formed
        (positive integer amounts, known kinds) and unique within the batch, so they are
        neither converted nor validated again.  ``deltas``: `account_deltas` of those rows, computed
        beforehand (a pipelined caller does so in its own thread); used only if every row is new."""
        if not self._depth:
            raise RuntimeError("Ledger.post needs an open transaction(); use apply()")
        if isinstance(transfers, np.ndarray):
            return self._post_page(transfers)
        rows = transfers if checked and isinstance(transfers, list) else list(transfers)
        if not rows:
            return 0
        if not checked:
            rows = _unique(self._rows(_validate(rows)), self._format)
        conn = self.conn
        n0 = self.count()
        before = conn.total_changes
        with self._savepoint():
            _insert_transfers(conn, rows, n0)
            if conn.total_changes - before != len(rows):  # some were applied before: only the new ones count
                conn.execute("ROLLBACK TO post")
                rows = self._new_only(_unique(rows, self._format))
                _insert_transfers(conn, rows, n0)
                deltas = None
            if rows:
                self._moved(deltas if deltas is not None else account_deltas(rows), n0, len(rows))
        return len(rows)

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """One post: all of it, or (on any exception) none of it, inside the open transaction."""
        conn = self.conn
        conn.execute("SAVEPOINT post")
        try:
            yield
            conn.execute("RELEASE post")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO post")
                    conn.execute("RELEASE post")
                except sqlite3.OperationalError:  # the savepoint is gone already
                    pass
            raise

    def _moved(self, deltas: dict[int, int], n0: int, n: int) -> None:
        """After ``n`` new transfers: the balances they move (checked), the counters, and the new
        balances staged for COMMIT."""
        new = self._post_balances(deltas, n0)
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'transfers'", (n0 + n,))
        self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'commits'")
        self._staged.append((new, n0 + n))

    def _post_page(self, rows: np.ndarray) -> int:
        """Settlement's rows (an int64 array of the ``transfers`` columns, from its engine, whose
        seq cursor — committed in the same transaction — is what makes each cause settle once)
        as one ``transfer_pages`` row.  Checked: six columns, positive amounts, known kinds, no
        id twice in the page; then the balances as for any batch (`InsufficientFunds`)."""
        if not len(rows):
            return 0
        rows = np.ascontiguousarray(rows, dtype="<i8")
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise BadTransfer(f"a page of transfers has six int64 columns, not shape {rows.shape}")
        kinds = np.concatenate((rows[:, 2], rows[:, 3])) & 7
        if (rows[:, 4] <= 0).any() or (kinds < AVAILABLE).any() or (kinds > EXTERNAL).any() \
                or (rows[:, 2] == rows[:, 3]).any():
            raise BadTransfer("a page of transfers has a non-positive amount, an unknown kind or a transfer "
                              "to its own account")
        by_id = rows[np.lexsort((rows[:, 1], rows[:, 0]))]  # (np.unique on rows is ten times slower)
        if ((by_id[1:, 0] == by_id[:-1, 0]) & (by_id[1:, 1] == by_id[:-1, 1])).any():
            raise LedgerError("a page of transfers names the same transfer id twice")
        n0 = self.count()
        with self._savepoint():
            self.conn.execute("INSERT INTO transfer_pages (n, data, at) VALUES (?, ?, ?)",
                              (len(rows), encode_page(rows), n0))
            self._moved(page_deltas(rows), n0, len(rows))
        return len(rows)

    def _pages(self) -> Iterator[np.ndarray]:
        for n, data in self.conn.execute("SELECT n, data FROM transfer_pages ORDER BY id"):
            yield decode_page(data, n)

    def _pages_at(self) -> Iterator[tuple[int | None, np.ndarray]]:
        """Every page with the ledger's transfer count before it (None: written before schema 4)."""
        for n, data, at in self.conn.execute("SELECT n, data, at FROM transfer_pages ORDER BY id"):
            yield at, decode_page(data, n)

    def _page_rows(self, keep: Any = None) -> list[tuple]:
        """The rows of every page (those for which ``keep(page)`` is True) as tuples."""
        out: list[tuple] = []
        for a in self._pages():
            if keep is not None:
                a = a[keep(a)]
            if len(a):
                out += map(tuple, a.tolist())
        return out

    def transfer(self, id: str, debit: tuple[int, int | str], credit: tuple[int, int | str], amount: int,
                 time: int = 0) -> bool:
        """One transfer in its own transaction; True if it was new."""
        t = Transfer(id, debit[0], kind_code(debit[1]), credit[0], kind_code(credit[1]), amount, time)
        return self.apply([t]) == 1

    def deposit(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        """Money from outside to ``owner``'s available balance; ``id`` names the deposit at its
        origin (e.g. the account store's deposit row), so a repeated call deposits once."""
        return self.transfer(f"deposit:{id}", (EXCHANGE, EXTERNAL), (owner, AVAILABLE), amount, time)

    def withdraw(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        """Money from ``owner``'s available balance to outside (refused if it is not there)."""
        return self.transfer(f"withdraw:{id}", (owner, AVAILABLE), (EXCHANGE, EXTERNAL), amount, time)

    def payout(self, owner: int, amount: int, id: str, time: int = 0) -> bool:
        """A provider's earnings (receivable) paid out to outside."""
        return self.transfer(f"payout:{id}", (owner, RECEIVABLE), (EXCHANGE, EXTERNAL), amount, time)

    # ------------------------------------------------------------------ ids
    def class_code(self, name: str, create: bool = True) -> int | None:
        """A GPU class's code in transfer ids (`clearing.ids`); assigned on first use."""
        code = self._classes.get(name)
        if code is None:
            if create and not self._depth:
                with self.transaction():
                    return self.class_code(name)
            code = class_code(self.conn, name, create)
            if code is not None:
                self._classes[name] = code
        return code

    def id_key(self, id: str, create: bool = False) -> tuple[int, int] | None:
        """``(ref, sub)`` of a transfer id; None for a named id not in the ledger (``create``:
        register it, inside the open transaction)."""
        key = ids.parse(id, lambda name: self.class_code(name, create))
        if key is not None:
            return key
        row = self.conn.execute("SELECT code FROM transfer_names WHERE name = ?", (id,)).fetchone()
        if row is None and create:
            return 0, self.conn.execute("INSERT INTO transfer_names (name) VALUES (?)", (id,)).lastrowid
        return (0, row[0]) if row is not None else None

    def _rows(self, batch: list[tuple]) -> list[tuple]:
        """Validated Transfer tuples -> the ledger's rows (ids to keys, owner and kind to accounts)."""
        out = []
        for tid, do, dk, co, ck, amount, time in batch:
            ref, sub = self.id_key(tid, create=True)  # type: ignore[misc]
            out.append((ref, sub, do << ACCOUNT_SHIFT | dk, co << ACCOUNT_SHIFT | ck, amount, time))
        return out

    def _formatter(self) -> Any:
        """A function (ref, sub) -> id string, reading id_classes and transfer_names once."""
        classes = dict(self.conn.execute("SELECT code, name FROM id_classes"))
        names: dict[int, str] | None = None

        def name(code: int) -> str:
            nonlocal names
            if names is None:
                names = dict(self.conn.execute("SELECT code, name FROM transfer_names"))
            return names.get(code, f"?{code}")

        return lambda ref, sub: ids.format_id(ref, sub, lambda c: classes.get(c, f"?{c}"), name)

    def _format(self, ref: int, sub: int) -> str:
        return self._formatter()(ref, sub)

    def _transfers(self, rows: Iterable[tuple]) -> list[Transfer]:
        """Rows -> Transfers (with their id strings), by time then id."""
        fmt = self._formatter()
        out = [Transfer(fmt(ref, sub), d >> 3, d & 7, c >> 3, c & 7, amount, time)
               for ref, sub, d, c, amount, time in rows]
        out.sort(key=lambda t: (t.time, t.id))
        return out

    # ------------------------------------------------------------------ reading
    def balance(self, owner: int, kind: int | str = AVAILABLE) -> int:
        row = self.conn.execute("SELECT balance FROM balances WHERE owner = ? AND kind = ?",
                                (owner, kind_code(kind))).fetchone()
        return row[0] if row else 0

    def balances(self, owner: int | None = None) -> dict[Any, int]:
        """``{kind name: balance}`` of one owner, or ``{(owner, kind name): balance}`` of all (zeros left out)."""
        if owner is None:
            rows = self.conn.execute("SELECT owner, kind, balance FROM balances WHERE balance <> 0 "
                                     "ORDER BY owner, kind")
            return {(o, KIND_NAMES[k]): b for o, k, b in rows}
        rows = self.conn.execute("SELECT kind, balance FROM balances WHERE owner = ? AND balance <> 0 ORDER BY kind",
                                 (owner,))
        return {KIND_NAMES[k]: b for k, b in rows}

    def total(self, kind: int | str) -> int:
        """The sum of one kind's balances over all owners."""
        row = self.conn.execute("SELECT COALESCE(SUM(balance), 0) FROM balances WHERE kind = ?",
                                (kind_code(kind),)).fetchone()
        return row[0]

    def get(self, id: str) -> Transfer | None:
        key = self.id_key(id)
        if key is None:
            return None
        row = self.conn.execute(_SELECT + " WHERE ref = ? AND sub = ?", key).fetchone()
        if row is None:
            ref, sub = key
            found = self._page_rows(lambda a: (a[:, 0] == ref) & (a[:, 1] == sub))
            row = found[0] if found else None
        return Transfer(id, row[2] >> 3, row[2] & 7, row[3] >> 3, row[3] & 7, row[4], row[5]) if row else None

    def transfers(self, prefix: str = "") -> list[Transfer]:
        """All transfers (or those whose id starts with ``prefix``), by time (of their cause), then id."""
        parts = prefix.split(":")
        origin = ids.ORIGIN_CODES.get(parts[0]) if len(parts) > 1 else None
        n = ids.number(parts[2], ids.ID_LIMIT) if origin and len(parts) > 3 else None
        code = self.class_code(parts[1], create=False) if n is not None else None
        # (named ids, ref 0, may look like anything: they are always read too)
        if code is not None:  # "lease:H100:7:…": one order's or trade's transfers
            ref = ids.class_base(origin, code) | n
            rows = self.conn.execute(_SELECT + " WHERE ref = ? OR ref = 0", (ref,)).fetchall()
            rows += self._page_rows(lambda a: a[:, 0] == ref)
        elif origin:  # "order:", "trade:H100:"
            rows = self.conn.execute(_SELECT + " WHERE ref >> ? = ? OR ref = 0", (ids.ORIGIN_SHIFT, origin)).fetchall()
            rows += self._page_rows(lambda a: a[:, 0] >> ids.ORIGIN_SHIFT == origin)
        else:
            rows = self.conn.execute(_SELECT).fetchall() + self._page_rows()
        return [t for t in self._transfers(rows) if t.id.startswith(prefix)]

    def count(self) -> int:
        """Transfers applied so far."""
        return self.conn.execute("SELECT value FROM meta WHERE key = 'transfers'").fetchone()[0]

    def statement(self, owner: int) -> list[dict[str, Any]]:
        """Every transfer that touched ``owner``, in the order the ledger applied them: the account
        of the owner's it touched, the signed amount and that account's balance after it — the
        balance it really had then.  (Transfers written before schema 4 carry no order: they come
        first, by time then id.  A full scan of the transfers: the ledger keeps no per-owner index,
        which would make every write ~4× slower.)"""
        rows = self.conn.execute("SELECT ref, sub, debit, credit, amount, time, at FROM transfers "
                                 "WHERE debit >> 3 = ? OR credit >> 3 = ?", (owner, owner)).fetchall()
        for at, a in self._pages_at():
            idx = np.flatnonzero((a[:, 2] >> 3 == owner) | (a[:, 3] >> 3 == owner))
            rows += [(*r, None if at is None else at + i) for i, r in zip(idx.tolist(), a[idx].tolist(), strict=True)]
        fmt = self._formatter()
        named = [(at, Transfer(fmt(ref, sub), d >> 3, d & 7, c >> 3, c & 7, amount, time))
                 for ref, sub, d, c, amount, time, at in rows]
        named.sort(key=lambda x: (0, x[1].time, x[1].id) if x[0] is None else (1, x[0], ""))
        running: dict[int, int] = {}
        out: list[dict[str, Any]] = []
        for _, (tid, do, dk, co, ck, amount, time) in named:
            legs = []
            if do == owner:
                legs.append((dk, -amount))
            if co == owner:
                legs.append((ck, amount))
            for kind, signed in legs:
                running[kind] = running.get(kind, 0) + signed
                out.append({"id": tid, "time": time, "account": KIND_NAMES[kind], "amount": signed,
                            "balance": running[kind], "from": f"{do}/{KIND_NAMES[dk]}", "to": f"{co}/{KIND_NAMES[ck]}"})
        return out

    def check_invariants(self) -> dict[str, int]:
        """Raise AssertionError unless: the sum of all balances is zero; no available balance
        is below zero; every balance equals the sum of its transfers.  Returns a summary."""
        conn = self.conn
        total = conn.execute("SELECT COALESCE(SUM(balance), 0) FROM balances").fetchone()[0]
        if total != 0:
            raise AssertionError(f"balances sum to {total} µ$, not 0")
        neg = conn.execute("SELECT owner, balance FROM balances WHERE kind = ? AND balance < 0",
                           (AVAILABLE,)).fetchall()
        if neg:
            raise AssertionError(f"available balances below zero: {neg[:5]}")
        recomputed: dict[tuple[int, int], int] = {}
        for a, s in conn.execute("SELECT debit, SUM(amount) FROM transfers GROUP BY 1"):
            recomputed[(a >> 3, a & 7)] = recomputed.get((a >> 3, a & 7), 0) - s
        for a, s in conn.execute("SELECT credit, SUM(amount) FROM transfers GROUP BY 1"):
            recomputed[(a >> 3, a & 7)] = recomputed.get((a >> 3, a & 7), 0) + s
        for page in self._pages():
            for a, s in page_deltas(page).items():
                recomputed[(a >> 3, a & 7)] = recomputed.get((a >> 3, a & 7), 0) + s
        stored = {(o, k): b for o, k, b in conn.execute("SELECT owner, kind, balance FROM balances")}
        keys = set(recomputed) | set(stored)
        bad = [(key, stored.get(key, 0), recomputed.get(key, 0)) for key in sorted(keys)
               if stored.get(key, 0) != recomputed.get(key, 0)]
        if bad:
            raise AssertionError(f"balances differ from their transfers (account, stored, from transfers): {bad[:5]}")
        n = self.count()
        rows = conn.execute("SELECT (SELECT COUNT(*) FROM transfers) + "
                            "(SELECT COALESCE(SUM(n), 0) FROM transfer_pages)").fetchone()[0]
        if rows != n:
            raise AssertionError(f"{rows} transfer rows but the counter says {n}")
        return {"transfers": n, "accounts": len(stored)}

    # ------------------------------------------------------------------ internals
    def _current_balances(self, n0: int) -> dict[int, int]:
        """Balances as of this transaction so far (committed + staged by earlier posts in it)."""
        if self._staged and self._balances is not None:
            return self._balances  # checked by this transaction's first post (no other writer since: we hold the lock)
        if self._balances is None or self._balances_at != n0:
            rows = self.conn.execute("SELECT owner, kind, balance FROM balances")
            self._balances = {o << ACCOUNT_SHIFT | k: b for o, k, b in rows}
            self._balances_at = n0
        return self._balances

    def _post_balances(self, deltas: dict[int, int], n0: int) -> dict[int, int]:
        """Write the new balances of the accounts a batch changed, after checking that no
        available balance goes below zero (InsufficientFunds, nothing written)."""
        base = self._current_balances(n0)
        staged: dict[int, int] = {}
        for new, _ in self._staged:
            staged.update(new)
        updates, inserts, short = [], [], []
        new_values: dict[int, int] = {}
        for key, d in deltas.items():
            if not d:
                continue
            old = staged.get(key)
            if old is None:
                old = base.get(key)
            owner, kind = key >> 3, key & 7
            if old is None:
                value = d
                inserts.append((value, owner, kind))
            else:
                value = old + d
                updates.append((value, owner, kind))
            if value < 0 and kind == AVAILABLE:
                short.append((owner, value - d, value))
            new_values[key] = value
        if short:
            raise InsufficientFunds(sorted(short))
        if updates:
            self.conn.executemany(_SET_BALANCE, updates)
        if inserts:
            self.conn.executemany(_NEW_BALANCE, inserts)
        return new_values

    def _new_only(self, rows: list) -> list:
        """The rows of a batch not in the ledger yet; raises TransferConflict for an id that is
        there with other fields."""
        new = []
        q = "SELECT debit, credit, amount FROM transfers WHERE ref = ? AND sub = ?"
        for t in rows:
            old = self.conn.execute(q, (t[0], t[1])).fetchone()
            if old is None:
                new.append(t)
            elif tuple(old) != tuple(t[2:5]):
                raise TransferConflict(self._format(t[0], t[1]), _fields(t), _fields(old, 0))
        return new


def _fields(row: tuple, at: int = 2) -> tuple[int, int, int, int, int]:
    """(debit owner, debit kind, credit owner, credit kind, amount) of a row (from ``at``)."""
    d, c, amount = row[at], row[at + 1], row[at + 2]
    return d >> 3, d & 7, c >> 3, c & 7, amount


def _validate(batch: list) -> list[tuple]:
    """Well-formed 7-field tuples (time 0 when left out), or BadTransfer."""
    out = []
    for t in batch:
        if len(t) == 6:
            t = (*t, 0)
        elif len(t) != 7:
            raise BadTransfer(f"transfer {t!r}: needs id, debit owner and kind, credit owner and kind, amount[, time]")
        tid, do, dk, co, ck, amount, time = t
        if not isinstance(tid, str) or not tid:
            raise BadTransfer(f"transfer id must be a non-empty string, not {tid!r}")
        if type(amount) is not int or amount <= 0:
            raise BadTransfer(f"transfer {tid!r}: amount must be a positive integer of µ$, not {amount!r}")
        if dk not in KIND_NAMES or ck not in KIND_NAMES:
            raise BadTransfer(f"transfer {tid!r}: unknown account kind {dk!r} or {ck!r} (kinds: {KIND_NAMES})")
        if type(do) is not int or type(co) is not int or type(time) is not int or do < 0 or co < 0:
            raise BadTransfer(f"transfer {tid!r}: owners (≥ 0) and time must be integers")
        if do == co and dk == ck:
            raise BadTransfer(f"transfer {tid!r} debits and credits the same account")
        out.append(tuple(t))
    return out


def _unique(rows: list, fmt: Any) -> list:
    """The first row of each id (a repeat inside one batch is a retry too)."""
    seen: dict[tuple[int, int], tuple] = {}
    out = []
    for t in rows:
        key = (t[0], t[1])
        first = seen.get(key)
        if first is not None:
            if first[2:5] != t[2:5]:
                raise TransferConflict(fmt(t[0], t[1]), _fields(t), _fields(first))
            continue
        seen[key] = t
        out.append(t)
    return out


def account_deltas(rows: list) -> dict[int, int]:
    """Net change per account (owner << 3 | kind)."""
    deltas: dict[int, int] = {}
    get = deltas.get
    for _, _, d, c, a, _ in rows:
        deltas[d] = get(d, 0) - a
        deltas[c] = get(c, 0) + a
    return deltas


def page_deltas(rows: np.ndarray) -> dict[int, int]:
    """`account_deltas` of an int64 array of rows (exact: int64 sums per account, no floats)."""
    acc = np.concatenate((rows[:, 2], rows[:, 3]))
    amount = np.concatenate((-rows[:, 4], rows[:, 4]))
    order = np.argsort(acc, kind="stable")
    acc, amount = acc[order], amount[order]
    starts = np.flatnonzero(np.concatenate(([True], acc[1:] != acc[:-1])))
    return dict(zip(acc[starts].tolist(), np.add.reduceat(amount, starts).tolist(), strict=True))


# A page's columns: ref split in two (origin and class: the high 16 bits; the order or trade
# id: the low 48), then sub, debit, credit, amount, time.  Each is stored as its minimum (int64)
# and the differences from it in the fewest bytes of 1, 2, 4 or 8 that hold them (frame of
# reference): a third smaller than six int64 on the benchmark's pages, at no measurable cost.
_PAGE_HEADER = np.dtype([("base", "<i8", 7), ("width", "u1", 7)])
_WIDTHS = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def encode_page(rows: np.ndarray) -> bytes:
    """An (n, 6) int64 array of transfer rows -> a page's bytes (`decode_page` reverses it)."""
    ref = rows[:, 0]
    cols = [ref >> 48, ref & ((1 << 48) - 1), rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]]
    head = np.zeros(1, _PAGE_HEADER)
    parts = [b""]
    for i, c in enumerate(cols):
        low = int(c.min())
        span = int(c.max()) - low
        w = 1 if span < 1 << 8 else 2 if span < 1 << 16 else 4 if span < 1 << 32 else 8
        head["base"][0, i] = low
        head["width"][0, i] = w
        parts.append((c - low).astype(_WIDTHS[w]).tobytes())  # (int64 wraps; width 8 keeps every bit)
    parts[0] = head.tobytes()
    return b"".join(parts)


def decode_page(data: bytes, n: int) -> np.ndarray:
    """A page's bytes -> its (n, 6) int64 rows."""
    head = np.frombuffer(data, _PAGE_HEADER, 1)
    cols = []
    at = _PAGE_HEADER.itemsize
    for i in range(7):
        w = int(head["width"][0, i])
        c = np.frombuffer(data, _WIDTHS[w], n, at).astype(np.int64)
        c += head["base"][0, i]
        cols.append(c)
        at += w * n
    out = np.empty((n, 6), np.int64)
    out[:, 0] = cols[0] << 48 | cols[1]
    for j in range(1, 6):
        out[:, j] = cols[j + 1]
    return out
