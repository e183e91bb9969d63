"""`gpux gateway --redis URL` (issue 15; docs/operations.md): an order gateway in a process of its
own serves the trading API of the core — the same answers, errors, idempotency by client order id
and pushes — with requests sent to the core over Redis and reads from its own replica of the
journal.  Real Redis (own prefix), the core and the gateway on free loopback ports, real REST and
WebSocket clients."""

from __future__ import annotations

import asyncio
import time

import pytest
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix

from app.ordergateway import OrderGateway
from client.api import Client, ClientError
from exchange.config import ServerConfig

P = 2_000_000


@pytest.fixture
def prefix():
    yield from redis_prefix("gw-")


async def _started(tmp_path, prefix: str, name: str) -> tuple[OrderGateway, str]:
    gw = OrderGateway(ServerConfig(data_dir=str(tmp_path / name), redis_url=REDIS_URL, redis_prefix=prefix,
                                   fsync="off"), block_ms=200)
    await gw.start()
    port = await gw.serve("127.0.0.1", 0)
    return gw, f"http://127.0.0.1:{port}"


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _trade_pushed(session) -> int:
    """The trade id of the next trade pushed to a session."""
    while True:
        push = await asyncio.wait_for(session.events.get(), 10)
        assert push["type"] == "event"
        if push["event"] == "trade":
            return push["trade_id"]


def test_an_order_gateway_trades_like_the_core(tmp_path, prefix):
    async def scenario() -> None:
        async with running_exchange(tmp_path / "core", fsync="off", redis_url=REDIS_URL, redis_prefix=prefix) as ex:
            ex.account("prov", "provider")
            ex.account("alice", "trader", 100 * USD)
            ex.account("bob", "trader", 100 * USD)
            gw1, url1 = await _started(tmp_path, prefix, "gw1")
            gw2, url2 = await _started(tmp_path, prefix, "gw2")
            clients: list[Client] = []

            def client(name: str, url: str) -> Client:
                _, key, secret = ex.keys[name]
                c = Client(url, key, secret)
                clients.append(c)
                return c

            try:
                await _until(lambda: all(g.store.key(ex.keys["bob"][1]) is not None for g in (gw1, gw2)))
                prov, alice, bob_core = client("prov", url1), client("alice", url2), client("bob", ex.url)
                end = ex.now + 86_400
                ask = await prov.ask("H100", 8, P, end, client_order_id="a-1")
                assert (await prov.ask("H100", 8, P, end, client_order_id="a-1"))["oid"] == ask["oid"]  # idempotent
                assert (await prov.order(ask["oid"]))["client_order_id"] == "a-1"  # read your writes
                async with await prov.trader() as prov_ws, await alice.trader() as t:
                    [trade] = (await t.bid("H100", "on_demand", 2, 3, P, client_order_id="b-1"))["trades"]
                    again = await t.bid("H100", "on_demand", 2, 3, P, client_order_id="b-1")
                    assert again["oid"] == trade["bid_oid"] and again["trades"] == [trade]  # the first answer
                    # the provider's session on gateway 1 is pushed the fill made through gateway 2
                    assert await _trade_pushed(prov_ws) == trade["trade_id"]
                    # a fill through the core itself reaches a gateway's sessions too
                    async with await bob_core.trader() as b:
                        [t2] = (await b.bid("H100", "on_demand", 1, 1, P))["trades"]
                    assert await _trade_pushed(prov_ws) == t2["trade_id"]
                    await asyncio.sleep(0.3)
                    assert t.events.empty()  # alice is not pushed her own fill (it was in her ack) nor bob's
                    with pytest.raises(ClientError) as e:  # the core's refusals, as the core words them
                        await t.bid("H100", "on_demand", 8, 100, P)
                    assert e.value.code == "INSUFFICIENT_FUNDS"
                # reads from the replica: orders, leases (with settlement's side), balances, the book
                leases = await alice.leases()
                assert [x["trade_id"] for x in leases] == [trade["trade_id"]]
                assert leases[0]["settlement"]["paid"] > 0
                core_alice = client("alice", ex.url)
                core_leases = await core_alice.leases()
                assert leases[0]["settlement"] == core_leases[0]["settlement"]
                assert leases == core_leases  # settlement's side too, as the core's ledger has it
                await alice.release("H100", trade["trade_id"])  # ended early: refunded (R16)
                ended = await alice.leases()
                core_ended = await core_alice.leases()
                assert ended[0]["settlement"] == core_ended[0]["settlement"]
                assert ended == core_ended and ended[0]["settlement"]["refunded"] > 0
                # a gateway restarted after the lease ended does not know its settlement: the core answers
                await gw2.close()
                gw2, url2 = await _started(tmp_path, prefix, "gw2")
                again = client("alice", url2)
                await _until(lambda: gw2.follower.seq >= ex.exchange.engine.seq - 5)
                assert await again.leases() == core_ended
                alice = again
                mine = await alice.account()
                assert mine == await core_alice.account() and mine["escrow"] == 0 and mine["available"] > 0
                book1 = await client("prov", url1).book("H100")
                book_core = await bob_core.book("H100")
                assert book1["asks"] == book_core["asks"] and book1["seq"] == book_core["seq"]
                # what only the core serves (statements, provisioning, the account store) is forwarded to it
                forwarded = gw2.forwarded
                statement = await alice.request("GET", "/v1/account/statement")
                assert statement == await core_alice.request("GET", "/v1/account/statement")
                assert statement["transfers"] and gw2.forwarded == forwarded + 1
                with pytest.raises(ClientError) as e:  # signed by the client, checked by the core
                    await client("alice", url2).request("PUT", "/v1/account/ssh-key", {"ssh_public_key": "nope"})
                assert e.value.code == "BAD_SSH_KEY"
                import redis

                from gateway.remote import core_key

                r = redis.Redis.from_url(REDIS_URL)
                r.delete(core_key(prefix))  # no core has said where it serves: such requests are refused
                r.close()
                with pytest.raises(ClientError) as e:
                    await alice.request("GET", "/v1/account/statement")
                assert e.value.code == "CORE_ONLY" and e.value.status == 421
                # a key revoked on the core stops working at the gateways within about a second
                ex.exchange.store.revoke_key(ex.keys["alice"][1])
                t0 = time.monotonic()
                while True:
                    try:
                        await alice.orders()
                    except ClientError as err:
                        assert err.code == "UNKNOWN_KEY"
                        break
                    assert time.monotonic() - t0 < 5
                    await asyncio.sleep(0.05)
                health = await prov.health()
                assert health["ok"] and health["checks"]["core"] == "ok"
            finally:
                for c in clients:
                    await c.close()
                await gw1.close()
                await gw2.close()

    asyncio.run(scenario())
