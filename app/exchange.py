"""The composition root: `gpux serve`, the embedded exchange in one process (docs/architecture.md).

    exchange = Exchange(cfg)                 # builds nothing yet (clock=SimClock(...) in tests)
    await exchange.start()                   # every part, in pipeline order (recovery first)
    port = await exchange.serve(host, port)  # ... listening
    await exchange.stop()                    # every part, in reverse: sessions get 1001, the
                                             # sequencer drains and snapshots, the ledger commits
    await exchange.close()                   # stop listening

This is the one place that knows every part.  Each part is built from what it needs, passed in
(the engine, the sequencer, the ledger, a clock...), never from this object; each is kept on the
aiohttp application under a typed key (`ENGINE`, `SEQUENCER`...), and each part's lifetime is one
``cleanup_ctx`` step, so start-up runs them in the order below and shut-down in reverse:

1. accounts — the account store (keys, deposits) and the request verifier;
2. ledger — settlement's ledger (`settlement.link`), before recovery so that the replay refills it;
3. core — the journal, recovery (newest usable snapshot + the journal after it, through the same
   `Engine.apply` as live trading: books, exchange state and money), provisioning, the bus, the
   sequencer (built, not started), the deposit inbox that journals the account store's
   deposit requests, the journal's durable tail (GET /v1/admin/journal), the background verifier
   of the closed journal segments (`exchange.integrity`) and, with --redis, the journal publisher
   (`exchange.stream`);
4. feeds — market data, caught up from the recording and the journal;
5. gateway — REST and the traders' WebSocket sessions, /metrics, /healthz, and the watch that
   makes a revoked key stop working everywhere within a second;
6. dashboard — the web page and its capacity endpoint;
7. sequencer — started last (clock ticks, orders), stopped first (drain, final snapshot).

`stop` runs the application's shutdown and cleanup while the listening socket stays open, so a
request that arrives meanwhile gets UNAVAILABLE (503), not a refused connection; `close` then
stops listening.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from exchange.bus import Bus
from exchange.clock import WALL, Clock
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.inbox import RequestInbox
from exchange.integrity import SegmentVerifier
from exchange.journal import Journal
from exchange.lease import LeaderLease
from exchange.recovery import recover
from exchange.sequencer import Sequencer, open_journal
from exchange.stream import JournalPublisher, JournalTail
from feeds.service import FeedService
from gateway.accounts import AccountStore
from gateway.auth import Verifier, cached
from gateway.dashboard import Dashboard
from gateway.deposits import DepositInbox, exchange_id
from gateway.gateway import Counters, Gateway, errors_middleware
from gateway.guard import Guard, GuardedSite
from gateway.metrics import Health, Metrics
from gateway.replication import AccountPublisher
from gateway.revocations import RevocationWatch
from settlement.link import SettlementLink
from settlement.provisioning import Provisioning

log = logging.getLogger("gpux.server")
SWITCH_INTERVAL_S = 0.0002

ACCOUNTS = web.AppKey("accounts", AccountStore)
VERIFIER = web.AppKey("verifier", Verifier)
LEDGER = web.AppKey("ledger", SettlementLink)
JOURNAL = web.AppKey("journal", Journal)
ENGINE = web.AppKey("engine", Engine)
BUS = web.AppKey("bus", Bus)
PROVISIONING = web.AppKey("provisioning", Provisioning)
JOURNAL_TAIL = web.AppKey("journal_tail", JournalTail)
SEGMENT_VERIFIER = web.AppKey("segment_verifier", SegmentVerifier)
REVOCATIONS = web.AppKey("revocations", RevocationWatch)
PUBLISHER = web.AppKey("publisher", JournalPublisher)
SEQUENCER = web.AppKey("sequencer", Sequencer)
INBOX = web.AppKey("inbox", RequestInbox)
DEPOSITS = web.AppKey("deposits", DepositInbox)
FEEDS = web.AppKey("feeds", FeedService)
GATEWAY = web.AppKey("gateway", Gateway)
DASHBOARD = web.AppKey("dashboard", Dashboard)
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)


class Exchange:
    """Every part of `gpux serve`, built and wired in one place (see the module docstring)."""

    def __init__(self, cfg: ServerConfig, clock: Clock = WALL, lease: LeaderLease | None = None,
                 engine: Engine | None = None) -> None:
        self.cfg = cfg
        self._handed = engine  # a standby's engine at the journal's end (app.standby): no recovery needed
        self.clock = clock
        # a core with a standby (cfg.ha): the leader's lease, taken at start (or handed over by the
        # standby that took it, app.standby); `deposed` is set when another core leads
        self.lease = lease
        self.deposed = asyncio.Event()
        self.deposed_why = ""
        self.data = cfg.data_path
        self.started_at = time.time()
        self.counters = Counters()  # the gateway's, counted by the error middleware too
        self.guard = Guard()  # connection hygiene: header/body/idle timeouts, a cap per address
        self.app = web.Application(client_max_size=cfg.max_message_bytes,
                                   middlewares=[errors_middleware(self.counters, cfg.max_message_bytes),
                                                self.guard.body_timeout])
        self.app[METRICS] = Metrics()
        self.app[METRICS].add(self.guard.metric_samples)
        self.app[HEALTH] = Health()
        self.app.cleanup_ctx.extend([self._lease, self._accounts, self._ledger, self._core, self._feeds,
                                     self._gateway, self._dashboard, self._sequencer])
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopped = False

    # ------------------------------------------------------------------ the parts, in order
    async def _lease(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        if not cfg.ha:
            yield
            return
        assert cfg.redis_url is not None
        lease = self.lease
        if lease is None:
            lease = self.lease = LeaderLease(cfg.redis_url, cfg.redis_prefix, node_name(cfg), ttl_ms=cfg.lease_ms)
            if not await asyncio.to_thread(lease.acquire):
                holder = await asyncio.to_thread(lease.holder)
                lease.close()
                raise StartupError(f"another core leads ({holder} holds {lease.key}): start this one as its standby "
                                   "with --standby, or stop that one first")
        loop = asyncio.get_running_loop()
        seen = [time.monotonic()]

        async def beat() -> None:  # the lease is renewed only while the event loop runs
            while True:
                seen[0] = time.monotonic()
                await asyncio.sleep(0.1)

        beating = asyncio.create_task(beat(), name="lease-heartbeat")
        lease.on_deposed = lambda why: loop.call_soon_threadsafe(self._depose, why)
        # (start-up may hold the loop for seconds, loading jitted code: the lease is kept meanwhile)
        lease.start(alive=lambda: self._site is None or time.monotonic() - seen[0] < cfg.lease_ms / 2000)
        app[HEALTH].add("lease", lease.health)
        app[METRICS].add(lease.metric_samples)
        yield
        beating.cancel()
        await asyncio.to_thread(lease.release)
        lease.close()

    def _depose(self, why: str) -> None:
        """Another core leads: answer nothing more, stop (`run_server` exits)."""
        if not self.deposed_why:
            log.error("deposed: %s; stopping", why)
        self.deposed_why = self.deposed_why or why
        publisher = self.app.get(PUBLISHER)
        if publisher is not None:
            publisher.depose(why)
        self.deposed.set()

    async def _accounts(self, app: web.Application) -> AsyncIterator[None]:
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only (files: `gpux`'s umask)
        store = app[ACCOUNTS] = AccountStore(self.data / "accounts.db")
        app[HEALTH].add("accounts", store.health)
        app[VERIFIER] = Verifier(cached(store.key), clock_ms=self.clock.time_ms)
        pub = None
        if self.cfg.redis_url:  # the keys for a standby and the market-data processes (not in the journal)
            assert self.cfg.redis_url is not None
            pub = AccountPublisher(store, self.cfg.redis_url, self.cfg.redis_prefix,
                                   exchange_id=exchange_id(self.data) if self.cfg.ha else None)
            await pub.start()
            app[HEALTH].add("account_publisher", pub.health)
            app[METRICS].add(pub.metric_samples)
        yield
        if pub is not None:
            await pub.close()
        store.close()

    async def _ledger(self, app: web.Application) -> AsyncIterator[None]:
        link = app[LEDGER] = SettlementLink(self.cfg, clock=self.clock)
        app[HEALTH].add("settlement", link.health)
        yield
        await link.aclose()

    async def _core(self, app: web.Application) -> AsyncIterator[None]:
        cfg, link = self.cfg, app[LEDGER]
        t0 = time.perf_counter()
        journal = app[JOURNAL] = open_journal(self.data, cfg)
        try:
            engine = self._handed
            self._handed = None
            if engine is not None and (engine.seq != journal.last_seq
                                       or any(link.cursor(n) != engine.event_seq(n) for n in engine.books)):
                log.warning("the standby's engine is not at the journal's and the ledger's end: recovering")
                engine.close()
                engine = None
            if engine is None:
                engine = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: recover(cfg, settled=link.cursor, sink=link.replayed))
            if engine.seq != journal.last_seq:
                raise RuntimeError(f"recovered to seq {engine.seq} but the journal ends at {journal.last_seq}")
            ahead = [n for n in engine.books if link.cursor(n) > engine.event_seq(n)]
            if ahead:
                raise RuntimeError(f"the ledger has events of {', '.join(ahead)} that the journal does not: "
                                   "the journal is not this ledger's (restore both from the same backup)")
        except BaseException:
            journal.close()
            raise
        app[ENGINE] = engine
        log.info("recovered", extra={"seq": engine.seq, "seconds": round(time.perf_counter() - t0, 3),
                                     "engine": engine.engine})

        def book_times() -> dict[str, int]:
            return {n: engine.book_time(n) for n in engine.books}

        link.book_times = book_times
        link.tick(book_times())
        bus = app[BUS] = Bus()
        sequencer = app[SEQUENCER] = Sequencer(engine, journal, cfg, bus, after_batch=link.commit_if_due,
                                               on_idle=link.flush_soon, clock=self.clock)
        # deposit requests of the account store, journaled at start and every clock tick
        inbox = app[DEPOSITS] = DepositInbox(app[ACCOUNTS], sequencer, engine.money, exchange_id(self.data))
        sequencer.on_tick = inbox.poll
        app[HEALTH].add("deposits", inbox.health)
        prov = app[PROVISIONING] = Provisioning(
            link, timeout_s=cfg.provision_timeout_s, enabled=cfg.provisioning == "agent", book_times=book_times,
            journal_seq=lambda: engine.seq, submit=sequencer.submit, ssh_key=app[ACCOUNTS].ssh_key)
        prov.start()  # leases to providers' agents (R18)
        link.start()  # from now on batches queue and a committer thread commits them
        link.attach(bus)
        # the journal's durable tail, for replicas elsewhere: GET /v1/admin/journal and, with --redis,
        # the stream {prefix}:journal (exchange.stream), both read from the journal files off the order path
        tail = app[JOURNAL_TAIL] = JournalTail(self.data / "journal", journal.last_seq)
        publisher = None
        if cfg.redis_url:
            lease = self.lease
            fence = (lease.key, lease.token) if cfg.ha and lease is not None else None
            publisher = app[PUBLISHER] = JournalPublisher(cfg.redis_url, cfg.redis_prefix, self.data / "journal",
                                                          journal.last_seq, maxlen=cfg.redis_maxlen, fence=fence,
                                                          interval_s=0.0 if fence else 0.005,
                                                          wait_replicas=cfg.redis_replicas if fence else 0)
            if fence is not None:  # a batch is answered once it is in the stream too
                sequencer.replicate = publisher.replicated
                publisher.on_deposed = self._depose

        def durable(_batch: Any) -> None:  # a batch is durable: engine.seq is its last entry's seq
            tail.durable_to(engine.seq)
            if publisher is not None:
                publisher.wake(engine.seq)

        bus.subscribe(durable)
        if publisher is not None:
            await publisher.start()
        # closed segments CRC-checked in a low-priority thread: damage is reported long before a replay needs them
        verifier = app[SEGMENT_VERIFIER] = SegmentVerifier(self.data / "journal", every_s=cfg.verify_every_s)
        verifier.start()
        app[HEALTH].add("journal_verify", verifier.health)
        app[METRICS].add(verifier.metric_samples)
        metrics = app[METRICS]
        metrics.add(self._process_samples)
        for part in (engine, engine.money, sequencer, inbox, link, prov, bus):
            metrics.add(part.metric_samples)
        app[HEALTH].add("bus", bus.health)
        if publisher is not None:
            metrics.add(publisher.metric_samples)
            app[HEALTH].add("redis_publisher", publisher.health)
        yield
        await sequencer.stop()  # (stopped already unless start-up failed after this step)
        await asyncio.to_thread(verifier.stop)
        if publisher is not None:
            await publisher.close()
        tail.close()
        await bus.close()
        engine.close()
        log.info("stopped", extra={"seq": engine.seq})

    async def _feeds(self, app: web.Application) -> AsyncIterator[None]:
        # market data: /v1/feeds, /v1/replay, the recorder (docs/feeds.md)
        feeds = app[FEEDS] = FeedService(app[ENGINE], app[BUS], self.cfg, app[VERIFIER], clock=self.clock)
        feeds.add_routes(app.router)
        app[PROVISIONING].notices = feeds
        await feeds.start()
        app[METRICS].add(feeds.metric_samples)
        app[HEALTH].add("feeds", feeds.health)
        yield
        await feeds.close()

    async def _gateway(self, app: web.Application) -> AsyncIterator[None]:
        gw = app[GATEWAY] = Gateway(self.cfg, app[ENGINE], app[SEQUENCER], app[ACCOUNTS], app[VERIFIER], app[LEDGER],
                                    app[PROVISIONING], app[BUS], app[DEPOSITS], counters=self.counters,
                                    level2=app[FEEDS].level2, metrics=app[METRICS].render, health=app[HEALTH].report,
                                    clock=self.clock, journal_tail=app[JOURNAL_TAIL])
        gw.add_routes(app.router)
        app[FEEDS].public_rate = gw.public_rate  # GET /v1/trades, /v1/candles: the public routes' limit
        app[METRICS].add(gw.metric_samples)
        # a revoked key stops working everywhere within a second, open sessions included
        watch = app[REVOCATIONS] = RevocationWatch(app[ACCOUNTS], app[VERIFIER].lookup,
                                                   [gw.revoke, app[FEEDS].revoke], self.clock)
        watch.start()
        app[METRICS].add(watch.metric_samples)
        app[HEALTH].add("revocations", watch.health)
        yield
        await watch.stop()
        await gw.close_sessions()

    async def _dashboard(self, app: web.Application) -> AsyncIterator[None]:
        # the web dashboard at / and /v1/dashboard (docs/demo.md)
        dash = app[DASHBOARD] = Dashboard(app[ENGINE], app[BUS], app[GATEWAY].public_rate, clock=self.clock)
        dash.add_routes(app.router)
        yield

    async def _sequencer(self, app: web.Application) -> AsyncIterator[None]:
        sequencer = app[SEQUENCER]
        await sequencer.start()
        app[HEALTH].add("sequencer", sequencer.health)
        inbox = None
        if self.cfg.redis_url:  # requests of order gateways in other processes (gpux gateway)
            lease = self.lease
            fence = (lease.key, lease.token) if self.cfg.ha and lease is not None else None
            inbox = app[INBOX] = RequestInbox(sequencer, app[ENGINE], self.cfg.redis_url, self.cfg.redis_prefix,
                                              fence=fence)
            inbox.on_deposed = self._depose
            await inbox.start()
            app[HEALTH].add("request_inbox", inbox.health)
            app[METRICS].add(inbox.metric_samples)
        yield
        if inbox is not None:
            await inbox.close()
        await sequencer.stop()

    def _process_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_up", 1, "1 while the exchange serves", "gauge"),
                ("gpux_uptime_seconds", round(time.time() - self.started_at, 3), "seconds since start", "gauge")]

    # ------------------------------------------------------------------ lifetime
    async def start(self) -> None:
        """Start every part (the application's start-up: the cleanup contexts, in order)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     keepalive_timeout=self.guard.idle_timeout_s,
                                     lingering_time=self.guard.lingering_s)
        try:
            await self._runner.setup()
        except BaseException:  # what started is stopped again, in reverse order
            self._stopped = True
            await self.app.cleanup()
            self._runner = None
            raise

    async def serve(self, host: str = "127.0.0.1", port: int = 0, backlog: int = 128,
                    sock: socket.socket | None = None) -> int:
        """Listen on ``host:port`` (0: a free port), or on ``sock`` already bound; returns the port."""
        assert self._runner is not None, "start() first"
        self._site = GuardedSite(self._runner, self.guard, host, port, reuse_address=True, backlog=backlog,
                                 sock=sock)
        await self._site.start()
        bound = self._runner.addresses[-1][1] if self._runner.addresses else port
        if self.cfg.redis_url:  # where order gateways send what only the core serves (gateway.remote)
            addr = self._runner.addresses[-1][0] if self._runner.addresses else host
            url = self.cfg.advertise_url or f"http://{'127.0.0.1' if addr in ('0.0.0.0', '::') else addr}:{bound}"
            try:
                await advertise(self.cfg.redis_url, self.cfg.redis_prefix, url)
            except Exception as e:  # noqa: BLE001 - Redis down: gateways answer CORE_ONLY for those routes
                log.warning("could not advertise the core's URL in Redis: %s", e)
        return bound

    async def stop(self) -> None:
        """Stop every part, in reverse order; the socket stays open (requests get UNAVAILABLE)."""
        if self._stopped or self._runner is None:
            return
        self._stopped = True
        await self.app.shutdown()
        await self.app.cleanup()

    async def close(self) -> None:
        """Stop (if not yet) and stop listening."""
        await self.stop()
        if self._runner is not None:
            await self._runner.cleanup()  # the parts' cleanup has run: this closes the socket
            self._runner = None

    # ------------------------------------------------------------------ the parts, for tests and tools
    @property
    def store(self) -> AccountStore:
        return self.app[ACCOUNTS]

    @property
    def settlement(self) -> SettlementLink:
        return self.app[LEDGER]

    @property
    def deposits(self) -> DepositInbox:
        return self.app[DEPOSITS]

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE]

    @property
    def bus(self) -> Bus:
        return self.app[BUS]

    @property
    def publisher(self) -> JournalPublisher | None:
        """The Redis publisher (``--redis``), else None."""
        return self.app.get(PUBLISHER)

    @property
    def segment_verifier(self) -> SegmentVerifier:
        """The background verifier of the closed journal segments."""
        return self.app[SEGMENT_VERIFIER]

    @property
    def sequencer(self) -> Sequencer:
        return self.app[SEQUENCER]

    @property
    def provisioning(self) -> Provisioning:
        return self.app[PROVISIONING]

    @property
    def feeds(self) -> FeedService:
        return self.app[FEEDS]

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def dashboard(self) -> Dashboard:
        return self.app[DASHBOARD]


async def advertise(url: str, prefix: str, core_url: str) -> None:
    """Tell order gateways (`gateway.remote.core_key`) where this core serves HTTP."""
    import redis.asyncio as aioredis

    from gateway.remote import core_key

    r = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        await r.set(core_key(prefix), core_url)
    finally:
        await r.aclose()


def node_name(cfg: ServerConfig) -> str:
    """This core's name in the leader's lease: host, process and port."""
    return f"{socket.gethostname()}/{os.getpid()}/{cfg.port}"


class Deposed(Exception):
    """`gpux serve --ha` stopped because another core took the leader's lease."""


class GcPauses:
    """How long the garbage collector held the process, per generation (`/metrics`): a full
    collection walks every object made since start-up, and nothing else runs meanwhile."""

    SLOW_S = 0.05  # a pause this long is logged

    def __init__(self) -> None:
        self._t0 = 0.0
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        g = info.get("generation", 0)
        self.count[g] += 1
        self.total[g] += took
        self.max[g] = max(self.max[g], took)
        if took >= self.SLOW_S:
            log.warning("garbage collection paused the process", extra={"generation": g, "ms": round(took * 1000, 1),
                                                                         "collected": info.get("collected", 0)})

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        out: list[tuple[str, float, str, str]] = []
        for g in range(3):
            out += [(f'gpux_gc_pauses_total{{generation="{g}"}}', self.count[g], "garbage collections", "counter"),
                    (f'gpux_gc_pause_seconds_total{{generation="{g}"}}', round(self.total[g], 6),
                     "time the garbage collector held the process", "counter"),
                    (f'gpux_gc_pause_max_seconds{{generation="{g}"}}', round(self.max[g], 6),
                     "the longest garbage collection", "gauge")]
        return out


class StartupError(Exception):
    """`gpux serve` cannot start; one sentence that says what to do.  Raised before anything is
    created on disk (a busy port, a data directory another server holds), or after start-up
    failed and what it created was removed again."""


class DataLock:
    """An exclusive flock on the data directory itself, held while a server runs, so that a second
    server on the same directory is refused before it opens anything (the journal has its own
    lock on DATA/journal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise StartupError(f"the data directory {self.path} is a file; choose a directory with --data") from None
        except OSError as e:
            raise StartupError(f"cannot open the data directory {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"the data directory {self.path} is in use by another gpux serve: stop that one, "
                               "or give this one another directory with --data") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None


def listen_socket(host: str, port: int, backlog: int = 128, listen: bool = True) -> socket.socket:
    """A socket bound to ``host:port`` and listening (port 0: a free one); StartupError, which says
    what to do, when the port is taken or the address is not this machine's."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise StartupError(f"cannot listen on {host!r}: {getattr(e, 'strerror', None) or e}; give --host an "
                           "address of this machine, e.g. 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        if listen:  # (not: the port is only reserved, e.g. by a standby until it takes over)
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is in use (another gpux serve, or another program): stop it, "
                               "or choose another port with --port (--port 0 picks a free one)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"{host} is not an address of this machine; give --host one, e.g. 127.0.0.1") from None
        if e.errno == errno.EACCES:
            raise StartupError(f"port {port} needs privileges; choose one above 1023 with --port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


async def run_server(cfg: ServerConfig, ready: Any = None, lease: LeaderLease | None = None,
                     engine: Engine | None = None, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM; then shut down gracefully (close code 1001, journal flushed).

    Before anything is created on disk, the data directory (if it exists) is locked and the port
    bound: a second server on the same directory, or a busy port, is a StartupError and changes
    nothing.  A start-up that fails later is a StartupError too; a data directory it created is
    removed again."""
    data = cfg.data_path
    lock = DataLock(data)
    existed = data.exists()
    if existed:
        lock.acquire()
    try:
        if sock is None:
            sock = listen_socket(cfg.host, cfg.port)
        else:  # bound already (a standby reserved its port when it started)
            sock.listen(128)
    except BaseException:
        lock.release()
        raise
    # the journal's fsync runs in a worker thread; a short GIL switch interval lets it hand its
    # result back within a fraction of a millisecond instead of the default 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    exchange = Exchange(cfg, lease=lease, engine=engine)
    try:
        if not existed:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only, as Exchange makes it
            lock.acquire()
        await exchange.start()
    except BaseException as e:
        sock.close()
        lock.release()
        if not existed:
            shutil.rmtree(data, ignore_errors=True)  # nothing of a start-up that failed stays on disk
        if isinstance(e, StartupError) or not isinstance(e, Exception):
            raise
        log.debug("start-up failed", exc_info=True)
        raise StartupError(f"the exchange could not start: {e}") from e
    # what recovery built lives for the whole run: keep it out of the collector's sweeps, and
    # collect the young generation less often (per-order objects are short-lived; pauses are latency)
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    pauses = GcPauses()
    gc.callbacks.append(pauses.callback)
    exchange.app[METRICS].add(pauses.metric_samples)
    try:
        port = await exchange.serve(sock=sock)
        log.info("listening", extra={"url": f"http://{cfg.host}:{port}", "data_dir": str(cfg.data_path)})
        print(f"gpux: serving on http://{cfg.host}:{port}  (data: {cfg.data_path})", flush=True)
        if ready is not None:
            ready(port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stopping = asyncio.create_task(stop.wait())
        deposed = asyncio.create_task(exchange.deposed.wait())
        await asyncio.wait([stopping, deposed], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        deposed.cancel()
    finally:
        log.info("shutting down")
        await exchange.close()
        lock.release()
    if exchange.deposed.is_set():
        raise Deposed(f"another core leads now ({exchange.deposed_why}); this one stopped without answering "
                      "what it had not replicated.  Its data directory may hold journal entries the leader does not: "
                      "start it again as a standby (--standby) on a new data directory")
