"""The forward curve (docs/feeds.md, "Forward curve"; feeds/forward.py): by start day, the price at
which a reserved bid would fill now, and what reserved trades starting that day paid.  A real
exchange on a loopback port, providers' asks over different windows, reserved trades through a
trader's WebSocket session, the curve over real HTTP:

- each day's ``best`` is the cheapest ask whose window holds a GPU-day from that midnight (R9)
  and is executable: a reserved IOC bid with that limit for that start fills in full (R11);
- a day no ask covers has no price and says why (NO_LIQUIDITY);
- ``traded_*`` is the reserved trades of the last week by the day their lease starts;
- bad parameters answer the API's error shape.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from feeds.forward import DAY, first_day
from tests.exchange_helpers import USD, run, running_exchange
from tests.test_feeds_live import CFG

P1, P2, P3 = 2_000_000, 1_500_000, 2_400_000  # µ$ per GPU-hour


async def forward(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/v1/forward", params={k: str(v) for k, v in params.items()}) as r:
        return r.status, await r.json()


def test_the_forward_curve_prices_each_start_day_at_what_fills_and_what_traded(tmp_path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=100_000 * USD)
            d0 = first_day(ex.now)
            # a long window at P1 from day 1 to day 8, a cheaper one at P2 on days 3-4, a dearer one
            # at P3 on day 6 only (P1 stays the best there)
            await prov.ask("H100", gpus=4, price=P1, start=d0 + DAY, end=d0 + 8 * DAY)
            await prov.ask("H100", gpus=2, price=P2, start=d0 + 3 * DAY, end=d0 + 5 * DAY)
            await prov.ask("H100", gpus=2, price=P3, start=d0 + 6 * DAY, end=d0 + 7 * DAY)
            async with await alice.trader() as s:
                for start, gpus in ((d0 + 2 * DAY, 1), (d0 + 2 * DAY, 2), (d0 + 3 * DAY, 1)):
                    ack = await s.bid("H100", "reserved", gpus=gpus, hours=24, limit=P1, start=start, tif="IOC")
                    assert ack["ok"] and ack["trades"], ack
            status, c = await forward(http, ex.url, **{"class": "H100", "days": 10})
            assert status == 200 and c["class"] == "H100" and c["gpus"] == 1 and c["hours"] == 24
            days = {d["start"]: d for d in c["days"]}
            assert sorted(days) == [d0 + k * DAY for k in range(10)]
            # day 3: the P2 ask has one GPU left after its trade, still the cheapest GPU-day
            assert [days[d0 + k * DAY]["best"] for k in range(1, 10)] == [P1, P1, P2, P2, P1, P1, P1, None, None]
            assert days[d0 + 8 * DAY]["reason"] == "NO_LIQUIDITY" and days[d0 + DAY]["reason"] is None
            assert (days[d0 + 2 * DAY]["trades"], days[d0 + 2 * DAY]["traded_gpu_hours"],
                    days[d0 + 2 * DAY]["traded_vwap"]) == (2, 72, P1)
            assert (days[d0 + 3 * DAY]["trades"], days[d0 + 3 * DAY]["traded_vwap"]) == (1, P2)
            assert days[d0 + DAY]["trades"] == 0 and days[d0 + DAY]["traded_vwap"] is None
            # 3 GPUs from day 3: the one P2 GPU left, then two at P1: the limit that fills them all is
            # P1, their average price (P2 + 2 P1) / 3, rounded down
            status, c3 = await forward(http, ex.url, **{"class": "H100", "days": 5, "gpus": 3})
            assert (c3["days"][3]["best"], c3["days"][3]["average"]) == (P1, (P2 + 2 * P1) // 3)
            # executable: a bid with the displayed limit for the displayed size fills now in full
            async with await alice.trader() as s:
                ack = await s.bid("H100", "reserved", gpus=1, hours=24, limit=days[d0 + 5 * DAY]["best"],
                                  start=d0 + 5 * DAY, tif="IOC")
                assert [t["price"] for t in ack["trades"]] == [P1]
                ack = await s.bid("H100", "reserved", gpus=3, hours=24, limit=c3["days"][3]["best"],
                                  start=d0 + 3 * DAY, tif="IOC")
                assert sorted(t["price"] for t in ack["trades"]) == [P2, P1] and sum(
                    t["gpus"] for t in ack["trades"]) == 3
            for bad, code in (({"days": 0}, "MALFORMED"), ({"days": 91}, "MALFORMED"), ({"gpus": "x"}, "MALFORMED"),
                              ({"hours": 0}, "MALFORMED"), ({"spam": 1}, "MALFORMED")):
                status, err = await forward(http, ex.url, **{"class": "H100", **bad})
                assert status == 400 and err["error"]["code"] == code, (bad, err)
            status, err = await forward(http, ex.url, **{"class": "NOPE"})
            assert status == 404 and err["error"]["code"] == "UNKNOWN_CLASS"

    run(scenario())
