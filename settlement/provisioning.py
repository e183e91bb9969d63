"""Provisioning (R18): each lease goes to its provider's agent at its start.

    p = Provisioning(link, timeout_s=600, enabled=True, book_times=..., journal_seq=..., submit=..., ssh_key=...)
    p.start()                            # after recovery: leases whose start passed meanwhile
    p.notices = feeds                    # where tasks and notices go (the feeds' private channel)
    p.outstanding(provider)              # GET /v1/provisioning: tasks not answered yet
    p.answer(provider, "H100-7", "ready", connection={...})   # POST /v1/provisioning/H100-7

When a book's engine time reaches a lease's start, the lease becomes *provisioning* in
settlement and a task goes to the provider on its private feed channel ``provisioning``::

    {"task": "provision", "lease": "H100-7", "class": "H100", "trade_id": 7, "kind": "spot",
     "gpus": 8, "start": ..., "end": ..., "deadline": start + provision_timeout_s,
     "renter": 12, "ssh_public_key": "ssh-ed25519 AAAA..."}

The agent answers over REST: ready with connection details (metering starts, R18; the renter
gets ``{"task": "ready", "lease", "connection"}`` on its own ``provisioning`` channel) or
failed (the renter is refunded in full).  No answer by the deadline: settlement fails the
lease at the deadline (refund) and both sides get ``{"task": "end", "reason": "failed"}``.
A preemption or release notice (R12, R16) moves the lease's end: both get ``{"task": "end",
"end", "reason": "preempted" | "released"}``.  A task is never lost: an agent that was away
asks ``GET /v1/provisioning`` for every lease still waiting for it.

With ``[settlement] provisioning = "auto"`` there are no agents: settlement makes every lease
ready at its start, and nothing here sends tasks.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import numpy as np

from clearing.leases import ENDED, FAILED, PENDING, PREEMPTED, PROVISIONING, READY, RELEASED
from exchange.entries import Prov
from exchange.errors import ApiError
from exchange.sequencer import Request
from orderbook.types import EV_PREEMPTED, EV_RELEASED, EV_TRADE, KIND_NAMES
from settlement.service import parse_lease_ref

log = logging.getLogger("gpux.provisioning")

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class Notices(Protocol):
    """Where provisioning's messages go: each account's private ``provisioning`` channel."""

    def provisioning_listening(self, account: int) -> bool: ...

    def publish_provisioning(self, account: int, gpu_class: str, tasks: list[dict[str, Any]], seq: int = 0,
                             when: int = 0) -> None: ...


class Provisioning:
    """Leases to their providers' agents.  ``link`` is settlement (whose transaction it steps in),
    ``book_times()`` each class's engine time, ``journal_seq()`` the core's last journal seq,
    ``submit`` hands a request to the sequencer, ``ssh_key(account)`` a renter's public key;
    ``notices`` is set once the feeds run."""

    def __init__(self, link: Any, *, timeout_s: int, enabled: bool, book_times: Callable[[], dict[str, int]],
                 journal_seq: Callable[[], int], submit: Callable[[Request], Awaitable[Any]],
                 ssh_key: Callable[[int], str | None]) -> None:
        self.link = link
        self.s = link.settlement
        self.timeout = timeout_s
        self.enabled = enabled
        self.book_times = book_times
        self.journal_seq = journal_seq
        self.submit = submit
        self.ssh_key = ssh_key
        self.notices: Notices | None = None
        self.starts: list[tuple[int, str, int]] = []  # (start, class, trade id) of pending leases
        self.deadlines: list[tuple[int, str, int]] = []  # (deadline, class, trade id) of tasked leases
        self.sent = 0  # tasks handed to agents
        self.ready = 0  # leases their agents reported ready
        self.failed = 0  # leases that failed (the agent said so, or no answer by the deadline)
        self.timed_out = 0
        self._started: list[Any] = []  # leases marked provisioning in the step being committed
        self._out_started: list[Any] = []  # committed: their tasks are to be sent
        self._out_notices: list[tuple[str, int, int, str, int]] = []  # committed preemptions and releases
        self._rebuild()

    def _rebuild(self) -> None:
        """The timetables from what settlement has live (at start, or after a failed commit)."""
        self.starts, self.deadlines = [], []
        for c in self.s.engine.classes.values():
            self.starts += [(x.start, c.name, x.trade_id) for x in c.find(status=PENDING)]
            self.deadlines += [(x.start + self.timeout, c.name, x.trade_id) for x in c.find(status=PROVISIONING)]
        heapq.heapify(self.starts)
        heapq.heapify(self.deadlines)

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_provisioning_tasks_total", self.sent, "leases handed to providers' agents (R18)", "counter"),
                ("gpux_provisioning_ready_total", self.ready, "leases agents reported ready", "counter"),
                ("gpux_provisioning_failed_total", self.failed, "leases failed: by the agent or no answer in time",
                 "counter")]

    def start(self) -> None:
        """Step in settlement's transactions from now on; start the leases whose start passed
        while the exchange was down."""
        self.link.provisioning = self
        if self.enabled:
            self.link.tick({})

    # ------------------------------------------------------------------ in settlement's transaction
    # (the link's lock held)
    def step(self, engine: Any, parts: list[tuple[str, np.ndarray]], now: dict[str, int]) -> list:
        """Part of a batch's ledger transaction (settlement.link): schedule the new leases and
        mark those whose start came *provisioning*; their tasks go out once it committed."""
        if not self.enabled:
            return []
        starts = self.starts
        for cls, ev in parts:
            trades = ev[ev["type"] == EV_TRADE]
            for tid, start in zip(trades["trade_id"].tolist(), trades["start"].tolist(), strict=True):
                heapq.heappush(starts, (start, cls, tid))
        while starts and starts[0][0] <= now.get(starts[0][1], 0):
            _, cls, tid = heapq.heappop(starts)
            lease = engine.lease(cls, tid)
            if lease is None or lease.status != PENDING:
                continue
            engine.mark_provisioning(cls, tid)  # no money moves
            self._started.append(lease)
        return []

    def failed_step(self) -> None:
        """The transaction was rolled back and settlement reloaded: rebuild the timetables."""
        self._started = []
        if self.enabled:
            self._rebuild()

    def events_committed(self, events: dict[str, np.ndarray]) -> None:
        """The transaction committed: what to tell agents and renters, on the event loop."""
        if not self.enabled:
            return
        self._out_started += self._started
        self._started = []
        for cls, ev in events.items():
            types = ev["type"]
            cut = ev[(types == EV_PREEMPTED) | (types == EV_RELEASED)]
            for tid, end, typ, t in zip(cut["trade_id"].tolist(), cut["end"].tolist(), cut["type"].tolist(),
                                        cut["time"].tolist(), strict=True):
                self._out_notices.append((cls, tid, end, "preempted" if typ == EV_PREEMPTED else "released", t))

    # ------------------------------------------------------------------ on the event loop
    def committed(self) -> None:
        """After a commit (link lock held): send the tasks of the leases it started, pass on
        the agents' answers and the preemption and release notices, tell both sides of leases
        whose deadline passed."""
        link = self.link
        if not self.enabled:
            link.answered_out = []
            return
        now = self.book_times()
        started, self._out_started = self._out_started, []
        notices, self._out_notices = self._out_notices, []
        answered, link.answered_out = link.answered_out, []
        for a, lease in answered:
            if a.ready:
                self.ready += 1
                self._send(lease.buyer, a.cls, [{"task": "ready", "lease": lease.ref, "class": a.cls,
                                                  "trade_id": a.trade_id, "connection": _dec.decode(a.connection)
                                                  if a.connection else {}, "start": lease.start, "end": lease.end}],
                           a.time)
            else:
                self.failed += 1
                self._notice(a.cls, a.trade_id, lease.end, "failed", a.time, detail=lease.failed_reason)
            log.info("provisioning answered", extra={"lease": lease.ref, "status": lease.status})
        for lease in started:
            heapq.heappush(self.deadlines, (lease.start + self.timeout, lease.cls, lease.trade_id))
            if self._listening(lease.provider):  # else its agent fetches it (GET /v1/provisioning)
                self._send(lease.provider, lease.cls, [self.task(lease)], now[lease.cls])
            self.sent += 1
        for cls, tid, end, reason, t in notices:
            self._notice(cls, tid, end, reason, t)
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now.get(deadlines[0][1], 0):
            _, cls, tid = heapq.heappop(deadlines)
            lease = self._lease(cls, tid)
            if lease is not None and lease.status == FAILED:
                self.timed_out += 1
                self.failed += 1
                log.warning("lease not provisioned in time: failed, renter refunded",
                            extra={"lease": lease.ref, "provider": lease.provider, "buyer": lease.buyer})
                self._notice(cls, tid, lease.end, "failed", now[cls], detail=lease.failed_reason)

    def _lease(self, cls: str, tid: int) -> Any:
        """Settlement's lease, live or settled (None if it has none)."""
        return self.s.engine.lease(cls, tid) or self.s.store.lease(cls, tid)

    # ------------------------------------------------------------------ messages
    def task(self, lease: Any) -> dict[str, Any]:
        key = self.ssh_key(lease.buyer) or ""
        return {"task": "provision", "lease": lease.ref, "class": lease.cls, "trade_id": lease.trade_id,
                "kind": KIND_NAMES.get(lease.kind, lease.kind), "gpus": lease.gpus, "start": lease.start,
                "end": lease.end, "deadline": lease.start + self.timeout, "renter": lease.buyer,
                "ssh_public_key": key}

    def _listening(self, account: int) -> bool:
        return self.notices is not None and self.notices.provisioning_listening(account)

    def _send(self, account: int, cls: str, items: list[dict[str, Any]], when: int) -> None:
        if self.notices is not None:
            self.notices.publish_provisioning(account, cls, items, seq=self.journal_seq(), when=when)

    def _notice(self, cls: str, tid: int, end: int, reason: str, when: int, **extra: Any) -> None:
        lease = self._lease(cls, tid)
        if lease is None:
            return
        item = {"task": "end", "lease": lease.ref, "class": cls, "trade_id": tid, "end": end, "reason": reason,
                **extra}
        self._send(lease.provider, cls, [item], when)
        if lease.buyer != lease.provider:
            self._send(lease.buyer, cls, [item], when)

    # ------------------------------------------------------------------ the agent's side
    def outstanding(self, provider: int) -> list[dict[str, Any]]:
        """Tasks of ``provider`` not answered yet (leases provisioning), oldest start first."""
        with self.link.lock:
            leases = [x for c in self.s.engine.classes.values() for x in c.find(provider=provider, status=PROVISIONING)]
        return sorted((self.task(x) for x in leases), key=lambda t: (t["start"], t["lease"]))

    async def answer(self, provider: int, ref: str, status: str, connection: dict[str, Any] | None = None,
                     reason: str = "") -> dict[str, Any]:
        """The agent's answer to a task, checked, then journaled (so the ledger replays it) and
        settled.  Ready: metering starts now, the renter gets the connection.  Failed: the
        renter is refunded in full.  A repeat changes nothing."""
        link = self.link
        await link.synced()  # the lease's trade is in the ledger
        with link.lock:
            cls, tid, lease = self._check(provider, ref, status)
            if lease.status == (READY if status == "ready" else FAILED):
                return self._view(lease.ref)  # a repeat: answered already
            entry = Prov(cls, tid, status == "ready", 0, 0,  # time and place: stamped by the sequencer
                         _enc.encode(connection).decode() if connection else "", reason)
        await self.submit(Request(cls, None, provider, prov=entry))
        await link.synced()
        view = self.view(ref)
        took = (READY, ENDED, RELEASED, PREEMPTED) if entry.ready else (FAILED,)
        if view["status"] not in took:
            raise ApiError("LEASE_STATE", f"lease {ref} is {view['status']}: the answer came too late", 409)
        return view

    def _check(self, provider: int, ref: str, status: str) -> tuple[str, int, Any]:
        """The lease an answer is for, if this provider may give that answer now."""
        try:
            cls, tid = parse_lease_ref(ref)
        except ValueError as e:
            raise ApiError("MALFORMED", str(e)) from None
        if cls not in self.book_times():
            raise ApiError("UNKNOWN_LEASE", f"no lease {ref}", 404)
        lease = self._lease(cls, tid)
        if lease is None:
            raise ApiError("UNKNOWN_LEASE", f"no lease {ref}", 404)
        if lease.provider != provider:
            raise ApiError("NOT_OWNER", f"lease {ref} is not on this account's capacity", 403)
        if status == "ready":
            if lease.status == PENDING:
                raise ApiError("LEASE_STATE", f"lease {ref} starts at {lease.start}; it was not handed out yet", 409)
            if lease.status == FAILED:
                raise ApiError("LEASE_STATE", f"lease {ref} failed already ({lease.failed_reason})", 409)
        elif lease.status not in (PENDING, PROVISIONING, FAILED):
            raise ApiError("LEASE_STATE", f"lease {ref} is {lease.status}: only a lease not ready yet can fail", 409)
        return cls, tid, lease

    # ------------------------------------------------------------------ views
    def connection(self, ref: str) -> dict[str, Any] | None:
        raw = self.s.connection(ref)
        return _dec.decode(raw) if raw else None

    def view(self, ref: str) -> dict[str, Any]:
        """Settlement's side of a lease: its status, when it got ready, how to connect, what
        was paid (the API adds it to the lease as ``settlement``)."""
        with self.link.lock:
            return self._view(ref)

    def _view(self, ref: str) -> dict[str, Any]:
        x = self.s.lease(ref)
        if x is None:
            return {"status": "unknown"}
        return {"status": x["status"], "ready_at": x["ready_at"], "failed_reason": x["failed_reason"],
                "connection": self.connection(ref), "paid": x["paid"], "fee": x["buyer_fee"],
                "refunded": x["refunded"], "earned": x["earned"]}

