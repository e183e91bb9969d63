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
from collections.abc import AsyncIterator

from aiohttp import web

from app.follower import FollowerProcess, run_follower
from exchange.config import ServerConfig
from exchange.errors import ApiError
from exchange.stream import JournalSource
from feeds.service import FeedService
from gateway.auth import RateLimiter
from gateway.gateway import book_view, instruments_view
from gateway.revocations import RevocationWatch

log = logging.getLogger("gpux.marketdata")


class MarketData(FollowerProcess):
    """The parts of `gpux feeds` (see the module docstring)."""

    role = "market-data"

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None, block_ms: int = 1000) -> None:
        super().__init__(cfg, backfill=backfill, block_ms=block_ms)
        self.limiter = RateLimiter(cfg.rate_per_s, cfg.rate_burst)
        self.feeds: FeedService | None = None
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics_text)
        r.add_get("/v1/instruments", self.instruments)
        r.add_get("/v1/book/{cls}", self.book)

    async def _parts(self, app: web.Application) -> AsyncIterator[None]:
        f = self.follower
        engine, bus = await asyncio.get_running_loop().run_in_executor(None, f.open)
        log.info("recovered", extra={"seq": engine.seq})
        assert self.store is not None and self.verifier is not None
        feeds = self.feeds = FeedService(engine, bus, self.cfg, self.verifier)
        feeds.add_routes(app.router)
        feeds.public_rate = self._public
        await feeds.start()
        watch = RevocationWatch(self.store, self.verifier.lookup, [feeds.revoke])
        watch.start()
        await f.start()
        for part in (f, feeds, watch):
            self.metrics.add(part.metric_samples)
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
        assert self.follower.engine is not None
        return web.json_response({"instruments": instruments_view(self.cfg, self.follower.engine)})

    async def book(self, request: web.Request) -> web.Response:
        """Level 2 of a class as the market-data model keeps it (the core's ``GET /v1/book``)."""
        self._public(request)
        assert self.follower.engine is not None and self.feeds is not None
        return web.json_response(book_view(self.follower.engine, request.match_info["cls"], request.query,
                                           self.feeds.level2))


async def run_marketdata(cfg: ServerConfig, backfill: JournalSource | None = None) -> None:
    """`gpux feeds`: serve until SIGINT/SIGTERM."""
    await run_follower(lambda: MarketData(cfg, backfill=backfill), cfg, "market data on")
