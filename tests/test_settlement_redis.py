"""Exactly-once settlement over real Redis Streams (issue 5; docs/architecture.md, with Redis).

The events of a real workload (numba books) are written to ``{prefix}:events:{CLASS}`` by the
exchange's own `RedisBus`; settlement's consumer group reads them.  A consumer killed before
its commit, one killed after its commit but before XACK, consumers killed with SIGKILL at
random moments, two consumers at once: every run ends with a ledger identical (transfers,
balances, leases, cursors) to a crash-free run, and nothing left pending.

Redis on 127.0.0.1:6379 (GPUX_TEST_REDIS), own key prefix per test, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis_helpers import REDIS_URL, redis_prefix

from bench.settlement import accounts_of, fund_accounts, ledger_digest, workload_events
from exchange.bus import Published, RedisBus
from settlement.consumer import RedisConsumer, SimulatedCrash
from settlement.engine import SettlementConfig
from settlement.service import Settlement

CONFIG = SettlementConfig(fees={"H100": (10, 25), "A100": (0, 30), "RTX4090": (5, 5)}, meter_interval_s=6 * 3600)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix():
    yield from redis_prefix("settle-", " to run the exactly-once tests")


@pytest.fixture(scope="module")
def handovers():
    return workload_events(9000, seed=7, batch=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, handovers):
    """The crash-free ledger: every hand-over applied in process, in order."""
    s = Settlement(tmp_path_factory.mktemp("ref") / "ledger.db", CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))
    for cls, ev in handovers:
        s.on_events(cls, ev)
    s.check_invariants()
    digest = ledger_digest(s)
    s.close()
    return digest


def publish(prefix: str, handovers) -> None:
    """Write the events to Redis exactly as `gpux serve --redis` does."""

    async def go() -> None:
        bus = RedisBus(REDIS_URL, prefix, maxlen=10_000_000)
        await bus.start()
        for cls, ev in handovers:
            bus.publish(Published([], {cls: ev}, []))
        await bus.flush()
        await bus.close()

    asyncio.run(go())


def classes(handovers) -> list[str]:
    return sorted({cls for cls, _ in handovers})


def last_seqs(handovers) -> dict[str, int]:
    out: dict[str, int] = {}
    for cls, ev in handovers:
        out[cls] = int(ev["seq"][-1])
    return out


def new_settlement(path: Path, handovers) -> Settlement:
    s = Settlement(path, CONFIG)
    fund_accounts(s.ledger, accounts_of(handovers))  # deposits reach the ledger before the bids (idempotent)
    return s


def consumer(r, prefix, handovers, s, name, **kw) -> RedisConsumer:
    c = RedisConsumer(r, prefix, classes(handovers), s, consumer=name, count=kw.pop("count", 700),
                      block_ms=100, **kw)
    c.setup()
    return c


def settled(s: Settlement, handovers) -> bool:
    cursors = s.cursors()  # committed, by any member of the group
    return all(cursors.get(cls, (0, 0))[0] == seq for cls, seq in last_seqs(handovers).items())


def run_until_settled(c: RedisConsumer, handovers, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not settled(c.settlement, handovers):
        assert time.monotonic() < deadline, "consumer did not finish"
        c.step()
    c.step()  # acknowledge what was read last


def pending(r, prefix, handovers) -> int:
    return sum(r.xpending(f"{prefix}:events:{cls}", "settlement")["pending"] for cls in classes(handovers))


def finish(s: Settlement, reference) -> None:
    s.check_invariants()
    assert ledger_digest(s) == reference
    s.close()


def test_one_consumer_settles_every_event_once(tmp_path, prefix, handovers, reference):
    publish(prefix, handovers)
    r = redis.Redis.from_url(REDIS_URL)
    s = new_settlement(tmp_path / "l.db", handovers)
    c = consumer(r, prefix, handovers, s, "a")
    run_until_settled(c, handovers)
    assert c.applied == sum(len(ev) for _, ev in handovers)
    assert pending(r, prefix, handovers) == 0
    finish(s, reference)
    r.close()


def test_killed_before_commit_rereads_its_pending_entries_on_restart(tmp_path, prefix, handovers, reference):
    publish(prefix, handovers)
    r = redis.Redis.from_url(REDIS_URL)
    s = new_settlement(tmp_path / "l.db", handovers)
    commits = []

    def crash_on_third() -> None:
        commits.append(1)
        if len(commits) == 3:
            raise SimulatedCrash("killed inside the ledger transaction")

    c = consumer(r, prefix, handovers, s, "a", hooks={"before_commit": crash_on_third})
    with pytest.raises(SimulatedCrash):
        run_until_settled(c, handovers)
    applied = dict(s.cursors())
    s.close()
    assert pending(r, prefix, handovers) > 0  # read, never acknowledged
    s2 = Settlement(tmp_path / "l.db", CONFIG)
    assert s2.cursors() == applied  # the crashed transaction left nothing
    c2 = consumer(r, prefix, handovers, s2, "a")  # the same consumer, restarted
    c2.step()
    assert c2.claimed == 0 and c2.applied > 0  # its own pending entries, re-read with id 0
    run_until_settled(c2, handovers)
    assert pending(r, prefix, handovers) == 0
    finish(s2, reference)
    r.close()


def test_killed_after_commit_before_xack_another_consumer_claims(tmp_path, prefix, handovers, reference):
    publish(prefix, handovers)
    r = redis.Redis.from_url(REDIS_URL)
    s = new_settlement(tmp_path / "l.db", handovers)
    commits = []

    def crash_on_second() -> None:
        commits.append(1)
        if len(commits) == 2:
            raise SimulatedCrash("killed between COMMIT and XACK")

    c = consumer(r, prefix, handovers, s, "a", hooks={"after_commit": crash_on_second})
    with pytest.raises(SimulatedCrash):
        run_until_settled(c, handovers)
    committed = s.ledger.count()
    s.close()
    left = pending(r, prefix, handovers)
    assert left > 0
    time.sleep(0.3)
    s2 = Settlement(tmp_path / "l.db", CONFIG)
    assert s2.ledger.count() == committed
    b = consumer(r, prefix, handovers, s2, "b", claim_idle_ms=200)
    b.step()
    assert b.claimed >= left  # XAUTOCLAIM took the dead consumer's entries
    assert b.acked >= left  # at or below the ledger's seq: acknowledged, not applied again
    run_until_settled(b, handovers)
    assert pending(r, prefix, handovers) == 0
    finish(s2, reference)
    r.close()


def test_commits_lost_after_xack_are_read_again_from_the_stream(tmp_path, prefix, handovers, reference):
    """A power loss with synchronous=NORMAL may take the last commits although their entries
    were acknowledged (or the ledger is restored from a backup): the consumer re-reads, by
    XRANGE from the stream position stored with its last commit, what the group was given."""
    publish(prefix, handovers)
    r = redis.Redis.from_url(REDIS_URL)
    s = new_settlement(tmp_path / "l.db", handovers)
    commits = []
    backup = tmp_path / "backup.db"

    def snapshot_at_third() -> None:
        commits.append(1)
        if len(commits) == 3:
            import sqlite3

            dest = sqlite3.connect(backup)
            s.ledger.conn.backup(dest)  # the ledger as of the third commit
            dest.close()

    c = consumer(r, prefix, handovers, s, "a", hooks={"after_commit": snapshot_at_third})
    run_until_settled(c, handovers)
    assert pending(r, prefix, handovers) == 0
    s.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'l.db'}{suffix}").unlink(missing_ok=True)
    backup.rename(tmp_path / "l.db")
    s2 = Settlement(tmp_path / "l.db", CONFIG)
    assert not settled(s2, handovers)
    c2 = consumer(r, prefix, handovers, s2, "a")
    run_until_settled(c2, handovers)
    assert c2.caught_up > 0 and c2.claimed == 0
    finish(s2, reference)
    r.close()


def test_two_consumers_at_once(tmp_path, prefix, handovers, reference):
    """Two live members of the group on one ledger file: entries split between them, each
    applies in seq order what it can after reloading what the other committed."""
    publish(prefix, handovers)
    path = tmp_path / "l.db"
    new_settlement(path, handovers).close()
    errors: list[BaseException] = []

    def member(name: str) -> None:
        r = redis.Redis.from_url(REDIS_URL)
        s = Settlement(path, CONFIG)
        try:
            c = consumer(r, prefix, handovers, s, name, count=150, claim_idle_ms=2000)
            run_until_settled(c, handovers)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            s.close()
            r.close()

    threads = [threading.Thread(target=member, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    r = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 10
    while pending(r, prefix, handovers) and time.monotonic() < deadline:  # a last XACK may trail
        time.sleep(0.1)
    assert pending(r, prefix, handovers) == 0
    finish(Settlement(path, CONFIG), reference)
    r.close()


_CHILD = """
import sys
from settlement.consumer import run_consumer
from settlement.engine import SettlementConfig
cfg = SettlementConfig(fees={"H100": (10, 25), "A100": (0, 30), "RTX4090": (5, 5)}, meter_interval_s=6 * 3600)
run_consumer(sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], consumer=sys.argv[5], config=cfg,
             claim_idle_ms=300, count=60, block_ms=100, idle_exit_s=2.0)
"""


def committed(path: Path) -> int:
    """Events committed so far (the ledger's seqs), read while a consumer writes (WAL)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COALESCE(SUM(seq), 0) FROM settle_cursors").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_sigkill_at_random_moments(tmp_path, prefix, handovers, reference):
    """Consumer processes killed with SIGKILL when a (seeded) random share of the events is
    committed — inside a transaction, between a commit and its XACK, or while reading —
    and restarted under the same or another name: the ledger ends identical to the
    crash-free run."""
    publish(prefix, handovers)
    path = tmp_path / "l.db"
    new_settlement(path, handovers).close()
    total = sum(last_seqs(handovers).values())
    rng = random.Random(20260505)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _CHILD, REDIS_URL, prefix, ",".join(classes(handovers)), str(path)]
    kills = []
    for _ in range(4):
        start = committed(path)
        target = start + (total - start) * rng.uniform(0.15, 0.6)
        proc = subprocess.Popen([*argv, rng.choice(["a", "b", "c"])], env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while proc.poll() is None and committed(path) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(committed(path))
        proc.wait(30)
    assert len(kills) == 4 and kills[-1] < total, f"not killed mid-way: {kills} of {total}"
    time.sleep(0.4)
    proc = subprocess.run([*argv, "d"], env=env, cwd=ROOT, timeout=180)
    assert proc.returncode == 0
    r = redis.Redis.from_url(REDIS_URL)
    assert pending(r, prefix, handovers) == 0
    r.close()
    finish(Settlement(path, CONFIG), reference)
