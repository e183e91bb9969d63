"""GET /v1/book/{class}: the public level-2 book (R20): free GPUs now per ask price (firm and spot
ladders), remaining GPUs per bid limit; `gpux book` shows the same."""

from __future__ import annotations

import asyncio

import pytest
from exchange_helpers import USD, running_exchange

from client.api import ClientError


def test_public_book_shows_free_gpus_now_and_open_bids(tmp_path):
    async def scenario():
        async with running_exchange(tmp_path, fsync="off") as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 1000 * USD)
            await prov.ask("H100", 8, 2_000_000, ex.now + 86_400, spot_price=1_000_000)
            await prov.ask("H100", 4, 2_500_000, ex.now + 86_400)
            async with await alice.trader() as t:
                await t.bid("H100", "on_demand", 3, 2, 2_100_000)  # takes 3 of the 8 at $2.00 (R10, R11)
                await t.bid("H100", "spot", 2, 1, 500_000)  # below every spot price: rests
                await t.bid("H100", "on_demand", 1, 1, 1_500_000)  # below every firm price: rests
            await asyncio.sleep(0.2)
            public = ex.client("nobody", "analyst")
            book = await public.book("H100")
            assert book["asks"] == [[2_000_000, 5], [2_500_000, 4]]
            assert book["spot_asks"] == [[1_000_000, 5]]
            assert book["spot_bids"] == [[500_000, 2]] and book["bids"] == [[1_500_000, 1]]
            assert book["resting_orders"] == 4
            top = await public.book("H100", depth=1)
            assert top["asks"] == [[2_000_000, 5]]
            empty = await public.book("A100")
            assert empty["asks"] == [] and empty["bids"] == [] and empty["resting_orders"] == 0
            with pytest.raises(ClientError) as e:
                await public.book("B300")
            assert e.value.code == "UNKNOWN_CLASS" and e.value.status == 404
            with pytest.raises(ClientError) as e:
                await public.book("H100", depth=0)
            assert e.value.code == "MALFORMED"

    asyncio.run(scenario())
