"""Settlement as a Redis Streams consumer group (``gpux settle --redis URL``), exactly once.
(Inside ``gpux serve`` settlement follows the bus instead: `settlement.link`.)

    run_consumer("redis://127.0.0.1:6379/0", "gpux", ["H100", "A100"], data_dir / "ledger.db",
                 group="settlement", consumer="settle-1")

A Redis Streams consumer group on ``{prefix}:events:{CLASS}`` (every event: escrow needs the
accepted, amended, cancelled and expired bids as well as the trades, preemptions and releases
that ``{prefix}:trades:{CLASS}`` carries).  On start it re-reads its own pending entries (id 0),
then new ones (``>``), and claims entries that another consumer left pending for longer than
``claim_idle_ms`` (XAUTOCLAIM: that consumer died).  Entries are applied per class in seq
order, from the ledger's last applied seq + 1; the transfers, the settlement state and that
seq are one SQLite transaction, and XACK follows the commit.  So:

* killed before the commit: nothing of the batch is in the ledger; the entries are still
  pending and are read again (by the same consumer on restart, or claimed by another);
* killed after the commit, before XACK: the entries are read again, their seqs are at or
  below the ledger's, so they are only acknowledged (the seq cursor, committed with the
  transfers, is what makes a repeat harmless: docs/settlement.md "Pages").

Either way every event settles exactly once.  Entries beyond a gap in seq (another consumer
holds the ones before) wait, unacknowledged, until the gap is filled or claimed.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from orderbook.types import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_RELEASED,
    EV_TRADE,
    Event,
)
from settlement.engine import SequenceGap, SettlementConfig, join_transfers
from settlement.events import _ENUMS, from_json
from settlement.ledger import AVAILABLE, EXCHANGE, EXTERNAL, LedgerError, Transfer
from settlement.service import Answer, Settlement

log = logging.getLogger("gpux.settlement.consumer")


# ---------------------------------------------------------------------- distributed
class SimulatedCrash(BaseException):
    """Raised by test hooks to stop a consumer as if its process died (not an Exception, so
    nothing on the way catches it)."""


DEPOSITS = "_deposits"  # the pseudo-class of the deposits stream (positions, lost entries)
_RELEVANT = {EV_TRADE, EV_PREEMPTED, EV_RELEASED}
_BID_ONLY = {EV_ACCEPTED, EV_AMENDED, EV_CANCELLED, EV_EXPIRED}
_TYPE_CODES = _ENUMS["type"]
_SIDE_CODES = _ENUMS["side"]
_json = msgspec.json.Decoder()


def entry_event(fields: dict[bytes, bytes]) -> Event:
    """A stream entry (fields seq, type, event=JSON, as `exchange.bus.RedisBus` writes them)
    -> the event.  An event that moves no money becomes a stub with only its seq, time, type
    and side (settlement skips it after checking its seq)."""
    d = _json.decode(fields[b"event"])
    typ = _TYPE_CODES.get(d.get("type"), 0)
    if typ in _RELEVANT or (typ in _BID_ONLY and d.get("side") == "bid"):
        return from_json(d)
    return Event(seq=d["seq"], time=d.get("time", 0), type=typ, side=_SIDE_CODES.get(d.get("side"), 0))


class RedisConsumer:
    """One member of settlement's consumer group.  `step()` does one round; `run()` loops.

    ``hooks``: ``{"before_commit": fn, "after_commit": fn}`` called inside the ledger
    transaction before COMMIT, and after COMMIT before XACK (the tests crash there)."""

    def __init__(self, redis: Any, prefix: str, classes: Iterable[str], settlement: Settlement, *,
                 group: str = "settlement", consumer: str | None = None, count: int = 2000,
                 block_ms: int = 1000, claim_idle_ms: int = 30_000,
                 hooks: dict[str, Callable[[], None]] | None = None) -> None:
        self.r = redis
        self.prefix = prefix
        self.classes = list(classes)
        self.settlement = settlement
        self.group = group
        self.name = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.hooks = hooks or {}
        self.streams = {self.key(c): c for c in self.classes}
        self.streams[f"{prefix}:deposits"] = DEPOSITS  # deposits the exchange's ledger took (RedisBus)
        self.buffer: dict[str, dict[int, tuple[bytes, tuple]]] = {c: {} for c in self.classes}  # seq -> (id, event)
        # provisioning answers (R18), each applied right after the event of its class it follows
        self.answers: dict[str, dict[bytes, dict[str, Any]]] = {c: {} for c in self.classes}  # id -> answer
        # the exchange's clock commands: the class's clock moves to ``time`` right after event ``after``
        self.clocks: dict[str, dict[bytes, tuple[int, int]]] = {c: {} for c in self.classes}  # id -> (after, time)
        self.deposits: dict[bytes, Transfer] = {}  # id -> transfer (idempotent by its transfer id)
        self.lost: dict[str, list[bytes]] = {c: [] for c in [*self.classes, DEPOSITS]}  # trimmed while pending
        self._pending_from: dict[str, bytes] | None = {k: b"0" for k in self.streams}  # own PEL still to re-read
        self._catch_up: dict[str, tuple[str, str]] | None = None  # stream -> (after, up to) still to XRANGE
        self.caught_up = 0  # entries re-read by XRANGE (delivered to the group, not in the ledger)
        self._claim_from = {k: b"0-0" for k in self.streams}
        self.applied = 0  # events committed by this consumer
        self.acked = 0
        self.claimed = 0
        self.commits = 0
        settlement.before_commit = self.hooks.get("before_commit")

    def key(self, cls: str) -> str:
        return f"{self.prefix}:events:{cls}"

    def setup(self) -> None:
        """Create the consumer group on every class stream (from the first entry) if needed."""
        import redis as redis_lib

        for key in self.streams:
            try:
                self.r.xgroup_create(key, self.group, id="0", mkstream=True)
            except redis_lib.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # ------------------------------------------------------------------ reading
    def _take(self, key: str | bytes, entries: list) -> int:
        cls = self.streams[key.decode() if isinstance(key, bytes) else key]
        buf = self.buffer.get(cls, {})
        n = 0
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream while pending: its event is gone
                self.lost[cls].append(entry_id)
                log.error("%s: pending entry %s was trimmed from the stream; its event is lost to settlement",
                          cls, entry_id)
                continue
            if cls == DEPOSITS:
                self.deposits[entry_id] = Transfer(f"deposit:{_s(fields[b'id'])}", EXCHANGE, EXTERNAL,
                                                   int(fields[b"account"]), AVAILABLE, int(fields[b"amount"]),
                                                   int(fields[b"time"]))
                n += 1
                continue
            if fields.get(b"type") == b"provisioned":
                self.answers[cls][entry_id] = _json.decode(fields[b"event"])
                n += 1
                continue
            if fields.get(b"type") == b"clock":
                d = _json.decode(fields[b"event"])
                self.clocks[cls][entry_id] = (int(d["after"]), int(d["time"]))
                n += 1
                continue
            ev = entry_event(fields)
            buf[ev.seq] = (entry_id, ev)
            n += 1
        return n

    def _read_own_pending(self) -> int:
        """Re-read what this consumer was given before and never acknowledged (after a restart)."""
        assert self._pending_from is not None
        n = 0
        while self._pending_from:
            reply = self.r.xreadgroup(self.group, self.name, dict(self._pending_from), count=self.count)
            for key, entries in reply or []:
                key = key.decode() if isinstance(key, bytes) else key
                if not entries:
                    self._pending_from.pop(key, None)
                    continue
                n += self._take(key, entries)
                self._pending_from[key] = entries[-1][0]
            if not reply:
                break
        self._pending_from = None
        return n

    def _plan_catch_up(self) -> None:
        """What the group was given (to any member) after the ledger's last applied entry of
        each class: the ledger may have lost commits whose entries were acknowledged (a power
        loss with synchronous=NORMAL; a ledger restored from a backup), and would otherwise
        wait for them forever.  Re-read with XRANGE, applied if their seq is new."""
        positions = self.settlement.positions()
        plan = {}
        for key, cls in self.streams.items():
            delivered = "0-0"
            for g in self.r.xinfo_groups(key):
                if _s(g["name"]) == self.group:
                    delivered = _s(g["last-delivered-id"])
            after = positions.get(cls, "0-0")
            if _id(delivered) > _id(after):
                plan[key] = (after, delivered)
        self._catch_up = plan

    def _read_catch_up(self) -> int:
        assert self._catch_up is not None
        n = 0
        for key, (after, upto) in list(self._catch_up.items()):
            entries = self.r.xrange(key, min=f"({after}", max=upto, count=self.count)
            if entries:
                n += self._take(key, entries)
                self.caught_up += len(entries)
                last = _s(entries[-1][0])
                self._catch_up[key] = (last, upto)
            if not entries or len(entries) < self.count or _id(self._catch_up[key][0]) >= _id(upto):
                del self._catch_up[key]
        return n

    def _claim(self) -> int:
        """XAUTOCLAIM entries pending for longer than claim_idle_ms with any consumer."""
        n = 0
        for key in self.streams:
            start, entries, deleted = _autoclaim(self.r, key, self.group, self.name, self.claim_idle_ms,
                                                 self._claim_from[key], self.count)
            self._claim_from[key] = start
            if entries:
                n += self._take(key, entries)
                self.claimed += len(entries)
            for entry_id in deleted or ():
                cls = self.streams[key]
                self.lost[cls].append(entry_id)
                log.error("%s: claimed entry %s was trimmed from the stream; its event is lost to settlement",
                          cls, entry_id)
        return n

    def _read_new(self, block: bool) -> int:
        reply = self.r.xreadgroup(self.group, self.name, {k: ">" for k in self.streams}, count=self.count,
                                  block=self.block_ms if block else None)
        n = 0
        for key, entries in reply or []:
            n += self._take(key, entries)
        return n

    # ------------------------------------------------------------------ applying
    def _apply_ready(self) -> int:
        """Commit every class's contiguous run after the ledger's seq — with the provisioning
        answers that follow its events, each in its place — and the deposits read, in one
        transaction, then XACK them (and any entry at or below the ledger's seq: applied
        before, by us or by a consumer that died)."""
        s = self.settlement
        if any(self.buffer.values()) or self.deposits or any(self.answers.values()) or any(self.clocks.values()):
            s.refresh()  # another member of the group may have committed: start from the ledger's seq
        if self.deposits:  # first, in their own transaction: the holds after them may need them
            deposits = list(self.deposits.items())
            s.ledger.apply([t for _, t in deposits])  # each once: its id names the deposit
            self.acked += self.r.xack(f"{self.prefix}:deposits", self.group, *[eid for eid, _ in deposits])
            for eid, _ in deposits:
                del self.deposits[eid]
        parts: list[tuple[str, list[tuple], list[dict[str, Any]], list[tuple[int, int]]]] = []
        acks: dict[str, list[bytes]] = {}
        positions: dict[str, str] = {}
        for cls, buf in self.buffer.items():
            done = s.last_seq(cls)
            old = [seq for seq in buf if seq <= done]
            if old:
                acks.setdefault(self.key(cls), []).extend(buf.pop(seq)[0] for seq in old)
            run = []
            nxt = done + 1
            while nxt in buf:
                run.append(nxt)
                nxt += 1
            upto = nxt - 1  # answers that follow an event up to here can go in (the stream has them in order)
            answers = [(eid, a) for eid, a in self.answers[cls].items() if a["after"] <= upto]
            clocks = [(eid, c) for eid, c in self.clocks[cls].items() if c[0] <= upto]
            if run or answers or clocks:
                parts.append((cls, [buf[seq][1] for seq in run], [a for _, a in answers], [c for _, c in clocks]))
                ids = [buf[seq][0] for seq in run] + [eid for eid, _ in answers] + [eid for eid, _ in clocks]
                acks.setdefault(self.key(cls), []).extend(ids)
                if run:
                    positions[cls] = _s(buf[run[-1]][0])
        n = 0
        if parts:
            def step(engine: Any) -> np.ndarray:
                out: list[np.ndarray] = []
                for cls, evs, answers, clocks in parts:
                    transfers, _ = s.events_and_answers(engine, cls, evs, [
                        Answer(a["book"], a["trade_id"], a["ready"], a["time"], a["after"], a.get("connection", ""),
                               a.get("reason", "")) for a in answers], clocks)
                    out.append(transfers)
                return join_transfers(out)

            s.run(step, positions)  # one transaction; raises (and commits nothing) on failure
            self.commits += 1
            for cls, evs, _, _ in parts:
                for ev in evs:
                    del self.buffer[cls][ev.seq]
                n += len(evs)
            for ids in acks.values():
                for eid in ids:
                    for cls in self.classes:
                        self.answers[cls].pop(eid, None)
                        self.clocks[cls].pop(eid, None)
            self.applied += n
            after = self.hooks.get("after_commit")
            if after is not None:
                after()
        for key, ids in acks.items():
            for i in range(0, len(ids), 5000):
                self.acked += self.r.xack(key, self.group, *ids[i:i + 5000])
        return n

    def step(self) -> int:
        """One round: own pending (first round only), claims, new entries, apply, ack.
        Returns the number of events committed."""
        if self._pending_from is not None:
            self._read_own_pending()
            self._plan_catch_up()
        if self._catch_up:
            self._read_catch_up()
        self._claim()
        self._read_new(block=not self._applicable())
        try:
            return self._apply_ready()
        except (LedgerError, SequenceGap, sqlite3.OperationalError) as e:
            log.error("settlement consumer %s: batch not applied, will retry: %s", self.name, e)
            time.sleep(min(self.block_ms, 1000) / 1000)
            return 0

    def _applicable(self) -> bool:
        """Something buffered can be applied or acknowledged now (else wait for new entries)."""
        if self.deposits:
            return True
        s = self.settlement
        return any(buf and min(buf) <= s.last_seq(cls) + 1 for cls, buf in self.buffer.items()) or any(
            a["after"] <= s.last_seq(cls) for cls, answers in self.answers.items() for a in answers.values()) or any(
            after <= s.last_seq(cls) for cls, clocks in self.clocks.items() for after, _ in clocks.values())

    def idle(self) -> bool:
        """Nothing buffered that could be applied."""
        return not any(self.buffer.values()) and not self.deposits and not any(self.answers.values()) \
            and not any(self.clocks.values())

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None) -> None:
        """Loop until ``stop`` is set, or (for tests and catch-up jobs) nothing arrived for ``idle_exit_s``."""
        self.setup()
        last = time.monotonic()
        while stop is None or not stop.is_set():
            if self.step():
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                return


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _autoclaim(r: Any, key: str, group: str, name: str, min_idle_ms: int, start: bytes, count: int
               ) -> tuple[bytes, list, list]:
    reply = r.xautoclaim(key, group, name, min_idle_time=min_idle_ms, start_id=start, count=count)
    nxt, entries = reply[0], reply[1]
    deleted = reply[2] if len(reply) > 2 else []
    return nxt, entries, deleted


def run_consumer(redis_url: str, prefix: str, classes: Iterable[str], ledger_path: str | Path, *,
                 group: str = "settlement", consumer: str | None = None,
                 config: SettlementConfig | None = None, stop: threading.Event | None = None,
                 idle_exit_s: float | None = None, claim_idle_ms: int = 30_000, count: int = 2000,
                 block_ms: int = 1000, synchronous: str = "NORMAL",
                 hooks: dict[str, Callable[[], None]] | None = None) -> RedisConsumer:
    """``gpux settle --redis URL``: run one member of settlement's consumer group until
    ``stop`` (or ``idle_exit_s`` without new events).  Returns the consumer (its counters)."""
    import redis as redis_lib

    r = redis_lib.Redis.from_url(redis_url)
    settlement = Settlement(ledger_path, config, synchronous=synchronous)
    c = RedisConsumer(r, prefix, classes, settlement, group=group, consumer=consumer, count=count,
                      block_ms=block_ms, claim_idle_ms=claim_idle_ms, hooks=hooks)
    try:
        c.run(stop, idle_exit_s)
    finally:
        settlement.close()
        r.close()
    return c


def main(argv: list[str] | None = None) -> int:
    """``python -m settlement.consumer --redis URL --classes H100,A100 --ledger DIR/ledger.db``
    (until ``gpux settle`` exists)."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m settlement.consumer", description=run_consumer.__doc__)
    p.add_argument("--redis", required=True, metavar="URL")
    p.add_argument("--prefix", default="gpux")
    p.add_argument("--classes", required=True, help="comma-separated GPU classes")
    p.add_argument("--ledger", required=True, help="the SQLite ledger file")
    p.add_argument("--group", default="settlement")
    p.add_argument("--consumer", default=None, help="this member's name (default host-pid)")
    p.add_argument("--fees", default="", help="CLASS=MAKER:TAKER,... in basis points")
    p.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    p.add_argument("--claim-idle-ms", type=int, default=30_000)
    args = p.parse_args(argv)
    fees = {}
    for item in filter(None, args.fees.split(",")):
        cls, _, rates = item.partition("=")
        mk, _, tk = rates.partition(":")
        fees[cls] = (int(mk), int(tk or mk))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    c = run_consumer(args.redis, args.prefix, args.classes.split(","), args.ledger, group=args.group,
                     consumer=args.consumer, config=SettlementConfig(fees=fees), stop=stop,
                     claim_idle_ms=args.claim_idle_ms, synchronous=args.synchronous)
    log.info("settled %d events in %d commits (%d claimed, %d caught up)", c.applied, c.commits, c.claimed,
             c.caught_up)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
