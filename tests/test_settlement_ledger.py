"""The double-entry ledger (R17): idempotent transfer ids, balances summing to zero, refusals
that change nothing, and two writers on one file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.ledger import (
    AVAILABLE,
    ESCROW,
    EXCHANGE,
    EXTERNAL,
    FEES,
    PREPAID,
    RECEIVABLE,
    BadTransfer,
    InsufficientFunds,
    Ledger,
    LedgerError,
    Transfer,
    TransferConflict,
)


@pytest.fixture
def led(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def test_deposit_is_a_transfer_from_external_and_applies_once(led):
    assert led.deposit(7, 500, "acc:1") is True
    assert led.deposit(7, 500, "acc:1") is False  # the same deposit id again: nothing
    assert led.balance(7) == 500 and led.balance(EXCHANGE, EXTERNAL) == -500
    assert led.balances(7) == {"available": 500}
    assert led.check_invariants() == {"transfers": 1, "accounts": 2}


def test_a_batch_is_one_transaction_and_only_new_ids_change_balances(led):
    led.deposit(7, 1000, "d")
    batch = [Transfer("a", 7, AVAILABLE, 7, ESCROW, 300, 5), Transfer("b", 7, ESCROW, 7, PREPAID, 200, 6)]
    assert led.apply(batch) == 2
    assert led.apply(batch + [Transfer("c", 7, PREPAID, 8, RECEIVABLE, 50, 7)]) == 1
    assert led.balances(7) == {"available": 700, "escrow": 100, "lease_prepaid": 150}
    assert led.balance(8, "receivable") == 50
    assert led.count() == 4
    led.check_invariants()


def test_refused_batches_change_nothing(led):
    led.deposit(7, 100, "d")
    before = led.balances()
    with pytest.raises(InsufficientFunds) as e:
        led.apply([Transfer("ok", 7, AVAILABLE, 7, ESCROW, 60), Transfer("too-much", 7, AVAILABLE, 7, ESCROW, 60)])
    assert e.value.shortfalls == [(7, 100, -20)]
    assert "account 7: available 100 µ$ would become -20 µ$" in str(e.value)
    assert led.balances() == before and led.get("ok") is None
    with pytest.raises(TransferConflict):  # an id already used, with other fields
        led.apply([Transfer("x", 7, AVAILABLE, 7, ESCROW, 10), Transfer("deposit:d", 7, AVAILABLE, 7, ESCROW, 10)])
    assert led.get("x") is None
    with pytest.raises(TransferConflict):  # the same id twice in one batch, differently
        led.apply([Transfer("y", 7, AVAILABLE, 7, ESCROW, 10), Transfer("y", 7, AVAILABLE, 7, ESCROW, 11)])
    for bad in (Transfer("z", 7, AVAILABLE, 7, ESCROW, 0), Transfer("z", 7, AVAILABLE, 7, ESCROW, -5),
                Transfer("z", 7, AVAILABLE, 7, 99, 5), Transfer("z", 7, AVAILABLE, 7, AVAILABLE, 5),
                Transfer("", 7, AVAILABLE, 7, ESCROW, 5), Transfer("z", 7, AVAILABLE, 7, ESCROW, 1.5)):
        with pytest.raises(BadTransfer):
            led.apply([bad])
    assert led.balances() == before
    led.check_invariants()


def test_other_accounts_may_go_negative_only_available_may_not(led):
    """Only `available` is guarded; the external account is minus all deposits."""
    led.apply([Transfer("f", EXCHANGE, FEES, 3, AVAILABLE, 5)])
    assert led.balance(EXCHANGE, FEES) == -5
    led.check_invariants()


def test_an_outer_transaction_rolled_back_leaves_no_trace(led):
    led.deposit(7, 100, "d")
    with pytest.raises(RuntimeError), led.transaction():
        led.post([Transfer("a", 7, AVAILABLE, 7, ESCROW, 40)])
        raise RuntimeError("crash before commit")
    assert led.balance(7) == 100 and led.get("a") is None
    led.apply([Transfer("a", 7, AVAILABLE, 7, ESCROW, 40)])
    assert led.balance(7) == 60
    led.check_invariants()


def test_two_writers_on_one_file_see_each_other(tmp_path):
    a, b = Ledger(tmp_path / "l.db"), Ledger(tmp_path / "l.db")
    a.deposit(7, 100, "d1")
    b.deposit(7, 50, "d2")
    a.apply([Transfer("h", 7, AVAILABLE, 7, ESCROW, 150)])  # needs b's deposit: balances reloaded
    with pytest.raises(InsufficientFunds):
        b.apply([Transfer("h2", 7, AVAILABLE, 7, ESCROW, 1)])
    assert b.balance(7) == 0 and b.balance(7, ESCROW) == 150
    b.check_invariants()
    a.close()
    b.close()


def test_statement_running_balances_and_named_view(led):
    led.deposit(7, 100, "d", time=1)
    led.apply([Transfer("h", 7, AVAILABLE, 7, ESCROW, 30, 2), Transfer("p", 7, ESCROW, 9, RECEIVABLE, 30, 3)])
    st = led.statement(7)
    assert [(x["id"], x["account"], x["amount"], x["balance"]) for x in st] == [
        ("deposit:d", "available", 100, 100), ("h", "available", -30, 70), ("h", "escrow", 30, 30),
        ("p", "escrow", -30, 0)]
    rows = led.conn.execute("SELECT id, debit_kind, credit_kind FROM transfers_named ORDER BY id").fetchall()
    assert rows == [("deposit:d", "external", "available"), ("h", "available", "escrow"), ("p", "escrow", "receivable")]
    assert led.transfer("w", (7, "available"), (EXCHANGE, "external"), 70) is True
    assert led.transfer("w", (7, "available"), (EXCHANGE, "external"), 70) is False
    assert led.balance(7) == 0


def test_payout_and_withdraw_are_refused_beyond_the_balance(led):
    led.deposit(7, 100, "d")
    with pytest.raises(InsufficientFunds):
        led.withdraw(7, 101, "w1")
    assert led.withdraw(7, 100, "w1") is True
    led.apply([Transfer("earn", 8, PREPAID, 9, RECEIVABLE, 40)])
    assert led.payout(9, 40, "p1") is True
    assert led.balance(9, RECEIVABLE) == 0 and led.balance(EXCHANGE, EXTERNAL) == -100 + 100 + 40
    led.check_invariants()


DOCUMENTED_IDS = ["order:H100:9:hold", "order:H100:9:release", "order:A100:0:amend:77", "trade:H100:7:cost",
                  "trade:H100:7:buyer_fee", "trade:RTX4090:281474976710655:release", "trade:H100:7:top_up",
                  "lease:H100:7:ready:refund", "lease:H100:7:meter:86400:earn", "lease:H100:7:preempted:12:fee_refund",
                  "lease:A100:3:released:5:refund", "lease:H100:7:failed:refund", "lease:H100:7:end:provider_fee"]
NAMED_IDS = ["deposit:accounts:17", "order:H100:09:hold", "order:H100:9:amend:x", "trade:H100:7", "lease:H100:7:end",
             "lease:H100:7:meter:earn", "trade:H100:281474976710656:cost", "lease::7:end:earn", "order:H100:-1:hold",
             "x", "trade:H100:7:cost:extra", "lease:H100:7:ready:5:refund"]


def test_ids_are_stored_as_integers_and_shown_as_documented(led):
    """Structured ids become (ref, sub) integers, anything else a named id; every id reads back
    exactly as written (transfers, get, statement and the SQL view), and stays idempotent."""
    from clearing import ids

    led.deposit(7, 10**6, "seed")
    batch = [Transfer(tid, 7, AVAILABLE, 7, ESCROW, i + 1, i) for i, tid in enumerate(DOCUMENTED_IDS + NAMED_IDS)]
    assert led.apply(batch) == len(batch)
    assert led.apply(batch) == 0
    keys = {tid: led.id_key(tid) for tid in DOCUMENTED_IDS + NAMED_IDS}
    assert all(keys[t][0] != 0 for t in DOCUMENTED_IDS) and all(keys[t][0] == 0 for t in NAMED_IDS)
    assert len(set(keys.values())) == len(keys)
    shown = {t.id: t for t in led.transfers()}
    assert set(shown) == set(DOCUMENTED_IDS + NAMED_IDS) | {"deposit:seed"}
    assert all(shown[t.id] == t for t in batch) and led.get("lease:H100:7:meter:86400:earn") == batch[8]
    view = dict(led.conn.execute("SELECT id, amount FROM transfers_named").fetchall())
    assert view == {t.id: t.amount for t in shown.values()}
    assert [t.id for t in led.transfers("lease:H100:7:")] == [t for t in DOCUMENTED_IDS + NAMED_IDS
                                                             if t.startswith("lease:H100:7:")]
    assert {x["id"] for x in led.statement(7)} == set(shown)
    with pytest.raises(TransferConflict):
        led.apply([Transfer("trade:H100:7:cost", 7, AVAILABLE, 7, ESCROW, 999)])
    # the engine's rows and the parsed strings are the same keys
    code = led.class_code("H100")
    assert keys["trade:H100:7:cost"] == (ids.class_base(ids.TRADE, code) | 7, ids.COST)
    assert keys["lease:H100:7:meter:86400:earn"] == (ids.class_base(ids.LEASE, code) | 7,
                                                     ids.cause(ids.METER, 86400) | ids.EARN)
    led.check_invariants()


def test_a_schema_1_ledger_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE transfers (id TEXT PRIMARY KEY, debit_owner INTEGER NOT NULL, debit_kind INTEGER NOT NULL,
            credit_owner INTEGER NOT NULL, credit_kind INTEGER NOT NULL, amount INTEGER NOT NULL, time INTEGER NOT NULL)
            WITHOUT ROWID;
        CREATE TABLE balances (owner INTEGER NOT NULL, kind INTEGER NOT NULL, balance INTEGER NOT NULL,
            PRIMARY KEY (owner, kind)) WITHOUT ROWID;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE kinds (kind INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE VIEW transfers_named AS SELECT id FROM transfers;
        INSERT INTO meta VALUES ('schema_version', 1), ('transfers', 2), ('commits', 2);
        INSERT INTO transfers VALUES ('deposit:a', 0, 6, 7, 1, 100, 0), ('order:H100:3:hold', 7, 1, 7, 2, 40, 5);
        INSERT INTO balances VALUES (0, 6, -100), (7, 1, 60), (7, 2, 40);
    """)
    conn.close()
    led = Ledger(path)
    assert [tuple(t) for t in led.transfers()] == [("deposit:a", 0, EXTERNAL, 7, AVAILABLE, 100, 0),
                                                  ("order:H100:3:hold", 7, AVAILABLE, 7, ESCROW, 40, 5)]
    assert led.apply([Transfer("order:H100:3:hold", 7, AVAILABLE, 7, ESCROW, 40, 5)]) == 0
    led.check_invariants()
    led.close()


def test_state_tables_keyed_by_class_and_id_are_migrated(tmp_path):
    """settle_bids and leases were WITHOUT ROWID tables keyed (cls, id): opened, they are rekeyed."""
    import sqlite3

    import msgspec

    from clearing.leases import Lease
    from settlement.service import Settlement

    lease = Lease("H100", 7, 42, 43, 1, 2, 1000, 0, 3600, 3600, 0, 5, 6, status="ready", ready_at=1)
    path = tmp_path / "old.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE settle_cursors (cls TEXT PRIMARY KEY, seq INTEGER NOT NULL, clock INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE settle_bids (cls TEXT NOT NULL, oid INTEGER NOT NULL, account INTEGER NOT NULL,
            hpg INTEGER NOT NULL, remaining INTEGER NOT NULL, PRIMARY KEY (cls, oid)) WITHOUT ROWID;
        CREATE TABLE leases (cls TEXT NOT NULL, trade_id INTEGER NOT NULL, buyer INTEGER NOT NULL,
            provider INTEGER NOT NULL, status TEXT NOT NULL, end_time INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (cls, trade_id)) WITHOUT ROWID;
        INSERT INTO settle_cursors VALUES ('H100', 9, 10);
        INSERT INTO settle_bids VALUES ('H100', 5, 42, 100, 3);
    """)
    conn.execute("INSERT INTO leases VALUES ('H100', 7, 42, 43, 'ready', 3600, ?)", (msgspec.msgpack.encode(lease),))
    conn.commit()
    conn.close()
    s = Settlement(path)
    assert s.last_seq("H100") == 9 and s.engine.exposure() == {42: 300}
    assert s.lease("H100-7")["status"] == "ready" and [x["lease"] for x in s.leases(43)] == ["H100-7"]
    s.close()


def _page(led: Ledger, rows: list[tuple]) -> int:
    import numpy as np

    with led.transaction():
        return led.post(np.array(rows, dtype=np.int64).reshape(-1, 6), checked=True)


def test_settlements_pages_read_and_move_balances_like_rows(led):
    """The engine's transfers go in as one page per post (schema 3): they move balances, are
    counted, and read back through transfers, get, statement and check_invariants with the row
    transfers; bad pages are refused whole and change nothing."""
    from clearing import ids

    led.deposit(7, 1000, "seed")
    code = led.class_code("H100")
    hold = (ids.class_base(ids.ORDER, code) | 3, ids.HOLD, 7 << 3 | AVAILABLE, 7 << 3 | ESCROW, 400, 5)
    cost = (ids.class_base(ids.TRADE, code) | 9, ids.COST, 7 << 3 | ESCROW, 7 << 3 | PREPAID, 300, 6)
    assert _page(led, [hold, cost]) == 2
    assert led.balances(7) == {"available": 600, "escrow": 100, "lease_prepaid": 300}
    assert led.count() == 3 and led.conn.execute("SELECT COUNT(*) FROM transfer_pages").fetchone()[0] == 1
    assert [t.id for t in led.transfers()] == ["deposit:seed", "order:H100:3:hold", "trade:H100:9:cost"]
    assert [t.id for t in led.transfers("trade:")] == ["trade:H100:9:cost"]
    assert led.get("trade:H100:9:cost") == Transfer("trade:H100:9:cost", 7, ESCROW, 7, PREPAID, 300, 6)
    assert [(x["id"], x["account"], x["balance"]) for x in led.statement(7)][-2:] == [
        ("trade:H100:9:cost", "escrow", 100), ("trade:H100:9:cost", "lease_prepaid", 300)]
    assert led.check_invariants() == {"transfers": 3, "accounts": 4}
    before = led.count(), led.balances()
    bad = [
        [(*hold[:4], 0, 5)],  # amount 0
        [(hold[0], 7, hold[2], hold[2] - AVAILABLE + 7, 5, 5)],  # unknown kind
        [(hold[0], 8, hold[2], hold[2], 5, 5)],  # to its own account
        [(hold[0], 9, *hold[2:]), (hold[0], 9, *hold[2:])],  # one id twice
        [(hold[0], 10, 7 << 3 | AVAILABLE, 7 << 3 | ESCROW, 10**6, 7)],  # more than available
    ]
    for rows in bad:
        with pytest.raises((BadTransfer, InsufficientFunds, LedgerError)):
            _page(led, rows)
        assert (led.count(), led.balances()) == before
    led.check_invariants()


def test_a_schema_2_ledger_gets_pages_and_keeps_its_rows(tmp_path):
    import sqlite3

    path = tmp_path / "v2.db"
    led = Ledger(path)
    led.deposit(7, 100, "a")
    led.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE transfer_pages")
    conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    led = Ledger(path)
    assert led.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 4
    assert [t.id for t in led.transfers()] == ["deposit:a"] and led.balance(7) == 100
    led.check_invariants()
    led.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 5 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer"):
        Ledger(path)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(-2**63, 2**63 - 1)] * 6), min_size=1, max_size=40),
       st.integers(0, 3))
def test_a_page_holds_any_int64_rows_exactly(rows, spread):
    """Pages are frame-of-reference encoded (each column as its minimum and narrow differences):
    any int64 values come back bit for bit, whatever the columns' spans."""
    import numpy as np

    from settlement.ledger import decode_page, encode_page

    a = np.array(rows, dtype=np.int64)
    if spread < 3:  # also pages whose columns fit 1, 2 or 4 bytes
        a = a % (1 << (8 << spread)) + (1 << 40)
    data = encode_page(a)
    assert (decode_page(data, len(a)) == a).all()
    if spread == 0:
        assert len(data) < a.nbytes or len(a) < 4


def _real_history(led: Ledger, owner: int, steps: list) -> list[tuple[str, str, int]]:
    """Apply ``steps`` (a Transfer list: a row batch; an int64 array: a page) one by one and
    record, after each transfer that touched ``owner``, the balance its account really had:
    (id, account kind, balance) in the order they were applied."""
    from settlement.ledger import KIND_NAMES

    seen = []
    for step in steps:
        if isinstance(step, list):
            led.apply(step)
            ids_ = [t.id for t in step]
        else:
            _page(led, step)
            ids_ = [led._format(r[0], r[1]) for r in step]
        rows = step if isinstance(step, list) else [led.get(i) for i in ids_]
        # the balances right after this step, undone transfer by transfer back to each of them
        after = {k: led.balance(owner, k) for k in KIND_NAMES}
        legs = []
        for t in rows:
            for kind, sign in ((t.debit_kind, -1), (t.credit_kind, 1)):
                if (t.debit_owner if sign < 0 else t.credit_owner) == owner:
                    legs.append((t.id, kind, sign * t.amount))
        back = dict(after)
        trail = []
        for tid, kind, signed in reversed(legs):
            trail.append((tid, KIND_NAMES[kind], back[kind]))
            back[kind] -= signed
        seen += reversed(trail)
    return seen


def test_statement_balances_are_the_ones_the_account_had(led):
    """Issue 17, item 9: transfers of one second were listed by id, so order 10's hold came before
    order 9's release and the statement showed an available balance of -100 µ$ that never was.
    The lines are in the order the ledger applied them; each balance is the one after it."""
    from clearing import ids

    code = led.class_code("H100")

    def order(oid: int, leg: int, amount: int, t: int = 5) -> tuple:
        d, c = (7 << 3 | AVAILABLE, 7 << 3 | ESCROW) if leg == ids.HOLD else (7 << 3 | ESCROW, 7 << 3 | AVAILABLE)
        return (ids.class_base(ids.ORDER, code) | oid, leg, d, c, amount, t)

    import numpy as np

    def page(*rows: tuple) -> np.ndarray:
        return np.array(rows, dtype=np.int64).reshape(-1, 6)

    steps = [[Transfer("deposit:a", EXCHANGE, EXTERNAL, 7, AVAILABLE, 100, 5)],
             page(order(9, ids.HOLD, 100)), page(order(9, ids.RELEASE, 100)), page(order(10, ids.HOLD, 100)),
             page(order(10, ids.RELEASE, 60)),
             [Transfer("withdraw:b", 7, AVAILABLE, EXCHANGE, EXTERNAL, 60, 5)],  # the same second, after them
             page(order(11, ids.RELEASE, 40, t=4))]  # a time earlier than the rows before it
    real = _real_history(led, 7, steps)
    st = led.statement(7)
    assert [(x["id"], x["account"], x["balance"]) for x in st] == real
    assert all(x["balance"] >= 0 for x in st)
    assert [x["id"] for x in st if x["account"] == "available"] == [
        "deposit:a", "order:H100:9:hold", "order:H100:9:release", "order:H100:10:hold", "order:H100:10:release",
        "withdraw:b", "order:H100:11:release"]
    assert (st[-2]["balance"], st[-1]["balance"]) == (led.balance(7, ESCROW), led.balance(7)) == (0, 40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["deposit", "withdraw", "hold", "release"]), st.integers(1, 50),
                          st.integers(0, 3), st.booleans()), min_size=1, max_size=25))
def test_statement_running_balances_follow_the_order_applied(tmp_path_factory, ops):
    """Any mix of deposits and withdrawals (rows) and holds and releases (pages, several a page),
    whatever their times: each line's balance is the account's balance right after that transfer."""
    import numpy as np

    from clearing import ids

    led = Ledger(tmp_path_factory.mktemp("stmt") / "ledger.db")
    code = led.class_code("H100")
    avail = escrow = 0
    steps: list = []
    page_rows: list = []
    for n, (op, amount, t, flush) in enumerate(ops):
        if op in ("deposit", "withdraw") and page_rows:  # the page so far goes in first (as the link posts)
            steps.append(np.array(page_rows, dtype=np.int64).reshape(-1, 6))
            page_rows = []
        if op == "deposit":
            steps.append([Transfer(f"deposit:{n}", EXCHANGE, EXTERNAL, 7, AVAILABLE, amount, t)])
            avail += amount
        elif op == "withdraw" and avail:
            amount = min(amount, avail)
            steps.append([Transfer(f"withdraw:{n}", 7, AVAILABLE, EXCHANGE, EXTERNAL, amount, t)])
            avail -= amount
        elif op in ("hold", "release"):
            have = avail if op == "hold" else escrow
            if not have:
                continue
            amount = min(amount, have)
            leg = ids.HOLD if op == "hold" else ids.RELEASE
            d, c = (7 << 3 | AVAILABLE, 7 << 3 | ESCROW) if op == "hold" else (7 << 3 | ESCROW, 7 << 3 | AVAILABLE)
            page_rows.append((ids.class_base(ids.ORDER, code) | (1000 - n), leg, d, c, amount, t))
            avail, escrow = (avail - amount, escrow + amount) if op == "hold" else (avail + amount, escrow - amount)
        if page_rows and flush:
            steps.append(np.array(page_rows, dtype=np.int64).reshape(-1, 6))
            page_rows = []
    if page_rows:
        steps.append(np.array(page_rows, dtype=np.int64).reshape(-1, 6))
    real = _real_history(led, 7, steps)
    st_ = led.statement(7)
    assert [(x["id"], x["account"], x["balance"]) for x in st_] == real
    assert all(x["balance"] >= 0 for x in st_)
    led.close()


def test_a_schema_3_ledger_gets_the_order_columns_and_lists_its_old_transfers_first(tmp_path):
    import sqlite3

    path = tmp_path / "v3.db"
    led = Ledger(path)
    led.deposit(7, 100, "old", time=9)
    led.close()
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE t3 (ref INTEGER NOT NULL, sub INTEGER NOT NULL, debit INTEGER NOT NULL, credit INTEGER NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0), time INTEGER NOT NULL, PRIMARY KEY (ref, sub)) WITHOUT ROWID;
        INSERT INTO t3 SELECT ref, sub, debit, credit, amount, time FROM transfers;
        DROP VIEW transfers_named; DROP TABLE transfers; ALTER TABLE t3 RENAME TO transfers;
        CREATE TABLE p3 (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL);
        DROP TABLE transfer_pages; ALTER TABLE p3 RENAME TO transfer_pages;
        UPDATE meta SET value = 3 WHERE key = 'schema_version';
    """)
    conn.close()
    led = Ledger(path)
    assert led.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 4
    led.withdraw(7, 100, "new", time=1)  # an earlier time, but applied after
    assert [(x["id"], x["balance"]) for x in led.statement(7)] == [("deposit:old", 100), ("withdraw:new", 0)]
    led.check_invariants()
    led.close()
