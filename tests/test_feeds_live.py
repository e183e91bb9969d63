"""The live market-data feed over real sockets (docs/feeds.md): a real exchange on a loopback port,
subscribers over WebSocket, a random trading session in several classes with cancels, amends,
releases and preemptions (notice 1 s, so preempted spot leases end while the test runs and the
book moves with engine time alone).

R20: snapshot then deltas; a gap means resubscribe.  R21: level 2 rebuilt from the events equals
level 2 computed from the reference book's internals.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import numpy as np
import pytest

from bench.wsclient import connect as raw_connect
from client.feeds import FeedClient
from exchange.clock import SimClock
from exchange.config import Instrument
from exchange.entries import Fund
from exchange.sequencer import Request
from feeds.model import KINDS, STREAMS
from orderbook.config import BookConfig
from orderbook.types import CMD_AMEND, CMD_ASK, CMD_BID, CMD_CANCEL, CMD_RELEASE, GTC, IOC, ON_DEMAND, SPOT, Command
from tests.exchange_helpers import running_exchange
from tests.test_feeds_model import reference_level2

CLASSES = ("H100", "A100", "L40S")
PRICES = (1_800_000, 2_000_000, 2_200_000, 2_500_000)


def instruments() -> dict[str, Instrument]:
    return {c: Instrument(BookConfig(name=c, notice_s=1, max_price=10_000_000)) for c in CLASSES}


CFG = {"fsync": "off", "engine": "reference", "instruments": instruments()}


async def session(x: Any, rng: np.random.Generator, n: int, providers=(1, 2, 3), traders=(11, 12, 13, 14)) -> None:
    """``n`` random commands straight to the sequencer (the gateway's own path after its checks)."""
    seq = x.sequencer
    st = x.engine.state
    for acc in traders:  # escrow (R17): the sequencer checks every bid against the core's money
        seq.post(Request("", None, acc, fund=Fund("deposit", acc, 10**15, f"feeds-test:{acc}", 0)))
    for i in range(n):
        cls = str(rng.choice(CLASSES))
        now = seq.times[cls]
        r = rng.random()
        if r < 0.3:
            price = int(rng.choice(PRICES))
            spot = price * 6 // 10 // 1000 * 1000 if rng.random() < 0.6 else 0
            acc = int(rng.choice(providers))
            rec = Command(type=CMD_ASK, account=acc, price=price, spot_price=spot, gpus=int(rng.integers(1, 17)),
                          end=now + int(rng.integers(2, 48)) * 3600)
        elif r < 0.72:
            acc = int(rng.choice(traders))
            kind = SPOT if rng.random() < 0.35 else ON_DEMAND
            limit = int(rng.choice(PRICES)) * (6 if kind == SPOT else 10) // 10 // 1000 * 1000
            limit += int(rng.choice([-100_000, 0, 0, 100_000]))
            rec = Command(type=CMD_BID, account=acc, price=max(limit, 1000), gpus=int(rng.integers(1, 9)),
                          hours=int(rng.integers(1, 4)), kind=kind, tif=IOC if rng.random() < 0.3 else GTC)
        elif r < 0.86:
            opens = [o for o in st.orders.values() if o.status == "open" and o.book == cls]
            if not opens:
                continue
            o = opens[int(rng.integers(0, len(opens)))]
            if rng.random() < 0.2 and (o.remaining if o.side == "bid" else o.gpus) > 1:
                acc, rec = o.account, Command(type=CMD_AMEND, account=o.account, oid=o.oid,
                                              gpus=(o.remaining if o.side == "bid" else o.gpus) - 1)
            else:
                acc, rec = o.account, Command(type=CMD_CANCEL, account=o.account, oid=o.oid)
        else:
            live = [x_ for x_ in st.leases.values() if x_.book == cls and x_.kind != "reserved"
                    and x_.end > now and not x_.ended_by]
            if not live:
                continue
            lease = live[int(rng.integers(0, len(live)))]
            acc, rec = lease.buyer, Command(type=CMD_RELEASE, account=lease.buyer, lease_id=lease.trade_id)
        seq.post(Request(cls, rec, acc, reply=lambda _a: None))
        if i % 25 == 0:
            await asyncio.sleep(0.005)


async def quiet(x: Any, timeout: float = 10.0) -> None:
    """Until the sequencer is idle and the feed has published everything it got."""
    f = x.feeds
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not x.sequencer._queue and not x.sequencer.busy and not f._pending and not f._scheduled:
            await asyncio.sleep(0.02)
            if not x.sequencer._queue and not f._pending:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the exchange did not go quiet")


async def converged(x: Any, clients: list[FeedClient], timeout: float = 10.0) -> None:
    """Until every client's book is at the server's latest book message, then check that client,
    server model and reference book all agree (no await between the server-side reads)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        await quiet(x)
        await asyncio.sleep(0.05)
        feeds = x.feeds.feeds
        if x.feeds._pending or any(feeds[c].now != x.engine.book_time(c) for c in CLASSES):
            continue
        if all(fc.books.get(c) is not None and fc.books[c].u == feeds[c].u["book"] and (c, "book") not in fc.pending
               for fc in clients for c in CLASSES):
            for c in CLASSES:
                want = reference_level2(x.engine.books[c])
                assert feeds[c].book.level2() == want, f"{c}: server model differs from the reference book"
                for fc in clients:
                    assert fc.books[c].level2() == want, f"{c}: snapshot + deltas differ from the reference book"
                    assert fc.books[c].seq == feeds[c].seq
            return
        last = [(c, fc.books.get(c) and fc.books[c].u, feeds[c].u["book"]) for fc in clients for c in CLASSES]
    raise AssertionError(f"clients did not catch up: {last}")


async def subscribed_client(url: str, **kw: Any) -> FeedClient:
    fc = FeedClient(url, **kw)
    await fc.connect()
    for c in CLASSES:
        ans = await fc.subscribe("book", c)
        assert ans["type"] == "subscribed"
        await fc.subscribe("trades", c)
        await fc.subscribe("ticker", c)
    return fc


def test_level2_from_snapshot_and_deltas_equals_the_book_after_a_random_session(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            rng = np.random.default_rng(1)
            early = await subscribed_client(ex.url)
            await session(x, rng, 300)
            late = await subscribed_client(ex.url)  # joins mid-session: snapshot of a busy book
            await session(x, rng, 500)
            await converged(x, [early, late])
            # preempted spot leases end 1 s later (notice_s = 1): the book moves with time alone
            preempted = sum(1 for lease in x.engine.state.leases.values() if lease.ended_by == "preempted")
            assert preempted > 0, "the session should preempt spot leases"
            await asyncio.sleep(2.2)
            await session(x, rng, 300)
            await converged(x, [early, late])
            assert early.gaps == 0 and late.gaps == 0
            books = {c: len(x.feeds.feeds[c].book.level2()["asks"]) for c in CLASSES}
            assert all(books.values()), books
            await early.close()
            await late.close()

    asyncio.run(go())


def test_a_restarted_exchange_serves_the_same_book(tmp_path) -> None:
    """After a restart the feed's model comes from the recovered exchange state (not a replay)."""
    def stats(feed: Any) -> dict:
        t, i = feed.snapshot("ticker"), feed.snapshot("index")
        keys = ("last", "last_time", "volume_24h", "notional_24h", "vwap_24h", "trades_24h")
        return {"ticker": {k: t[k] for k in keys}, "index": i["value"], "trades": feed.snapshot("trades")["trades"],
                "candles": feed.snapshot("candles:1m")["candles"],
                # statistics by kind: the ticker's kinds, each kind's index and candles
                "kinds": t["kinds"], "kind_index": {k: feed.snapshot(f"index:{k}")["value"] for k in KINDS},
                "kind_candles": {s: feed.snapshot(s)["candles"] for s in STREAMS if s.count(":") == 2}}

    async def go() -> dict:
        async with running_exchange(tmp_path, **CFG) as ex:
            await session(ex.exchange, np.random.default_rng(2), 400)
            await quiet(ex.exchange)
            return {c: stats(ex.exchange.feeds.feeds[c]) for c in CLASSES}

    async def again(before: dict) -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            await quiet(x)
            for c in CLASSES:
                assert x.feeds.feeds[c].book.level2() == reference_level2(x.engine.books[c])
                assert stats(x.feeds.feeds[c]) == before[c], f"{c}: 24 h statistics lost in the restart"
            fc = await subscribed_client(ex.url)
            await session(x, np.random.default_rng(3), 200)
            await converged(x, [fc])
            await fc.close()

    before = asyncio.run(go())
    assert all(v["ticker"]["trades_24h"] for v in before.values())
    assert all(v["kind_index"]["spot"] and v["kind_candles"]["candles:1m:on_demand"] for v in before.values())
    asyncio.run(again(before))


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_a_lost_message_is_detected_and_the_resubscribed_book_is_right(tmp_path, where: str) -> None:
    """Drop one book delta on the client side.  In the middle of a stream the next delta's u skips;
    at the tail only the heartbeat (every second, with each stream's last u) can tell.  Either way
    the client resubscribes, gets a snapshot and ends equal to the book."""
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            dropped: list[dict] = []

            def drop(m: dict) -> bool:
                if not dropped and m.get("type") == "book" and m.get("action") == "delta" and m["class"] == "H100" \
                        and m["u"] >= 3:
                    dropped.append(m)
                    return True
                return False

            fc = await subscribed_client(ex.url, drop=drop)
            rng = np.random.default_rng(4)
            if where == "middle":
                await session(x, rng, 400)
            else:
                while not dropped:  # one H100 ask at a time until a delta is dropped, then nothing
                    now = x.sequencer.times["H100"]
                    ask = Command(type=CMD_ASK, account=1, price=2_000_000, gpus=1, end=now + 7200)
                    x.sequencer.post(Request("H100", ask, 1, reply=lambda _a: None))
                    await quiet(x)
                    await asyncio.sleep(0.05)
                assert fc.gaps == 0  # nothing after the lost message yet
                await asyncio.sleep(1.5)  # a heartbeat
            assert dropped
            await converged(x, [fc])
            assert fc.gaps >= 1
            await fc.close()

    asyncio.run(go())


def test_a_slow_subscriber_is_cut_off_and_the_others_get_every_message_in_order(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            hub = x.feeds.hub
            hub.max_buffer = 64 * 1024
            hub.close_grace_s = 30.0
            port = int(ex.url.rsplit(":", 1)[1])
            got: list[bytes] = []
            slow = await raw_connect("127.0.0.1", port, "/v1/feeds", got.append)
            assert slow.transport is not None
            slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for c in CLASSES:
                for ch in ("book", "trades", "ticker"):
                    slow.send(f'{{"op":"subscribe","channel":"{ch}","class":"{c}"}}'.encode())
            await asyncio.sleep(0.2)
            slow.transport.pause_reading()  # and never read again
            assert len(hub.conns) == 1  # the slow one, server side
            conn = next(iter(hub.conns))
            assert len(conn.subs) == 9
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            order: dict[tuple[str, str], list[int]] = {}

            def watch(m: dict) -> None:
                if "u" in m and "class" in m and m.get("action") != "snapshot" and m["type"] != "heartbeat":
                    order.setdefault((m["class"], m["type"]), []).append(m["u"])

            a = await subscribed_client(ex.url, on_message=watch)
            b = await subscribed_client(ex.url)
            rng = np.random.default_rng(5)
            for _ in range(40):
                await session(x, rng, 100)
                await quiet(x)
                if hub.stats["cut_off"]:
                    break
            assert hub.stats["cut_off"] == 1, "the slow subscriber should have been cut off"
            assert conn.closed and not conn.subs and not conn.out  # nothing more is queued for it
            assert conn.transport.get_write_buffer_size() <= hub.max_buffer + 256 * 1024
            await session(x, rng, 300)  # the others go on
            await converged(x, [a, b])
            assert a.gaps == 0 and b.gaps == 0
            for key, us in order.items():
                assert us == list(range(us[0], us[0] + len(us))), f"{key}: messages out of order or missing"
            assert a.close_code is None and b.close_code is None
            # the slow one reads again: what was sent before the cut, then the close frame with the reason
            slow.transport.resume_reading()
            code = await asyncio.wait_for(slow.closed, 10)
            assert code == 1008
            await a.close()
            await b.close()

    asyncio.run(go())


def test_operations_are_rate_limited_per_connection(tmp_path) -> None:
    """50 operations a second per connection, bursts of 500: a bucket per connection in the hub's
    `gateway.auth.RateLimiter` (the gateway's token buckets), on the exchange's clock.  The 501st
    operation at once is refused RATE_LIMITED with retry_after_ms; another connection is not
    affected; after retry_after_ms the next one goes."""
    async def go() -> None:
        clock = SimClock(float(int(time.time())))
        async with running_exchange(tmp_path, clock=clock, **CFG) as ex:
            port = int(ex.url.rsplit(":", 1)[1])
            got_a: list[dict] = []
            got_b: list[dict] = []
            a = await raw_connect("127.0.0.1", port, "/v1/feeds", lambda m: got_a.append(json.loads(m)))
            b = await raw_connect("127.0.0.1", port, "/v1/feeds", lambda m: got_b.append(json.loads(m)))

            async def answers(got: list[dict], n: int) -> list[dict]:
                for _ in range(1000):
                    ids = [m for m in got if "id" in m]
                    if len(ids) >= n:
                        return ids
                    await asyncio.sleep(0.01)
                raise AssertionError(f"{len(ids)} answers, wanted {n}")

            for i in range(501):
                a.send(json.dumps({"op": "ping", "id": i}).encode())
            got = await answers(got_a, 501)
            assert [m["type"] for m in got[:500]] == ["pong"] * 500
            assert got[500]["type"] == "error" and got[500]["code"] == "RATE_LIMITED" and got[500]["id"] == 500
            assert got[500]["retry_after_ms"] == 21 and "21 ms" in got[500]["message"]  # 1/50 s, rounded up
            b.send(b'{"op": "ping", "id": "b"}')
            assert (await answers(got_b, 1))[0]["type"] == "pong"
            await clock.advance(0.021)
            a.send(b'{"op": "ping", "id": 501}')
            assert (await answers(got_a, 502))[501]["type"] == "pong"
            a.close()
            b.close()

    asyncio.run(go())


def test_private_channels_orders_fills_leases(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=10**12)
            _, pkey, psecret = ex.keys["prov"]
            _, akey, asecret = ex.keys["alice"]
            fa = FeedClient(ex.url)
            await fa.connect()
            fa.keep = True
            assert (await fa.subscribe("orders"))["code"] == "NOT_AUTHENTICATED"
            bad = await fa.auth(akey, "0" * 64)
            assert bad["type"] == "error" and bad["code"] == "BAD_SIGNATURE"
            ok = await fa.auth(akey, asecret)
            assert ok["type"] == "authenticated" and ok["role"] == "trader"
            for ch in ("orders", "fills", "leases", "provisioning"):
                assert (await fa.subscribe(ch))["type"] == "subscribed"
            fp = FeedClient(ex.url)
            await fp.connect()
            fp.keep = True
            await fp.auth(pkey, psecret)
            await fp.subscribe("fills")
            await fp.subscribe("orders")
            now = ex.now
            a = await prov.ask("H100", gpus=8, price=2_000_000, end=now + 86_400, spot_price=1_000_000)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=2, hours=1, limit=2_000_000)
                tid = ack["trades"][0]["trade_id"]
                await t.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
                await t.release("H100", tid)
            await quiet(ex.exchange)
            await asyncio.sleep(0.1)
            by = {}
            for m in fa.messages:
                if m.get("action") == "update":
                    by.setdefault(m["type"], []).append(m)
            fills = [f for m in by["fills"] for f in m["fills"]]
            assert [(f["side"], f["gpus"], f["price"], f["liquidity"]) for f in fills] == [("buy", 2, 2_000_000,
                                                                                             "taker")]
            statuses = [o["status"] for m in by["orders"] for o in m["orders"]]
            assert statuses == ["filled", "open"]
            leases = [lz for m in by["leases"] for lz in m["leases"]]
            assert [lz["ended_by"] for lz in leases] == ["", "released"]
            assert all(m["u"] == i + 1 for i, m in enumerate(by["orders"]))
            # the renter's provisioning channel (R18): the notice that its lease ended early (tasks go
            # to the provider's agent, which fp did not subscribe to)
            notices = [x for m in by["provisioning"] for x in m["provisioning"]]
            assert [(x["task"], x["reason"], x["lease"]) for x in notices] == [("end", "released", f"H100-{tid}")]
            pf = [f for m in fp.messages if m.get("type") == "fills" and m.get("action") == "update"
                  for f in m["fills"]]
            assert [(f["side"], f["liquidity"], f["ask_oid"]) for f in pf] == [("sell", "maker", a["oid"])]
            snap = [m for m in fp.messages if m.get("type") == "orders" and m.get("action") == "snapshot"]
            assert snap and snap[0]["orders"] == []
            assert fa.gaps == 0
            # another account's private streams are not visible: subscribe names no account
            assert all(m.get("account") in (None, fa.account) for m in fa.messages)
            await fa.close()
            await fp.close()

    asyncio.run(go())


def test_protocol_errors(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            fc = FeedClient(ex.url)
            await fc.connect()
            assert fc.hello["type"] == "hello" and sorted(fc.hello["classes"]) == sorted(CLASSES)
            assert (await fc.subscribe("book", "B200"))["code"] == "UNKNOWN_CLASS"
            assert (await fc.subscribe("depth", "H100"))["code"] == "UNKNOWN_CHANNEL"
            assert (await fc.subscribe("book"))["code"] == "MALFORMED"
            assert (await fc.subscribe("candles", "H100", "5m"))["code"] == "MALFORMED"
            ans = await fc.subscribe("candles", "H100", "1h")
            assert ans["type"] == "subscribed" and ans["interval"] == "1h"
            assert (await fc.unsubscribe("candles", "H100", "1h"))["was_subscribed"] is True
            assert fc.ws is not None
            await fc.ws.send_str('{"op": "subscribe", "channel": 7}')
            await fc.ws.send_str("not json")
            await asyncio.sleep(0.2)
            fc.keep = True
            assert (await fc.subscribe("book", "H100"))["type"] == "subscribed"
            await fc.close()

    asyncio.run(go())


def test_shutdown_closes_subscribers_with_1001(tmp_path) -> None:
    async def go() -> None:
        clients = []
        async with running_exchange(tmp_path, **CFG) as ex:
            for _ in range(20):
                fc = FeedClient(ex.url)
                await fc.connect()
                await fc.subscribe("book", "H100")
                clients.append(fc)
        for fc in clients:
            assert fc.closed is not None
            assert await asyncio.wait_for(fc.closed, 5) == 1001
            await fc.close()

    asyncio.run(go())
