"""`gpux serve` killed with SIGKILL under load loses nothing it acknowledged (R15, R17, R21).

The exchange runs as a subprocess on a data directory.  Providers post asks over REST, traders
pipeline bids and cancels over WebSocket, most with client order ids; at a random moment
(seeded) the server gets kill -9.  Every round restarts it on the same directory and checks:

* recovery reads the whole journal, and the state hashes the restarted server reports
  (GET /v1/admin/state) equal an offline replay of the journal from seq 1 to the same seq;
* every order a client got an ack for is there with its oid, owner and client order id
  (cancels that were acked: cancelled), and every trade a client saw is a lease of its buyer
  and of its provider, once;
* a request whose answer the crash lost, retried with its client order id, gives one answer
  however often it is sent, and an acked one gives its first oid again (also a GTD bid whose
  expire_at passed during the outage);
* offline, `recover` with snapshots equals `recover` without them.

At the end a graceful stop: the journal is seqs 1..N, its final snapshot is at N with the
state hashes of a full replay, and no client order id reached the journal twice.  One run
uses only the journal (small segments: rotation); the other takes a snapshot every second, so
recovery is snapshot + tail.  GPUX_CRASH_SEED picks another sequence of kill moments.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest

from client.api import Client, ClientError, TraderSession
from exchange.config import ServerConfig, load_config
from exchange.engine import Engine
from exchange.entries import Cmd, decode_entry
from exchange.journal import read, segments
from exchange.money import settlement_config
from exchange.recovery import recover
from exchange.snapshots import Snapshot, snapshots
from gateway.accounts import AccountStore
from orderbook.types import CMD_ASK, CMD_BID, COMMAND_DTYPE, HOUR, commands
from settlement.link import SettlementLink
from settlement.service import Settlement

SEED = int(os.environ.get("GPUX_CRASH_SEED", "7"))
KILLS = 3  # rounds that end in kill -9; one more ends in a graceful stop
REPO = Path(__file__).resolve().parents[1]
GPUX = Path(sys.executable).with_name("gpux")
CLASSES = ("H100", "A100")
PROVIDERS = ("prov1", "prov2", "prov3")
TRADERS = ("trader1", "trader2", "trader3")
USD = 1_000_000
CONFIG = """\
[journal]
fsync = "batch"
segment_bytes = 32768
snapshot_every_s = {snapshot_every_s}

[limits]
max_open_orders = 100000
rate_per_s = 100000
rate_burst = 100000
"""
LOST = (aiohttp.ClientError, OSError, asyncio.TimeoutError)  # no answer: the server died


def gpux(*args: str) -> list[str]:
    return [str(GPUX), *args] if GPUX.exists() else [sys.executable, "-m", "cli.main", *args]


# ---------------------------------------------------------------------- the server process
class Server:
    """`gpux serve` on a free port (--port 0; the port is read from its first line of output)."""

    def __init__(self, data: Path, config: Path, logs: Path) -> None:
        self.data = data
        self.config = config
        self.logs = logs
        logs.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.logs / f"serve-{self.starts}.log"

    async def start(self) -> None:
        self.starts += 1
        out = self.logs / f"serve-{self.starts}.out"
        with open(out, "wb") as stdout, open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(
                gpux("serve", "--config", str(self.config), "--data", str(self.data), "--port", "0",
                     "--fsync", "batch", "--log-level", "INFO"),
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 30
        while not (m := re.search(r"serving on (http://\S+)", out.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"gpux serve did not come up:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.02)
        self.url = m.group(1)
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(self.url + "/healthz") as resp:
                        if resp.status == 200 and (await resp.json())["ok"]:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"/healthz never answered:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.02)

    def logged(self, msg: str) -> list[dict[str, Any]]:
        """The JSON log lines of the current run with this message."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [rec for rec in lines if rec.get("msg") == msg]

    def recovered(self) -> tuple[int, int]:
        """(seq recovered to, seq of the snapshot it started from, 0 for none)."""
        (rec,) = self.logged("recovered")
        restored = self.logged("restored snapshot")
        return rec["seq"], restored[0]["seq"] if restored else 0

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """A graceful stop (SIGTERM): drains, snapshots, closes the journal."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()[-3000:]


def make_accounts(data: Path) -> dict[str, tuple[int, str, str]]:
    """Accounts made before the server starts: the admin with the CLI, the rest in the store."""
    out = subprocess.run(gpux("accounts", "create", "admin", "--role", "admin", "--data", str(data), "--json"),
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    admin = json.loads(out)
    keys = {"admin": (admin["account_id"], admin["key_id"], admin["secret"])}
    with AccountStore(data / "accounts.db") as store:
        for name in PROVIDERS:
            acc, key, secret = store.create_account(name, "provider")
            keys[name] = (acc.id, key, secret)
        for name in TRADERS:
            acc, key, secret = store.create_account(name, "trader", 1_000_000 * USD)
            keys[name] = (acc.id, key, secret)
    return keys


# ---------------------------------------------------------------------- what clients were told
TRADE_FIELDS = ("bid_oid", "ask_oid", "buyer", "provider", "kind", "gpus", "price", "start")


@dataclass
class Placed:
    owner: str
    side: str
    book: str
    coid: str
    oid: int


@dataclass
class Seen:
    """Everything the clients were answered, and the requests whose answers were lost."""

    keys: dict[str, tuple[int, str, str]]
    orders: dict[int, Placed] = field(default_factory=dict)
    by_coid: dict[tuple[str, str], Any] = field(default_factory=dict)  # first answer: oid or error code
    requests: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)  # acked cancels
    trades: dict[str, dict[str, Any]] = field(default_factory=dict)  # lease ref -> trade
    lost: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (owner, side, request)
    lost_without_coid: int = 0
    checked: set[int] = field(default_factory=set)  # oids checked after a restart since their ack
    pushed_trades: int = 0
    numbers: dict[str, int] = field(default_factory=dict)  # per account: the last client order id number
    expired_retried: set[tuple[str, str]] = field(default_factory=set)

    def number(self, name: str) -> int:
        self.numbers[name] = self.numbers.get(name, 0) + 1
        return self.numbers[name]

    def name_of(self, account: int) -> str:
        return next(n for n, k in self.keys.items() if k[0] == account)

    def answered(self, owner: str, side: str, request: dict[str, Any], ans: dict[str, Any]) -> None:
        coid = request.get("client_order_id", "")
        oid = ans["oid"]
        placed = Placed(owner, side, ans["class"], coid, oid)
        prior = self.orders.setdefault(oid, placed)
        assert prior == placed, f"oid {oid} answered to two requests: {prior} and {placed}"
        if coid:
            first = self.by_coid.setdefault((owner, coid), oid)
            assert first == oid, f"{owner} {coid}: oid {oid}, first answered {first}"
        for t in ans.get("trades", ()):
            self.trade(t["lease"], t)

    def refused(self, owner: str, request: dict[str, Any], code: str) -> None:
        coid = request.get("client_order_id")
        if coid and code not in ("RATE_LIMITED", "UNAVAILABLE", "INSUFFICIENT_FUNDS", "TOO_MANY_ORDERS", "HALTED"):
            first = self.by_coid.setdefault((owner, coid), code)  # the book refused it: journaled
            assert first == code, f"{owner} {coid}: refused {code}, first answered {first}"

    def lose(self, owner: str, side: str, request: dict[str, Any]) -> None:
        if request.get("client_order_id"):
            self.lost.append((owner, side, request))
        else:
            self.lost_without_coid += 1

    def trade(self, ref: str, t: dict[str, Any]) -> None:
        core = {k: t[k] for k in TRADE_FIELDS}
        prior = self.trades.setdefault(ref, core)
        assert prior == core, f"lease {ref} seen as {prior} and as {core}"


# ---------------------------------------------------------------------- load
class Clients:
    """SDK clients of every account against the current server."""

    def __init__(self, url: str, keys: dict[str, tuple[int, str, str]]) -> None:
        self.rest = {name: Client(url, key, secret) for name, (_, key, secret) in keys.items()}
        self.sessions: dict[str, TraderSession] = {}

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.sessions.values():
            await t.close()
        for c in self.rest.values():
            await c.close()

    async def session(self, name: str) -> TraderSession:
        t = self.sessions.get(name)
        if t is None or t.ws.closed:
            t = self.sessions[name] = await self.rest[name].trader()
        return t


def ask_request(rng: random.Random, name: str, n: int) -> dict[str, Any]:
    price = rng.randint(150, 300) * 10_000
    body: dict[str, Any] = {"class": rng.choice(CLASSES), "gpus": rng.randint(4, 16), "price": price,
                            "end": int(time.time()) + rng.randint(3, 12) * HOUR,
                            "client_order_id": f"{name}-a{n}"}
    if rng.random() < 0.5:
        body["spot_price"] = price // 20_000 * 10_000
    if rng.random() < 0.1:
        body["post_only"] = True
    return body


def bid_op(rng: random.Random, name: str, n: int) -> dict[str, Any]:
    now = int(time.time())
    kind = rng.choices(["on_demand", "spot", "reserved"], [7, 2, 1])[0]
    op: dict[str, Any] = {"op": "bid", "class": rng.choice(CLASSES), "kind": kind, "gpus": rng.randint(1, 4),
                          "hours": rng.randint(1, 3), "limit": rng.randint(100, 320) * 10_000}
    if kind == "reserved":
        op["start"] = (now // HOUR + 2) * HOUR
    tif = rng.choices(["GTC", "IOC", "FOK", "GTD"], [6, 2, 1, 2])[0]
    if tif != "GTC":
        op["tif"] = tif
    if tif == "GTD":  # some expire before their retry after the restart: it must still find them
        op["expire_at"] = now + rng.choice([rng.randint(2, 5), rng.randint(60, 600)])
    if rng.random() < 0.85:
        op["client_order_id"] = f"{name}-b{n}"
    return op


async def post_ask(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await client.request("POST", "/v1/asks", dict(body))


async def provider(clients: Clients, seen: Seen, name: str, rng: random.Random, stop: asyncio.Event) -> None:
    client = clients.rest[name]
    own: list[int] = []
    while not stop.is_set():
        if own and rng.random() < 0.1:
            oid = own.pop(rng.randrange(len(own)))
            try:
                await client.cancel(oid)
                seen.cancelled.add(oid)
            except ClientError:
                pass  # filled or ended meanwhile
            except LOST:
                return
            continue
        body = ask_request(rng, name, seen.number(name))
        seen.requests[(name, body["client_order_id"])] = ("ask", dict(body))
        try:
            ans = await post_ask(client, body)
        except ClientError as e:
            seen.refused(name, body, e.code)
            continue
        except LOST:
            seen.lose(name, "ask", body)
            return
        seen.answered(name, "ask", body, ans)
        if ans["order"] is not None and ans["order"]["status"] == "open":
            own.append(ans["oid"])
        await asyncio.sleep(rng.uniform(0, 0.02))


async def trader(clients: Clients, seen: Seen, name: str, rng: random.Random, stop: asyncio.Event) -> None:
    try:
        t = await clients.session(name)
    except LOST:
        return
    own: list[int] = []
    while not stop.is_set() and not t.ws.closed:
        sent = []
        for _ in range(rng.randint(3, 12)):  # pipelined: sent without waiting for answers
            if own and rng.random() < 0.2:
                op = {"op": "cancel", "oid": own.pop(rng.randrange(len(own)))}
            else:
                op = bid_op(rng, name, seen.number(name))
                if "client_order_id" in op:
                    seen.requests[(name, op["client_order_id"])] = ("bid", dict(op))
            sent.append((dict(op), asyncio.ensure_future(t.send(op))))
        await asyncio.wait([f for _, f in sent], timeout=10)
        for op, fut in sent:
            if not fut.done():
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            m = fut.result() if fut.done() and fut.exception() is None else None
            if m is None:  # the session closed (ClientError CLOSED) or no answer came
                if op["op"] == "bid":
                    seen.lose(name, "bid", op)
            elif m.get("type") == "error":
                if op["op"] == "bid":
                    seen.refused(name, op, m["code"])
            elif op["op"] == "cancel":
                seen.cancelled.add(op["oid"])
            else:
                seen.answered(name, "bid", op, m)
                if m["order"] is not None and m["order"]["status"] == "open":
                    own.append(m["oid"])
        drain_pushes(t, seen)
        await asyncio.sleep(rng.uniform(0, 0.03))


def drain_pushes(t: TraderSession, seen: Seen) -> None:
    """Fills of resting orders reach their owner's session as pushes: trades the trader saw."""
    while not t.events.empty():
        m = t.events.get_nowait()
        if m.get("event", m.get("type")) == "trade":
            seen.pushed_trades += 1
            seen.trade(f"{m['class']}-{m['trade_id']}", m)


async def load(clients: Clients, seen: Seen, rng: random.Random, seconds: float, server: Server | None,
               snapshot_of: Path | None = None) -> None:
    """Providers and traders for `seconds`; then kill -9 (with a server) or let every request finish.
    With `snapshot_of` (a data directory), POST /v1/admin/snapshot halfway and wait for the file,
    so that the kill leaves a snapshot with journal entries after it."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(provider(clients, seen, name, random.Random(rng.random()), stop))
             for name in PROVIDERS for _ in range(2)]
    tasks += [asyncio.create_task(trader(clients, seen, name, random.Random(rng.random()), stop))
              for name in TRADERS]
    if snapshot_of is not None:
        await asyncio.sleep(seconds / 2)
        before = snapshots(snapshot_of)
        await clients.rest["admin"].request("POST", "/v1/admin/snapshot", {})
        deadline = time.monotonic() + 20
        while snapshots(snapshot_of) == before:
            assert time.monotonic() < deadline, "POST /v1/admin/snapshot wrote no snapshot"
            await asyncio.sleep(0.05)
        seconds /= 2
    await asyncio.sleep(seconds)
    if snapshot_of is not None:
        # snapshots are also written every second: kill only once the journal runs past the
        # newest one (on a loaded machine a periodic snapshot could otherwise cover everything)
        deadline = time.monotonic() + 20
        while (await clients.rest["admin"].state())["seq"] <= snapshots(snapshot_of)[-1][0]:
            assert time.monotonic() < deadline, "no journal entry after the newest snapshot"
            await asyncio.sleep(0.02)
    if server is not None:
        server.kill()
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    for t in clients.sessions.values():
        drain_pushes(t, seen)


# ---------------------------------------------------------------------- checks
def replay_to(cfg: ServerConfig, seq: int) -> Engine:
    """A fresh engine, no snapshot, with the journal's entries 1..seq applied."""
    engine = Engine(cfg.instruments, cfg.engine, money=settlement_config(cfg))
    entries = [decode_entry(payload) for _, payload in read(cfg.data_path / "journal", to_seq=seq)]
    assert len(entries) == seq
    for k in range(0, len(entries), 1000):
        engine.apply(entries[k:k + 1000])
    return engine


def journal_seqs(cfg: ServerConfig) -> list[int]:
    return [seq for seq, _ in read(cfg.data_path / "journal")]


async def check_state_equals_replay(clients: Clients, cfg: ServerConfig) -> int:
    """What the server reports against a fresh replay of the journal up to the same seq."""
    st = await clients.rest["admin"].state()
    engine = replay_to(cfg, st["seq"])
    assert st["state_hashes"] == {k: str(v) for k, v in engine.state_hashes().items()}
    assert st["money_hash"] == str(engine.money.state_hash())  # the money too (balances, escrow, leases)
    assert st["digest"] == engine.state.digest()
    assert st["last_oid"] == engine.last_oid
    return st["seq"]


async def gather_limited(coros: list[Any], limit: int = 16) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def check_acknowledged(clients: Clients, seen: Seen, rng: random.Random, everything: bool) -> None:
    """Every acked order (those not checked since a restart, a sample of the others, or all)
    answers GET /v1/orders/{oid} for its owner; every trade seen is a lease of both sides, once."""
    fresh = [p for oid, p in seen.orders.items() if oid not in seen.checked]
    old = [p for oid, p in seen.orders.items() if oid in seen.checked]
    todo = fresh + (old if everything else rng.sample(old, min(len(old), 50)))

    async def one(p: Placed) -> None:
        o = await clients.rest[p.owner].order(p.oid)
        got = (o["oid"], o["side"], o["class"], o["account"], o["client_order_id"])
        assert got == (p.oid, p.side, p.book, seen.keys[p.owner][0], p.coid), (got, p)
        if p.oid in seen.cancelled:
            assert o["status"] == "cancelled", o

    await gather_limited([one(p) for p in todo])
    seen.checked.update(p.oid for p in todo)

    listings = await gather_limited([clients.rest[name].leases() for name in (*PROVIDERS, *TRADERS)])
    held: dict[int, dict[str, dict[str, Any]]] = {}
    for name, leases in zip((*PROVIDERS, *TRADERS), listings, strict=True):
        refs = [x["lease"] for x in leases]
        assert len(refs) == len(set(refs)), f"{name} has a lease twice"
        held[seen.keys[name][0]] = {x["lease"]: x for x in leases}
    for ref, t in seen.trades.items():
        for account in (t["buyer"], t["provider"]):
            lease = held[account].get(ref)
            assert lease is not None, f"lease {ref} {t} is not among {seen.name_of(account)}'s leases"
            assert {k: lease[k] for k in TRADE_FIELDS} == t


async def retry(clients: Clients, owner: str, side: str, request: dict[str, Any]) -> dict[str, Any] | str:
    """Send a request again, as it was: the answer, or the code it was refused with."""
    if side == "ask":
        try:
            return await post_ask(clients.rest[owner], request)
        except ClientError as e:
            return e.code
    t = await clients.session(owner)
    m = await asyncio.wait_for(t.send({k: v for k, v in request.items() if k != "id"}), timeout=10)
    return m if m.get("type") == "ack" else m["code"]


def oid_or_code(answer: dict[str, Any] | str) -> int | str:
    return answer if isinstance(answer, str) else answer["oid"]


async def check_retries(clients: Clients, seen: Seen, rng: random.Random) -> None:
    """Requests whose answers the crash lost, sent again with their client order ids (twice: one
    answer), and acked ones (their first oid again): a sample, and every GTD bid whose expire_at
    has passed since (a retry is answered, not checked again as a new bid)."""
    lost, seen.lost = seen.lost, []
    for owner, side, request in lost:
        first = await retry(clients, owner, side, request)
        again = await retry(clients, owner, side, request)
        assert oid_or_code(first) == oid_or_code(again), (owner, request, first, again)
        if isinstance(first, str):
            seen.refused(owner, request, first)
        else:
            seen.answered(owner, side, request, first)
    acked = [(k, v) for k, v in seen.by_coid.items() if isinstance(v, int)]
    now = time.time()
    expired = [(k, v) for k, v in acked if k not in seen.expired_retried
               and 0 < seen.requests[k][1].get("expire_at", 0) < now]
    seen.expired_retried.update(k for k, _ in expired)
    for (owner, coid), oid in expired + rng.sample(acked, min(len(acked), 30)):
        side, request = seen.requests[(owner, coid)]
        assert oid_or_code(await retry(clients, owner, side, request)) == oid, (owner, coid)


def check_offline(cfg: ServerConfig) -> tuple[int, int]:
    """With the server down: the journal is gapless from 1; recovery with the newest snapshot
    equals recovery by replaying everything.  Returns (last seq, seq of the newest snapshot)."""
    seqs = journal_seqs(cfg)
    assert seqs == list(range(1, len(seqs) + 1))
    with_snapshot = recover(cfg)
    without = recover(cfg, use_snapshots=False)
    assert with_snapshot.seq == without.seq == len(seqs)
    assert with_snapshot.state_hashes() == without.state_hashes()
    assert with_snapshot.money.state_hash() == without.money.state_hash()
    assert with_snapshot.state.digest() == without.state.digest()
    assert with_snapshot.last_oid == without.last_oid
    snaps = snapshots(cfg.data_path)
    return len(seqs), snaps[-1][0] if snaps else 0


def check_journal_coids_once(cfg: ServerConfig) -> int:
    """No client order id of an account reached the journal twice (retries were answered, not
    journaled again): each order request with one is in the journal once."""
    seen: set[tuple[int, str]] = set()
    for _, payload in read(cfg.data_path / "journal"):
        e = decode_entry(payload)
        if type(e) is Cmd and e.coid:
            rec = commands(np.frombuffer(e.rec, dtype=COMMAND_DTYPE))[0]
            assert rec.type in (CMD_ASK, CMD_BID)
            key = (rec.account, e.coid)
            assert key not in seen, f"client order id {key} journaled twice"
            seen.add(key)
    return len(seen)


# ---------------------------------------------------------------------- the test
async def scenario(server: Server, cfg: ServerConfig, seen: Seen, rng: random.Random, snapshot: bool) -> None:
    journaled = snap_seq = 0
    tails = 0  # restarts from a snapshot with journal entries after it
    for round_ in range(KILLS + 1):
        last = round_ == KILLS
        await server.start()
        # recovery: everything written before the kill, from the newest snapshot if any
        assert server.recovered() == (journaled, snap_seq)
        assert not snapshot or round_ == 0 or 0 < snap_seq <= journaled
        tails += 0 < snap_seq < journaled
        async with Clients(server.url, seen.keys) as clients:
            seq = await check_state_equals_replay(clients, cfg)
            assert seq >= journaled
            await check_acknowledged(clients, seen, rng, everything=False)
            await check_retries(clients, seen, rng)
            await load(clients, seen, rng, rng.uniform(0.4, 1.6), None if last else server,
                       cfg.data_path if snapshot and not last else None)
            if last:  # no kill: all of it is there, and the state is the replay's
                await check_retries(clients, seen, rng)  # (any answer that took too long)
                await check_acknowledged(clients, seen, rng, everything=True)
                await check_state_equals_replay(clients, cfg)
        if last:
            server.stop()
        journaled, snap_seq = check_offline(cfg)
        if not snapshot:
            assert snap_seq == 0 or last, "snapshot_every_s is an hour: no snapshot before the graceful stop"
    assert tails >= (KILLS - 1 if snapshot else 0)

    # after the graceful stop: gapless journal, its last entry in the final snapshot, whose
    # recorded state hashes are those of a full replay
    seqs = journal_seqs(cfg)
    assert seqs == list(range(1, len(seqs) + 1))
    snap_seq, path = snapshots(cfg.data_path)[-1]
    assert snap_seq == len(seqs)
    snap = msgspec.msgpack.decode(path.read_bytes(), type=Snapshot)
    # the ledger, kept across every kill -9 (its cursor + the journal replay), is the ledger of
    # one clean pass over the journal: every event settled exactly once (docs/settlement.md)
    fresh = SettlementLink(cfg.with_(data_dir=str(cfg.data_path.parent / "fresh")))
    full = recover(cfg, use_snapshots=False, settled=fresh.cursor, sink=fresh.replayed)
    fresh.tick({name: full.book_time(name) for name in full.books})
    kept = Settlement(cfg.data_path / "ledger.db")
    assert fresh.healthy and len(kept.transfers()) > 100
    assert sorted(kept.transfers()) == sorted(fresh.settlement.transfers())
    assert kept.ledger.balances() == fresh.settlement.ledger.balances()
    assert full.money.all() == kept.ledger.balances()  # the core's money: the ledger's, account by account
    assert snap.money is not None and snap.money_hash == full.money.state_hash()
    kept.ledger.check_invariants()
    assert {name: b.state_hash for name, b in snap.books.items()} == full.state_hashes()
    assert snap.last_oid == full.last_oid
    assert check_journal_coids_once(cfg) >= len([v for v in seen.by_coid.values() if isinstance(v, int)])
    assert len(segments(cfg.data_path / "journal")) > 1


@pytest.mark.parametrize("snapshot", [False, True], ids=["journal", "snapshots"])
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, snapshot: bool) -> None:
    rng = random.Random(SEED * 2 + snapshot)
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "gpux.toml"
    config.write_text(CONFIG.format(snapshot_every_s=1 if snapshot else 3600))
    cfg = load_config(config).with_(data_dir=str(data))
    seen = Seen(make_accounts(data))
    server = Server(data, config, tmp_path / "logs")
    try:
        asyncio.run(scenario(server, cfg, seen, rng, snapshot))
    finally:
        server.kill()
    assert len(seen.orders) > 200 and len(seen.trades) > 50 and len(seen.cancelled) > 10
    assert seen.pushed_trades > 0
