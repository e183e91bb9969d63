"""`gpux serve --standby`: a hot standby of the core that takes over when the leader stops (issue 15).

    standby = Standby(cfg)                    # cfg.redis_url: the leader's Redis; cfg.data_path: its own
    lease = standby.follow(stop)              # until it took the leader's lease (None: stopped first)
    await run_server(cfg.with_(ha=True), lease=lease)    # then it is the leader

While the leader (`gpux serve --ha --redis URL`) holds its lease, the standby follows the
journal it replicates to the Redis stream ``{prefix}:journal`` (`exchange.stream`):

* each chunk is appended to the standby's **own journal** (its data directory, fsynced) and then
  applied, through the same `Engine.apply`, to an engine of its own and to its **own ledger**
  (`settlement.replica.Replica`, the code of `gpux settle`), which writes snapshots of the engine
  into the data directory every ``snapshot_every`` entries; so the data directory is, at every
  moment, one a `gpux serve` could start from;
* the leader's accounts and API keys are copied from ``{prefix}:accounts`` into its account store
  (`gateway.replication`), so the leader's clients can sign in after a take-over;
* a gap in the stream (trimmed past the standby, Redis restarted empty) is backfilled from the
  leader's journal-tail endpoint when one is given (``--exchange URL`` and an admin key), as
  `gpux settle` does; a standby that cannot fill a gap does not take over.

Every ``block_ms`` it looks at the leader's lease (`exchange.lease`).  When nobody holds it (the
leader died, or was paused past its ttl), it takes it (a new epoch: from now on the old leader's
appends are refused by Redis), reads the stream to its end — everything the old leader had
answered is there, since a leader answers a batch only once the stream holds it — and returns
the lease.  The caller then starts the whole exchange on the data directory as the new leader,
renewing the same lease; recovery starts from the standby's newest snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from app.exchange import DataLock, node_name
from clearing.engine import SequenceGap
from exchange.config import ServerConfig
from exchange.engine import Engine
from exchange.journal import Journal
from exchange.lease import LeaderLease
from exchange.sequencer import open_journal
from feeds.recorder import Recorder, catch_up, open_recorder
from gateway.accounts import AccountStore
from gateway.deposits import ID_FILE
from gateway.replication import POLL_S, pull_accounts, pull_exchange_id
from settlement.link import LEDGER_FILE
from settlement.replica import FileJournal, JournalSource, Replica, ReplicaRunner

log = logging.getLogger("gpux.standby")
SNAPSHOT_EVERY = 20_000  # entries between the standby's snapshots: a take-over replays at most this many


class MirroredReplica(Replica):
    """A replica whose entries go to a journal of its own first (appended and fsynced), then to its
    engine and ledger: the standby's data directory is an exchange's."""

    def __init__(self, cfg: ServerConfig, journal: Journal, **kw: Any) -> None:
        super().__init__(cfg, cfg.data_path / LEDGER_FILE, snapshot_dir=cfg.data_path,
                         synchronous=cfg.ledger_synchronous, **kw)
        self.journal = journal

    def apply_chunk(self, first: int, payloads: list[bytes]) -> int:
        last = first + len(payloads) - 1
        have = self.journal.last_seq
        if last > have:
            if first > have + 1:
                raise SequenceGap(f"journal entries from seq {first}, but the standby's journal ends at seq {have}")
            self.journal.append(payloads[have + 1 - first:])
            self.journal.sync()
        return super().apply_chunk(first, payloads)


class Standby:
    """The standby's follow loop (see the module docstring)."""

    def __init__(self, cfg: ServerConfig, *, backfill: JournalSource | None = None,
                 snapshot_every: int = SNAPSHOT_EVERY, block_ms: int | None = None,
                 redis_factory: Any = None) -> None:
        if not cfg.redis_url:
            raise ValueError("a standby needs the leader's Redis (--redis URL)")
        self.cfg = cfg
        self.backfill = backfill
        self.snapshot_every = snapshot_every
        self.block_ms = block_ms or max(50, min(250, cfg.lease_ms // 10))
        self._factory = redis_factory
        self.runner: ReplicaRunner | None = None
        self.lease: LeaderLease | None = None
        self.leader = ""  # the token of the leader it follows
        self.accounts_pulled = 0
        self.engine: Engine | None = None  # after a take-over: the replica's engine, for the exchange
        self.took_over_at = 0.0

    def _redis(self) -> Any:
        if self._factory is not None:
            return self._factory(self.cfg.redis_url)
        import redis

        return redis.Redis.from_url(self.cfg.redis_url, socket_timeout=max(5.0, self.block_ms / 1000 + 5),
                                    socket_connect_timeout=2)

    def follow(self, stop: threading.Event | None = None) -> LeaderLease | None:
        """Follow the leader until this standby holds the lease (returned) or ``stop`` is set (None)."""
        cfg = self.cfg
        data = cfg.data_path
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = DataLock(data)
        lock.acquire()
        journal = open_journal(data, cfg)
        store = AccountStore(data / "accounts.db")
        r = self._redis()
        replica = None
        recorder = None
        handed = False
        try:
            replica = MirroredReplica(cfg, journal, snapshot_every=self.snapshot_every)
            recorder = self._recorder(replica)
            local = FileJournal(data / "journal")
            while replica.engine.seq < journal.last_seq:  # what its own journal has first (a restart)
                seq = replica.engine.seq
                replica.apply_chunk(seq + 1, local.fetch(seq, 5000))
            runner = self.runner = ReplicaRunner(replica, r, cfg.redis_prefix, backfill=self.backfill,
                                                 block_ms=self.block_ms)
            lease = self.lease = LeaderLease(cfg.redis_url or "", cfg.redis_prefix, node_name(cfg), ttl_ms=cfg.lease_ms,
                                             redis_factory=self._factory)
            log.info("standby: following %s from journal seq %d", runner.key, replica.engine.seq + 1)
            pulled_at = 0.0
            while stop is None or not stop.is_set():
                runner.step()
                if time.monotonic() - pulled_at >= POLL_S:
                    pulled_at = time.monotonic()
                    try:
                        self.accounts_pulled += pull_accounts(r, cfg.redis_prefix, store)
                    except Exception as e:  # noqa: BLE001 - Redis down: the runner says so too
                        log.debug("accounts not pulled: %s", e)
                if runner.failing or runner.down_since is not None:
                    continue  # behind with a gap it cannot fill, or Redis unreachable: not fit to lead
                try:
                    holder = lease.holder()
                    if holder is not None:
                        if holder != self.leader:
                            log.info("standby: the leader is %s", holder)
                            self.leader = holder
                        continue
                    if not lease.acquire():
                        continue
                except Exception as e:  # noqa: BLE001 - Redis went away between two steps
                    log.warning("standby: cannot read the leader's lease: %s", e)
                    continue
                self.took_over_at = time.monotonic()
                lease.start()  # renewed from now on (the exchange takes the renewals over)
                log.warning("standby: the leader %s stopped renewing its lease: taking over as %s",
                            self.leader or "(none seen)", lease.token)
                while runner.step():  # the stream to its end: the old leader can append no more
                    pass
                if runner.failing:
                    log.error("standby: could not read the stream to its end (%s); leading from seq %d",
                              runner.last_error, replica.engine.seq)
                self.accounts_pulled += pull_accounts(r, cfg.redis_prefix, store)
                self._adopt_exchange_id(r)
                log.warning("standby: caught up to journal seq %d; starting as the leader", replica.engine.seq)
                self.engine, handed = replica.engine, True  # the exchange starts from it: no recovery
                return lease
            eng = replica.engine  # stopped as a standby: what it holds, for a check against a replay
            hashes = json.dumps({k: str(v) for k, v in eng.state_hashes().items()})
            log.info("standby stopped", extra={"seq": eng.seq, "money_hash": str(eng.money.state_hash()),
                                               "state_hashes": hashes})
            return None
        finally:
            if replica is not None:
                replica.close(engine=not handed)
            if recorder is not None:
                recorder.close()
            journal.close()
            store.close()
            r.close()
            lock.release()

    def _adopt_exchange_id(self, r: Any) -> None:
        """Become the same exchange as the leader (``DATA/exchange.id``): the deposit requests it had
        taken and not journaled are journaled by this one (once: a deposit's ref is applied once)."""
        leader = pull_exchange_id(r, self.cfg.redis_prefix)
        if leader is None:
            return
        path = self.cfg.data_path / ID_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(leader + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _recorder(self, replica: MirroredReplica) -> Recorder:
        """The market-data recording of the data directory, kept from the replica's events, so that
        the exchange that starts here after a take-over has it complete (no catch-up to wait for)."""
        cfg = self.cfg
        eng = replica.engine
        recorder = open_recorder(cfg.data_path, cfg.instruments, eng.engine, replica.journal.last_seq,
                                 cfg.segment_bytes)
        catch_up(recorder, cfg.instruments, eng.engine, cfg.data_path, min(eng.seq, replica.journal.last_seq))

        def applied(last: int, arrays: dict[str, np.ndarray], before: dict[str, int] | None) -> None:
            if last <= recorder.last_jseq or before is None:
                return
            blocks = []
            for name in eng.books:
                t, ev = eng.book_time(name), arrays.get(name)
                if (ev is not None and len(ev)) or t != before[name]:
                    blocks.append((name, t, ev.tobytes() if ev is not None else b""))
            recorder.append(last, blocks)

        replica.on_applied = applied
        return recorder

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        out = self.runner.metric_samples() if self.runner is not None else []
        return out + [("gpux_standby_accounts_changes_total", self.accounts_pulled,
                       "account rows copied from the leader", "counter")]

    def health(self) -> str:
        return self.runner.health() if self.runner is not None else "starting"

    def status(self) -> dict[str, Any]:
        st = self.runner.status() if self.runner is not None else {}
        return {**st, "role": "standby", "leader": self.leader}
