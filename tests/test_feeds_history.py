"""History over REST and statistics by kind (docs/feeds.md): a real exchange on a loopback port,
a random session in several classes, real HTTP and WebSocket clients.

- ``GET /v1/trades`` pages, walked while new trades arrive between pages, join without a gap or a
  repeat and equal the trades recorded, for every class, with and without a kind and a time range;
- ``GET /v1/candles`` equals what a subscriber of the live candles channel holds, class-wide and
  per kind, for both intervals;
- the per-kind streams (candles:1m:KIND, index:KIND) that replay rebuilds from the recording are
  the live ones;
- bad parameters answer the API's error shape with a stable code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np

from client.feeds import FeedClient
from exchange.journal import segments
from feeds.history import TradeHistory
from feeds.model import KINDS, trade_json
from feeds.recording import recording_dir
from feeds.replay import load, messages
from orderbook.types import EV_TRADE, events
from tests.exchange_helpers import running_exchange
from tests.test_feeds_live import CFG, CLASSES, quiet, session


def recorded_trades(path: Any, cls: str) -> list[dict[str, Any]]:
    ev = load(path, classes=[cls], types=[EV_TRADE]).events.get(cls)
    return [] if ev is None else [trade_json(e) for e in events(ev)]


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as r:
        return r.status, await r.json()


async def walk(http: aiohttp.ClientSession, base: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of /v1/trades from the start, following ``next`` until ``more`` is false."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = dict(params) if cursor is None else {**params, "cursor": cursor}
        status, page = await get(http, base + "/v1/trades", **q)
        assert status == 200, page
        out += page["trades"]
        cursor = page["next"]
        if not page["more"]:
            return out


def live_candles(fc: FeedClient, cls: str, stream: str) -> list[dict[str, Any]]:
    """The candles a subscriber holds for a stream: the snapshot, then each update replaces or
    adds the candles it carries."""
    kept: dict[int, dict[str, Any]] = {}
    for m in fc.messages:
        if m.get("type") != "candles" or m.get("class") != cls:
            continue
        if f"candles:{m['interval']}" + (f":{m['kind']}" if "kind" in m else "") != stream:
            continue
        if m["action"] == "snapshot":
            kept = {}
        for c in m["candles"]:
            kept[c["start"]] = c
    return [kept[k] for k in sorted(kept)]


def test_trade_pages_join_without_gaps_or_repeats_while_trades_arrive(tmp_path) -> None:
    async def go() -> None:
        # small segments: the pages cross many of them, sealed and open
        async with running_exchange(tmp_path, segment_bytes=1 << 13, **CFG) as ex, \
                aiohttp.ClientSession() as http:
            x = ex.exchange
            rng = np.random.default_rng(5)
            await session(x, rng, 150)
            await quiet(x)
            # walk H100 seven trades at a time, with more trading between every two pages
            walked: list[dict[str, Any]] = []
            cursor = "0"
            pages = 0
            first = len(recorded_trades(tmp_path, "H100"))
            while True:
                status, page = await get(http, ex.url + "/v1/trades", **{"class": "H100", "limit": 7,
                                                                        "cursor": cursor})
                assert status == 200, page
                assert set(page) == {"class", "kind", "trades", "next", "more"}
                assert len(page["trades"]) <= 7 and (page["more"] is False or len(page["trades"]) == 7)
                walked += page["trades"]
                cursor = page["next"]
                pages += 1
                if pages <= 12:
                    await session(x, rng, 40)
                    await quiet(x)
                elif not page["more"]:
                    break
            assert pages > 12 and len(recorded_trades(tmp_path, "H100")) > first + 20  # trades came meanwhile
            # the pages joined: every trade once, in seq order, equal to the recording
            seqs = [t["seq"] for t in walked]
            assert seqs == sorted(set(seqs))
            for c in CLASSES:
                want = recorded_trades(tmp_path, c)
                assert len(want) > 20, c
                got = walked if c == "H100" else await walk(http, ex.url, **{"class": c, "limit": 50})
                assert got == want, f"{c}: the pages differ from the trades recorded"
                # one kind, a time range
                times = sorted({t["time"] for t in want})
                lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
                for kind in KINDS:
                    sel = [t for t in want if t["kind"] == kind and lo <= t["time"] <= hi]
                    got = await walk(http, ex.url, **{"class": c, "kind": kind, "from": lo, "to": hi, "limit": 3})
                    assert got == sel, f"{c} {kind} [{lo}, {hi}]"
            # a page past the end: empty, its cursor stays, nothing more
            status, page = await get(http, ex.url + "/v1/trades", **{"class": "H100", "cursor": cursor})
            assert status == 200 and page["trades"] == [] and page["next"] == cursor and page["more"] is False

    asyncio.run(go())
    assert len(segments(recording_dir(tmp_path))) > 4
    # read again with one sealed segment cached at a time: the same pages
    h = TradeHistory(tmp_path, keep=1)
    for c in CLASSES:
        want = recorded_trades(tmp_path, c)
        got, after, more = [], 0, True
        while more:
            rows, more = h.page(c, None, None, None, after, 11)
            got += [trade_json(e) for e in events(rows)]
            after = got[-1]["seq"] if got else after
        assert got == want
        assert [trade_json(e) for e in events(h.trades(c, None, None))] == want
    assert sum(s.trades is None for s in h._segs.values()) >= 2  # dropped from the cache, summaries kept


def test_candles_from_rest_equal_the_live_channel_and_replay_reproduces_the_kinds(tmp_path) -> None:
    streams = [f"candles:{iv}" + (f":{k}" if k else "") for iv in ("1m", "1h") for k in (None, *KINDS)]

    async def go() -> dict[str, Any]:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            x = ex.exchange
            fc = FeedClient(ex.url)
            fc.keep = True
            await fc.connect()
            for c in CLASSES:
                for s in streams:
                    _, iv, *kind = s.split(":")
                    ans = await fc.subscribe("candles", c, iv, kind[0] if kind else None)
                    assert ans["type"] == "subscribed" and ans.get("kind") == (kind[0] if kind else None)
                for k in (None, *KINDS):
                    await fc.subscribe("index", c, kind=k)
            await session(x, np.random.default_rng(8), 500)
            await quiet(x)
            feeds = x.feeds.feeds
            for _ in range(200):  # until the client has every candle message sent
                if all(fc.last_u.get((c, s)) == feeds[c].u[s] for c in CLASSES for s in streams):
                    break
                await asyncio.sleep(0.02)
            assert fc.gaps == 0
            for c in CLASSES:
                for s in streams:
                    _, iv, *kind = s.split(":")
                    live = live_candles(fc, c, s)
                    q: dict[str, Any] = {"class": c, "interval": iv}
                    if kind:
                        q["kind"] = kind[0]
                    if live:
                        q["from"] = live[0]["start"]
                    status, ans = await get(http, ex.url + "/v1/candles", **q)
                    assert status == 200, ans
                    assert ans["candles"] == live, f"{c} {s}: REST candles differ from the live channel"
                    assert ans["kind"] == (kind[0] if kind else None) and ans["interval"] == iv
                assert live_candles(fc, c, "candles:1m:spot") and live_candles(fc, c, "candles:1m:on_demand")
                # class-wide candles mix kinds; each kind's candles hold only its trades
                total = sum(k["trades"] for k in live_candles(fc, c, "candles:1h"))
                assert total == sum(k["trades"] for kind in KINDS for k in live_candles(fc, c, f"candles:1h:{kind}"))
            # candles in pages: limit and next
            status, one = await get(http, ex.url + "/v1/candles", **{"class": "H100", "limit": 1,
                                                                       "from": live_candles(fc, "H100",
                                                                                            "candles:1m")[0]["start"]})
            assert status == 200 and len(one["candles"]) == 1
            n1m = len(live_candles(fc, "H100", "candles:1m"))
            assert (one["next"] is None) == (n1m == 1)
            # (ts_ms: the wall-clock time each live message was sent; the recording cannot hold it)
            kept = [{k: v for k, v in m.items() if k != "ts_ms"} for m in fc.messages
                    if m.get("type") in ("candles", "index") and m.get("action") == "update"]
            await fc.close()
            return {"kept": kept}

    live = asyncio.run(go())
    rec = load(tmp_path)
    want = [f"candles:1m:{k}" for k in KINDS] + [f"index:{k}" for k in KINDS] + ["candles:1m", "index"]
    replayed = [m for _, ms in messages(rec, want) for m in ms if m.get("action") != "snapshot"]

    def key(m: dict[str, Any]) -> tuple:
        return m["class"], m["type"], m.get("interval", ""), m.get("kind", ""), m["u"]

    kept = sorted((m for m in live["kept"] if m.get("interval", "1m") == "1m"), key=key)
    assert kept and any("kind" in m for m in kept)
    assert kept == sorted((m for m in replayed if m["class"] in CLASSES), key=key)


def test_history_bad_parameters_answer_a_stable_code(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            await session(ex.exchange, np.random.default_rng(3), 60)
            await quiet(ex.exchange)
            cases = [
                ("/v1/trades", {}, 400, "MALFORMED"),
                ("/v1/trades", {"class": "B200"}, 404, "UNKNOWN_CLASS"),
                ("/v1/trades", {"class": "H100", "kind": "firm"}, 400, "MALFORMED"),
                ("/v1/trades", {"class": "H100", "cursor": "abc"}, 400, "BAD_CURSOR"),
                ("/v1/trades", {"class": "H100", "cursor": "-1"}, 400, "BAD_CURSOR"),
                ("/v1/trades", {"class": "H100", "limit": "0"}, 400, "MALFORMED"),
                ("/v1/trades", {"class": "H100", "limit": "1001"}, 400, "MALFORMED"),
                ("/v1/trades", {"class": "H100", "from": "yesterday"}, 400, "MALFORMED"),
                ("/v1/trades", {"class": "H100", "from": "200", "to": "100"}, 400, "BAD_RANGE"),
                ("/v1/trades", {"class": "H100", "sort": "desc"}, 400, "MALFORMED"),
                ("/v1/candles", {"class": "H100", "interval": "5m"}, 400, "MALFORMED"),
                ("/v1/candles", {"class": "H100", "limit": "5001"}, 400, "MALFORMED"),
                ("/v1/candles", {"class": "H100", "cursor": "1"}, 400, "MALFORMED"),
                ("/v1/candles", {"kind": "spot"}, 400, "MALFORMED"),
            ]
            for path, q, status, code in cases:
                async with http.get(ex.url + path, params=q) as r:
                    body = await r.json()
                    assert (r.status, body["error"]["code"]) == (status, code), (path, q, body)
                    assert set(body) == {"error"} and body["error"]["message"]
            # ISO 8601 times are accepted, like /v1/replay's
            status, page = await get(http, ex.url + "/v1/trades", **{"class": "H100", "from": "2020-01-01T00:00:00"})
            assert status == 200 and page["trades"] == recorded_trades(tmp_path, "H100")[:100]

    asyncio.run(go())


def test_per_kind_subscriptions_and_their_errors(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            fc = FeedClient(ex.url)
            fc.keep = True
            await fc.connect()
            ans = await fc.subscribe("index", "H100", kind="spot")
            assert ans["type"] == "subscribed" and ans["kind"] == "spot"
            for channel, interval, kind, sentence in (("index", None, "firm", "is not one of"),
                                                      ("book", None, "spot", "takes no kind"),
                                                      ("trades", None, "spot", "takes no kind"),
                                                      ("candles", "5m", "spot", "is not one of 1m, 1h")):
                ans = await fc.subscribe(channel, "H100", interval, kind)
                assert ans["type"] == "error" and ans["code"] == "MALFORMED" and sentence in ans["message"], ans
            await session(ex.exchange, np.random.default_rng(4), 300)
            await quiet(ex.exchange)
            for _ in range(200):
                if fc.last_u.get(("H100", "index:spot")) == ex.exchange.feeds.feeds["H100"].u["index:spot"]:
                    break
                await asyncio.sleep(0.02)
            ix = [m for m in fc.messages if m.get("type") == "index"]
            assert ix[0]["action"] == "snapshot" and all(m["kind"] == "spot" for m in ix)
            assert ix[-1]["method"] == "vwap_24h_spot"
            spot = ex.exchange.feeds.feeds["H100"].stats.index("spot")
            assert spot["trades_24h"] and ix[-1]["value"] == spot["value"] and len(ix) > 1
            await fc.close()

    asyncio.run(go())


def test_when_the_recorder_has_stopped_the_live_trades_follow_the_recording(tmp_path) -> None:
    """The recorder stops after a write error (FeedService._drain sets it to None and /healthz says
    so): the history then serves the recording and, after it, the trades the live feed holds."""
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            x = ex.exchange
            sent: list[np.ndarray] = []

            def on_batch(batch: Any) -> None:
                ev = batch.events.get("H100")
                if ev is not None:
                    sent.append(ev[ev["type"] == EV_TRADE].copy())

            x.bus.subscribe(on_batch)
            rng = np.random.default_rng(12)
            await session(x, rng, 120)
            await quiet(x)
            recorded = len(recorded_trades(tmp_path, "H100"))
            x.feeds.recorder.close()
            x.feeds.recorder = None  # what a failed write leaves
            await session(x, rng, 40)
            await quiet(x)
            want = [trade_json(e) for part in sent for e in events(part)]
            assert len(recorded_trades(tmp_path, "H100")) == recorded < len(want) < recorded + 100
            assert await walk(http, ex.url, **{"class": "H100", "limit": 9}) == want
            status, ans = await get(http, ex.url + "/v1/candles", **{"class": "H100"})
            assert status == 200 and ans["candles"] == x.feeds.feeds["H100"].snapshot("candles:1m")["candles"]

    asyncio.run(go())
