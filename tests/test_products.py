"""Products (docs/feeds.md, "Products"; feeds/products.py): the executable book of each kind of
lease a class trades.  A real exchange on a loopback port, random sessions of asks, bids,
cancels, amends and releases in three classes (tests/test_feeds_live.py), then, after each
stretch of the session, every product's book over real HTTP:

- no product's best bid reaches its best ask (the book is quiescent, R9/R10);
- the best ask is executable: a bid of the product for the GPUs shown there, limited to that
  price, would fill now in full at it (GET /v1/quote, the book's own walk, R9-R11);
- a product's bids are exactly the resting bids of that kind, duration and block;
- its quotes for the standard sizes are what GET /v1/quote answers for that many GPUs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from client.feeds import FeedClient
from exchange.clock import SimClock
from exchange.engine import book_seq
from feeds.products import BidLadders
from tests.exchange_helpers import running_exchange
from tests.test_feeds_live import CFG, CLASSES, quiet, session


async def get(http: aiohttp.ClientSession, url: str, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}{path}", params={k: str(v) for k, v in params.items()}) as r:
        return r.status, await r.json()


def resting_levels(resting: list[Any], p: dict[str, Any]) -> list[list[int]]:
    """``[limit, GPUs]`` of the resting bids (exchange state) of exactly product ``p``, highest first."""
    mine: dict[int, int] = {}
    for o in resting:
        if (o.kind == p["kind"] and o.hours == p["hours"] and max(o.block, 1) == p["block"]
                and (p["start"] is None or o.start == p["start"])):
            mine[o.price] = mine.get(o.price, 0) + o.remaining
    return [[k, mine[k]] for k in sorted(mine, reverse=True)]


async def check_executable(http: aiohttp.ClientSession, url: str, cls: str, p: dict[str, Any],
                           sizes: list[dict[str, Any]], seen: dict[str, int], sized_limit: bool = False) -> None:
    """Product ``p``'s best ask fills now in full at its price for the GPUs shown, and each of its
    size quotes is what GET /v1/quote answers (limited to the size's own limit with
    ``sized_limit``, else unlimited)."""
    ask, gpus = p["asks"][0]
    q = {"class": cls, "kind": p["kind"], "gpus": gpus, "hours": p["hours"], "block": p["block"], "limit": ask}
    if p["start"]:
        q["start"] = p["start"]
    status, quote = await get(http, url, "/v1/quote", **q)
    assert status == 200 and quote["complete"], (p, quote)
    assert {f["price"] for f in quote["fills"]} == {ask} and quote["filled"] == gpus
    seen["quoted"] += 1
    for want in sizes:  # the standard sizes: what GET /v1/quote answers
        limit = (want["limit"] or ask) if sized_limit else 0
        status, quote = await get(http, url, "/v1/quote", **{**q, "gpus": want["gpus"], "limit": limit})
        if want["limit"] is None:
            assert not quote["complete"], (p["product"], want, quote)
        else:
            assert quote["complete"] and quote["average_price"] == want["average"], (p["product"], want, quote)
            assert max(f["price"] for f in quote["fills"]) == want["limit"]
            seen["sizes"] += 1


def test_every_product_book_is_uncrossed_and_its_best_ask_fills_at_its_price(tmp_path) -> None:
    async def scenario() -> None:
        # a simulated clock: engine time stands still between the products and the quotes read
        # (the wall clock's ticks end leases and move spot quotes in between)
        clock = SimClock(float(int(time.time())))
        async with running_exchange(tmp_path, clock=clock, **CFG) as ex, aiohttp.ClientSession() as http:
            x = ex.exchange
            rng = np.random.default_rng(7)
            seen = {"asks": 0, "bids": 0, "both": 0, "quoted": 0, "sizes": 0}
            for _ in range(6):
                await session(x, rng, 150)
                await quiet(x)
                for cls in CLASSES:
                    status, body = await get(http, ex.url, "/v1/products", **{"class": cls, "depth": 1000})
                    assert status == 200 and body["class"] == cls
                    st = x.engine.state
                    resting = [o for o in st.orders.values()
                               if o.book == cls and o.side == "bid" and o.status == "open"]
                    for p in body["products"]:
                        bid, ask = p["best_bid"], p["best_ask"]
                        seen["asks"] += ask is not None
                        seen["bids"] += bid is not None
                        if bid is not None and ask is not None:
                            seen["both"] += 1
                            assert bid < ask, (cls, p)
                        assert p["bids"] == resting_levels(resting, p), (cls, p["product"])
                        if ask is not None and seen["quoted"] < 60:
                            await check_executable(http, ex.url, cls, p, p["quotes"], seen, sized_limit=True)
            # the session put bids into products and asks under them: the checks above had cases
            assert seen["both"] > 10 and seen["quoted"] >= 30 and seen["sizes"] >= 30, seen

    asyncio.run(scenario())


def test_one_product_by_name_and_bad_names(tmp_path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            prov = ex.client("prov", "provider")
            await prov.ask("H100", gpus=8, price=2_000_000, end=ex.now + 30 * 3600)
            status, one = await get(http, ex.url, "/v1/products", **{"class": "H100", "product": "on_demand:24h:x8"})
            assert status == 200 and [p["product"] for p in one["products"]] == ["on_demand:24h:x8"]
            assert one["products"][0]["asks"] == [[2_000_000, 8]]
            # a week's lease does not fit the ask's 30-hour window: that product has no ask
            status, week = await get(http, ex.url, "/v1/products", **{"class": "H100", "product": "on_demand:168h:x1"})
            assert week["products"][0]["asks"] == [] and week["products"][0]["best_ask"] is None
            past = f"reserved:24h:x1@{(ex.now // 86_400 - 1) * 86_400}"  # well-formed, but a day gone
            for bad in ("on_demand:24h", "hourly:24h:x1", "on_demand:24h:x1@", "on_demand:024h:x1", past):
                status, err = await get(http, ex.url, "/v1/products", **{"class": "H100", "product": bad})
                assert status == 404 and err["error"]["code"] == "UNKNOWN_PRODUCT", bad

    asyncio.run(scenario())


class ProductsClient:
    """A subscriber's copy of the ``products`` and ``quotes`` streams of some classes, kept from
    snapshots and updates alone (docs/feeds.md, "Products"), checked after every message."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict]] = {}
        self.quotes: dict[str, dict[str, list]] = {}
        self.u: dict[tuple[str, str], int] = {}
        self.at: dict[tuple[str, str], tuple[int, int]] = {}
        self.messages = 0
        self.removed = 0  # products gone from an update (a reserved day that began)
        self.crossed: list[tuple] = []

    def on(self, m: dict[str, Any]) -> None:
        t = m.get("type")
        if t not in ("products", "quotes"):
            return
        cls, key = m["class"], (m["class"], m["type"])
        if m["action"] == "snapshot":
            store: dict[str, Any] = {}
        else:
            assert m["u"] == self.u[key] + 1, (key, m["u"], self.u[key])  # no message lost
            assert (m["seq"], m["time"]) >= self.at[key]
            store = self.rows[cls] if t == "products" else self.quotes[cls]
        for gone in m.get("removed", ()):
            del store[gone]
            self.removed += 1
        if t == "products":
            for row in m["products"]:
                store[row["product"]] = row
            self.rows[cls] = store
        else:
            for q in m["quotes"]:
                store[q["product"]] = q["quotes"]
            self.quotes[cls] = store
        self.u[key] = m["u"]
        self.at[key] = (m["seq"], m["time"])
        self.messages += 1
        if t == "products":  # after every message: no product crossed, the best is the first level
            for row in store.values():
                bid, ask = row["best_bid"], row["best_ask"]
                assert bid == (row["bids"][0][0] if row["bids"] else None), row
                assert ask == (row["asks"][0][0] if row["asks"] else None), row
                assert [p for p, _ in row["bids"]] == sorted({p for p, _ in row["bids"]}, reverse=True)
                assert [p for p, _ in row["asks"]] == sorted({p for p, _ in row["asks"]})
                if bid is not None and ask is not None and bid >= ask:
                    self.crossed.append((cls, m["seq"], row))


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_the_products_and_quotes_channels_are_uncrossed_and_executable_after_every_message(tmp_path, engine) -> None:
    """Random sessions one command at a time on a simulated clock (moved now and then, so leases
    start and end and reserved days roll); a WebSocket subscriber's copy of every class's
    ``products`` and ``quotes`` streams is checked after every message (no gap, never crossed),
    and, once the exchange is quiet after each command, against the book: a sample product's best
    ask fills now at its price for the GPUs shown (GET /v1/quote), its size quotes are what
    GET /v1/quote answers, its bids are the resting bids of that product, and GET /v1/products
    shows the same rows."""
    async def scenario() -> None:
        midnight = (int(time.time()) // 86_400 + 1) * 86_400
        clock = SimClock(float(midnight - 2700))  # the second move of the clock passes a UTC midnight
        async with running_exchange(tmp_path, clock=clock, **{**CFG, "engine": engine}) as ex, \
                aiohttp.ClientSession() as http:
            x = ex.exchange
            for pf in x.feeds.product_feeds.values():
                pf.interval_s = 0.0  # a message for every batch that changes a product
            pc = ProductsClient()
            ws = await http.ws_connect(ex.url.replace("http", "ws") + "/v1/feeds")
            hello = await ws.receive_json()
            assert "products" in hello["channels"] and "quotes" in hello["channels"]

            async def read() -> None:
                async for msg in ws:
                    pc.on(json.loads(msg.data))

            reader = asyncio.get_running_loop().create_task(read())
            for cls in CLASSES:
                for ch in ("products", "quotes"):
                    await ws.send_json({"op": "subscribe", "channel": ch, "class": cls})

            async def caught_up() -> None:
                await quiet(x)
                for _ in range(1500):
                    feeds = x.feeds.product_feeds
                    if all(pc.u.get((c, s)) == feeds[c].u[s]
                           and feeds[c].at == (book_seq(x.engine.books[c]), x.engine.book_time(c))
                           for c in CLASSES for s in ("products", "quotes")):
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError("the products streams did not catch up")

            rng = np.random.default_rng(11)
            seen = {"quoted": 0, "sizes": 0, "both": 0}
            for step in range(180):
                await session(x, rng, 1)
                if step % 60 == 59:  # leases end, windows open and close, a day rolls
                    for pf in x.feeds.product_feeds.values():
                        pf.interval_s = 0.2  # (half an hour of clock ticks: the products conflated)
                    await clock.advance(1800)
                    for pf in x.feeds.product_feeds.values():
                        pf.interval_s = 0.0
                await caught_up()
                cls = CLASSES[step % len(CLASSES)]
                rows = pc.rows[cls]
                st = x.engine.state
                resting = [o for o in st.orders.values() if o.book == cls and o.side == "bid" and o.status == "open"]
                for p in rows.values():
                    assert p["bids"] == resting_levels(resting, p)[:10], (cls, p["product"])
                    seen["both"] += p["best_bid"] is not None and p["best_ask"] is not None
                # a sample: two products with an ask, in turn
                sample = [p for p in rows.values() if p["best_ask"] is not None]
                for p in sample[step % max(len(sample), 1):][:2]:
                    await check_executable(http, ex.url, cls, p, pc.quotes[cls][p["product"]], seen)
                if step % 30 == 0:  # REST shows the same rows, at the same seq and time
                    status, body = await get(http, ex.url, "/v1/products", **{"class": cls})
                    assert status == 200 and (body["seq"], body["time"]) == x.feeds.product_feeds[cls].at
                    assert {r["product"]: {k: v for k, v in r.items() if k != "quotes"}
                            for r in body["products"]} == rows
                    assert {r["product"]: r["quotes"] for r in body["products"]} == pc.quotes[cls]
                    # the reserved products' 1-GPU quotes are the forward curve's executable side
                    status, fwd = await get(http, ex.url, "/v1/forward", **{"class": cls, "days": 14})
                    assert status == 200 and fwd["time"] == body["time"]
                    days = {p["start"]: p["product"] for p in body["products"] if p["kind"] == "reserved"}
                    assert sorted(days) == [d["start"] for d in fwd["days"]]
                    for d in fwd["days"]:
                        one = pc.quotes[cls][days[d["start"]]][0]
                        assert one["gpus"] == 1 and (one["limit"], one["average"]) == (d["best"], d["average"]), d
            assert not pc.crossed, pc.crossed[:3]
            # the bids kept from the events are those of the exchange state (as a restart builds them)
            for cls in CLASSES:
                fresh = BidLadders.from_state(cls, x.engine.state.orders.values())
                assert fresh.by_key == x.feeds.product_feeds[cls].ladders.by_key, cls
            assert pc.removed >= 2 * len(CLASSES), pc.removed  # the first reserved day left both streams
            assert pc.messages > 250 and seen["both"] > 4 and seen["quoted"] > 100 and seen["sizes"] > 100, (
                pc.messages, seen)
            reader.cancel()
            await ws.close()

    asyncio.run(scenario())


def test_products_are_conflated_live_and_not_replayed(tmp_path) -> None:
    """At the default interval a burst of commands gives fewer products messages than batches and
    ends at the book's last state; a replay of the recording does not serve the products (they are
    computed from the book, which a recording of events does not hold) and says so."""
    async def scenario() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            x = ex.exchange
            pc = ProductsClient()
            ws = await http.ws_connect(ex.url.replace("http", "ws") + "/v1/feeds")
            await ws.receive_json()
            await ws.send_json({"op": "subscribe", "channel": "products", "class": "H100", "id": 1})
            got = []

            async def read() -> None:
                async for msg in ws:
                    m = json.loads(msg.data)
                    got.append(m)
                    pc.on(m)

            reader = asyncio.get_running_loop().create_task(read())
            dropped: list[int] = []

            def drop(m: dict[str, Any]) -> bool:  # the SDK's client loses one update on the way
                if m.get("type") == "products" and m["action"] == "update" and not dropped:
                    dropped.append(m["u"])
                    return True
                return False

            fc = FeedClient(ex.url, drop=drop)
            await fc.connect()
            await fc.subscribe("products", "H100")
            await fc.subscribe("quotes", "H100")
            batches = x.sequencer.stats.batches
            await session(x, np.random.default_rng(3), 300)
            await quiet(x)
            pf = x.feeds.product_feeds["H100"]
            for _ in range(5):  # (the wall clock's ticks may move the products between the reads)
                for _ in range(800):
                    if pf.at == (book_seq(x.engine.books["H100"]), x.engine.book_time("H100")) and pc.u.get(
                            ("H100", "products")) == pf.u["products"]:
                        break
                    await asyncio.sleep(0.01)
                assert pc.at[("H100", "products")] <= pf.at and pc.u[("H100", "products")] == pf.u["products"]
                status, body = await get(http, ex.url, "/v1/products", **{"class": "H100"})
                if (body["seq"], body["time"]) == pf.at and pc.u[("H100", "products")] == pf.u["products"]:
                    break
            rest = {r["product"]: {k: v for k, v in r.items() if k != "quotes"} for r in body["products"]}
            assert (body["seq"], body["time"]) == pf.at and rest == pc.rows["H100"]
            for _ in range(800):  # the next heartbeat shows the SDK's client its gap; it subscribes again
                if fc.gaps and not fc.pending and fc.products.get("H100") == pc.rows["H100"] and fc.quotes.get(
                        "H100") == pf.quotes:
                    break
                await asyncio.sleep(0.01)
            assert dropped and fc.gaps >= 1 and fc.products["H100"] == pc.rows["H100"]
            assert fc.quotes["H100"] == pf.quotes
            await fc.close()
            updates = [m for m in got if m.get("type") == "products" and m["action"] == "update"]
            assert 0 < len(updates) < x.sequencer.stats.batches - batches
            reader.cancel()
            await ws.close()
            async with http.ws_connect(ex.url.replace("http", "ws") + "/v1/feeds") as live:
                await live.receive_json()
                for op in ({"channel": "products", "class": "H100", "kind": "spot"},
                           {"channel": "quotes", "class": "H100", "interval": "1m"}):
                    await live.send_json({"op": "subscribe", "id": 7, **op})
                    m = await live.receive_json()
                    while m.get("id") != 7:
                        m = await live.receive_json()
                    assert m["type"] == "error" and m["code"] == "MALFORMED", m
            async with http.ws_connect(ex.url.replace("http", "ws") + "/v1/replay?speed=0") as rp:
                hello = await rp.receive_json()
                assert "products" not in hello["channels"]
                await rp.send_json({"op": "subscribe", "channel": "products", "class": "H100", "id": 5})
                for _ in range(20):
                    m = await rp.receive_json()
                    if m.get("id") == 5:
                        break
                assert m["type"] == "error" and m["code"] == "UNKNOWN_CHANNEL" and "live" in m["message"], m

    asyncio.run(scenario())
