"""The provider agent's runner: provisioning tasks in (R18), answers out, teardown at lease end.

    async with Agent(url, key_id, secret, SshBackend(state_dir), state_dir=state_dir, gpus=8) as agent:
        await agent.connected.wait()
        ...                                    # leases are provisioned while this runs
    # leaving the block tears every lease down

What it does, over the provider's signed account:

- connects ``/v1/feeds``, authenticates (the signed ``auth`` op) and subscribes to the private
  ``provisioning`` channel; once subscribed it fetches what is outstanding (``GET
  /v1/provisioning``), and again every ``poll_s`` seconds and whenever the channel's ``u`` shows a
  lost message; tasks are deduplicated by lease;
- runs each ``provision`` task on the backend in its own asyncio task (several at once) with
  GPU ids from a simple allocator (``gpus``), from the lease's start, within its ``deadline``; and
  answers ``POST /v1/provisioning/{lease}`` with ``ready`` and the connection, or ``failed`` and
  the backend's sentence; an answer that cannot be delivered is retried;
- tears each lease down at its ``end`` — the one in the task, or the one an ``end`` task moved it
  to (preemption, release), or at once when the exchange failed it; an end that concerns a lease
  not yet seen is kept for when it comes;
- posts the inventory's asks (`agent.inventory`) at start and every
  ``inventory_check_s`` seconds;
- reconnects with exponential backoff (0.5 s to 30 s) when the exchange goes away, and on
  reconnecting also checks ``GET /v1/leases`` for ends it may have missed;
- keeps its ready leases in ``STATE_DIR/leases.json``: a graceful stop tears everything down, and
  the next start provisions again the leases that have not ended (the ssh backend on the same
  port), so a restarted agent serves the renters it served before.

A bad message is logged and skipped; nothing a message holds can stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from agent.backend import Backend, BackendError, GpuAllocator
from agent.inventory import AskEntry, InventoryPoster, load_inventory
from agent.secret import hide_secret
from agent.tasks import EndTask, ProvisionTask, decode_task, task_dict
from client.api import Client, ClientError

log = logging.getLogger("gpux.agent")

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
FORGET_AFTER_S = 86_400  # ended leases are remembered this long (to ignore repeated tasks)


def now_s() -> int:
    """Engine time is wall-clock UTC seconds."""
    return int(time.time())


@dataclass
class LeaseState:
    task: ProvisionTask
    end: int
    status: str = "provisioning"  # provisioning | ready | failed | ended
    gpu_ids: list[int] = field(default_factory=list)
    connection: dict[str, Any] | None = None
    reason: str = ""
    ended_at: int = 0
    job: asyncio.Task | None = None  # the provisioning
    timer: asyncio.Task | None = None  # the teardown at `end`
    answer_job: asyncio.Task | None = None
    previous: dict[str, Any] | None = None  # the connection before the agent restarted

    @property
    def lease(self) -> str:
        return self.task.lease

    def answer(self) -> dict[str, Any]:
        if self.status == "ready":
            return {"status": "ready", "connection": self.connection or {}}
        return {"status": "failed", "reason": self.reason or "failed"}


class Agent:
    def __init__(self, url: str, key: str, secret: str, backend: Backend,
                 inventory: list[AskEntry] | Path | str | None = None, state_dir: Path | str | None = None,
                 gpus: int = 0, poll_s: float = 30.0, inventory_check_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.secret = secret
        hide_secret(secret)  # out of os.environ (children) and of /proc/PID/environ and cmdline (agent/secret.py)
        self.backend = backend
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if isinstance(inventory, str | Path):
            inventory = load_inventory(inventory)
        self.inventory = InventoryPoster(inventory or [], self.state_dir / "inventory.json"
                                         if self.state_dir is not None else None)
        self.gpus = GpuAllocator(gpus)
        self.poll_s = poll_s
        self.inventory_check_s = inventory_check_s
        self.client = Client(self.url, key, secret)
        self.leases: dict[str, LeaseState] = {}
        self.early_ends: dict[str, EndTask] = {}  # ends of leases not seen yet
        self.account = 0
        self.connected = asyncio.Event()
        self.connects = 0  # successful (re)connections, for tests and logs
        self.last_u: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._fetch_job: asyncio.Task | None = None
        self._stopping = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    # ------------------------------------------------------------------ life cycle
    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Resume the leases of a previous run, then connect (in the background)."""
        await self._resume()
        self._tasks = [asyncio.create_task(self._feed_loop(), name="agent-feed"),
                       asyncio.create_task(self._poll_loop(), name="agent-poll")]
        if self.inventory.entries:
            self._tasks.append(asyncio.create_task(self._inventory_loop(), name="agent-inventory"))

    async def run(self) -> None:
        """Start and run until cancelled (the CLI); stops gracefully."""
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Tear every lease down (kept in leases.json for the next start if not ended), close."""
        if self._stopping:
            return
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        jobs = []
        for st in self.leases.values():
            for j in (st.job, st.timer, st.answer_job):
                if j is not None and not j.done():
                    j.cancel()
                    jobs.append(j)
        await asyncio.gather(*jobs, return_exceptions=True)
        live = [st for st in self.leases.values() if st.status in ("provisioning", "ready")]
        await asyncio.gather(*(self._backend_teardown(st.lease) for st in live))
        with contextlib.suppress(Exception):
            await self.backend.close()
        await self.client.close()
        self.connected.clear()

    async def wait_status(self, lease: str, *statuses: str, timeout: float = 30.0) -> LeaseState:
        """Wait until ``lease`` is in one of ``statuses`` (tests, embedding)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.leases.get(lease)
            if st is not None and st.status in statuses:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"lease {lease} is {st.status if st else 'unknown'}, not {'/'.join(statuses)}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ the feed
    async def _feed_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                await self._feed_session()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as e:
                log.warning("exchange feed unavailable: %s; retrying in %.1f s", e or type(e).__name__, backoff)
            except ClientError as e:
                log.error("the exchange refused the agent's feed login: %s", e)
            except Exception:
                log.exception("feed session failed; reconnecting")
            if self.connected.is_set():
                backoff = BACKOFF_MIN_S  # it was up: the first retry is quick
            self.connected.clear()
            self._ws = None
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _feed_session(self) -> None:
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/feeds"
        async with self.client.session.ws_connect(ws_url, heartbeat=15, max_msg_size=0) as ws:
            self._ws = ws
            signer = self.client.signer
            assert signer is not None
            auth = signer.ws_auth()  # the REST calls' signer: its timestamps only go up, no replay
            auth["id"] = "auth"
            await ws.send_bytes(_enc.encode(auth))
            up = False
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                try:
                    m = _dec.decode(msg.data)
                    if not isinstance(m, dict):
                        raise ValueError("not a JSON object")
                except (msgspec.DecodeError, ValueError) as e:
                    log.warning("bad message on the feed: %s", e)
                    continue
                t = m.get("type")
                if t == "authenticated":
                    self.account = int(m.get("account", 0) or 0)
                    await ws.send_bytes(_enc.encode({"op": "subscribe", "channel": "provisioning", "id": "sub"}))
                elif t == "subscribed" and m.get("channel") == "provisioning":
                    up = True
                    self.connects += 1
                    self.last_u = None
                    self.connected.set()
                    log.info("connected to %s as account %s (connection %d)", self.url, self.account, self.connects)
                    self._fetch(reconcile=self.connects > 1)
                elif t == "error":
                    if not up and m.get("id") in ("auth", "sub"):
                        raise ClientError(str(m.get("code", "ERROR")), str(m.get("message", "")))
                    log.warning("feed error: %s: %s", m.get("code"), m.get("message"))
                elif t == "provisioning":
                    self._on_message(m)
                elif t == "heartbeat" and "account" in m:
                    u = (m.get("u") or {}).get("provisioning") if isinstance(m.get("u"), dict) else None
                    if isinstance(u, int) and self.last_u is not None and u != self.last_u:
                        log.info("provisioning stream: heartbeat at u=%s, last seen %s: fetching", u, self.last_u)
                        self.last_u = u
                        self._fetch(reconcile=True)
        raise ConnectionError(f"the feed closed ({ws.close_code})")

    def _on_message(self, m: dict[str, Any]) -> None:
        u = m.get("u")
        if isinstance(u, int):
            if m.get("action") != "snapshot" and self.last_u is not None and u != self.last_u + 1:
                log.info("provisioning stream: u=%s after %s: fetching what was missed", u, self.last_u)
                self._fetch(reconcile=True)
            self.last_u = u
        items = m.get("provisioning")
        if not isinstance(items, list):
            log.warning("provisioning message without a list of tasks: %.200s", m)
            return
        for item in items:
            self.handle(item)

    def handle(self, item: Any) -> None:
        """One task (a dict as sent by the exchange); a bad one is logged and skipped."""
        if isinstance(item, dict) and item.get("task") == "ready":
            return  # a renter's notice (an account that also rents): nothing to provision
        try:
            task = decode_task(item)
        except ValueError as e:
            log.warning("%s: %.300s", e, item)
            return
        try:
            if isinstance(task, ProvisionTask):
                self._on_provision(task)
            else:
                self._on_end(task)
        except Exception:
            log.exception("task for lease %s failed", getattr(task, "lease", "?"))

    # ------------------------------------------------------------------ outstanding tasks
    def _fetch(self, reconcile: bool = False) -> None:
        if self._fetch_job is None or self._fetch_job.done():
            self._fetch_job = asyncio.create_task(self._fetch_outstanding(reconcile))

    async def _fetch_outstanding(self, reconcile: bool = False) -> None:
        try:
            ans = await self.client.request("GET", "/v1/provisioning")
            tasks = ans.get("tasks", []) if isinstance(ans, dict) else []
            for item in tasks if isinstance(tasks, list) else []:
                self.handle(item)
            if reconcile:
                await self._reconcile_ends()
        except ClientError as e:
            log.warning("GET /v1/provisioning: %s", e)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("GET /v1/provisioning: exchange unavailable: %s", e)

    async def _reconcile_ends(self) -> None:
        """After a gap: leases whose end the exchange moved while we were not listening."""
        for lease in await self.client.leases():
            st = self.leases.get(str(lease.get("lease", "")))
            end = lease.get("end")
            if st is None or st.status not in ("provisioning", "ready") or not isinstance(end, int):
                continue
            if lease.get("provider") not in (None, self.account) and self.account:
                continue
            if end < st.end:
                self._move_end(st, end, str(lease.get("status", "")))

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.connected.is_set():
                self._fetch()
            self._forget_old()

    def _forget_old(self) -> None:
        cutoff = now_s() - FORGET_AFTER_S
        for ref in [r for r, st in self.leases.items() if st.status == "ended" and st.ended_at < cutoff]:
            del self.leases[ref]

    # ------------------------------------------------------------------ provisioning
    def _on_provision(self, task: ProvisionTask) -> None:
        st = self.leases.get(task.lease)
        if st is not None:
            if st.status in ("ready", "failed"):
                self._send_answer(st)  # the exchange has not got it: again (answers are idempotent)
            return  # provisioning now, or over
        st = LeaseState(task=task, end=task.end)
        early = self.early_ends.pop(task.lease, None)
        if early is not None:
            st.end = now_s() if early.reason == "failed" else min(st.end, early.end)
        self.leases[task.lease] = st
        log.info("provision %s: %d GPUs of %s (%s) until %d", task.lease, task.gpus, task.gpu_class, task.kind, st.end)
        st.job = asyncio.create_task(self._provision(st), name=f"provision-{task.lease}")

    async def _provision(self, st: LeaseState) -> None:
        task = st.task
        try:
            if task.start > now_s():
                await asyncio.sleep(task.start - time.time())
            now = now_s()
            if st.end <= now:
                raise BackendError("the lease ended before it was provisioned")
            while True:
                try:
                    st.gpu_ids = self.gpus.allocate(task.lease, task.gpus, task.start, st.end, now,
                                                    prefer=st.gpu_ids or None)
                    break
                except BackendError:
                    # R12: a firm lease that preempted spot waits until T0, when the spot lease ends
                    when = self.gpus.free_at(task.gpus, now)
                    if when is None or when >= min(task.deadline or st.end, st.end):
                        raise
                    log.info("lease %s waits for its GPUs until %d (a lease on them ends then)", task.lease, when)
                    await asyncio.sleep(max(0.0, when - time.time()) + 0.05)
                    now = now_s()
            resumed = st.previous is not None  # answered before a restart: its deadline is history
            timeout = task.deadline - time.time() if task.deadline and not resumed else None
            if timeout is not None and timeout <= 0:
                raise BackendError("the provisioning deadline has passed")
            try:
                conn = await asyncio.wait_for(self.backend.provision(task, st.gpu_ids, st.previous), timeout)
            except TimeoutError:
                raise BackendError("not ready before the provisioning deadline") from None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reason = str(e) if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
            await self._fail(st, reason)
            return
        if st.status != "provisioning":  # ended (failed by the exchange) while the backend worked
            await self._backend_teardown(task.lease)
            return
        st.status, st.connection = "ready", conn
        log.info("lease %s ready: %s", task.lease, {k: v for k, v in conn.items() if k != "host_key"})
        self._save()
        self._schedule_teardown(st)
        if conn != st.previous:
            self._send_answer(st)

    async def _fail(self, st: LeaseState, reason: str) -> None:
        log.warning("lease %s failed: %s", st.lease, reason)
        st.status, st.reason, st.ended_at = "failed", reason[:500], now_s()
        self.gpus.release(st.lease)
        await self._backend_teardown(st.lease)
        self._save()
        self._send_answer(st)

    def _send_answer(self, st: LeaseState) -> None:
        if st.answer_job is None or st.answer_job.done():
            st.answer_job = asyncio.create_task(self._answer(st), name=f"answer-{st.lease}")

    async def _answer(self, st: LeaseState) -> None:
        """POST the lease's answer; retried (backoff) while the exchange is unreachable, until the
        lease's end."""
        backoff = BACKOFF_MIN_S
        while True:
            try:
                await self.client.request("POST", f"/v1/provisioning/{st.lease}", st.answer())
                log.info("answered %s: %s", st.lease, st.status)
                return
            except ClientError as e:
                if e.status < 500 and e.code != "RATE_LIMITED":
                    log.warning("the exchange refused the answer for %s: %s", st.lease, e)
                    return
                log.warning("answer for %s: %s; retrying", st.lease, e)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("answer for %s: exchange unavailable (%s); retrying", st.lease, e)
            if now_s() >= st.end and st.status != "failed":
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    # ------------------------------------------------------------------ ends and teardown
    def _on_end(self, task: EndTask) -> None:
        end = now_s() if task.reason == "failed" else task.end
        st = self.leases.get(task.lease)
        if st is None:
            self.early_ends[task.lease] = task
            return
        self._move_end(st, end, task.reason)

    def _move_end(self, st: LeaseState, end: int, reason: str) -> None:
        if st.status in ("ended", "failed"):
            return
        log.info("lease %s now ends at %d (%s)", st.lease, end, reason or "moved")
        st.end = end
        self.gpus.move_end(st.lease, end)
        if st.status == "ready":
            self._save()
            self._schedule_teardown(st)
        elif end <= now_s():  # still provisioning: stop, nothing to answer
            st.status, st.reason, st.ended_at = "ended", reason, now_s()
            if st.job is not None:
                st.job.cancel()
            asyncio.create_task(self._backend_teardown(st.lease))
            self.gpus.release(st.lease)

    def _schedule_teardown(self, st: LeaseState) -> None:
        if st.timer is not None and not st.timer.done():
            st.timer.cancel()
        st.timer = asyncio.create_task(self._teardown_at(st), name=f"teardown-{st.lease}")

    async def _teardown_at(self, st: LeaseState) -> None:
        delay = st.end - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        st.status, st.ended_at = "ended", now_s()
        log.info("lease %s ended: tearing down", st.lease)
        self._save()  # ended: not to be provisioned again, even if the agent stops during the teardown
        await self._backend_teardown(st.lease)
        self.gpus.release(st.lease)
        self._save()

    async def _backend_teardown(self, lease: str) -> None:
        try:
            await self.backend.teardown(lease)
        except Exception:
            log.exception("teardown of lease %s failed", lease)

    # ------------------------------------------------------------------ inventory
    async def _inventory_loop(self) -> None:
        while True:
            try:
                await self.inventory.sync(self.client, now_s())
            except ClientError as e:
                log.warning("inventory: %s", e)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.warning("inventory: exchange unavailable: %s", e)
            except Exception:
                log.exception("inventory failed")
            await asyncio.sleep(self.inventory_check_s)

    # ------------------------------------------------------------------ state across restarts
    @property
    def _state_file(self) -> Path | None:
        return self.state_dir / "leases.json" if self.state_dir is not None else None

    def _save(self) -> None:
        path = self._state_file
        if path is None:
            return
        keep = {ref: {"task": task_dict(st.task), "end": st.end, "gpu_ids": st.gpu_ids, "connection": st.connection}
                for ref, st in self.leases.items() if st.status == "ready"}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the agent's only, whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(keep, indent=1, sort_keys=True))
        tmp.replace(path)

    async def _resume(self) -> None:
        path = self._state_file
        if path is None or not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
        except ValueError as e:
            log.warning("ignoring %s: %s", path, e)
            return
        now = now_s()
        for ref, entry in saved.items() if isinstance(saved, dict) else ():
            try:
                task = decode_task(entry["task"])
                end = int(entry.get("end", 0))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("ignoring lease %s in %s: %s", ref, path, e)
                continue
            if not isinstance(task, ProvisionTask) or end <= now or ref in self.leases:
                continue
            st = LeaseState(task=task, end=end, gpu_ids=list(entry.get("gpu_ids") or []),
                            previous=entry.get("connection"))
            self.leases[ref] = st
            log.info("resuming lease %s (until %d)", ref, end)
            st.job = asyncio.create_task(self._provision(st), name=f"provision-{ref}")
