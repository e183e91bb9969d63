"""The dashboard's server side (gateway/dashboard.py, docs/demo.md): the page and its assets are
served, and GET /v1/dashboard/{class} computes the capacity calendar, utilisation, open leases and
providers' use from the exchange state — checked here number by number on a small market made
through the SDK, after a cancel (what was sold stands, R7), with a resale ask (R16), and after a
restart (the live-lease index is rebuilt from the recovered state)."""

from __future__ import annotations

import aiohttp

from demo.live import next_reserved_start
from orderbook.types import HOUR
from tests.exchange_helpers import USD, run, running_exchange

CFG = {"fsync": "off", "engine": "reference"}


def slot_of(d: dict, t: int) -> int:
    """The calendar slot sampled at time ``t`` (an hour boundary after now)."""
    cal = d["calendar"]
    assert (t - cal["start"]) % HOUR == 0
    return (t - cal["start"]) // HOUR


def test_capacity_utilisation_and_leases_from_the_state(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as x:
            prov = x.client("prov", "provider")
            alice = x.client("alice", deposit=10_000 * USD)
            bob = x.client("bob", deposit=10_000 * USD)
            carol = x.client("carol", deposit=10_000 * USD)
            prov_id = x.keys["prov"][0]
            now = x.now
            ask = await prov.ask("H100", gpus=16, price=2_000_000, spot_price=1_200_000, end=now + 48 * HOUR)
            async with await alice.trader() as s:
                ack = await s.bid("H100", "on_demand", gpus=4, hours=2, limit=2_100_000)
                assert ack["trades"][0]["gpus"] == 4
            async with await bob.trader() as s:
                ack = await s.bid("H100", "spot", gpus=4, hours=1, limit=1_300_000)
                assert ack["trades"][0]["kind"] == "spot"
            start = next_reserved_start(x.now) + 2 * HOUR  # after the on-demand and spot leases end
            async with await carol.trader() as s:
                ack = await s.bid("H100", "reserved", gpus=8, hours=4, limit=2_100_000, start=start)
                reserved = ack["trades"][0]
            await carol.ask("H100", gpus=4, price=2_050_000, end=start + 4 * HOUR, start=start,
                            lease_id=reserved["trade_id"])
            await x.settle()

            d = x.exchange.dashboard.compute("H100", 72)
            cal = d["calendar"]
            assert cal["hours"] == 72 and cal["step"] == HOUR and cal["start"] == d["time"] - d["time"] % HOUR
            u = d["utilisation"]
            # now: 4 on-demand (firm) + 4 spot leased of 16; a firm buyer can take 12, a spot buyer 8
            assert (u["capacity"], u["used"], u["free"], u["spot_free"]) == (16, 8, 12, 8)
            assert u["ratio"] == 0.5
            assert d["leases"]["open"] == 3 and d["leases"]["running"] == 2 and d["leases"]["scheduled"] == 1
            assert d["leases"]["by_kind"]["reserved"]["scheduled"] == 1
            assert d["leases"]["by_kind"]["spot"]["gpus_running"] == 4
            assert d["providers"] == [{"account": prov_id, "capacity": 16, "used": 8}]
            # while the reserved lease runs: 8 of 16 leased; free = 8 on the provider's ask + 4 resold
            k = slot_of(d, start)
            assert (cal["capacity"][k], cal["used"][k], cal["free"][k]) == (16, 8, 12)
            # 5 hours after the reserved lease: everything ended, the whole ask is free
            k2 = slot_of(d, start + 5 * HOUR)
            assert (cal["capacity"][k2], cal["used"][k2], cal["free"][k2], cal["spot_free"][k2]) == (16, 0, 16, 16)
            # after the ask's window (48 h): nothing offered
            assert cal["capacity"][50] == cal["free"][50] == 0

            # the provider withdraws the ask: what it sold stands, the rest leaves the market (R7)
            await prov.cancel(ask["oid"])
            await x.settle()
            d = x.exchange.dashboard.compute("H100", 72)
            u, cal = d["utilisation"], d["calendar"]
            assert (u["capacity"], u["used"], u["free"], u["spot_free"]) == (8, 8, 0, 0)
            k = slot_of(d, start)
            assert (cal["capacity"][k], cal["used"][k], cal["free"][k]) == (8, 8, 4)  # the resale ask is still on
            assert cal["capacity"][k2] == cal["free"][k2] == 0

            async with aiohttp.ClientSession() as http:
                async with http.get(f"{x.url}/v1/dashboard/H100?hours=24") as r:
                    assert r.status == 200
                    body = await r.json()
                    assert body["calendar"]["hours"] == 24 and body["utilisation"]["capacity"] == 8
                async with http.get(f"{x.url}/v1/dashboard/B200") as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "UNKNOWN_CLASS"
                for q in ("hours=0", "hours=10000", "hours=x"):
                    async with http.get(f"{x.url}/v1/dashboard/H100?{q}") as r:
                        assert r.status == 400 and (await r.json())["error"]["code"] == "MALFORMED", q
                async with http.get(f"{x.url}/v1/dashboard/A100") as r:
                    empty = await r.json()
                    assert empty["utilisation"] == {"capacity": 0, "used": 0, "free": 0, "spot_free": 0,
                                                    "ratio": None}
                    assert empty["leases"]["open"] == 0 and empty["providers"] == []
            before = d

        # a restart: the index of live leases is rebuilt from the recovered state
        async with running_exchange(tmp_path, **CFG) as x:
            d = x.exchange.dashboard.compute("H100", 72)
            assert d["utilisation"] == before["utilisation"]
            assert d["leases"]["open"] == before["leases"]["open"]
            k = slot_of(d, start)
            assert d["calendar"]["free"][k] == 4 and d["calendar"]["capacity"][k] == 8

    run(go())


def test_page_and_assets_are_served_offline(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as x, aiohttp.ClientSession() as http:
            async with http.get(f"{x.url}/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                page = await r.text()
            for element in ("depth", "candles", "tape", "index", "calendar", "util", "leases"):
                assert f'id="{element}"' in page and "data-count" in page
            for asset in ("dashboard.js", "dashboard.css"):
                assert f"/static/{asset}" in page
                async with http.get(f"{x.url}/static/{asset}") as r:
                    assert r.status == 200
                    text = await r.text()
                    # works offline: nothing is loaded from another host
                    assert "http://" not in text and "https://" not in text, asset
            assert "http://" not in page and "https://" not in page
            for bad in ("/static/nope.js", "/static/..%2Fdashboard.py", "/static/.hidden"):
                async with http.get(f"{x.url}{bad}") as r:
                    assert r.status == 404, bad
            async with http.get(f"{x.url}/index.html") as r:
                assert r.status == 200
            async with http.get(f"{x.url}/v1/instruments") as r:  # the API is unchanged beside it
                assert r.status == 200

    run(go())
