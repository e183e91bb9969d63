"""`gpux demo`: the embedded exchange with a simulated market trading on it, and the dashboard.

    gpux demo [--port 8080] [--data DIR] [--seconds N] [--seed N] [--engine numba|reference]

starts the exchange (gateway, sequencer, books, feeds, the dashboard at ``/``) over a fresh data
directory, then simulated participants that use the real APIs through the SDK like any user
(`client.api`): providers post, reprice, split and cancel asks over signed REST; traders bid
over their WebSocket sessions, cancel, release leases, and resell reserved time with resale asks
(``lease_id``, R16).  Engine time is wall time (the sequencer's clock commands, one per second),
so lease lengths and windows are real hours, while many small orders make the market move within
seconds.  It prints the dashboard's URL and keys to try the API by hand, a status line every
``--every`` seconds, and runs until Ctrl-C (or ``--seconds``).  docs/demo.md describes the cast.

Every provider (and the reseller, who hands its resold time on) runs the reference provider agent
(`agent`, docs/agent.md) on the ``command`` backend: at each lease's start the exchange
sends it the task (R18), its script answers with where the renter logs in (there are no real GPUs
in the demo; now and then a node "does not come up" and the lease fails, refunding the renter),
and settlement meters the lease from that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orderbook.types import (
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_RELEASED,
    EV_TRADE,
    HOUR,
)

TICK = 1_000  # µ$ per GPU-hour
USD = 1_000_000  # µ$


@dataclass(frozen=True)
class DemoClass:
    """A GPU class of the demo: typical prices in µ$ per GPU-hour and the node size."""

    name: str
    firm: int
    spot: int
    node: int  # GPUs per node: asks and most bids come in multiples of it


CLASSES = (
    DemoClass("H100", firm=2_000_000, spot=1_300_000, node=8),
    DemoClass("A100", firm=1_200_000, spot=750_000, node=8),
    DemoClass("RTX4090", firm=400_000, spot=250_000, node=2),
)
BY_NAME = {c.name: c for c in CLASSES}


# ====================================================================== the live demo
@dataclass(frozen=True)
class ProviderSpec:
    name: str
    fleet: dict[str, int]  # GPUs per class


PROVIDERS_LIVE = (
    ProviderSpec("northwind-dc", {"H100": 128, "A100": 64}),
    ProviderSpec("fjord-compute", {"H100": 96, "A100": 128}),
    ProviderSpec("garage-gpus", {"RTX4090": 96}),
    ProviderSpec("tundra-cloud", {"H100": 32, "A100": 64, "RTX4090": 48}),
)
TRADER_DEPOSIT = 10_000_000 * USD
HAND_DEPOSIT = 100_000 * USD


class Market:
    """What the participants believe a GPU-hour is worth: one fair firm price per class, a
    mean-reverting random walk (±~1% a step) around the class's reference price.  Spot is worth
    the class's spot/firm ratio of it.  Only the agents read it; the exchange knows nothing of it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fair = {c.name: float(c.firm) for c in CLASSES}

    def step(self) -> None:
        for c in CLASSES:
            f = self.fair[c.name]
            f += 0.08 * (c.firm - f) + f * self.rng.gauss(0, 0.012)
            self.fair[c.name] = min(max(f, c.firm * 0.7), c.firm * 1.4)

    def firm(self, name: str, lo: float, hi: float) -> int:
        return _tick(self.fair[name] * self.rng.uniform(lo, hi))

    def spot(self, name: str, lo: float, hi: float) -> int:
        c = BY_NAME[name]
        return _tick(self.fair[name] * c.spot / c.firm * self.rng.uniform(lo, hi))


def _tick(x: float) -> int:
    return max(TICK, int(round(x / TICK)) * TICK)


def next_reserved_start(now: float, gate_s: int = 300, margin_s: int = 30) -> int:
    """The first hour boundary a reserved bid may start at (R6: on the hour, ≥ gate_s ahead)."""
    t = int(now) + gate_s + margin_s
    return (t + HOUR - 1) // HOUR * HOUR


@dataclass
class Tally:
    """What the demo has seen happen (from the exchange's event bus), for the status lines."""

    trades: Counter = field(default_factory=Counter)  # by class
    kinds: Counter = field(default_factory=Counter)  # by lease kind
    gpu_hours: int = 0
    notional: int = 0
    resale: int = 0
    preempted: int = 0
    released: int = 0
    cancelled: int = 0
    expired: int = 0
    rejected: int = 0
    errors: Counter = field(default_factory=Counter)  # refusals the agents got, by code
    orders: int = 0  # orders the agents sent

    def on_batch(self, batch: Any) -> None:
        for name, ev in batch.events.items():
            if not len(ev):
                continue
            types = ev["type"]
            trades = ev[types == EV_TRADE]
            if len(trades):
                self.trades[name] += len(trades)
                for kind, n in zip(*np.unique(trades["kind"], return_counts=True), strict=True):
                    self.kinds[("spot", "on_demand", "reserved")[int(kind)]] += int(n)
                gh = trades["gpus"].astype(np.int64) * trades["hours"]
                self.gpu_hours += int(gh.sum())
                self.notional += int((gh * trades["price"]).sum())
                self.resale += int((trades["lease_id"] != 0).sum())
            self.preempted += int((types == EV_PREEMPTED).sum())
            self.released += int((types == EV_RELEASED).sum())
            self.cancelled += int((types == EV_CANCELLED).sum())
            self.expired += int((types == EV_EXPIRED).sum())
            self.rejected += int((types == EV_REJECTED).sum())

    def line(self, elapsed: float) -> str:
        per = " ".join(f"{c.name} {self.trades[c.name]}" for c in CLASSES)
        kinds = " ".join(f"{k} {self.kinds[k]}" for k in ("spot", "on_demand", "reserved"))
        return (f"[{elapsed:6.0f}s] {sum(self.trades.values())} trades ({per}; {kinds}; resale {self.resale}), "
                f"{self.gpu_hours:,} GPU-h for ${self.notional / USD:,.0f} · {self.preempted} preempted, "
                f"{self.released} released, {self.cancelled} cancelled, {self.expired} expired · "
                f"{self.orders} orders sent")


class Agent:
    """One participant: its own account, key and SDK client."""

    def __init__(self, demo: LiveDemo, name: str, key: str, secret: str, account: int, seed: str) -> None:
        from client.api import Client

        self.demo = demo
        self.name = name
        self.account = account
        self.client = Client(demo.url, key, secret)
        self.rng = random.Random(seed)
        self.market = demo.market

    async def sleep(self, lo: float, hi: float) -> None:
        await asyncio.sleep(self.rng.uniform(lo, hi) / self.demo.speed)

    def later(self, delay: float, coro_fn: Callable[[], Any]) -> None:
        """Run ``coro_fn()`` after ``delay`` seconds, in the background (job ends, cancels)."""

        async def go() -> None:
            await asyncio.sleep(delay / self.demo.speed)
            with contextlib.suppress(Exception):
                await coro_fn()

        self.demo.spawn(go())

    def refused(self, e: Exception) -> None:
        self.demo.tally.errors[getattr(e, "code", type(e).__name__)] += 1

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.client.close()


PROVISION_SCRIPT = """#!/bin/sh
# gpux demo: a provider's provisioning script (the agent's command backend, docs/agent.md).
# The task is in GPUX_* variables (and as JSON on stdin).  There are no real machines in the
# demo: it answers with where the renter would log in, and now and then a node does not come
# up, as real hardware does (the lease fails and the renter is refunded in full, R18).
case "$GPUX_TRADE_ID" in
  *37) echo "node for $GPUX_LEASE did not pass its GPU health check" >&2; exit 1 ;;
esac
printf '{"host": "%s", "port": 22, "user": "gpux", "gpus": "%s"}\\n' \\
  "$(echo "$GPUX_CLASS" | tr 'A-Z' 'a-z')-node-$((GPUX_TRADE_ID % 97)).demo.gpux.dev" "$GPUX_GPU_IDS"
"""


def _ssh_key(seed: str) -> str:
    """A real OpenSSH public key for a simulated trader (tasks carry it to the agents, R18)."""
    from agent.sshlib import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519", comment=f"{seed}@demo").export_public_key().decode().strip()


class ProviderAgent(Agent):
    """A provider with a fleet per class: posts it as asks over REST (most of it now, some of it
    from later hours, as hardware comes back from a long-term customer), then keeps repricing
    asks nobody has bought from (cancel + new ask at the current price), now and then splits one
    (amend down + a new ask for the node taken off) or posts a post-only ask."""

    def __init__(self, *args: Any, fleet: dict[str, int], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fleet = fleet

    def _price(self, cls: str) -> tuple[int, int]:
        price = self.market.firm(cls, 0.97, 1.15)
        spot = 0
        if self.rng.random() < 0.8:
            spot = min(price - TICK, self.market.spot(cls, 0.9, 1.1))
        return price, spot

    async def post(self, cls: str, gpus: int, start: int, end: int, post_only: bool = False) -> None:
        price, spot = self._price(cls)
        self.demo.tally.orders += 1
        try:
            await self.client.ask(cls, gpus=gpus, price=price, end=end, spot_price=spot, start=start,
                                  post_only=post_only)
        except Exception as e:  # e.g. POST_ONLY_WOULD_TRADE: the provider simply tries again later
            self.refused(e)
            if post_only:
                await self.post(cls, gpus, start, end)

    async def run(self) -> None:
        now = int(time.time())
        for cls, total in self.fleet.items():
            node = BY_NAME[cls].node
            later = total // 4 // node * node  # back from a long-term customer in some hours
            left = total - later
            while left > 0:
                gpus = min(left, node * self.rng.randint(2, 4))
                left -= gpus
                await self.post(cls, gpus, 0, now + self.rng.randint(36, 96) * HOUR)
            if later:
                start = (now // HOUR + self.rng.randint(6, 30)) * HOUR
                await self.post(cls, later, start, start + self.rng.randint(24, 72) * HOUR)
        while True:
            await self.sleep(2.0, 6.0)
            try:
                asks = await self.client.asks()
            except Exception as e:
                self.refused(e)
                continue
            fresh = [a for a in asks if a["filled"] == 0 and not a.get("lease_id")]
            if not fresh:
                continue
            a = self.rng.choice(fresh)
            r = self.rng.random()
            try:
                if r < 0.25 and a["gpus"] > BY_NAME[a["class"]].node:
                    node = BY_NAME[a["class"]].node
                    self.demo.tally.orders += 1
                    await self.client.amend_ask(a["oid"], a["gpus"] - node)
                    await self.post(a["class"], node, a["start"] if a["start"] > time.time() else 0, a["end"])
                else:
                    self.demo.tally.orders += 1
                    await self.client.cancel(a["oid"])
                    await self.post(a["class"], a["gpus"], a["start"] if a["start"] > time.time() else 0, a["end"],
                                    post_only=r > 0.85)
            except Exception as e:  # it traded meanwhile, or ended: fine
                self.refused(e)


class TraderAgent(Agent):
    """A trader with a WebSocket session (orders) and REST (leases)."""

    releases = True  # release on-demand/spot leases when the "job" is done

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.session: Any = None

    async def bid(self, cls: str, kind: str, gpus: int, hours: int, limit: int, block: int = 1, tif: str = "GTC",
                  start: int = 0, expire_at: int = 0) -> dict[str, Any] | None:
        self.demo.tally.orders += 1
        try:
            ack = await self.session.bid(cls, kind, gpus, hours, limit, block=block, tif=tif, start=start,
                                         expire_at=expire_at)
        except Exception as e:
            self.refused(e)
            return None
        for t in ack.get("trades", ()):
            self.on_lease(cls, t)
        return ack

    def on_lease(self, cls: str, trade: dict[str, Any]) -> None:
        """A lease bought (in an ack or pushed when a resting bid filled)."""
        if self.releases and trade["kind"] in ("spot", "on_demand"):
            self.later(self.job_seconds(), lambda: self.session.release(cls, trade["trade_id"]))

    def job_seconds(self) -> float:
        return self.rng.uniform(15, 60)

    def cancel_later(self, ack: dict[str, Any] | None, lo: float, hi: float) -> None:
        if ack and ack.get("order") and ack["order"]["status"] == "open":
            oid = ack["oid"]
            self.later(self.rng.uniform(lo, hi), lambda: self._cancel(oid))

    async def _cancel(self, oid: int) -> None:
        self.demo.tally.orders += 1
        await self.session.cancel(oid)

    async def _pushes(self) -> None:
        while True:
            m = await self.session.events.get()
            if m.get("event") == "trade" and m.get("buyer") == self.account:
                self.on_lease(m["class"], m)

    async def run(self) -> None:
        async with await self.client.trader(cancel_on_disconnect=True) as session:
            self.session = session
            pushes = asyncio.ensure_future(self._pushes())
            try:
                await self.trade()
            finally:
                pushes.cancel()

    async def trade(self) -> None:
        raise NotImplementedError


class SpotTrainer(TraderAgent):
    """Bursty training on spot: every few seconds a burst of spot bids for whole nodes (block),
    IOC or GTC (a GTC bid still open after some seconds is cancelled); a job releases its lease
    when it finishes (15–60 s here), unless it was preempted first (R12)."""

    async def trade(self) -> None:
        while True:
            await self.sleep(3.0, 10.0)
            for _ in range(self.rng.randint(3, 8)):
                cls = self.rng.choice(("H100", "H100", "A100"))
                node = BY_NAME[cls].node
                tif = self.rng.choice(("IOC", "GTC"))
                ack = await self.bid(cls, "spot", node * self.rng.randint(1, 2), self.rng.randint(1, 4),
                                     self.market.spot(cls, 0.9, 1.15), block=node, tif=tif)
                self.cancel_later(ack, 5, 20)
                await self.sleep(0.05, 0.4)


class InferenceTrader(TraderAgent):
    """Steady on-demand inference: a small bid every second or two (1–4 GPUs, 1–2 h), mostly IOC,
    some FOK, some GTC cancelled after a few seconds; leases are released after 20–90 s as load
    moves elsewhere."""

    def job_seconds(self) -> float:
        return self.rng.uniform(20, 90)

    async def trade(self) -> None:
        while True:
            await self.sleep(0.8, 2.5)
            cls = self.rng.choice(("A100", "RTX4090", "RTX4090", "H100"))
            tif = self.rng.choices(("IOC", "FOK", "GTC"), (0.7, 0.15, 0.15))[0]
            ack = await self.bid(cls, "on_demand", self.rng.randint(1, 4), self.rng.randint(1, 2),
                                 self.market.firm(cls, 0.98, 1.12), tif=tif)
            self.cancel_later(ack, 3, 8)


class ReservedBuyer(TraderAgent):
    """Reserved blocks: whole nodes from an hour boundary ahead (R6: on the hour, at least the gate
    ahead) — most for 2–6 h in the next hours, the rest for up to 24 h within 30 h — GTC or GTD;
    open bids are cancelled after 15–60 s."""

    async def trade(self) -> None:
        while True:
            await self.sleep(2.0, 6.0)
            cls = self.rng.choice(("H100", "A100"))
            node = BY_NAME[cls].node
            near = self.rng.random() < 0.6  # often the next hours: where resold time is on offer
            start = next_reserved_start(time.time()) + HOUR * self.rng.randint(0, 1 if near else 30)
            tif, expire = ("GTD", int(time.time()) + 45) if self.rng.random() < 0.3 else ("GTC", 0)
            hours = self.rng.randint(2, 6 if near else 24)
            ack = await self.bid(cls, "reserved", node * self.rng.randint(1, 3), hours,
                                 self.market.firm(cls, 0.97, 1.1), block=node, tif=tif, start=start,
                                 expire_at=expire)
            self.cancel_later(ack, 15, 60)


class Reseller(TraderAgent):
    """Buys reserved blocks for a run that starts at the next hour, then finds it needs less:
    resells part of each lease (some of its GPUs, some of its hours) with a resale ask
    (``lease_id``, R16) a little below the market.  Before the lease starts, reserved bids can buy
    it; once it runs, on-demand bids too."""

    releases = False

    def on_lease(self, cls: str, trade: dict[str, Any]) -> None:
        if trade["kind"] != "reserved":
            return
        node = BY_NAME[cls].node  # whole nodes: what reserved buyers (block = node) can take
        gpus = min(trade["gpus"], max(node, trade["gpus"] // 2 // node * node))
        hours = (trade["end"] - trade["start"]) // HOUR
        skip = self.rng.randint(0, max(0, min(2, hours - 4)))
        self.later(self.rng.uniform(1, 5), lambda: self._resell(cls, trade, gpus, trade["start"] + skip * HOUR))

    async def _resell(self, cls: str, trade: dict[str, Any], gpus: int, start: int) -> None:
        self.demo.tally.orders += 1
        try:
            await self.client.ask(cls, gpus=gpus, price=self.market.firm(cls, 0.94, 1.02), end=trade["end"],
                                  start=start, lease_id=trade["trade_id"])
        except Exception as e:
            self.refused(e)

    async def trade(self) -> None:
        while True:
            cls = self.rng.choice(("H100", "A100"))
            node = BY_NAME[cls].node
            await self.bid(cls, "reserved", 2 * node, self.rng.randint(6, 16), self.market.firm(cls, 1.08, 1.15),
                           block=node, tif="IOC", start=next_reserved_start(time.time()))
            await self.sleep(6.0, 14.0)


TRADERS_LIVE: tuple[tuple[str, type[TraderAgent]], ...] = (
    ("spot-lab-a", SpotTrainer),
    ("spot-lab-b", SpotTrainer),
    ("infer-co", InferenceTrader),
    ("chatbot-inc", InferenceTrader),
    ("reserve-ai", ReservedBuyer),
    ("resell-ml", Reseller),
)


class LiveDemo:
    """The exchange, its dashboard and the simulated participants, in one event loop."""

    def __init__(self, *, port: int = 8080, host: str = "127.0.0.1", data: str | None = None, seconds: float = 0,
                 seed: int = 7, engine: str | None = None, every: float = 10.0, speed: float = 1.0,
                 write: Callable[[str], None] = print) -> None:
        self.port = port
        self.host = host
        self.data_arg = data
        self.seconds = seconds
        self.seed = seed
        self.engine = engine
        self.every = every
        self.speed = speed
        self.write = write
        self.market = Market(random.Random(f"{seed}:market"))
        self.tally = Tally()
        self.url = ""
        self.agents: list[Agent] = []
        self._tasks: set[asyncio.Task] = set()
        self._tmp: str | None = None
        self.provider_agents: list[Any] = []  # the reference agents (agent.Agent)
        self.exchange: Any = None

    def spawn(self, coro: Any) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def data_dir(self) -> Path:
        if self.data_arg:
            return Path(self.data_arg)
        self._tmp = tempfile.mkdtemp(prefix="gpux-demo-")
        return Path(self._tmp)

    async def _listen(self, exchange: Any) -> int:
        try:
            return await exchange.serve(self.host, self.port)
        except OSError as e:
            if not self.port:
                raise
            self.write(f"gpux demo: port {self.port} is taken ({e.strerror}); using a free port instead")
            return await exchange.serve(self.host, 0)

    async def run(self) -> int:
        from app.exchange import Exchange
        from client.api import Client
        from exchange.config import ServerConfig

        data = self.data_dir()
        cfg = ServerConfig(host=self.host, port=self.port, data_dir=str(data), engine=self.engine)
        if _numba_cold(cfg.engine):
            self.write("gpux demo: compiling the numba order book (first run only: about a minute on a small "
                       "machine, cached afterwards)")
        t0 = time.monotonic()
        exchange = self.exchange = Exchange(cfg)
        await exchange.start()
        port = await self._listen(exchange)
        self.url = f"http://{self.host}:{port}"
        exchange.bus.subscribe(self.tally.on_batch)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            store = exchange.store
            _, admin_key, admin_secret = store.create_account("admin", "admin")
            admin = Client(self.url, admin_key, admin_secret)
            try:
                you = await admin.create_account("you", "trader", HAND_DEPOSIT)
                you_p = await admin.create_account("you-provider", "provider")
                for i, spec in enumerate(PROVIDERS_LIVE):
                    acc = await admin.create_account(spec.name, "provider")
                    self.agents.append(ProviderAgent(self, spec.name, acc["key_id"], acc["secret"], acc["account_id"],
                                                     f"{self.seed}:p{i}", fleet=spec.fleet))
                    await self._start_agent(data, spec.name, acc, sum(spec.fleet.values()))
                for i, (name, kind) in enumerate(TRADERS_LIVE):
                    acc = await admin.create_account(name, "trader", TRADER_DEPOSIT, ssh_public_key=_ssh_key(name))
                    self.agents.append(kind(self, name, acc["key_id"], acc["secret"], acc["account_id"],
                                            f"{self.seed}:t{i}"))
                    if kind is Reseller:  # it provisions the time it resells (on the hardware it leased)
                        await self._start_agent(data, name, acc, 0)
            finally:
                await admin.close()
            self._banner(data, (admin_key, admin_secret), you, you_p, time.monotonic() - t0)
            for a in self.agents:
                self.spawn(self._guard(a))
            self.spawn(self._market_moves())
            self.spawn(self._status(stop))
            if self.seconds:
                loop.call_later(self.seconds, stop.set)
            await stop.wait()
        finally:
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for a in self.agents:
                await a.close()
            for ag in self.provider_agents:
                with contextlib.suppress(Exception):
                    await ag.stop()
            await exchange.close()
            self.write(self.tally.line(time.monotonic() - t0) + self.provisioning_line())
            if self.tally.errors:
                refusals = ", ".join(f"{n} {code}" for code, n in self.tally.errors.most_common())
                self.write(f"refusals the participants got (normal in a live market): {refusals}")
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self.write("gpux demo: stopped")
        return 0

    async def _start_agent(self, data: Path, name: str, acc: dict[str, Any], gpus: int) -> None:
        """The reference provider agent for ``name`` on the command backend (docs/agent.md)."""
        from agent.agent import Agent as ProvisioningAgent
        from agent.command import CommandBackend

        home = data / "agents" / name
        home.mkdir(parents=True, exist_ok=True)
        script = data / "agents" / "provision.sh"
        if not script.exists():
            script.write_text(PROVISION_SCRIPT)
            script.chmod(0o755)
        agent = ProvisioningAgent(self.url, acc["key_id"], acc["secret"], CommandBackend(str(script), timeout=30),
                                  state_dir=home, gpus=gpus)
        await agent.start()
        self.provider_agents.append(agent)

    async def _guard(self, agent: Agent) -> None:
        """Run an agent; if its session drops (it should not), start it again after a pause."""
        while True:
            try:
                await agent.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                agent.refused(e)
                await asyncio.sleep(1.0)

    async def _market_moves(self) -> None:
        while True:
            await asyncio.sleep(2.0 / self.speed)
            self.market.step()

    async def _status(self, stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(self.every)
            self.write(self.tally.line(time.monotonic() - t0) + self.provisioning_line())

    def provisioning_line(self) -> str:
        p = getattr(self.exchange, "provisioning", None)
        if p is None:
            return ""
        return f" · provisioned {p.ready} ready, {p.failed} failed (of {p.sent} handed to agents)"

    def _banner(self, data: Path, admin: tuple[str, str], you: dict[str, Any], you_p: dict[str, Any],
                startup: float) -> None:
        gpux = _gpux_command()
        fresh = "fresh, removed when the demo stops" if self._tmp else "kept"
        w = self.write
        w("")
        w("gpux demo — a live GPU-hour market on the embedded exchange")
        w(f"  dashboard   {self.url}/")
        w(f"  API         {self.url}  (docs/api.md; market data: ws://{self.url[7:]}/v1/feeds)")
        w(f"  data        {data}  ({fresh})")
        w(f"  market      {', '.join(c.name for c in CLASSES)}: {len(PROVIDERS_LIVE)} providers, "
          f"{len(TRADERS_LIVE)} traders (spot training, on-demand inference, reserved blocks, resale)")
        w(f"  started in  {startup:.1f} s")
        w("")
        w("Keys for trying the API by hand (valid for this run only):")
        w(f"  admin     GPUX_KEY={admin[0]} GPUX_SECRET={admin[1]}")
        w(f"  trader    GPUX_KEY={you['key_id']} GPUX_SECRET={you['secret']}   "
          f"(account {you['account_id']}, ${HAND_DEPOSIT // USD:,} deposited)")
        w(f"  provider  GPUX_KEY={you_p['key_id']} GPUX_SECRET={you_p['secret']}   (account {you_p['account_id']})")
        w("")
        w("Buy 1 H100 GPU on demand for an hour at up to $2.50/GPU-hour (the command line takes dollars):")
        w(f"  GPUX_URL={self.url} GPUX_KEY={you['key_id']} GPUX_SECRET={you['secret']} \\")
        w(f"    {gpux} bid H100 --kind on_demand --gpus 1 --hours 1 --limit 2.50")
        w("Offer 8 A100 for a day at $1.10 firm, $0.70 spot:")
        w(f"  GPUX_URL={self.url} GPUX_KEY={you_p['key_id']} GPUX_SECRET={you_p['secret']} \\")
        w(f"    {gpux} ask A100 --gpus 8 --price 1.10 --spot-price 0.70 --end +1d")
        w("")
        w("Ctrl-C stops the demo." if not self.seconds else f"Stops after {self.seconds:g} s (Ctrl-C stops sooner).")
        w("")


def _gpux_command() -> str:
    script = Path(sys.executable).parent / "gpux"
    if script.exists():
        with contextlib.suppress(ValueError):
            return str(script.relative_to(Path.cwd()))
        return str(script)
    return "gpux"


def _numba_cold(engine: str | None) -> bool:
    """Whether the numba book's compiled code is not cached yet (a hint for the first run only)."""
    if engine == "reference":
        return False
    from orderbook import jitcache

    return not jitcache.cached("orderbook.fast")


def run_live(port: int = 8080, data: str | None = None, seconds: float = 0, seed: int = 7,
             engine: str | None = None, every: float = 10.0, host: str = "127.0.0.1") -> int:
    demo = LiveDemo(port=port, host=host, data=data, seconds=seconds, seed=seed, engine=engine, every=every,
                    write=lambda s: print(s, flush=True))
    return asyncio.run(demo.run())
