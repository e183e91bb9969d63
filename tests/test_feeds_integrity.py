"""Precision and integrity of the live feed (docs/feeds.md "Integrity"), over real sockets: every
message carries the wall-clock time it was sent (``ts_ms``), and a client that keeps its own level 2
from snapshots and deltas — written here from the docs alone, not with client/feeds.py — computes
each book message's CRC-32 from its copy and finds the one the server sent, after every book
message of a random session in several classes (more than 10 levels a side, so the depth cut
counts).  client/feeds.py's FeedClient checks the same and starts again from a snapshot when its
copy is wrong."""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from client.feeds import FeedClient
from exchange.sequencer import Request
from orderbook.types import CMD_ASK, CMD_BID, GTC, ON_DEMAND, SPOT, Command
from tests.exchange_helpers import running_exchange
from tests.test_feeds_live import CFG, CLASSES, quiet, session
from tests.test_feeds_model import reference_level2

SIDES = ("asks", "bids", "spot_asks", "spot_bids")  # the documented order
DOCS = Path(__file__).resolve().parent.parent / "docs" / "feeds.md"


def crc_of(book: dict[str, dict[int, int]]) -> int:
    """The checksum as docs/feeds.md defines it, from a client's own copy."""
    parts = []
    for side in SIDES:
        levels = sorted(book[side].items(), reverse=side.endswith("bids"))[:10]
        parts.append(",".join(f"{price}:{gpus}" for price, gpus in levels))
    return zlib.crc32("|".join(parts).encode("ascii"))


def apply(book: dict[str, dict[int, int]], m: dict[str, Any]) -> None:
    if m["action"] == "snapshot":
        for side in SIDES:
            book[side].clear()
    for side in SIDES:
        for price, gpus in m.get(side, ()):
            if gpus:
                book[side][price] = gpus
            else:
                book[side].pop(price, None)


async def deep_books(x: Any) -> None:
    """Asks and bids at 14 prices a side in every class: more levels than the checksum takes."""
    from exchange.entries import Fund

    seq = x.sequencer
    seq.post(Request("", None, 21, fund=Fund("deposit", 21, 10**15, "integrity-test:21", 0)))
    for cls in CLASSES:
        now = seq.times[cls]
        for k in range(14):
            seq.post(Request(cls, Command(type=CMD_ASK, account=7, price=3_000_000 + 50_000 * k,
                                          spot_price=2_000_000 + 50_000 * k, gpus=2, end=now + 48 * 3600), 7,
                             reply=lambda _a: None))
            for kind, top in ((ON_DEMAND, 1_500_000), (SPOT, 900_000)):
                seq.post(Request(cls, Command(type=CMD_BID, account=21, price=top - 20_000 * k, gpus=1, hours=1,
                                              kind=kind, tif=GTC), 21, reply=lambda _a: None))


def test_every_book_message_carries_the_crc32_of_the_clients_own_copy(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex, aiohttp.ClientSession() as http:
            x = ex.exchange
            t0 = time.time_ns() // 1_000_000
            ws = await http.ws_connect(ex.url.replace("http://", "ws://") + "/v1/feeds")
            for c in CLASSES:
                for ch in ("book", "trades", "ticker"):
                    await ws.send_json({"op": "subscribe", "channel": ch, "class": c})
            await deep_books(x)
            rng = np.random.default_rng(5)
            await session(x, rng, 300)
            await asyncio.sleep(1.2)  # engine time moves: preempted leases end, the book changes alone
            await session(x, rng, 300)
            await quiet(x)
            await asyncio.sleep(1.2)  # a heartbeat, and every round published
            await quiet(x)
            books = {c: {s: {} for s in SIDES} for c in CLASSES}
            checked = deep = 0
            seen: list[dict[str, Any]] = []
            await ws.send_json({"op": "ping", "id": "end"})  # answered after everything queued before it
            while True:
                msg = await ws.receive_json(timeout=60)
                seen.append(msg)
                if msg.get("type") == "pong" and msg.get("id") == "end":
                    break
                if msg.get("type") == "book":
                    book = books[msg["class"]]
                    apply(book, msg)
                    assert msg["checksum"] == crc_of(book), (msg["class"], msg["u"])
                    checked += 1
                    deep += any(len(book[s]) > 10 for s in SIDES)
            await ws.close()
            t1 = time.time_ns() // 1_000_000
            assert checked > 30 and deep > 20
            for c in CLASSES:  # the copy is the book
                want = reference_level2(x.engine.books[c])
                assert {s: dict(map(tuple, want[s])) for s in SIDES} == books[c]
            # every message says when it was sent, in wall-clock milliseconds; engine time stays seconds
            assert {m["type"] for m in seen} >= {"subscribed", "book", "trades", "ticker", "heartbeat"}
            for m in seen:
                assert isinstance(m["ts_ms"], int) and t0 <= m["ts_ms"] <= t1, m
                if "time" in m and m["type"] != "pong":
                    assert m["time"] <= m["ts_ms"] // 1000 + 1

    asyncio.run(go())


def test_feed_client_starts_again_when_its_copy_fails_the_checksum(tmp_path) -> None:
    """A client whose copy went wrong without a lost message (here: one level altered on arrival)
    finds it by the checksum, subscribes again and ends with the right book."""
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            spoiled: list[int] = []

            def spoil(m: dict[str, Any]) -> bool:
                if not spoiled and m.get("type") == "book" and m.get("action") == "delta" and m.get("asks"):
                    m["asks"][0][1] += 1
                    spoiled.append(m["u"])
                return False

            fc = FeedClient(ex.url, drop=spoil)
            await fc.connect()
            for c in CLASSES:
                await fc.subscribe("book", c)
            await deep_books(x)
            await session(x, np.random.default_rng(9), 200)
            await quiet(x)
            await asyncio.sleep(0.5)
            await quiet(x)
            for _ in range(100):
                if all((c, "book") not in fc.pending and fc.books[c].u == x.feeds.feeds[c].u["book"] for c in CLASSES):
                    break
                await asyncio.sleep(0.05)
            assert spoiled and fc.checksum_errors == 1 and fc.gaps == 1
            for c in CLASSES:
                assert fc.books[c].level2() == reference_level2(x.engine.books[c]), c
            await fc.close()

    asyncio.run(go())


def test_the_documented_checksum_example_is_right() -> None:
    text = DOCS.read_text()
    m = re.search(r'crc32\(b?"([^"]+)"\) == (\d+)', text)
    assert m, "docs/feeds.md shows a worked checksum"
    assert zlib.crc32(m.group(1).encode("ascii")) == int(m.group(2))
