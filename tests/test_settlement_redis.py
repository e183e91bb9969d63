"""Exactly-once settlement of a replica fed from the journal stream over real Redis (issue 14;
issue 5's consumer-group tests, re-aimed at `gpux settle` as a replica).

A journal of a real workload (numba books, three classes; deposits first, as Fund entries) is
written with `exchange.journal` and published to ``{prefix}:journal`` by the exchange's own `JournalPublisher`; replicas
(`settlement.replica`) read it.  A replica killed inside its ledger transaction, one killed right
after a commit, one whose ledger lost its last commits (restored from a backup), two replicas on
one ledger at once, replica processes killed with SIGKILL at random moments, a deleted ledger:
every run ends with a ledger identical (transfers, balances, leases, bids, cursors) to a
crash-free run.

Redis on 127.0.0.1:6379 (GPUX_TEST_REDIS), own key prefix per test, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis_helpers import REDIS_URL, redis_prefix

from bench.redis_outage import journal_cursor
from bench.settlement import FUNDS, ledger_digest
from bench.workload import generate
from exchange.config import Instrument, ServerConfig
from exchange.entries import Cmd, Fund, encode_entry
from exchange.journal import Journal
from exchange.stream import JournalPublisher
from orderbook.config import BookConfig
from orderbook.types import CMD_CLOCK, COMMAND_DTYPE, clock_command
from settlement.replica import FileJournal, Replica, ReplicaRunner, SimulatedCrash
from settlement.service import Settlement

FEES = {"H100": (10, 25), "A100": (0, 30), "RTX4090": (5, 5)}
CFG = ServerConfig(data_dir="unused", engine="numba", meter_interval_s=6 * 3600, instruments={
    c: Instrument(BookConfig(name=c), maker_fee_bps=mk, taker_fee_bps=tk) for c, (mk, tk) in FEES.items()})
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix():
    yield from redis_prefix("replica-", " to run the exactly-once tests")


@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> tuple[Path, int, list[int]]:
    """A journal of 9,000 workload commands over three classes, batches of 600 (200 a class)."""
    d = tmp_path_factory.mktemp("exchange") / "journal"
    parts = generate(9000, seed=7, classes=tuple(FEES))
    accounts = sorted({int(a) for arr in parts.values() for a in np.unique(arr["account"]).tolist()} - {0})
    pos = dict.fromkeys(parts, 0)
    now = dict.fromkeys(parts, 0)
    with Journal.open(d, fsync=False) as j:
        j.append([encode_entry(Fund("deposit", a, FUNDS, f"accounts:{a}", 0)) for a in accounts])  # first, funds
        while any(pos[c] < len(parts[c]) for c in parts):
            batch = []
            for c in FEES:
                arr = parts[c][pos[c]:pos[c] + 200]
                pos[c] += len(arr)
                for rec in arr:  # as the sequencer journals them: time moves by clock commands only
                    t = int(rec["time"])
                    if t > now[c] or rec["type"] == CMD_CLOCK:
                        now[c] = max(now[c], t)
                        batch.append(encode_entry(Cmd(c, np.array([clock_command(now[c])], COMMAND_DTYPE).tobytes())))
                        if rec["type"] == CMD_CLOCK:
                            continue
                    rec = rec.copy()
                    rec["time"] = now[c]
                    batch.append(encode_entry(Cmd(c, rec.tobytes())))
            j.append(batch)
        last = j.last_seq
    return d, last, accounts


def new_replica(path: Path, journal, **kw) -> Replica:
    """A replica with a new ledger (the journal's first entries fund every account)."""
    return Replica(CFG, path, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, journal):
    """The crash-free ledger: the whole journal applied in process, from the files."""
    rep = new_replica(tmp_path_factory.mktemp("ref") / "ledger.db", journal)
    src = FileJournal(journal[0])
    while rep.engine.seq < journal[1]:
        rep.apply_chunk(rep.engine.seq + 1, src.fetch(rep.engine.seq, 700))
    rep.settlement.check_invariants()
    digest = ledger_digest(rep.settlement)
    assert len(digest["transfers"]) > 3000 and len(digest["leases"]) > 500
    rep.close()
    return digest


def publish(prefix: str, journal) -> None:
    """The journal to Redis exactly as `gpux serve --redis` publishes it."""

    async def go() -> None:
        pub = JournalPublisher(REDIS_URL, prefix, journal[0], 0, maxlen=10_000_000, chunk_entries=300)
        await pub.start()
        pub.wake(journal[1])
        assert await pub.flush(60)
        await pub.close()

    asyncio.run(go())


def runner(rep: Replica, prefix: str) -> ReplicaRunner:
    return ReplicaRunner(rep, redis.Redis.from_url(REDIS_URL), prefix, count=3, block_ms=100)


def run_until_settled(run: ReplicaRunner, journal, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while run.replica.cursor < journal[1]:
        assert time.monotonic() < deadline, "replica did not finish"
        run.step()


def finish(s: Settlement, reference) -> None:
    s.check_invariants()
    assert ledger_digest(s) == reference
    s.close()


def test_one_replica_settles_every_entry_once(tmp_path, prefix, journal, reference):
    publish(prefix, journal)
    rep = new_replica(tmp_path / "l.db", journal, snapshot_every=2000)
    run = runner(rep, prefix)
    run_until_settled(run, journal)
    assert rep.applied == journal[1] and run.gaps == 0 and rep.snapshots_written >= 2
    finish(rep.settlement, reference)
    rep.engine.close()


def test_killed_before_commit_resumes_from_the_ledgers_cursor(tmp_path, prefix, journal, reference):
    publish(prefix, journal)
    commits = []

    def crash_on_third() -> None:
        commits.append(1)
        if len(commits) == 3:
            raise SimulatedCrash("killed inside the ledger transaction")

    rep = new_replica(tmp_path / "l.db", journal, hooks={"before_commit": crash_on_third})
    with pytest.raises(SimulatedCrash):
        run_until_settled(runner(rep, prefix), journal)
    applied = rep.cursor
    rep.close()
    rep2 = Replica(CFG, tmp_path / "l.db")
    assert rep2.cursor == applied > 0  # the crashed transaction left nothing
    run_until_settled(runner(rep2, prefix), journal)
    finish(rep2.settlement, reference)
    rep2.engine.close()


def test_killed_after_commit_resumes_after_it(tmp_path, prefix, journal, reference):
    publish(prefix, journal)
    commits = []

    def crash_on_second() -> None:
        commits.append(1)
        if len(commits) == 2:
            raise SimulatedCrash("killed right after COMMIT")

    rep = new_replica(tmp_path / "l.db", journal, hooks={"after_commit": crash_on_second}, snapshot_every=400)
    with pytest.raises(SimulatedCrash):
        run_until_settled(runner(rep, prefix), journal)
    committed = rep.settlement.ledger.count()
    cursor = rep.cursor
    rep.close()
    rep2 = Replica(CFG, tmp_path / "l.db")
    assert rep2.settlement.ledger.count() == committed and rep2.cursor == cursor
    assert rep2.engine.seq <= cursor  # from a snapshot at or below the cursor (or the start)
    run_until_settled(runner(rep2, prefix), journal)
    finish(rep2.settlement, reference)
    rep2.engine.close()


def test_commits_lost_are_applied_again_from_the_journal(tmp_path, prefix, journal, reference):
    """A power loss with synchronous=NORMAL may take the last commits (or the ledger is restored
    from a backup): the replica's snapshots newer than the ledger's cursor are not used, and the
    entries after the cursor are applied again."""
    publish(prefix, journal)
    commits = []
    backup = tmp_path / "backup.db"
    rep = new_replica(tmp_path / "l.db", journal, snapshot_every=2000)

    def snapshot_at_third() -> None:
        commits.append(1)
        if len(commits) == 3:
            dest = sqlite3.connect(backup)
            rep.settlement.ledger.conn.backup(dest)  # the ledger as of the third commit
            dest.close()

    rep.hooks["after_commit"] = snapshot_at_third
    run_until_settled(runner(rep, prefix), journal)
    rep.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'l.db'}{suffix}").unlink(missing_ok=True)
    backup.rename(tmp_path / "l.db")
    rep2 = Replica(CFG, tmp_path / "l.db")
    assert 0 < rep2.cursor < journal[1] and rep2.engine.seq <= rep2.cursor
    run_until_settled(runner(rep2, prefix), journal)
    finish(rep2.settlement, reference)
    rep2.engine.close()


def test_two_replicas_at_once(tmp_path, prefix, journal, reference):
    """Two live replicas on one ledger file (a standby is a second process): each applies what
    it reads after reloading what the other committed; the ledger ends as with one."""
    publish(prefix, journal)
    path = tmp_path / "l.db"
    new_replica(path, journal).close()
    errors: list[BaseException] = []

    def member(name: str) -> None:
        rep = Replica(CFG, path, snapshot_dir=tmp_path / f"snap-{name}")
        try:
            run_until_settled(runner(rep, prefix), journal)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            rep.close()

    threads = [threading.Thread(target=member, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    finish(Settlement(path, Replica(CFG, path).settlement.config), reference)


def test_deleted_ledger_is_rebuilt_identical(tmp_path, prefix, journal, reference):
    """Delete the ledger at any time: the replica starts from seq 1 (its snapshots are all ahead of
    an empty ledger) and, the stream trimmed, backfills from the journal files."""
    publish(prefix, journal)
    rep = new_replica(tmp_path / "l.db", journal, snapshot_every=1500)
    run = runner(rep, prefix)
    while rep.cursor < journal[1] // 2:
        run.step()
    rep.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'l.db'}{suffix}").unlink(missing_ok=True)
    r = redis.Redis.from_url(REDIS_URL)
    r.xtrim(f"{prefix}:journal", minid=f"{journal[1] // 2}-0")  # the stream no longer starts at seq 1
    r.close()
    rep2 = new_replica(tmp_path / "l.db", journal)
    assert rep2.engine.seq == 0
    run2 = ReplicaRunner(rep2, redis.Redis.from_url(REDIS_URL), prefix, backfill=FileJournal(journal[0]),
                         block_ms=100)
    run_until_settled(run2, journal)
    assert run2.gaps == 1 and run2.backfilled > 0
    finish(rep2.settlement, reference)
    rep2.engine.close()


_CHILD = """
import sys
sys.path.insert(0, "tests")
from test_settlement_redis import CFG
from settlement.replica import run_replica
run_replica(CFG, sys.argv[1], sys.argv[3], prefix=sys.argv[2], idle_exit_s=2.0, block_ms=100, snapshot_every=700)
"""


committed = journal_cursor  # the ledger's journal cursor, read while a replica writes (WAL)


def test_sigkill_at_random_moments(tmp_path, prefix, journal, reference):
    """Replica processes killed with SIGKILL when a (seeded) random share of the journal is
    committed — inside a transaction, right after one, while writing a snapshot or reading —
    and restarted: the ledger ends identical to the crash-free run."""
    publish(prefix, journal)
    path = tmp_path / "l.db"
    new_replica(path, journal).close()
    total = journal[1]
    rng = random.Random(20260505)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _CHILD, REDIS_URL, prefix, str(path)]
    kills = []
    for _ in range(4):
        start = committed(path)
        target = start + (total - start) * rng.uniform(0.15, 0.6)
        proc = subprocess.Popen(argv, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while proc.poll() is None and committed(path) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(committed(path))
        proc.wait(30)
    assert len(kills) == 4 and kills[-1] < total, f"not killed mid-way: {kills} of {total}"
    proc = subprocess.run(argv, env=env, cwd=ROOT, timeout=180)
    assert proc.returncode == 0
    assert committed(path) == total
    finish(Settlement(path, Replica(CFG, path).settlement.config), reference)
