"""`gpux feeds --redis URL`: a market-data process of its own, fed by the core's journal (issue 15).

    md = MarketData(cfg, backfill=HttpJournal(url, headers))   # cfg.data_path: its own directory
    await md.start(); port = await md.serve(host, 0); ...; await md.close()

It serves what the core's own feeds serve, built the same way: ``GET /v1/feeds`` (public and
private channels), ``/v1/replay``, ``/v1/trades``, ``/v1/candles``, ``/v1/forward``,
``/v1/products``, plus ``/v1/book/{class}`` (level 2), ``/v1/instruments``, ``/healthz`` and
``/metrics``.  Its `exchange.follow.Follower` keeps a journal and an engine of its own from the
stream ``{prefix}:journal`` and publishes every chunk on a bus of its own, to which the same
`feeds.service.FeedService` subscribes as in the core (so its recording, its sequence numbers and
its messages are the core's).  Keys for the private channels come from the leader's account store
copied to Redis (`gateway.replication`); a revoked key closes its sessions here too.  Start as
many as needed, each with its own data directory.
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
from gateway.auth import RateLimiter, Verifier, cached
from gateway.gateway import Counters, errors_middleware
from gateway.metrics import Health, Metrics
from gateway.replication import POLL_S, pull_accounts
from gateway.revocations import RevocationWatch

log = logging.getLogger("gpux.marketdata")


class MarketData:
    """The parts of `gpux feeds`, built in order and stopped in reverse (aiohttp cleanup contexts)."""

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None, block_ms: int = 1000) -> None:
        if not cfg.redis_url:
            raise ValueError("a market-data process needs the core's Redis (--redis URL)")
        self.cfg = cfg
        self.started_at = time.time()
        self.counters = Counters()
        self.metrics = Metrics()
        self.health = Health()
        self.follower = Follower(cfg, cfg.redis_url, backfill=backfill, block_ms=block_ms)
        self.limiter = RateLimiter(cfg.rate_per_s, cfg.rate_burst)
        self.store: AccountStore | None = None
        self.feeds: FeedService | None = None
        self.app = web.Application(client_max_size=cfg.max_message_bytes,
                                   middlewares=[errors_middleware(self.counters, cfg.max_message_bytes)])
        self.app.cleanup_ctx.extend([self._accounts, self._feeds])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics_text)
        self.app.router.add_get("/v1/instruments", self.instruments)
        self.app.router.add_get("/v1/book/{cls}", self.book)
        self._runner: web.AppRunner | None = None

    async def _accounts(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        cfg.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = self.store = AccountStore(cfg.data_path / "accounts.db")
        self.verifier = Verifier(cached(store.key))
        import redis

        r = redis.Redis.from_url(cfg.redis_url or "", socket_timeout=5, socket_connect_timeout=2)

        async def pull() -> None:  # the leader's accounts and keys, as they change
            while True:
                try:
                    await asyncio.to_thread(pull_accounts, r, cfg.redis_prefix, store)
                except Exception as e:  # noqa: BLE001 - Redis down: the follower reports it
                    log.debug("accounts not pulled: %s", e)
                await asyncio.sleep(POLL_S)

        puller = supervise(asyncio.create_task(pull(), name="account-puller"), "the account puller", lambda: True)
        yield
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
        r.close()
        store.close()

    async def _feeds(self, app: web.Application) -> AsyncIterator[None]:
        f = self.follower
        engine, bus = await asyncio.get_running_loop().run_in_executor(None, f.open)
        log.info("recovered", extra={"seq": engine.seq})
        feeds = self.feeds = FeedService(engine, bus, self.cfg, self.verifier)
        feeds.add_routes(app.router)
        feeds.public_rate = self._public
        await feeds.start()
        assert self.store is not None
        watch = RevocationWatch(self.store, self.verifier.lookup, [feeds.revoke])
        watch.start()
        await f.start()
        for part in (f, feeds, watch):
            self.metrics.add(part.metric_samples)
        self.metrics.add(lambda: [("gpux_up", 1, "1 while the process serves", "gauge"),
                                  ("gpux_uptime_seconds", round(time.time() - self.started_at, 3),
                                   "seconds since start", "gauge")])
        self.health.add("follower", f.health)
        self.health.add("feeds", feeds.health)
        self.health.add("revocations", watch.health)
        yield
        await watch.stop()
        await f.stop()  # nothing more comes in
        await feeds.close()
        await f.close()

    # ------------------------------------------------------------------ routes of its own
    def _public(self, request: web.Request) -> None:
        wait = self.limiter.take(f"ip:{request.remote or '?'}")
        if wait > 0:
            raise ApiError("RATE_LIMITED", retry_after_ms=int(wait * 1000) + 1)

    async def healthz(self, request: web.Request) -> web.Response:
        checks = self.health.report()
        ok = bool(checks) and all(v == "ok" for v in checks.values())
        eng = self.follower.engine
        return web.json_response({"ok": ok, "role": "feeds", "seq": eng.seq if eng else 0,
                                  "classes": list(eng.books) if eng else [], "checks": checks},
                                 status=200 if ok else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    async def instruments(self, request: web.Request) -> web.Response:
        self._public(request)
        eng = self.follower.engine
        assert eng is not None
        out = []
        for name, inst in self.cfg.instruments.items():
            d = inst.to_dict()
            d["halted"] = name in eng.state.halted
            d["time"] = eng.book_time(name)
            out.append(d)
        return web.json_response({"instruments": out})

    async def book(self, request: web.Request) -> web.Response:
        """Level 2 of a class as the market-data model keeps it (the core's ``GET /v1/book``)."""
        self._public(request)
        name = request.match_info["cls"]
        eng = self.follower.engine
        assert eng is not None and self.feeds is not None
        if name not in eng.books:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {name!r}; classes: {', '.join(eng.books)}")
        try:
            depth = int(request.query.get("depth", "50"))
        except ValueError:
            raise ApiError("MALFORMED", "depth must be an integer") from None
        if not 1 <= depth <= 1000:
            raise ApiError("MALFORMED", "depth must be between 1 and 1000")
        d: dict[str, Any] = {"class": name, "time": eng.book_time(name),
                             "resting_orders": eng.books[name].resting_orders()}
        l2 = self.feeds.level2(name)
        if l2 is not None:
            d["seq"], sides = l2
            for side, rows in sides.items():
                d[side] = rows[:depth]
        return web.json_response(d)

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


async def run_marketdata(cfg: ServerConfig, backfill: JournalSource | None = None) -> None:
    """`gpux feeds`: serve until SIGINT/SIGTERM."""
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
    md = MarketData(cfg, backfill=backfill)
    try:
        await md.start()
    except BaseException as e:
        sock.close()
        lock.release()
        if isinstance(e, StartupError) or not isinstance(e, Exception):
            raise
        raise StartupError(f"the market-data process could not start: {e}") from e
    try:
        port = await md.serve(sock=sock)
        log.info("listening", extra={"url": f"http://{cfg.host}:{port}", "data_dir": str(data)})
        print(f"gpux: market data on http://{cfg.host}:{port}  (data: {data}; following {cfg.redis_url})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await md.close()
        lock.release()
