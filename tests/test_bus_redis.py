"""The journal outside the exchange's process (issue 14; docs/architecture.md): `gpux serve --redis
URL` publishes its journal entries to the stream ``{prefix}:journal`` (`exchange.stream`), and
``GET /v1/admin/journal`` serves them to replicas that need to backfill.  Real Redis on
127.0.0.1:6379, own key prefix, cleaned up; real aiohttp servers on free ports."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import redis
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix

from exchange.entries import Cmd, decode_entry
from exchange.journal import read
from exchange.stream import FIELD, JournalPublisher, decode_chunk, encode_chunk, id_seq
from gateway.auth import auth_headers
from orderbook.types import COMMAND_DTYPE


@pytest.fixture
def prefix():
    yield from redis_prefix("bus-")


def stream_chunks(prefix: str) -> list[tuple[int, int, list[bytes]]]:
    """(stream id's seq, first seq, payloads) of every entry of {prefix}:journal."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        return [(id_seq(eid), *decode_chunk(f[FIELD])) for eid, f in r.xrange(f"{prefix}:journal")]
    finally:
        r.close()


def test_chunk_encoding_round_trips_and_refuses_garbage():
    payloads = [b"", b"a", bytes(range(256)) * 3]
    assert decode_chunk(encode_chunk(42, payloads)) == (42, payloads)
    assert decode_chunk(encode_chunk(7, [])) == (7, [])
    blob = encode_chunk(1, [b"abc"])
    for bad in (b"", b"XX" + blob[2:], blob[:-1], blob + b"\0"):
        with pytest.raises(ValueError):
            decode_chunk(bad)


def test_journal_entries_reach_the_stream_in_sequence_order(tmp_path, prefix):
    """Every journal entry lands in {prefix}:journal once, in seq order, as the journal holds it;
    each stream id is its chunk's last seq (was: events reached the class streams in order)."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 1000 * USD)
            ask = await prov.ask("H100", 8, 2_000_000, ex.now + 86_400, spot_price=1_000_000)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", 4, 2, 2_100_000)
                rest = await t.bid("H100", "spot", 1, 1, 500_000)
                await t.cancel(rest["oid"])
            assert await ex.exchange.publisher.flush()
            samples = {n: v for n, v, _, _ in ex.exchange.publisher.metric_samples()}
            return ask, ack, samples, ex.exchange.engine.seq

    ask, ack, samples, last = asyncio.run(scenario())
    chunks = stream_chunks(prefix)
    seq = 0
    payloads: list[bytes] = []
    for id_last, first, ps in chunks:
        assert first == seq + 1 and id_last == first + len(ps) - 1
        seq = id_last
        payloads += ps
    journal = [p for _, p in read(tmp_path / "journal")]
    assert seq == len(journal) and payloads == journal[:seq] and seq >= last - 2  # (clock ticks after flush)
    cmds = [e for e in map(decode_entry, payloads) if type(e) is Cmd and e.book == "H100"]
    recs = [bytes_to_cmd(e.rec) for e in cmds]
    assert [int(r["oid"]) for r in recs if r["type"] in (1, 2)][:3] == [ask["oid"], ack["oid"], ack["oid"] + 1]
    assert samples["gpux_redis_publish_lag_seq"] == 0 and samples["gpux_redis_publisher_healthy"] == 1


def bytes_to_cmd(rec: bytes):
    import numpy as np

    return np.frombuffer(rec, dtype=COMMAND_DTYPE)[0]


def test_a_resend_is_refused_not_duplicated(tmp_path, prefix):
    """A publisher that sends chunks the stream has already (a restart with a stale cursor) is
    refused by Redis (ids at or below the last) and goes on from the stream's end."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            ex.client("alice", "trader", 10 * USD)
            assert await ex.exchange.publisher.flush()
            return ex.exchange.engine.seq

    asyncio.run(scenario())
    before = stream_chunks(prefix)
    last = before[-1][0]

    async def resend():
        pub = JournalPublisher(REDIS_URL, prefix, tmp_path / "journal", last)
        await pub._connect()
        pub.cursor = pub.expect = 0  # as if it did not know what the stream holds: it sends chunk 1 again
        await pub._send_some(asyncio.get_running_loop())
        await pub._redis.aclose()
        return pub

    pub = asyncio.run(resend())
    assert pub.refused == 1 and pub.cursor == last
    assert stream_chunks(prefix) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trading_goes_on_while_redis_is_unreachable_and_health_says_so(tmp_path, prefix):
    url = f"redis://127.0.0.1:{_closed_port()}/0"

    async def scenario():
        async with running_exchange(tmp_path, fsync="off", redis_url=url, redis_prefix=prefix) as ex:
            prov = ex.client("prov", "provider")
            await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            for _ in range(50):
                if ex.exchange.publisher.errors:
                    break
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as http:
                async with http.get(ex.url + "/healthz") as resp:
                    health = resp.status, await resp.json()
                async with http.get(ex.url + "/metrics") as resp:
                    metrics = await resp.text()
            return health, metrics

    (status, body), metrics = asyncio.run(scenario())
    assert status == 503 and "Redis unreachable" in body["checks"]["redis_publisher"]
    assert "gpux_redis_publisher_healthy 0" in metrics
    assert "gpux_redis_publish_errors_total 0" not in metrics


def test_the_journal_tail_endpoint_serves_the_durable_entries_to_admins(tmp_path):
    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            _, akey, asecret = ex.account("root", "admin")
            _, tkey, tsecret = ex.account("alice", "trader", 10 * USD)
            prov = ex.client("prov", "provider")
            await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            await ex.settle()
            out = {}
            async with aiohttp.ClientSession() as http:
                async def get(path: str, key: str = akey, secret: str = asecret) -> tuple[int, bytes]:
                    async with http.get(ex.url + path, headers=auth_headers(key, secret, "GET", path)) as resp:
                        return resp.status, await resp.read()

                out["all"] = await get("/v1/admin/journal?after=0&limit=10000")
                out["two"] = await get("/v1/admin/journal?after=1&limit=2")
                out["past"] = await get("/v1/admin/journal?after=1000000")
                out["trader"] = await get("/v1/admin/journal?after=0", tkey, tsecret)
                out["no_after"] = await get("/v1/admin/journal")
                out["bad"] = await get("/v1/admin/journal?after=x")
                out["big"] = await get("/v1/admin/journal?after=0&limit=99999999")
                async with http.get(ex.url + "/v1/admin/journal?after=0") as resp:
                    out["unsigned"] = resp.status, await resp.read()
            return out

    out = asyncio.run(scenario())
    journal = [p for _, p in read(tmp_path / "journal")]
    status, blob = out["all"]
    assert status == 200
    first, payloads = decode_chunk(blob)
    assert first == 1 and payloads == journal[:len(payloads)] and len(payloads) >= len(journal) - 2
    assert out["two"][0] == 200 and decode_chunk(out["two"][1]) == (2, journal[1:3])
    assert out["past"][0] == 200 and decode_chunk(out["past"][1]) == (1_000_001, [])
    assert out["trader"][0] == 403 and b"FORBIDDEN" in out["trader"][1]
    for name in ("no_after", "bad", "big"):
        assert out[name][0] == 400 and b"MALFORMED" in out[name][1], (name, out[name])
    assert out["unsigned"][0] == 401 and b"MISSING_AUTH" in out["unsigned"][1]


def test_a_stream_of_another_journal_is_not_mixed_with_this_one(tmp_path, prefix):
    """A new data directory over an old prefix: the stream ends beyond this exchange's journal, so
    the publisher refuses to append to it and /healthz says why (trading goes on)."""

    async def run(data):
        async with running_exchange(data, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            prov = ex.client("prov", "provider")
            for _ in range(3):
                await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            await asyncio.sleep(0.3)
            pub = ex.exchange.publisher
            return pub.health(), pub.sent_entries

    first = asyncio.run(run(tmp_path / "a"))
    assert first[0] == "ok" and first[1] >= 3
    before = stream_chunks(prefix)
    health, sent = asyncio.run(run(tmp_path / "b"))
    assert "holds another journal" in health and sent == 0
    assert stream_chunks(prefix) == before


def test_redis_restarted_without_its_latest_writes_gets_them_again(tmp_path):
    """A private redis-server killed with SIGKILL comes back from an older dump: its stream ends
    before what the publisher had sent.  The publisher sends again from the stream's end, so the
    stream is whole again — no gap for consumers (Redis restarted empty: tests/test_settle_replica.py)."""
    import os
    import shutil

    from bench.redis_outage import RedisServer

    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed under CI")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()

    async def scenario():
        async with running_exchange(tmp_path / "data", fsync="off", redis_url=server.url, redis_prefix="t") as ex:
            prov = ex.client("prov", "provider")
            pub = ex.exchange.publisher
            await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            assert await pub.flush()
            r = redis.Redis.from_url(server.url)
            r.save()  # the dump Redis will come back with
            saved = id_seq(r.xrevrange("t:journal", count=1)[0][0])
            r.close()
            for _ in range(3):
                await prov.ask("H100", 8, 2_000_000, ex.now + 86_400)
            assert await pub.flush()
            sent = pub.cursor
            server.proc.kill()  # no shutdown save: the writes after the dump are lost
            server.proc.wait(10)
            server.proc = None
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
            for _ in range(200):
                if pub.connected and pub.cursor >= ex.exchange.engine.seq:
                    break
                await asyncio.sleep(0.05)
            assert await pub.flush()
            return saved, sent, pub.errors, ex.exchange.engine.seq

    try:
        saved, sent, errors, last = asyncio.run(scenario())
        r = redis.Redis.from_url(server.url)
        chunks = [(id_seq(eid), *decode_chunk(f[FIELD])) for eid, f in r.xrange("t:journal")]
        r.close()
    finally:
        server.close()
    assert saved < sent  # (redis-py may reconnect without an error: the conditional XADD notices)
    seq = 0
    for id_last, first, ps in chunks:  # whole: from seq 1, no gap, no repeat
        assert first == seq + 1 and id_last == first + len(ps) - 1
        seq = id_last
    assert seq >= sent
