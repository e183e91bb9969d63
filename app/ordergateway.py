"""`gpux gateway --redis URL`: an order gateway in a process of its own, in front of the core (issue 15).

    gw = OrderGateway(cfg)              # cfg.data_path: its own directory; cfg.redis_url: the core's Redis
    await gw.start(); port = await gw.serve(host, 0); ...; await gw.close()

It serves the trading API of `gpux serve` — the same REST paths and trader WebSocket, signing,
errors, idempotency by client order id and pushes — with the same `gateway.gateway.Gateway`
code, built over other parts than in the core:

* the way in is a `gateway.remote.RemoteSequencer`: requests go to the core over the Redis stream
  ``{prefix}:requests`` (`exchange.inbox`), answers come back on this gateway's reply stream;
* what it reads (orders, leases, balances, books, quotes) is its own replica of the core, an
  `exchange.follow.Follower` of the journal stream; an answer is handed out once the replica has
  it, so a client reads its own writes through any gateway;
* keys come from the leader's account store copied to Redis (`gateway.replication`), pulled
  every quarter second: a revoked key stops working here within about a second, its sessions
  closed.

Run any number of them; a client can use any.  What changes the account store or lives only in
the core — creating accounts, deposits, SSH keys, statements, provider agents' provisioning
tasks, snapshots, the journal tail — is forwarded to the core over HTTP as the client signed it
(the core advertises its URL in Redis, `gateway.remote.core_key`), and answered as the core
answers; CORE_ONLY (HTTP 421) when no core has said where it is.
After a failover the gateways need nothing: they talk to Redis, and the new leader reads the
requests its predecessor had not read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from app.follower import FollowerProcess, run_follower
from exchange.config import ServerConfig
from exchange.errors import ApiError
from exchange.stream import JournalSource
from feeds.service import FeedService
from gateway.gateway import Gateway
from gateway.remote import RemoteSequencer, ReplicaLeases
from gateway.revocations import RevocationWatch

log = logging.getLogger("gpux.gateway")

# what only the core serves (writes to the account store, the ledger, provisioning, the journal):
# forwarded to it, as they came (signed by the client: the core checks the signature)
CORE_ONLY = {("POST", "/v1/admin/accounts"), ("POST", "/v1/admin/deposit"), ("POST", "/v1/admin/snapshot"),
             ("GET", "/v1/admin/journal"), ("GET", "/v1/account/statement"), ("PUT", "/v1/account/ssh-key"),
             ("GET", "/v1/provisioning")}
FORWARDED_HEADERS = ("Content-Type", "GPUX-Key", "GPUX-Timestamp", "GPUX-Signature")


def core_only(path: str, method: str) -> bool:
    return (method, path) in CORE_ONLY or path.startswith("/v1/provisioning/")


class OrderGateway(FollowerProcess):
    """The parts of `gpux gateway` (see the module docstring)."""

    role = "order gateway"

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None, block_ms: int = 1000) -> None:
        super().__init__(cfg, backfill=backfill, block_ms=block_ms, middlewares=(self._forward,))
        self.remote: RemoteSequencer | None = None
        self.gateway: Gateway | None = None
        self.forwarded = 0
        self._http: Any = None
        self._redis: Any = None

    @web.middleware
    async def _forward(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """What only the core serves goes to the core (its URL in Redis), answered as it answers; so
        does a lease list with a lease whose settlement this gateway does not know (it ended before
        the gateway started: the core's ledger keeps every lease)."""
        if not core_only(request.path, request.method):
            resp = await handler(request)
            if request.path == "/v1/leases" and request.method == "GET" and isinstance(resp, web.Response) \
                    and resp.status == 200 and b'"status":"unknown"' in (resp.body or b""):
                return await self._to_core(request)
            return resp
        return await self._to_core(request)

    async def _to_core(self, request: web.Request) -> web.StreamResponse:
        import aiohttp
        import yarl

        from gateway.remote import core_key

        if self._http is None:
            import redis.asyncio as aioredis

            self._http = aiohttp.ClientSession()
            self._redis = aioredis.from_url(self.cfg.redis_url or "", socket_timeout=5, socket_connect_timeout=2)
        try:
            url = await self._redis.get(core_key(self.cfg.redis_prefix))
        except Exception:  # noqa: BLE001 - Redis down
            url = None
        if url is None:
            raise ApiError("CORE_ONLY", f"{request.method} {request.path} is served by the core (gpux serve), and "
                                        "this gateway does not know where it is: send it to the core itself")
        body = await request.read()
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        try:
            target = yarl.URL(url.decode() + request.raw_path, encoded=True)  # as signed: the raw path
            async with self._http.request(request.method, target, data=body or None,
                                          headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                out = await resp.read()
                self.forwarded += 1
                return web.Response(body=out, status=resp.status,
                                    content_type=resp.content_type or "application/json")
        except (aiohttp.ClientError, TimeoutError):
            raise ApiError("UNAVAILABLE", f"the core (at {url.decode()}) did not answer {request.method} "
                                          f"{request.path}; retry shortly") from None

    async def _parts(self, app: web.Application) -> AsyncIterator[None]:
        cfg, f = self.cfg, self.follower
        engine, bus = await asyncio.get_running_loop().run_in_executor(None, f.open)
        log.info("recovered", extra={"seq": engine.seq})
        assert cfg.redis_url is not None and self.store is not None and self.verifier is not None
        remote = self.remote = RemoteSequencer(cfg.redis_url, cfg.redis_prefix, engine)
        f.origins = remote.origins
        feeds = FeedService(engine, bus, cfg, self.verifier, record=False)  # level 2 for GET /v1/book
        await feeds.start()
        leases = ReplicaLeases(engine, bus, cfg.data_path / "journal",  # GET /v1/leases: settlement's side
                               agents=cfg.provisioning == "agent")
        gw = self.gateway = Gateway(cfg, engine, remote, self.store, self.verifier, leases, leases,  # type: ignore[arg-type]
                                    bus, counters=self.counters, level2=feeds.level2, metrics=self.metrics.render,
                                    health=self.health.report)
        bus.subscribe(remote.on_batch)  # after the gateway's pushes: an answer goes out once its events are here
        gw.add_routes(app.router)
        watch = RevocationWatch(self.store, self.verifier.lookup, [gw.revoke])
        watch.start()
        await remote.start()
        await f.start()
        for part in (f, remote, gw, watch):
            self.metrics.add(part.metric_samples)
        self.health.add("follower", f.health)
        self.health.add("core", remote.health)
        self.health.add("revocations", watch.health)
        yield
        await watch.stop()
        await gw.close_sessions()
        await remote.close()
        await f.stop()
        await feeds.close()
        await f.close()
        if self._http is not None:
            await self._http.close()
            await self._redis.aclose()


async def run_gateway(cfg: ServerConfig, backfill: JournalSource | None = None) -> None:
    """`gpux gateway`: serve until SIGINT/SIGTERM."""
    await run_follower(lambda: OrderGateway(cfg, backfill=backfill), cfg, "order gateway on")
