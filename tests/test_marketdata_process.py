"""`gpux feeds --redis URL` (issue 15; docs/operations.md): a market-data process of its own, fed by
the core's journal stream, serves the same market data as the core: the same level 2 at the same
seq, the same trades, the same recording, private channels with the leader's keys.  Real Redis
(own prefix), the core and the market-data process on free loopback ports, real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix

from app.marketdata import MarketData
from client.feeds import FeedClient
from exchange.config import ServerConfig
from feeds.recording import load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefix():
    yield from redis_prefix("md-")


async def _subscribed(url: str) -> FeedClient:
    fc = FeedClient(url)
    fc.keep = True
    await fc.connect()
    for ch in ("book", "trades"):
        assert (await fc.subscribe(ch, "H100"))["type"] == "subscribed"
    return fc


def _trades(fc: FeedClient) -> list[dict]:
    out = []
    for m in fc.messages:
        if m.get("type") == "trades" and m.get("action") != "snapshot":
            out += [{k: v for k, v in t.items() if k != "ts_ms"} for t in m["trades"]]
    return out


def test_a_market_data_process_serves_what_the_core_serves(tmp_path, prefix):
    async def scenario() -> None:
        async with running_exchange(tmp_path / "core", fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 1000 * USD)
            await prov.ask("H100", 16, 2_000_000, ex.now + 86_400, spot_price=1_000_000)  # before it starts
            md = MarketData(ServerConfig(data_dir=str(tmp_path / "md"), redis_url=REDIS_URL, redis_prefix=prefix,
                                         fsync="off"), block_ms=200)
            await md.start()
            port = await md.serve("127.0.0.1", 0)
            md_url = f"http://127.0.0.1:{port}"
            try:
                core_fc, md_fc = await _subscribed(ex.url), await _subscribed(md_url)
                # the private channels with the leader's key (copied to Redis, pulled by the process)
                _, key, secret = ex.keys["alice"]
                private = FeedClient(md_url)
                private.keep = True
                await private.connect()
                for _ in range(50):
                    if (await private.auth(key, secret)).get("type") == "authenticated":
                        break
                    await asyncio.sleep(0.1)  # the key is not there yet
                assert private.account == ex.keys["alice"][0]
                assert (await private.subscribe("fills"))["type"] == "subscribed"
                rng = np.random.default_rng(3)
                async with await alice.trader() as t:
                    for i in range(40):
                        if i % 5 == 0:
                            await prov.ask("H100", int(rng.integers(2, 9)), int(rng.integers(150, 250)) * 10_000,
                                           ex.now + 86_400, spot_price=900_000)
                        await t.bid("H100", "on_demand", int(rng.integers(1, 4)), 1,
                                    int(rng.integers(150, 260)) * 10_000, tif="IOC")
                assert await ex.exchange.publisher.flush()
                engine = ex.exchange.engine
                deadline = time.monotonic() + 20
                core_feed, md_feed = ex.exchange.feeds.feeds["H100"], md.feeds.feeds["H100"]
                while time.monotonic() < deadline:
                    if md.follower.seq >= engine.seq and not md.feeds._pending and not ex.exchange.feeds._pending \
                            and md_feed.seq == core_feed.seq \
                            and core_fc.books["H100"].u == core_feed.u["book"] and not core_fc.pending \
                            and md_fc.books["H100"].u == md_feed.u["book"] and not md_fc.pending:
                        break
                    await asyncio.sleep(0.05)
                assert md.follower.seq >= engine.seq
                assert md_feed.seq == core_feed.seq  # the market-data model at the same event seq
                assert md_feed.book.level2() == core_feed.book.level2()
                assert md_fc.books["H100"].level2() == core_fc.books["H100"].level2()  # what subscribers hold
                trades = _trades(core_fc)
                assert trades and _trades(md_fc) == trades  # the same trades, in order
                assert md_fc.gaps == 0 and core_fc.gaps == 0
                fills = [m for m in private.messages if m.get("type") == "fills" and m.get("action") != "snapshot"]
                assert sum(len(m["fills"]) for m in fills) == len(trades)  # every fill of alice's, pushed
                async with aiohttp.ClientSession() as s:  # REST level 2 and health
                    async with s.get(f"{md_url}/v1/book/H100") as r1, s.get(f"{ex.url}/v1/book/H100") as r2:
                        b1, b2 = await r1.json(), await r2.json()
                        keys = ("asks", "bids", "seq")
                        assert {k: b1[k] for k in keys} == {k: b2[k] for k in keys}
                    async with s.get(f"{md_url}/healthz") as r:
                        h = await r.json()
                        assert r.status == 200 and h["role"] == "feeds" and h["checks"]["follower"] == "ok"
                    async with s.get(f"{md_url}/metrics") as r:
                        assert "gpux_follow_journal_seq" in await r.text()
                for fc in (core_fc, md_fc, private):
                    await fc.close()
            finally:
                await md.close()
        core_rec = load(tmp_path / "core")
        md_rec = load(tmp_path / "md")
        for cls in ("H100",):  # the same events recorded, byte for byte
            assert md_rec.events[cls].tobytes() == core_rec.events[cls].tobytes()

    asyncio.run(scenario())
    verify = subprocess.run([sys.executable, "-m", "cli.main", "verify", str(tmp_path / "md"), "--json"],
                            capture_output=True, text=True, cwd=REPO)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"]
