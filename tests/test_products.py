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
from typing import Any

import aiohttp
import numpy as np

from tests.exchange_helpers import running_exchange
from tests.test_feeds_live import CFG, CLASSES, quiet, session


async def get(http: aiohttp.ClientSession, url: str, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}{path}", params={k: str(v) for k, v in params.items()}) as r:
        return r.status, await r.json()


def test_every_product_book_is_uncrossed_and_its_best_ask_fills_at_its_price(tmp_path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
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
                        mine = {}
                        for o in resting:
                            if (o.kind == p["kind"] and o.hours == p["hours"] and max(o.block, 1) == p["block"]
                                    and (p["start"] is None or o.start == p["start"])):
                                mine[o.price] = mine.get(o.price, 0) + o.remaining
                        assert p["bids"] == [[k, mine[k]] for k in sorted(mine, reverse=True)], (cls, p["product"])
                        if ask is not None and seen["quoted"] < 60:
                            gpus = p["asks"][0][1]
                            q = {"class": cls, "kind": p["kind"], "gpus": gpus, "hours": p["hours"],
                                 "block": p["block"], "limit": ask}
                            if p["start"]:
                                q["start"] = p["start"]
                            status, quote = await get(http, ex.url, "/v1/quote", **q)
                            assert status == 200 and quote["complete"], (p, quote)
                            assert {f["price"] for f in quote["fills"]} == {ask} and quote["filled"] == gpus
                            seen["quoted"] += 1
                            for want in p["quotes"]:  # the standard sizes: what GET /v1/quote answers
                                q = {**q, "gpus": want["gpus"], "limit": want["limit"] or ask}
                                status, quote = await get(http, ex.url, "/v1/quote", **q)
                                if want["limit"] is None:
                                    assert not quote["complete"], (p["product"], want, quote)
                                else:
                                    assert quote["complete"] and quote["average_price"] == want["average"], (
                                        p["product"], want, quote)
                                    assert max(f["price"] for f in quote["fills"]) == want["limit"]
                                    seen["sizes"] += 1
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
            for bad in ("on_demand:24h", "hourly:24h:x1", "on_demand:24h:x1@", "on_demand:024h:x1"):
                status, err = await get(http, ex.url, "/v1/products", **{"class": "H100", "product": bad})
                assert status == 404 and err["error"]["code"] == "UNKNOWN_PRODUCT", bad

    asyncio.run(scenario())
