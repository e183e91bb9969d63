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
tasks, snapshots, the journal tail — is answered CORE_ONLY (HTTP 421): send it to the core.
After a failover the gateways need nothing: they talk to Redis, and the new leader reads the
requests its predecessor had not read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from exchange.config import ServerConfig
from exchange.errors import ApiError
from exchange.follow import Follower
from exchange.stream import JournalSource
from exchange.supervise import supervise
from feeds.service import FeedService
from gateway.accounts import AccountStore
from gateway.auth import Verifier, cached
from gateway.gateway import Counters, Gateway, errors_middleware
from gateway.metrics import Health, Metrics
from gateway.remote import RemoteSequencer, ReplicaLeases
from gateway.replication import POLL_S, pull_accounts
from gateway.revocations import RevocationWatch

log = logging.getLogger("gpux.gateway")

# what only the core serves (writes to the account store, the ledger, provisioning, the journal)
CORE_ONLY = {("POST", "/v1/admin/accounts"), ("POST", "/v1/admin/deposit"), ("POST", "/v1/admin/snapshot"),
             ("GET", "/v1/admin/journal"), ("GET", "/v1/account/statement"), ("PUT", "/v1/account/ssh-key"),
             ("GET", "/v1/provisioning")}


@web.middleware
async def core_only(request: web.Request, handler: Any) -> web.StreamResponse:
    if (request.method, request.path) in CORE_ONLY or request.path.startswith("/v1/provisioning/"):
        raise ApiError("CORE_ONLY", f"an order gateway does not serve {request.method} {request.path}: send it to "
                                    "the core (gpux serve) itself")
    return await handler(request)


class OrderGateway:
    """The parts of `gpux gateway`, built in order and stopped in reverse."""

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None, block_ms: int = 1000) -> None:
        if not cfg.redis_url:
            raise ValueError("an order gateway needs the core's Redis (--redis URL)")
        self.cfg = cfg
        self.started_at = time.time()
        self.counters = Counters()
        self.metrics = Metrics()
        self.health = Health()
        self.follower = Follower(cfg, cfg.redis_url, backfill=backfill, block_ms=block_ms)
        self.remote: RemoteSequencer | None = None
        self.gateway: Gateway | None = None
        self.store: AccountStore | None = None
        self.app = web.Application(client_max_size=cfg.max_message_bytes,
                                   middlewares=[errors_middleware(self.counters, cfg.max_message_bytes), core_only])
        self.app.cleanup_ctx.extend([self._accounts, self._parts])
        self._runner: web.AppRunner | None = None

    async def _accounts(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        cfg.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = self.store = AccountStore(cfg.data_path / "accounts.db")
        self.verifier = Verifier(cached(store.key))
        import redis

        r = redis.Redis.from_url(cfg.redis_url or "", socket_timeout=5, socket_connect_timeout=2)
        try:  # the keys before the first client (a fresh gateway has none)
            await asyncio.to_thread(pull_accounts, r, cfg.redis_prefix, store)
        except Exception as e:  # noqa: BLE001 - Redis down: pulled later
            log.warning("accounts not pulled yet: %s", e)

        async def pull() -> None:
            while True:
                await asyncio.sleep(POLL_S)
                try:
                    await asyncio.to_thread(pull_accounts, r, cfg.redis_prefix, store)
                except Exception as e:  # noqa: BLE001 - Redis down: the remote sequencer reports it
                    log.debug("accounts not pulled: %s", e)

        puller = supervise(asyncio.create_task(pull(), name="account-puller"), "the account puller", lambda: True)
        yield
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
        r.close()
        store.close()

    async def _parts(self, app: web.Application) -> AsyncIterator[None]:
        cfg, f = self.cfg, self.follower
        engine, bus = await asyncio.get_running_loop().run_in_executor(None, f.open)
        log.info("recovered", extra={"seq": engine.seq})
        assert cfg.redis_url is not None and self.store is not None
        remote = self.remote = RemoteSequencer(cfg.redis_url, cfg.redis_prefix, engine)
        f.origins = remote.origins
        feeds = FeedService(engine, bus, cfg, self.verifier, record=False)  # level 2 for GET /v1/book
        await feeds.start()
        leases = ReplicaLeases(engine, bus, cfg.data_path / "journal")  # GET /v1/leases: settlement's side
        gw = self.gateway = Gateway(cfg, engine, remote, self.store, self.verifier, leases, leases,  # type: ignore[arg-type]
                                    bus,
                                    counters=self.counters, level2=feeds.level2, metrics=self.metrics.render,
                                    health=self.health.report)
        bus.subscribe(remote.on_batch)  # after the gateway's pushes: an answer goes out once its events are here
        gw.add_routes(app.router)
        watch = RevocationWatch(self.store, self.verifier.lookup, [gw.revoke])
        watch.start()
        await remote.start()
        await f.start()
        self.metrics.add(lambda: [("gpux_up", 1, "1 while the process serves", "gauge"),
                                  ("gpux_uptime_seconds", round(time.time() - self.started_at, 3),
                                   "seconds since start", "gauge")])
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

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            await self._runner.setup()
        except BaseException:
            await self.app.cleanup()
            self._runner = None
            raise

    async def serve(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> int:
        assert self._runner is not None, "start() first"
        site = web.SockSite(self._runner, sock) if sock is not None else web.TCPSite(self._runner, host, port)
        await site.start()
        return self._runner.addresses[-1][1] if self._runner.addresses else port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def run_gateway(cfg: ServerConfig, backfill: JournalSource | None = None) -> None:
    """`gpux gateway`: serve until SIGINT/SIGTERM."""
    import signal

    from app.exchange import DataLock, StartupError, listen_socket

    data = cfg.data_path
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = DataLock(data)
    lock.acquire()
    try:
        sock = listen_socket(cfg.host, cfg.port)
    except BaseException:
        lock.release()
        raise
    gw = OrderGateway(cfg, backfill=backfill)
    try:
        await gw.start()
    except BaseException as e:
        sock.close()
        lock.release()
        if isinstance(e, StartupError) or not isinstance(e, Exception):
            raise
        raise StartupError(f"the order gateway could not start: {e}") from e
    try:
        port = await gw.serve(sock=sock)
        log.info("listening", extra={"url": f"http://{cfg.host}:{port}", "data_dir": str(data)})
        print(f"gpux: order gateway on http://{cfg.host}:{port}  (data: {data}; core at {cfg.redis_url})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await gw.close()
        lock.release()
