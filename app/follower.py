"""What the processes that follow the core share (`gpux feeds`, `gpux gateway`; issue 15).

    class MarketData(FollowerProcess):
        async def _parts(self, app): ...        # built on self.follower, self.store, self.verifier
    await run_follower(lambda: MarketData(cfg), cfg, "market data on")

A follower process has its own data directory and:

* an account store, a copy of the leader's (`gateway.replication`): pulled at start, then every
  `POLL_S`, so keys work here as on the core and a revoked one stops working within about a
  second; its request verifier;
* an `exchange.follow.Follower`: a journal and an engine of its own, fed by the core's stream;
* an aiohttp application with the one error format, ``/healthz`` and ``/metrics`` reporting
  each part, and a lifetime of cleanup contexts (accounts, then the subclass's parts).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from exchange.config import ServerConfig
from exchange.follow import Follower
from exchange.stream import JournalSource
from exchange.supervise import supervise
from gateway.accounts import AccountStore
from gateway.auth import Verifier, cached
from gateway.gateway import Counters, errors_middleware
from gateway.metrics import Health, Metrics
from gateway.replication import POLL_S, pull_accounts

log = logging.getLogger("gpux.follower")


class FollowerProcess:
    """The parts every follower process has (see the module docstring); subclasses add ``_parts``."""

    role = "follower"

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None, block_ms: int = 1000,
                 middlewares: tuple[Any, ...] = ()) -> None:
        if not cfg.redis_url:
            raise ValueError(f"a {self.role} process needs the core's Redis (--redis URL)")
        self.cfg = cfg
        self.started_at = time.time()
        self.counters = Counters()
        self.metrics = Metrics()
        self.health = Health()
        self.follower = Follower(cfg, cfg.redis_url, backfill=backfill, block_ms=block_ms)
        self.store: AccountStore | None = None
        self.verifier: Verifier | None = None
        self.app = web.Application(client_max_size=cfg.max_message_bytes,
                                   middlewares=[errors_middleware(self.counters, cfg.max_message_bytes),
                                                *middlewares])
        self.app.cleanup_ctx.extend([self._accounts, self._parts])
        self.metrics.add(self._process_samples)
        self._runner: web.AppRunner | None = None

    def _process_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_up", 1, "1 while the process serves", "gauge"),
                ("gpux_uptime_seconds", round(time.time() - self.started_at, 3), "seconds since start", "gauge")]

    async def _accounts(self, app: web.Application) -> AsyncIterator[None]:
        import redis

        cfg = self.cfg
        cfg.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = self.store = AccountStore(cfg.data_path / "accounts.db")
        self.verifier = Verifier(cached(store.key))
        r = redis.Redis.from_url(cfg.redis_url or "", socket_timeout=5, socket_connect_timeout=2)
        try:  # the keys before the first client (a fresh process has none)
            await asyncio.to_thread(pull_accounts, r, cfg.redis_prefix, store)
        except Exception as e:  # noqa: BLE001 - Redis down: pulled later
            log.warning("accounts not pulled yet: %s", e)

        async def pull() -> None:  # the leader's accounts and keys, as they change
            while True:
                await asyncio.sleep(POLL_S)
                try:
                    await asyncio.to_thread(pull_accounts, r, cfg.redis_prefix, store)
                except Exception as e:  # noqa: BLE001 - Redis down: the follower reports it
                    log.debug("accounts not pulled: %s", e)

        puller = supervise(asyncio.create_task(pull(), name="account-puller"), "the account puller", lambda: True)
        yield
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
        r.close()
        store.close()

    async def _parts(self, app: web.Application) -> AsyncIterator[None]:
        yield

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


async def run_follower(make: Callable[[], FollowerProcess], cfg: ServerConfig, banner: str) -> None:
    """Serve a follower process until SIGINT/SIGTERM; its data directory locked, its port bound
    before anything starts (`app.exchange.StartupError` otherwise)."""
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
    proc = make()
    try:
        await proc.start()
    except BaseException as e:
        sock.close()
        lock.release()
        if isinstance(e, StartupError) or not isinstance(e, Exception):
            raise
        raise StartupError(f"the {proc.role} process could not start: {e}") from e
    try:
        port = await proc.serve(sock=sock)
        log.info("listening", extra={"url": f"http://{cfg.host}:{port}", "data_dir": str(data)})
        print(f"gpux: {banner} http://{cfg.host}:{port}  (data: {data}; following {cfg.redis_url})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await proc.close()
        lock.release()
