"""A core with a hot standby (issue 15; docs/operations.md, "A hot standby"): the leader's lease
in Redis, appends fenced by it, a batch answered only once the Redis stream holds it, and a
standby that takes over.

The unit tests use the Redis on 127.0.0.1:6379 under their own prefix; the end-to-end one runs
`bench.cluster`'s scenario, shorter, with its own `redis-server` on a free port: `gpux serve
--ha`, `gpux serve --standby`, `gpux settle`, clients through kill -9 and SIGSTOP of the leader."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest
import redis
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix

from exchange.config import ConfigError, ServerConfig, load_config
from exchange.lease import Deposed, LeaderLease
from exchange.stream import FIELD, JournalPublisher, decode_chunk
from gateway.accounts import AccountStore
from gateway.replication import pull_accounts


@pytest.fixture
def prefix():
    yield from redis_prefix("ha-")


def test_one_leader_at_a_time_and_a_new_epoch_each_time(prefix):
    a = LeaderLease(REDIS_URL, prefix, "a", ttl_ms=1500)  # (room for a machine three times slower)
    b = LeaderLease(REDIS_URL, prefix, "b", ttl_ms=1500)
    lost: list[str] = []
    a.on_deposed = lost.append
    try:
        assert a.acquire() and a.token == "1:a"
        assert not b.acquire() and b.holder() == "1:a"
        assert a.renew()
        time.sleep(1.7)  # a paused past its lease: nobody renewed it
        assert b.holder() is None
        assert b.acquire() and b.epoch == 2
        assert not a.renew() and lost and "2:b" in lost[0]  # a learns it was deposed, once
        assert a.health().startswith("deposed")
        assert not a.renew() and len(lost) == 1
        b.release()
        assert b.holder() is None  # a clean stop frees it at once
    finally:
        a.close()
        b.close()


def test_a_deposed_leaders_appends_are_refused_and_its_waiters_told(tmp_path, prefix):
    """The fence is checked inside Redis with the append: the old leader's chunk never reaches
    the stream, and a batch waiting to be replicated gets Deposed (it is never answered)."""
    old = LeaderLease(REDIS_URL, prefix, "old", ttl_ms=2000)

    async def scenario():
        async with running_exchange(tmp_path / "x", fsync="off") as ex:  # a journal to publish from
            ex.client("alice", "trader", 10 * USD)
            await asyncio.sleep(0.2)
            durable = ex.exchange.engine.seq
        assert old.acquire()
        pub = JournalPublisher(REDIS_URL, prefix, tmp_path / "x" / "journal", 0, interval_s=0,
                               fence=(old.key, old.token))
        told: list[str] = []
        pub.on_deposed = told.append
        await pub.start()
        await pub.replicated(2)  # while it leads: in the stream
        r = redis.Redis.from_url(REDIS_URL)
        stream = f"{prefix}:journal"
        assert r.xlen(stream) >= 1
        before = r.xrange(stream)
        time.sleep(2.2)  # the old leader paused past its lease
        new = LeaderLease(REDIS_URL, prefix, "new", ttl_ms=5000)
        assert new.acquire()
        with pytest.raises(Deposed):
            await pub.replicated(durable)
        assert told and "no longer" in told[0] and pub.health().startswith("deposed")
        assert r.xrange(stream) == before  # nothing of the old leader after the new one took over
        with pytest.raises(Deposed):
            await pub.replicated(durable)  # and nothing more, ever
        await pub.close()
        r.close()
        new.close()
        return before

    before = asyncio.run(scenario())
    first, payloads = decode_chunk(before[0][1][FIELD])
    assert first == 1 and payloads
    old.close()


def test_a_second_leader_is_refused_at_start(tmp_path, prefix):
    holder = LeaderLease(REDIS_URL, prefix, "other", ttl_ms=10_000)
    assert holder.acquire()

    async def scenario():
        from app.exchange import StartupError

        with pytest.raises(StartupError, match="another core leads .*--standby"):
            async with running_exchange(tmp_path, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix, ha=True):
                pass

    try:
        asyncio.run(scenario())
    finally:
        holder.close()


def test_a_leader_answers_once_the_stream_holds_the_batch(tmp_path, prefix):
    async def scenario():
        async with running_exchange(tmp_path, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix, ha=True,
                                    lease_ms=2000) as ex:
            prov = ex.client("prov", "provider")
            ack = await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            pub = ex.exchange.publisher
            assert pub is not None and pub.cursor is not None
            assert pub.cursor >= ex.exchange.engine.seq - 1  # (a clock batch may be on its way)
            r = redis.Redis.from_url(REDIS_URL)
            try:
                assert r.get(f"{prefix}:leader").decode() == ex.exchange.lease.token
                ids = [int(eid.decode().partition("-")[0]) for eid, _ in r.xrange(f"{prefix}:journal")]
                assert ids and ids == sorted(ids)
                assert max(ids) >= pub.cursor
            finally:
                r.close()
            health = await prov.health()
            assert health["checks"]["lease"] == "ok"
            return ack

    assert asyncio.run(scenario())["oid"] > 0
    r = redis.Redis.from_url(REDIS_URL)
    try:
        assert r.get(f"{prefix}:leader") is None  # released at a clean stop
    finally:
        r.close()


def test_accounts_and_revocations_reach_the_standbys_store(tmp_path, prefix):
    async def scenario():
        async with running_exchange(tmp_path / "leader", fsync="off", redis_url=REDIS_URL, redis_prefix=prefix,
                                    ha=True) as ex:
            ex.client("alice", "trader", 10 * USD)
            _, key, secret = ex.keys["alice"]
            r = redis.Redis.from_url(REDIS_URL)
            with AccountStore(tmp_path / "standby.db") as standby:
                for _ in range(40):
                    pull_accounts(r, prefix, standby)
                    if standby.key(key) is not None:
                        break
                    await asyncio.sleep(0.1)
                got = standby.key(key)
                assert got is not None and got.secret == secret and got.role == "trader"
                ex.exchange.store.revoke_key(key)
                for _ in range(40):
                    pull_accounts(r, prefix, standby)
                    if standby.key(key) is None:
                        break
                    await asyncio.sleep(0.1)
                assert standby.key(key) is None  # revoked there too, within a second or so
                assert pull_accounts(r, prefix, standby) == 0  # nothing new: nothing written
            r.close()

    asyncio.run(scenario())


def test_ha_needs_redis_and_a_sane_lease(tmp_path):
    with pytest.raises(ConfigError, match="needs Redis"):
        ServerConfig(ha=True)
    with pytest.raises(ConfigError, match="lease_ms"):
        ServerConfig(redis_url="redis://x", ha=True, lease_ms=10)
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nha = "yes"\nredis_url = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match="true or false"):
        load_config(bad)


def test_failover_under_load_loses_nothing_acknowledged(tmp_path):
    """`bench.cluster`, short: a leader and its standby, two order gateways, two market-data
    processes, `gpux settle`, a Redis replica; kill -9 of the leader, SIGSTOP of the next one past
    its lease, kill -9 of a gateway and of a market-data process, a restart of the Redis replica."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed under CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed: the failover scenario starts its own")
    from bench.cluster import scenario

    report = asyncio.run(scenario(tmp_path, seconds=9, traders=3, providers=2, lease_ms=1500, log=lambda m: None))
    assert report["acked"] > 200
    assert report["acked_lost"] == 0, report["lost_examples"]
    assert report["answers_mismatched"] == 0  # a request sent again gets its first answer
    assert report["duplicate_fills"] == 0 and report["leases_missing"] == 0 and report["leases"] > 0
    assert report["deposed_exit_code"] == 3 and report["deposed_logged"]  # the paused leader stood down
    assert report["standby_hash_equal"] and report["standby_seq"] > 100
    assert report["settle_equal"] and report["transfers"] > 0
    assert report["books_equal"] and report["subscriber_reconnects"] >= 1  # moved off the killed feeds process
    assert report["leader_exit_code"] == 0
    assert report["exchange_id_kept"]  # the new leaders journal the deposit requests as the first one did
    # the benchmark holds failovers to 5 s; here, on a machine that may be three times busier, 8
    assert len(report["failover_s"]) == 2 and all(0 < f <= 8 for f in report["failover_s"]), report["failover_s"]
