"""`gpux serve`: the embedded exchange in one process (ARCHITECTURE.md, embedded mode).

    exchange = Exchange(cfg)
    await exchange.start()      # recover (snapshot + journal tail), start the sequencer
    ...                         # exchange.app is the aiohttp application (gateway.gateway)
    await exchange.stop()       # close sessions (1001), drain, snapshot, close the journal

Start-up is recovery: the newest snapshot whose books restore to their recorded state
hashes, then every journal entry after it through the same `Engine.apply` as live
trading.  A torn last journal record (a crash mid-write) was never acknowledged and is
dropped by the journal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from exchange.bus import Bus, RedisBus
from exchange.config import ServerConfig
from exchange.engine import Engine, Prov, SnapshotMismatch, book_seq, decode_entry, snapshots
from exchange.journal import Journal, read
from exchange.sequencer import Sequencer, open_journal
from gateway.accounts import AccountStore

log = logging.getLogger("gpux.server")
REPLAY_CHUNK = 4096
SWITCH_INTERVAL_S = 0.0002


def recover(cfg: ServerConfig, journal_dir: Path | None = None, use_snapshots: bool = True,
            settled: Callable[[str], int] | None = None,
            sink: Callable[[dict[str, np.ndarray], list[Prov]], None] | None = None) -> Engine:
    """An engine at the end of the journal: newest usable snapshot + the entries after it.

    ``settled(cls)``: the last event seq of each class that settlement has; a snapshot is used
    only if it is not ahead of it, so that the replay regenerates every event settlement lacks
    and hands it to ``sink`` (the events of each replayed chunk, by class, and its provisioning
    answers)."""
    data = cfg.data_path
    journal_dir = journal_dir or data / "journal"
    threads = cfg.book_threads or None
    engine = Engine(cfg.instruments, cfg.engine, threads)
    if use_snapshots:
        for seq, path in reversed(snapshots(data)):
            try:
                candidate = Engine(cfg.instruments, cfg.engine, threads)
                candidate.load_snapshot(path.read_bytes())
            except (SnapshotMismatch, ValueError, OSError) as e:
                log.warning("snapshot %s not usable (%s); trying an older one", path, e)
                continue
            ahead = [n for n in candidate.books if settled is not None and candidate.event_seq(n) > settled(n)]
            if ahead:
                log.info("snapshot %s is ahead of the ledger in %s; trying an older one", path, ", ".join(ahead))
                continue
            engine = candidate
            log.info("restored snapshot", extra={"seq": seq, "path": str(path)})
            break
    replay(engine, journal_dir, sink)
    return engine


def replay(engine: Engine, journal_dir: Path,
           sink: Callable[[dict[str, np.ndarray], list[Prov]], None] | None = None) -> int:
    """Apply every journal entry after ``engine.seq``; returns how many were applied."""
    chunk: list = []
    applied = 0
    expect = engine.seq + 1
    for seq, payload in read(journal_dir, from_seq=engine.seq + 1):
        if seq != expect:
            raise RuntimeError(f"journal gap: expected seq {expect}, found {seq}")
        expect += 1
        chunk.append(decode_entry(payload))
        if len(chunk) >= REPLAY_CHUNK:
            _, arrays = engine.apply(chunk)
            if sink is not None:
                sink(arrays, [e for e in chunk if type(e) is Prov])
            applied += len(chunk)
            chunk = []
    if chunk:
        _, arrays = engine.apply(chunk)
        if sink is not None:
            sink(arrays, [e for e in chunk if type(e) is Prov])
        applied += len(chunk)
    return applied


class Exchange:
    """Everything `gpux serve` runs, hanging off one object (no globals)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.data = cfg.data_path
        self.data.mkdir(parents=True, exist_ok=True)
        self.store = AccountStore(self.data / "accounts.db")
        self.bus: Bus = RedisBus(cfg.redis_url, cfg.redis_prefix) if cfg.redis_url else Bus()
        self.engine: Engine | None = None
        from settlement.link import SettlementLink  # the ledger behind escrow (docs/settlement.md)

        self.settlement = SettlementLink(cfg, self.store)
        self.journal: Journal | None = None
        self.sequencer: Sequencer | None = None
        self.started_at = time.time()
        self.recovered_entries = 0
        from gateway.gateway import Gateway

        self.gateway = Gateway(self)
        self.app = self.gateway.app

    async def start(self) -> None:
        t0 = time.perf_counter()
        self.journal = open_journal(self.data, self.cfg)
        loop = asyncio.get_running_loop()
        link = self.settlement
        self.engine = await loop.run_in_executor(None, lambda: recover(self.cfg, settled=link.cursor,
                                                                       sink=link.replayed))
        if self.engine.seq != self.journal.last_seq:
            raise RuntimeError(f"recovered to seq {self.engine.seq} but the journal ends at {self.journal.last_seq}")
        log.info("recovered", extra={"seq": self.engine.seq, "seconds": round(time.perf_counter() - t0, 3),
                                     "engine": self.engine.engine})
        engine = self.engine
        ahead = [n for n in engine.books if link.cursor(n) > engine.event_seq(n)]
        if ahead:
            raise RuntimeError(f"the ledger has events of {', '.join(ahead)} that the journal does not: "
                               "the journal is not this ledger's (restore both from the same backup)")
        link.clock = lambda: {n: engine.book_time(n) for n in engine.books}
        link.tick(link.clock())
        from settlement.provisioning import Provisioning  # leases to providers' agents (R18)

        self.provisioning = Provisioning.attach(self)
        link.start()  # from now on batches queue and a committer thread commits them
        link.attach(self.bus)
        await self.bus.start()
        if isinstance(self.bus, RedisBus):  # `gpux settle` members settle deposits too
            self.bus.book_seqs = {name: book_seq(b) for name, b in self.engine.books.items()}
            self.bus.publish_deposits(self.store.deposit_rows(await self.bus.deposits_sent()))
            link.on_deposits = self.bus.publish_deposits
        self.sequencer = Sequencer(self.engine, self.journal, self.cfg, self.bus, link)
        await self.sequencer.start()
        self.gateway.attach()
        from feeds.service import FeedService  # market data: /v1/feeds, /v1/replay, the recorder (docs/feeds.md)

        self.feeds = await FeedService.attach(self)
        from gateway.dashboard import Dashboard  # the web dashboard at / and /v1/dashboard (docs/demo.md)

        self.dashboard = Dashboard.attach(self)

    async def stop(self) -> None:
        await self.gateway.close_sessions()
        if self.sequencer is not None:
            await self.sequencer.stop()
        if getattr(self, "feeds", None) is not None:
            await self.feeds.close()
        await self.bus.close()
        await self.settlement.aclose()
        self.store.close()
        if self.engine is not None:
            self.engine.close()
        log.info("stopped", extra={"seq": self.engine.seq if self.engine else 0})


async def run_server(cfg: ServerConfig, ready: Any = None) -> None:
    """Serve until SIGINT/SIGTERM; then shut down gracefully (close code 1001, journal flushed)."""
    # the journal's fsync runs in a worker thread; a short GIL switch interval lets it hand its
    # result back within a fraction of a millisecond instead of the default 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    exchange = Exchange(cfg)
    await exchange.start()
    # what recovery built lives for the whole run: keep it out of the collector's sweeps, and
    # collect the young generation less often (per-order objects are short-lived; pauses are latency)
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    runner = web.AppRunner(exchange.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else cfg.port
    log.info("listening", extra={"url": f"http://{cfg.host}:{port}", "data_dir": str(cfg.data_path)})
    print(f"gpux: serving on http://{cfg.host}:{port}  (data: {cfg.data_path})", flush=True)
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await exchange.stop()
        await runner.cleanup()
