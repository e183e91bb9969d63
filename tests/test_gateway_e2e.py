"""End-to-end tests of the exchange service: a real `Exchange` on a loopback port with its own
data directory, real accounts in its SQLite store, the SDK over real sockets (signed REST and
the WebSocket session), and the journal on disk.

Each test names the market rules (docs/market-rules.md) and the documents (docs/auth.md) whose
behaviour it checks.  Prices are µ$ per GPU-hour (multiples of the 1000 µ$ tick), times UTC s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from client.api import Client, ClientError
from gateway.auth import Signer
from tests.exchange_helpers import USD, Running, run, running_exchange

# Durability is not what most tests here are about (fsync off).  Tests of the gateway's own
# behaviour (auth, roles, limits, risk checks, admin, shutdown) run on the reference book, whose
# shutdown snapshot is tiny; the matching round trips and the restarts run on the numba book,
# the production engine, whose snapshot of an empty book is ~120 MB (removed after each test).
FAST = {"fsync": "off", "engine": "reference"}
NUMBA = {"fsync": "off", "engine": "numba"}
DAY = 86_400
P = 2_000_000  # $2 per GPU-hour


@pytest.fixture(autouse=True)
def _drop_snapshots(tmp_path):
    yield
    shutil.rmtree(tmp_path / "snapshots", ignore_errors=True)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true (the server acts on disconnects and pushes asynchronously)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if await check():
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def refused(aw: Awaitable[Any]) -> ClientError:
    """The ClientError an SDK call raises (fails the test if it succeeds)."""
    with pytest.raises(ClientError) as info:
        await aw
    return info.value


async def next_event(session: Any, event: str, timeout: float = 3.0) -> dict[str, Any]:
    """The next pushed ``{"type": "event", "event": <event>}`` message of a trader session."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        m = await asyncio.wait_for(session.events.get(), max(0.01, end - loop.time()))
        if m.get("type") == "event" and m.get("event") == event:
            return m


def book_resting(ex: Running, cls: str = "H100") -> int:
    engine = ex.exchange.engine
    assert engine is not None
    return engine.books[cls].resting_orders()


async def raw(ex: Running, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, Any], Any]:
    """One REST request exactly as given (no SDK): status, headers, decoded JSON body."""
    async with aiohttp.ClientSession() as s, s.request(method, ex.url + path, data=body or None,
                                                       headers=headers or {}) as resp:
        data = await resp.read()
        return resp.status, dict(resp.headers), json.loads(data) if data else None


# ---------------------------------------------------------------------- trading round trips
def test_ask_over_rest_bid_over_ws_both_see_the_fill(tmp_path):
    """R5 ask over signed REST, R6 bid over the WebSocket: the bid trades at the ask's price
    (R11, the ask is the maker); the trader sees the trade in its ack, the provider sees the lease
    in GET /v1/leases and the sold GPUs in GET /v1/asks; escrow becomes the lease's cost (R17)."""

    async def scenario():
        async with running_exchange(tmp_path, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            ask = await prov.ask("H100", gpus=8, price=P, end=ex.now + DAY)
            assert ask["ok"] and ask["order"]["status"] == "open" and ask["trades"] == []
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=2, hours=2, limit=2_100_000)
            assert ack["type"] == "ack" and ack["order"]["status"] == "filled"
            [trade] = ack["trades"]
            assert trade["ask_oid"] == ask["oid"] and trade["bid_oid"] == ack["oid"]
            assert (trade["gpus"], trade["price"], trade["kind"], trade["maker"]) == (2, P, "on_demand", "ask")
            assert trade["end"] - trade["start"] == 2 * 3600

            [lease] = await prov.leases()
            assert lease["lease"] == trade["lease"] and lease["buyer"] == ack["order"]["account"]
            assert lease["gpus"] == 2 and lease["cost"] == 2 * 2 * P and lease["status"] == "running"
            [mine] = await prov.asks()
            assert mine["oid"] == ask["oid"] and mine["filled"] == 2 and mine["status"] == "open"
            assert [x["lease"] for x in await alice.leases()] == [trade["lease"]]

            assert lease["settlement"]["status"] == "provisioning"  # handed to the provider's agent (R18)
            acc = await alice.account()  # the ledger (R17): the lease is paid for, nothing left in escrow
            assert acc["lease_prepaid"] == 2 * 2 * P and acc["escrow"] == 0
            assert acc["available"] == 1_000 * USD - 2 * 2 * P
            assert (await prov.account())["receivable"] == 0  # nothing earned before the agent says ready

    run(scenario())


def test_resting_bid_is_pushed_the_fill_when_an_ask_arrives(tmp_path):
    """R6/R10/R11: a GTC bid rests; an ask arriving later trades with it at the bid's price (the
    bid is the maker).  The trader's session gets the trade pushed as {"type": "event",
    "event": "trade", ...}; the provider has it in its REST answer."""

    async def scenario():
        async with running_exchange(tmp_path, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=3, hours=1, limit=2_500_000)
                assert ack["order"]["status"] == "open" and ack["trades"] == []
                assert book_resting(ex) == 1
                ask = await prov.ask("H100", gpus=4, price=P, end=ex.now + DAY)
                [trade] = ask["trades"]
                assert trade["bid_oid"] == ack["oid"] and trade["price"] == 2_500_000 and trade["maker"] == "bid"

                pushed = await next_event(t, "trade")
                assert pushed["class"] == "H100" and pushed["trade_id"] == trade["trade_id"]
                assert (pushed["bid_oid"], pushed["ask_oid"], pushed["gpus"]) == (ack["oid"], ask["oid"], 3)
                assert pushed["price"] == 2_500_000 and pushed["seq"] == trade["seq"]
                assert (await t.status(ack["oid"]))["status"] == "filled"
            [mine] = await prov.asks()
            assert mine["filled"] == 3
            assert book_resting(ex) == 1  # the ask rests with its last GPU

    run(scenario())


def test_client_order_id_retry_returns_the_first_answer_and_no_second_order(tmp_path):
    """R6 idempotency: a bid (WS) or ask (REST) repeated with the same client_order_id — later,
    pipelined in the same batch, or from another session — is answered with the first result;
    no second order is made (open orders, book resting count and escrow are unchanged)."""

    async def scenario():
        async with running_exchange(tmp_path, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            bid = {"op": "bid", "class": "H100", "kind": "on_demand", "gpus": 2, "hours": 3,
                   "limit": 1_500_000, "client_order_id": "alice-1"}
            async with await alice.trader() as t:
                first = await t.call(dict(bid))
                again = await t.call(dict(bid))
                # two more, pipelined: they share a batch
                a, b = await asyncio.gather(t.send(dict(bid)), t.send(dict(bid)))
            async with await alice.trader() as t2:  # a reconnected client retries
                other = await t2.call(dict(bid))
            strip = [{k: v for k, v in m.items() if k != "id"} for m in (first, again, a, b, other)]
            assert all(m == strip[0] for m in strip), strip
            assert first["order"]["status"] == "open" and first["order"]["client_order_id"] == "alice-1"
            assert [o["oid"] for o in await alice.orders()] == [first["oid"]]
            assert book_resting(ex) == 1
            assert (await alice.account())["escrow"] == 2 * 3 * 1_500_000

            ask1 = await prov.ask("H100", gpus=4, price=P, end=ex.now + DAY, client_order_id="rack-7")
            ask2 = await prov.ask("H100", gpus=4, price=P, end=ex.now + DAY, client_order_id="rack-7")
            assert ask1 == ask2
            assert [o["oid"] for o in await prov.asks()] == [ask1["oid"]]
            assert book_resting(ex) == 2
            # the same client order id of another account is another order
            bob = ex.client("bob", "trader", deposit=1_000 * USD)
            async with await bob.trader() as tb:
                bobs = await tb.call(dict(bid))
            assert bobs["oid"] not in (first["oid"], ask1["oid"]) and book_resting(ex) == 3

    run(scenario())


def test_cancel_on_disconnect_cancels_only_that_sessions_orders(tmp_path):
    """R7 cancel, triggered by the session ending: a session opened with cancel_on_disconnect
    has its resting bid cancelled (escrow released, R17) when it closes; a session without it
    leaves its bid resting."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            gw = ex.exchange.gateway
            keep = await alice.trader()
            kept = await keep.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
            drop = await alice.trader(cancel_on_disconnect=True)
            dropped = await drop.bid("H100", "spot", gpus=2, hours=1, limit=1_000_000)
            assert book_resting(ex) == 2
            await keep.close()
            await drop.close()

            async def cancelled() -> bool:
                return (await alice.order(dropped["oid"]))["status"] == "cancelled"

            async def all_gone() -> bool:
                return not gw.all_sessions

            await eventually(cancelled, what="the cancel-on-disconnect bid to be cancelled")
            await eventually(all_gone, what="both sessions to end")
            await ex.settle()
            assert (await alice.order(kept["oid"]))["status"] == "open"
            assert [o["oid"] for o in await alice.orders()] == [kept["oid"]]
            assert book_resting(ex) == 1
            assert (await alice.account())["escrow"] == 1_000_000

    run(scenario())


def test_ws_status_amend_cancel(tmp_path):
    """R7 over the WebSocket: status by oid and by client order id; amend reducing gpus keeps the
    order (and its priority) and lowers its escrow (R17); increasing is refused (BAD_AMEND);
    cancel by client order id ends it and releases the escrow; a second cancel is UNKNOWN_ORDER."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=4, hours=2, limit=1_000_000, client_order_id="c-1")
                oid = ack["oid"]
                st = await t.status(oid)
                assert (st["status"], st["gpus"], st["remaining"], st["hold"]) == ("open", 4, 4, 8_000_000)
                assert await t.status(client_order_id="c-1") == st

                amended = await t.amend(oid, 3)
                assert amended["oid"] == oid and amended["order"]["gpus"] == 3
                assert amended["order"]["remaining"] == 3 and amended["order"]["status"] == "open"
                assert (await alice.account())["escrow"] == 3 * 2 * 1_000_000
                assert (await refused(t.amend(oid, 5))).code == "BAD_AMEND"
                assert (await t.status(oid))["gpus"] == 3

                done = await t.cancel(client_order_id="c-1")
                assert done["order"]["status"] == "cancelled" and done["order"]["reason"] == "user"
                assert (await t.status(oid))["status"] == "cancelled"
                assert (await refused(t.cancel(oid))).code == "UNKNOWN_ORDER"
                assert await t.orders() == []
            assert (await alice.account())["escrow"] == 0
            assert book_resting(ex) == 0

    run(scenario())


def test_rest_amend_and_cancel_of_an_ask(tmp_path):
    """R7 over REST for a provider: PATCH reduces an ask's GPUs (not below what it sold:
    AMEND_BELOW_SOLD, 409), DELETE cancels its unsold capacity while the lease it sold stands."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            ask = await prov.ask("H100", gpus=8, price=P, end=ex.now + DAY)
            amended = await prov.amend_ask(ask["oid"], 6)
            assert amended["order"]["gpus"] == 6 and amended["order"]["status"] == "open"
            assert (await prov.asks())[0]["gpus"] == 6
            async with await alice.trader() as t:
                ack = await t.bid("H100", "on_demand", gpus=4, hours=1, limit=P)
                assert ack["order"]["filled"] == 4
                e = await refused(prov.amend_ask(ask["oid"], 3))
                assert (e.code, e.status) == ("AMEND_BELOW_SOLD", 409)
                # the ask has 2 GPUs left: a bid for 3 cannot fill (FOK)
                assert (await t.bid("H100", "on_demand", gpus=3, hours=1, limit=P, tif="FOK"))["trades"] == []
                cancelled = await prov.cancel(ask["oid"])
                assert cancelled["order"]["status"] == "cancelled"
                assert await prov.asks() == []
                assert book_resting(ex) == 0
                assert (await t.bid("H100", "on_demand", gpus=1, hours=1, limit=P, tif="IOC"))["trades"] == []
            [lease] = await prov.leases()
            assert lease["gpus"] == 4 and lease["status"] == "running"
            e = await refused(prov.cancel(ask["oid"]))
            assert (e.code, e.status) == ("UNKNOWN_ORDER", 404)

    run(scenario())


def test_release_of_an_on_demand_lease_refunds_and_reoffers(tmp_path):
    """R16 early release of an on-demand lease over REST: the lease ends now, the buyer pays only
    for what it used (R17), and the freed capacity is re-offered (R13) to a resting bid, whose
    owner gets the trade pushed."""

    async def scenario():
        async with running_exchange(tmp_path, **NUMBA) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            bob = ex.client("bob", "trader", deposit=1_000 * USD)
            await prov.ask("H100", gpus=4, price=P, end=ex.now + DAY)
            async with await alice.trader() as ta, await bob.trader() as tb:
                [trade] = (await ta.bid("H100", "on_demand", gpus=4, hours=4, limit=P))["trades"]
                waiting = await tb.bid("H100", "on_demand", gpus=4, hours=2, limit=P)
                assert waiting["order"]["status"] == "open"
                assert (await alice.account())["lease_prepaid"] == 4 * 4 * P

                released = await alice.release("H100", trade["trade_id"])
                lease = released["lease"]
                assert lease["lease"] == trade["lease"] and lease["ended_by"] == "released"
                assert trade["start"] <= lease["end"] < trade["end"]
                used = lease["end"] - trade["start"]
                assert lease["cost"] == 4 * used * P // 3600
                assert (await alice.account())["lease_prepaid"] == lease["cost"]

                pushed = await next_event(tb, "trade")
                assert pushed["bid_oid"] == waiting["oid"] and pushed["gpus"] == 4
                assert (await tb.status(waiting["oid"]))["status"] == "filled"
                e = await refused(alice.release("H100", trade["trade_id"]))
                assert e.code == "UNKNOWN_LEASE" and e.status == 404
            assert len(await prov.leases()) == 2

    run(scenario())


# ---------------------------------------------------------------------- roles and signatures
def test_roles_are_enforced(tmp_path):
    """docs/auth.md roles: a provider may not bid (FORBIDDEN over the WebSocket), a trader may
    not post capacity (only resale asks, R16), an analyst reads the admin state but cannot halt."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            ana = ex.client("ana", "analyst")
            async with await prov.trader() as tp:
                e = await refused(tp.bid("H100", "on_demand", gpus=1, hours=1, limit=P))
                assert e.code == "FORBIDDEN"
                assert (await tp.ping())["type"] == "pong"  # the session goes on
            e = await refused(alice.ask("H100", gpus=1, price=P, end=ex.now + DAY))
            assert (e.code, e.status) == ("FORBIDDEN", 403)
            state = await ana.state()
            assert state["digest"]["orders_open"] == 0 and state["halted"] == []
            for call in (ana.halt("H100"), alice.halt("H100"), prov.kill(1), alice.state()):
                e = await refused(call)
                assert (e.code, e.status) == ("FORBIDDEN", 403)
            e = await refused(ana.ask("H100", gpus=1, price=P, end=ex.now + DAY))
            assert (e.code, e.status) == ("FORBIDDEN", 403)
            assert ex.exchange.engine.state.halted == set()
            assert book_resting(ex) == 0

    run(scenario())


def test_signature_failures_get_the_documented_401_codes(tmp_path):
    """docs/auth.md checks, in order: MISSING_AUTH, STALE_TIMESTAMP, UNKNOWN_KEY, BAD_SIGNATURE
    (wrong secret, altered body), REPLAYED; none of the refused requests changes anything (R8)."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            _, key, secret = ex.account("prov", "provider")
            signer = Signer(key, secret)
            body = json.dumps({"class": "H100", "gpus": 2, "price": P, "end": ex.now + DAY}).encode()
            ct = {"Content-Type": "application/json"}

            async def post(headers: dict[str, str], data: bytes = body) -> tuple[int, dict[str, Any]]:
                status, _, out = await raw(ex, "POST", "/v1/asks", data, {**ct, **headers})
                return status, out

            def err(out: dict[str, Any]) -> str:
                return out["error"]["code"]

            bad = Signer(key, "not-the-secret-" + secret[15:])
            status, out = await post(bad.headers("POST", "/v1/asks", body))
            assert (status, err(out)) == (401, "BAD_SIGNATURE")
            tampered = body.replace(b'"gpus": 2', b'"gpus": 200')
            status, out = await post(signer.headers("POST", "/v1/asks", body), tampered)
            assert (status, err(out)) == (401, "BAD_SIGNATURE")
            stale = Signer(key, secret, clock_ms=lambda: (ex.now - 60) * 1000)
            status, out = await post(stale.headers("POST", "/v1/asks", body))
            assert (status, err(out)) == (401, "STALE_TIMESTAMP") and "s from the server's clock" in \
                out["error"]["message"]
            status, out = await post({})
            assert (status, err(out)) == (401, "MISSING_AUTH")
            status, out = await post(Signer("gk_AAAAAAAAAAAAAAAA", secret).headers("POST", "/v1/asks", body))
            assert (status, err(out)) == (401, "UNKNOWN_KEY")
            assert book_resting(ex) == 0 and ex.exchange.engine.last_oid == 0

            good = signer.headers("POST", "/v1/asks", body)
            status, out = await post(good)
            assert status == 201 and out["ok"]
            status, out = await post(good)  # the very same signed request again
            assert (status, err(out)) == (401, "REPLAYED")
            assert book_resting(ex) == 1 and ex.exchange.engine.last_oid == 1
            assert secret not in json.dumps(out)

    run(scenario())


def test_rate_limit_rest_and_ws(tmp_path):
    """docs/auth.md rate limits: with rate_per_s=5 and rate_burst=5 the sixth quick request of a
    key is refused 429 RATE_LIMITED with retry_after_ms and a Retry-After header; the WebSocket
    answers RATE_LIMITED too; waiting retry_after_ms lets the next request through."""

    async def scenario():
        async with running_exchange(tmp_path, rate_per_s=5, rate_burst=5, **FAST) as ex:
            _, key, secret = ex.account("bob", "trader", deposit=1_000 * USD)
            signer = Signer(key, secret)
            path = "/v1/orders"
            async with aiohttp.ClientSession() as http:

                async def get() -> tuple[int, dict[str, str], Any]:
                    async with http.get(ex.url + path, headers=signer.headers("GET", path)) as resp:
                        return resp.status, dict(resp.headers), await resp.json()

                results = await asyncio.gather(*(get() for _ in range(6)))  # six at once; the bucket holds five
                assert sorted(status for status, _, _ in results) == [200] * 5 + [429]
                [(_, headers, out)] = [r for r in results if r[0] == 429]
                assert out["error"]["code"] == "RATE_LIMITED" and out["error"]["message"]
                wait_ms = out["error"]["retry_after_ms"]
                assert 0 < wait_ms <= 201 and int(headers["Retry-After"]) == 1
                alice = ex.client("alice", "trader", deposit=1_000 * USD)
                assert (await alice.account())["name"] == "alice"  # buckets are per key
                await asyncio.sleep(wait_ms / 1000 + 0.01)
                status, _, out = await get()  # signed anew after the wait: allowed
                assert status == 200 and out == {"orders": []}
                results = await asyncio.gather(*(alice.account() for _ in range(6)), return_exceptions=True)
                [e] = [r for r in results if isinstance(r, Exception)]
                assert isinstance(e, ClientError) and (e.code, e.status) == ("RATE_LIMITED", 429)

            carol = ex.client("carol", "trader", deposit=1_000 * USD)
            async with await carol.trader() as t:  # the auth message takes a token
                answers = await asyncio.gather(*(t.send({"op": "ping"}) for _ in range(5)))
                assert [m["type"] for m in answers[:4]] == ["pong"] * 4
                assert answers[4]["type"] == "error" and answers[4]["code"] == "RATE_LIMITED"
                assert answers[4]["retry_after_ms"] > 0
                await asyncio.sleep(answers[4]["retry_after_ms"] / 1000 + 0.01)
                assert (await t.ping())["type"] == "pong"

    run(scenario())


# ---------------------------------------------------------------------- risk checks
def test_escrow_insufficient_funds_changes_nothing(tmp_path):
    """R17: a bid holds gpus × hours × limit of the available balance; a bid needing more than
    is available is refused INSUFFICIENT_FUNDS and nothing changes (R8): no order, no escrow,
    no journal entry.  Escrow held by one bid counts against the next."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            alice = ex.client("alice", "trader", deposit=10 * USD)
            engine = ex.exchange.engine
            async with await alice.trader() as t:
                seq, oid = engine.seq, engine.last_oid
                e = await refused(t.bid("H100", "on_demand", gpus=1, hours=6, limit=2_000_000))  # $12
                assert e.code == "INSUFFICIENT_FUNDS"
                acc = await alice.account()
                assert (acc["escrow"], acc["available"], acc["open_orders"]) == (0, 10 * USD, 0)
                assert engine.last_oid == oid and book_resting(ex) == 0
                assert engine.seq - seq <= 2  # at most clock entries

                ok = await t.bid("H100", "on_demand", gpus=1, hours=3, limit=2_000_000)  # $6: held
                assert ok["order"]["hold"] == 6 * USD
                e = await refused(t.bid("H100", "spot", gpus=1, hours=3, limit=2_000_000))  # $6 > $4 left
                assert e.code == "INSUFFICIENT_FUNDS"
                both = await asyncio.gather(  # in one batch: the first takes what is left
                    t.send({"op": "bid", "class": "H100", "kind": "spot", "gpus": 1, "hours": 2, "limit": P}),
                    t.send({"op": "bid", "class": "H100", "kind": "spot", "gpus": 1, "hours": 2, "limit": P}))
                assert sorted(m["type"] for m in both) == ["ack", "error"]
                assert [m["code"] for m in both if m["type"] == "error"] == ["INSUFFICIENT_FUNDS"]
                acc = await alice.account()
                assert (acc["escrow"], acc["available"], acc["open_orders"]) == (10 * USD, 0, 2)

    run(scenario())


def test_max_open_orders(tmp_path):
    """Open-order limit (bids and asks together, per account): the next order is refused
    TOO_MANY_ORDERS (409 over REST) and changes nothing; cancelling one makes room again."""

    async def scenario():
        async with running_exchange(tmp_path, max_open_orders=2, **FAST) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            a1 = await prov.ask("H100", gpus=1, price=P, end=ex.now + DAY)
            await prov.ask("A100", gpus=1, price=P, end=ex.now + DAY)
            e = await refused(prov.ask("H100", gpus=1, price=P, end=ex.now + DAY))
            assert (e.code, e.status) == ("TOO_MANY_ORDERS", 409)
            async with await alice.trader() as t:
                await t.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
                await t.bid("L40S", "on_demand", gpus=1, hours=1, limit=1_000_000)
                e = await refused(t.bid("H100", "spot", gpus=1, hours=1, limit=1_000_000))
                assert e.code == "TOO_MANY_ORDERS"
                assert len(await t.orders()) == 2
            assert book_resting(ex, "H100") == 2
            await prov.cancel(a1["oid"])
            again = await prov.ask("H100", gpus=1, price=P, end=ex.now + DAY)
            assert again["order"]["status"] == "open"

    run(scenario())


def test_halt_rejects_new_orders_keeps_resting_ones_and_accepts_cancels(tmp_path):
    """Admin halt of a class: new bids and asks (and amends) are refused HALTED (409), resting
    orders are kept, cancels still work; other classes trade on; /healthz and /v1/instruments
    show the halt; after resume the class trades again."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            admin = ex.client("ops", "admin")
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            ask = await prov.ask("H100", gpus=4, price=P, end=ex.now + DAY)
            async with await alice.trader() as t:
                b1 = await t.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
                b2 = await t.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
                assert (await admin.halt("H100"))["halted"] is True
                assert (await admin.health())["halted"] == ["H100"]
                assert {i["name"]: i["halted"] for i in await admin.instruments()}["H100"] is True

                e = await refused(t.bid("H100", "on_demand", gpus=1, hours=1, limit=P))
                assert e.code == "HALTED"
                e = await refused(prov.ask("H100", gpus=1, price=P, end=ex.now + DAY))
                assert (e.code, e.status) == ("HALTED", 409)
                e = await refused(prov.amend_ask(ask["oid"], 2))
                assert (e.code, e.status) == ("HALTED", 409)
                assert book_resting(ex) == 3
                assert (await t.cancel(b1["oid"]))["order"]["status"] == "cancelled"
                assert (await prov.cancel(ask["oid"]))["order"]["status"] == "cancelled"
                assert [o["oid"] for o in await t.orders()] == [b2["oid"]]
                assert book_resting(ex) == 1
                # another class is not halted
                await prov.ask("A100", gpus=1, price=P, end=ex.now + DAY)
                assert (await t.bid("A100", "on_demand", gpus=1, hours=1, limit=P))["order"]["filled"] == 1

                assert (await admin.resume("H100"))["halted"] is False
                assert (await admin.health())["halted"] == []
                sold = await prov.ask("H100", gpus=1, price=1_000_000, end=ex.now + DAY)
                assert [x["bid_oid"] for x in sold["trades"]] == [b2["oid"]]

    run(scenario())


def test_kill_switch_cancels_all_open_orders_of_an_account(tmp_path):
    """Admin kill switch: every open order of the account (bids over WS, asks over REST, all
    classes) is cancelled and its escrow released (R17); other accounts' orders rest on."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            admin = ex.client("ops", "admin")
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            await prov.ask("H100", gpus=1, price=3_000_000, end=ex.now + DAY)
            async with await alice.trader() as t:
                for cls in ("H100", "H100", "A100"):
                    await t.bid(cls, "on_demand", gpus=1, hours=1, limit=1_000_000)
                victim = t.account
                out = await admin.kill(victim)
                assert out == {"ok": True, "account": victim, "cancelled": 3}
                assert await t.orders() == []
                assert (await admin.kill(victim))["cancelled"] == 0
            assert (await alice.account())["escrow"] == 0
            assert len(await prov.asks()) == 1 and book_resting(ex) == 1
            e = await refused(alice.kill(victim))
            assert (e.code, e.status) == ("FORBIDDEN", 403)

    run(scenario())


# ---------------------------------------------------------------------- public endpoints
def test_health_metrics_openapi_instruments(tmp_path):
    """/healthz, /metrics (Prometheus text with gpux_journal_seq), /v1/openapi.json (JSON with
    the /v1/asks path) and /v1/instruments (R1: classes, tick and bounds from configuration)."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            status, _, health = await raw(ex, "GET", "/healthz")
            assert status == 200 and health["ok"] is True and "H100" in health["classes"]

            async with aiohttp.ClientSession() as s, s.get(ex.url + "/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                text = await resp.text()
            seq_line = [ln for ln in text.splitlines() if ln.startswith("gpux_journal_seq ")]
            assert len(seq_line) == 1 and int(seq_line[0].split()[1]) >= 0
            assert "# TYPE gpux_journal_seq counter" in text and 'gpux_resting_orders{class="H100"} 0' in text

            status, _, doc = await raw(ex, "GET", "/v1/openapi.json")
            assert status == 200 and doc["openapi"].startswith("3.")
            assert "post" in doc["paths"]["/v1/asks"] and "get" in doc["paths"]["/v1/asks"]

            status, _, inst = await raw(ex, "GET", "/v1/instruments")
            h100 = {i["name"]: i for i in inst["instruments"]}["H100"]
            assert status == 200 and h100["tick"] == 1000
            assert (h100["min_price"], h100["max_price"], h100["halted"]) == (10_000, 50_000_000, False)
            assert abs(h100["time"] - ex.now) <= 2

    run(scenario())


# ---------------------------------------------------------------------- shutdown and restart
def test_graceful_shutdown_closes_websockets_with_1001_and_keeps_orders(tmp_path):
    """Graceful shutdown: every WebSocket session is closed with code 1001 (going away); orders of
    cancel_on_disconnect sessions are not cancelled by a shutdown (they rest, the exchange comes
    back with them); then the gateway answers UNAVAILABLE."""

    async def scenario():
        async with running_exchange(tmp_path, **FAST) as ex:
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            t1 = await alice.trader()
            t2 = await alice.trader(cancel_on_disconnect=True)
            await t2.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)
            await ex.exchange.stop()
            for t in (t1, t2):
                await asyncio.wait_for(t._reader, 3)
                assert t.ws.closed and t.close_code == 1001
            assert ex.exchange.engine.state.open_count(t2.account) == 1
            status, _, out = await raw(ex, "GET", "/healthz")
            assert status == 503 and out["ok"] is False

    run(scenario())


@pytest.mark.parametrize("from_snapshot", [True, False], ids=["snapshot", "journal-only"])
def test_restart_on_the_same_data_dir_keeps_acknowledged_orders_and_leases(tmp_path, from_snapshot):
    """R21: with fsync on, everything acknowledged before a stop is there after a restart over the
    same data directory — from the shutdown snapshot, or replaying the journal alone: open
    orders, leases, funds, client order ids (a retry still gets the first answer), and new
    order ids keep growing."""

    async def first():
        async with running_exchange(tmp_path) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=1_000 * USD)
            ask = await prov.ask("H100", gpus=8, price=P, end=ex.now + DAY, client_order_id="rack-1")
            async with await alice.trader() as t:
                fill = await t.bid("H100", "on_demand", gpus=2, hours=2, limit=P)
                rest = await t.bid("H100", "spot", gpus=1, hours=1, limit=1_000_000, client_order_id="b-1")
            seen = {"orders": await alice.orders(), "asks": await prov.asks(), "leases": await alice.leases(),
                    "prov_leases": await prov.leases(), "alice": await alice.account(),
                    "prov": await prov.account()}
            return ex.keys, ask, fill, rest, seen, ex.exchange.engine.last_oid

    keys, ask, fill, rest, seen, last_oid = run(first())
    assert fill["trades"] and rest["order"]["status"] == "open"
    if not from_snapshot:
        shutil.rmtree(tmp_path / "snapshots", ignore_errors=True)

    async def second():
        async with running_exchange(tmp_path) as ex:
            prov = Client(ex.url, *keys["prov"][1:])
            alice = Client(ex.url, *keys["alice"][1:])
            ex.clients += [prov, alice]
            assert await alice.orders() == seen["orders"]
            assert await prov.asks() == seen["asks"]
            for lease, before in zip(await alice.leases(), seen["leases"], strict=True):
                assert {k: v for k, v in lease.items() if k != "status"} == \
                    {k: v for k, v in before.items() if k != "status"}
            assert len(await prov.leases()) == len(seen["prov_leases"]) == 1
            assert await alice.account() == seen["alice"]
            assert await prov.account() == seen["prov"]
            assert book_resting(ex) == 2
            again = await prov.ask("H100", gpus=8, price=P, end=ex.now + DAY, client_order_id="rack-1")
            assert again == ask
            async with await alice.trader() as t:
                assert (await t.status(client_order_id="b-1"))["oid"] == rest["oid"]
                new = await t.bid("H100", "spot", gpus=1, hours=1, limit=1_000_000)
            assert new["oid"] > last_oid

    run(second())
