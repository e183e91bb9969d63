"""The account store (exchange/accounts.py) on real SQLite files, and `gpux accounts` through argparse."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from cli import accounts as cli_accounts
from cli.accounts import CliError, format_usd, parse_usd
from gateway.accounts import MAX_TOTAL, ROLES, Account, AccountError, AccountStore, ApiKey, accounts_path

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm6Q9XQ3fOuvIMt1mYy0cW3V3aQw3zNwJ6bKp5m0ZbK alice@laptop"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return accounts_path(tmp_path / "data")


@pytest.fixture
def store(db: Path):
    s = AccountStore(db)
    yield s
    s.close()


# -- accounts -----------------------------------------------------------------------------------


def test_create_account_ids_start_at_one_and_key_works(store: AccountStore) -> None:
    alice, key_id, secret = store.create_account("alice", "trader")
    bob, _, _ = store.create_account("bob", "provider")
    assert alice == Account(1, "alice", "trader")
    assert bob == Account(2, "bob", "provider")
    assert key_id.startswith("gk_") and len(key_id) == 19
    assert len(secret) >= 43
    assert store.key(key_id) == ApiKey(key_id, 1, "trader", secret)
    assert store.account(1) == alice and store.account("alice") == alice
    assert store.account("carol") is None and store.account(99) is None
    assert store.accounts() == [alice, bob]


def test_every_role_can_be_created(store: AccountStore) -> None:
    for i, role in enumerate(ROLES):
        account, key_id, _ = store.create_account(f"user{i}", role)
        assert account.role == role
        assert store.key(key_id).role == role


def test_duplicate_name_is_refused(store: AccountStore) -> None:
    store.create_account("alice", "trader")
    with pytest.raises(AccountError) as e:
        store.create_account("alice", "provider")
    assert e.value.code == "NAME_TAKEN"
    assert [a.name for a in store.accounts()] == ["alice"]  # nothing half-created


@pytest.mark.parametrize("role", ["", "Trader", "root", "admin "])
def test_bad_role_is_refused(store: AccountStore, role: str) -> None:
    with pytest.raises(AccountError) as e:
        store.create_account("alice", role)
    assert e.value.code == "BAD_ROLE"
    assert store.accounts() == []


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é", "a/b", "a\n", "alice;drop"])
def test_bad_name_is_refused(store: AccountStore, name: str) -> None:
    with pytest.raises(AccountError) as e:
        store.create_account(name, "trader")
    assert e.value.code == "BAD_NAME"


@pytest.mark.parametrize("name", ["a", "x" * 64, "A-b_c.9"])
def test_good_names(store: AccountStore, name: str) -> None:
    assert store.create_account(name, "analyst")[0].name == name


def test_deposits_exact_in_micro_dollars(store: AccountStore) -> None:
    alice, _, _ = store.create_account("alice", "trader", deposit=parse_usd("12.345678"))
    bob, _, _ = store.create_account("bob", "trader")
    assert store.deposits() == {alice.id: 12_345_678, bob.id: 0}
    assert store.deposit(alice.id, 1) == 12_345_679
    assert store.deposit(bob.id, 5_000_000, note="wire") == 5_000_000
    assert store.deposits() == {alice.id: 12_345_679, bob.id: 5_000_000}


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "100"])
def test_bad_deposit_is_refused(store: AccountStore, amount: object) -> None:
    alice, _, _ = store.create_account("alice", "trader")
    with pytest.raises(AccountError) as e:
        store.deposit(alice.id, amount)  # type: ignore[arg-type]
    assert e.value.code == "BAD_AMOUNT"
    assert store.deposits() == {alice.id: 0}


def test_deposits_are_capped_far_below_sqlite_overflow(store: AccountStore) -> None:
    alice, _, _ = store.create_account("alice", "trader", deposit=MAX_TOTAL - 1)
    assert store.deposit(alice.id, 1) == MAX_TOTAL
    with pytest.raises(AccountError) as e:
        store.deposit(alice.id, 1)
    assert e.value.code == "BAD_AMOUNT"
    with pytest.raises(AccountError):
        store.create_account("bob", "trader", deposit=MAX_TOTAL + 1)
    assert store.deposits() == {alice.id: MAX_TOTAL}


def test_negative_initial_deposit_creates_nothing(store: AccountStore) -> None:
    with pytest.raises(AccountError) as e:
        store.create_account("alice", "trader", deposit=-5)
    assert e.value.code == "BAD_AMOUNT"
    assert store.accounts() == []


def test_unknown_account(store: AccountStore) -> None:
    calls = (lambda: store.deposit(7, 100), lambda: store.create_key(7),
             lambda: store.set_ssh_key(7, SSH_KEY))
    for call in calls:
        with pytest.raises(AccountError) as e:
            call()
        assert e.value.code == "UNKNOWN_ACCOUNT"


def test_revoked_key_is_gone_other_keys_stay(store: AccountStore) -> None:
    alice, first, _ = store.create_account("alice", "trader")
    second, secret2 = store.create_key(alice.id)
    assert second != first
    store.revoke_key(first)
    assert store.key(first) is None
    assert store.key(second) == ApiKey(second, alice.id, "trader", secret2)
    assert store.key_ids(alice.id) == [second]
    assert store.key_ids(alice.id, include_revoked=True) == [first, second]
    store.revoke_key(first)  # again: nothing happens
    with pytest.raises(AccountError) as e:
        store.revoke_key("gk_nosuchkeyxxxxxxxx")
    assert e.value.code == "UNKNOWN_KEY"


def test_unknown_or_malformed_key_id(store: AccountStore) -> None:
    store.create_account("alice", "trader")
    assert store.key("gk_AAAAAAAAAAAAAAAA") is None
    assert store.key("' OR 1=1 --") is None
    assert store.key("") is None


def test_secret_not_in_repr_or_str(store: AccountStore) -> None:
    _, key_id, secret = store.create_account("alice", "trader")
    key = store.key(key_id)
    assert key is not None and key.secret == secret
    assert secret not in repr(key) and secret not in str(key)
    assert key_id in repr(key)


def test_ssh_key(store: AccountStore) -> None:
    alice, _, _ = store.create_account("alice", "trader", ssh_public_key=SSH_KEY + "\n")
    assert store.ssh_key(alice.id) == SSH_KEY
    bob, _, _ = store.create_account("bob", "trader")
    assert store.ssh_key(bob.id) is None
    store.set_ssh_key(bob.id, SSH_KEY)
    assert store.ssh_key(bob.id) == SSH_KEY
    for bad in ["", "not a key", "ssh-ed25519 !!!notbase64", SSH_KEY + "\n" + SSH_KEY]:
        with pytest.raises(AccountError) as e:
            store.set_ssh_key(bob.id, bad)
        assert e.value.code == "BAD_SSH_KEY"
    with pytest.raises(AccountError):
        store.create_account("carol", "trader", ssh_public_key="nope")
    assert store.account("carol") is None


def test_two_stores_on_one_file_see_each_other(db: Path) -> None:
    a = AccountStore(db)
    b = AccountStore(db)
    try:
        alice, key_id, secret = a.create_account("alice", "trader")
        assert b.account("alice") == alice
        assert b.key(key_id) == ApiKey(key_id, alice.id, "trader", secret)
        bob, _, _ = b.create_account("bob", "provider", deposit=7)
        assert a.account(bob.id) == bob
        assert a.deposits() == {alice.id: 0, bob.id: 7}
        b.revoke_key(key_id)
        assert a.key(key_id) is None
        with pytest.raises(AccountError) as e:
            a.create_account("bob", "trader")
        assert e.value.code == "NAME_TAKEN"
    finally:
        a.close()
        b.close()


def _create_many(path: str, prefix: str, n: int) -> None:
    with AccountStore(path) as s:
        for i in range(n):
            s.create_account(f"{prefix}{i}", "trader", deposit=1)


def test_several_processes_write_at_once(db: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_create_many, args=(str(db), f"p{j}-", 25)) for j in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with AccountStore(db) as s:
        accounts = s.accounts()
        assert len(accounts) == 100
        assert [a.id for a in accounts] == list(range(1, 101))
        assert sum(s.deposits().values()) == 100


def test_db_file_is_private_and_in_wal_mode(db: Path) -> None:
    with AccountStore(db):
        pass
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    import sqlite3

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"accounts", "api_keys", "deposits"} <= tables
    finally:
        con.close()


def test_data_survives_reopening(db: Path) -> None:
    with AccountStore(db) as s:
        alice, key_id, secret = s.create_account("alice", "admin", deposit=3)
    with AccountStore(db) as s:
        assert s.account("alice") == alice
        assert s.key(key_id) == ApiKey(key_id, alice.id, "admin", secret)
        assert s.deposits() == {alice.id: 3}


def test_closed_store_refuses(db: Path) -> None:
    s = AccountStore(db)
    s.close()
    with pytest.raises(AccountError) as e:
        s.accounts()
    assert e.value.code == "CLOSED"


# -- USD amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, micro", [("12.345678", 12_345_678), ("0", 0), ("1", 1_000_000),
                                         ("0.000001", 1), ("1000.5", 1_000_500_000), (" 2.50 ", 2_500_000),
                                         ("123456789.999999", 123_456_789_999_999)])
def test_parse_usd_exact(text: str, micro: int) -> None:
    assert parse_usd(text) == micro


@pytest.mark.parametrize("text, words", [("1.0000001", "more than 6 decimals"), ("-1", "negative"),
                                         ("abc", "not a USD amount"), ("", "not a USD amount"),
                                         ("NaN", "not a USD amount"), ("1e3", "not a USD amount"),
                                         ("Infinity", "not a USD amount"), ("1.", "not a USD amount"),
                                         ("1,5", "not a USD amount")])
def test_parse_usd_refuses(text: str, words: str) -> None:
    with pytest.raises(CliError, match=words):
        parse_usd(text)


def test_format_usd() -> None:
    assert format_usd(12_345_678) == "12.345678"
    assert format_usd(5_000_000) == "5.00"
    assert format_usd(1) == "0.000001"
    assert format_usd(1_500_000) == "1.50"


# -- the command line ---------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_accounts.main(["accounts", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_hooks_into_another_parser(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="gpux")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("other")
    cli_accounts.register(sub)
    args = parser.parse_args(["accounts", "list", "--data", str(tmp_path)])
    assert args.command == "accounts" and args.accounts_command == "list"
    assert args.data == str(tmp_path)
    assert callable(args.handler)


def test_cli_create_json_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "d")
    code, out, err = run(capsys, "create", "alice", "--role", "trader", "--deposit", "12.345678",
                         "--data", data, "--json")
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"account_id", "name", "role", "key_id", "secret"}
    assert created["account_id"] == 1 and created["name"] == "alice" and created["role"] == "trader"
    with AccountStore(accounts_path(data)) as s:
        assert s.key(created["key_id"]).secret == created["secret"]
        assert s.deposits() == {1: 12_345_678}

    code, out, err = run(capsys, "create", "bob", "--role", "provider", "--data", data)
    assert code == 0, err
    assert "account 2" in out and "not shown again" in out
    secret_line = next(line for line in out.splitlines() if line.startswith("secret:"))
    key_line = next(line for line in out.splitlines() if line.startswith("key id:"))
    with AccountStore(accounts_path(data)) as s:
        assert s.key(key_line.split()[-1]).secret == secret_line.split()[-1]

    code, out, _ = run(capsys, "list", "--data", data, "--json")
    assert code == 0
    assert json.loads(out) == [
        {"account_id": 1, "name": "alice", "role": "trader", "deposited": 12_345_678, "keys": 1},
        {"account_id": 2, "name": "bob", "role": "provider", "deposited": 0, "keys": 1},
    ]
    code, out, _ = run(capsys, "list", "--data", data)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "DEPOSITED", "USD", "KEYS"]
    assert lines[1].split() == ["1", "alice", "trader", "12.345678", "1"]
    assert lines[2].split() == ["2", "bob", "provider", "0.00", "1"]


def test_cli_data_dir_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUX_DATA", str(tmp_path / "env"))
    assert run(capsys, "create", "alice", "--role", "analyst")[0] == 0
    assert (tmp_path / "env" / "accounts.db").exists()
    monkeypatch.delenv("GPUX_DATA")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "create", "bob", "--role", "analyst")[0] == 0
    assert (tmp_path / "gpux-data" / "accounts.db").exists()


def test_cli_deposit_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path)
    run(capsys, "create", "alice", "--role", "trader", "--data", data, "--deposit", "1")
    code, out, err = run(capsys, "deposit", "alice", "0.5", "--data", data)
    assert code == 0, err
    assert "total deposited 1.50 USD" in out
    code, out, err = run(capsys, "key", "alice", "--data", data, "--json")
    assert code == 0, err
    new = json.loads(out)
    code, out, err = run(capsys, "key", "1", "--data", data)  # by id
    assert code == 0, err
    assert "not shown again" in out
    with AccountStore(accounts_path(data)) as s:
        assert s.deposits() == {1: 1_500_000}
        assert s.key(new["key_id"]).secret == new["secret"]
        assert len(s.key_ids(1)) == 3
    code, out, err = run(capsys, "revoke", new["key_id"], "--data", data)
    assert code == 0, err
    with AccountStore(accounts_path(data)) as s:
        assert s.key(new["key_id"]) is None


@pytest.mark.parametrize("usd, words", [("-5", "negative"), ("1.1234567", "more than 6 decimals"),
                                        ("ten", "not a USD amount"), ("0", "must be positive")])
def test_cli_deposit_bad_usd(tmp_path: Path, capsys: pytest.CaptureFixture[str], usd: str,
                             words: str) -> None:
    run(capsys, "create", "alice", "--role", "trader", "--data", str(tmp_path))
    code, out, err = run(capsys, "deposit", "alice", usd, "--data", str(tmp_path))
    assert code == 2
    assert err.startswith("gpux: error: ") and words in err
    with AccountStore(accounts_path(tmp_path)) as s:
        assert s.deposits() == {1: 0}


@pytest.mark.parametrize("usd", ["-1", "0.0000001", "lots"])
def test_cli_create_bad_usd_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            usd: str) -> None:
    code, out, err = run(capsys, "create", "alice", "--role", "trader", "--deposit", usd,
                         "--data", str(tmp_path))
    assert code == 2 and err.startswith("gpux: error: ") and out == ""
    assert not accounts_path(tmp_path).exists()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path)
    code, _, err = run(capsys, "list", "--data", data)
    assert code == 2 and "no account store" in err
    run(capsys, "create", "alice", "--role", "trader", "--data", data)
    code, _, err = run(capsys, "create", "alice", "--role", "trader", "--data", data)
    assert code == 2 and err.startswith("gpux: error: ") and "taken" in err
    code, _, err = run(capsys, "create", "bad name", "--role", "trader", "--data", data)
    assert code == 2 and "account name" in err
    code, _, err = run(capsys, "deposit", "carol", "5", "--data", data)
    assert code == 2 and "no account named carol" in err
    code, _, err = run(capsys, "key", "carol", "--data", data)
    assert code == 2 and "no account named carol" in err
    code, _, err = run(capsys, "revoke", "gk_nosuchkeyxxxxxxxx", "--data", data)
    assert code == 2 and "no such API key" in err
    with pytest.raises(SystemExit) as e:  # argparse refuses a role outside ROLES
        cli_accounts.main(["accounts", "create", "bob", "--role", "root", "--data", data])
    assert e.value.code == 2


def test_cli_ssh_key_from_file_or_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "d")
    pub = tmp_path / "id.pub"
    pub.write_text(SSH_KEY + "\n")
    assert run(capsys, "create", "alice", "--role", "trader", "--ssh-key", str(pub), "--data", data)[0] == 0
    assert run(capsys, "create", "bob", "--role", "trader", "--ssh-key", SSH_KEY, "--data", data)[0] == 0
    code, _, err = run(capsys, "create", "carol", "--role", "trader", "--ssh-key", str(tmp_path / "nope.pub"),
                       "--data", data)
    assert code == 2 and "no such file" in err
    with AccountStore(accounts_path(data)) as s:
        assert s.ssh_key(1) == SSH_KEY and s.ssh_key(2) == SSH_KEY
        assert s.account("carol") is None


def test_a_new_secret_never_begins_with_a_dash() -> None:
    """`gpux settle --secret S` (and agent, bid...): a secret beginning with "-" is read as an
    option by the command line; url-safe base64 begins with one in 64 secrets.  CI met it."""
    from gateway.accounts import new_secret

    drawn = [new_secret() for _ in range(2000)]
    assert all(s[0] != "-" and len(s) == 43 for s in drawn)
    assert len(set(drawn)) == 2000
