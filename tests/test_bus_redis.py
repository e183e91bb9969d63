"""The bus in distributed mode (docs/architecture.md): `gpux serve --redis URL` also appends every
event to a Redis stream per class, and lease-making events to the trade stream that
settlement's consumer group reads.  Real Redis on 127.0.0.1:6379, own key prefix, cleaned up."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix


@pytest.fixture
def prefix():
    yield from redis_prefix("bus-")


def test_events_reach_the_class_streams_in_sequence_order(tmp_path, prefix):
    """Every event of H100 lands in {prefix}:events:H100 in seq order (R15, R20); the trade also in
    {prefix}:trades:H100; a class without events has only clock entries."""

    async def scenario():
        async with running_exchange(tmp_path, fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 1000 * USD)
            ask = await prov.ask("H100", 8, 2_000_000, ex.now + 86_400, spot_price=1_000_000)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", 4, 2, 2_100_000)
                rest = await t.bid("H100", "spot", 1, 1, 500_000)
                await t.cancel(rest["oid"])
            await ex.exchange.bus.flush()
            return ask, ack

    ask, ack = asyncio.run(scenario())
    r = redis.Redis.from_url(REDIS_URL)
    entries = r.xrange(f"{prefix}:events:H100")
    events = [json.loads(f[b"event"]) for _, f in entries if f[b"type"] != b"clock"]
    clocks = [json.loads(f[b"event"]) for _, f in entries if f[b"type"] == b"clock"]
    # the exchange's clock commands, each after the last event of the class before it (settlement's consumer)
    assert all(c["book"] == "H100" and c["after"] <= max(e["seq"] for e in events) for c in clocks)
    types = [e["type"] for e in events]
    assert types == ["accepted", "accepted", "trade", "accepted", "cancelled"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert events[0]["oid"] == ask["oid"] and events[2]["trade_id"] == ack["trades"][0]["trade_id"]
    trades = [json.loads(f[b"event"]) for _, f in r.xrange(f"{prefix}:trades:H100")]
    assert [t["type"] for t in trades] == ["trade"]
    assert trades[0] == events[2]
    assert all(f[b"type"] == b"clock" for _, f in r.xrange(f"{prefix}:events:A100"))  # no events there
    r.close()
