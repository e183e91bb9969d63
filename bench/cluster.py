"""The exchange across processes on its own Redis, under load, through failures (issue 15).

    python -m bench.cluster [--seconds 24] [--traders 4] [--providers 2] [--lease-ms 2000] [--json]

Starts a private `redis-server` and a replica of it on free loopback ports, a core leader
(`gpux serve --ha`, answering a batch once the Redis replica has it too) and its standby
(`gpux serve --standby`), two order gateways (`gpux gateway`), two market-data processes
(`gpux feeds`) and `gpux settle`.  Providers post asks and traders bid (every request with a
client order id) through the gateways; book and trade subscribers read the feed processes.  It
measures orders/s through one gateway, then through both, the ack latency and each process's
CPU per order, then injects, one at a time:

1. **kill -9 of the leader.**  The standby takes the lease, reads the stream to its end and starts
   as the leader; the gateways need nothing (they talk to Redis).  A new standby follows it.
2. **SIGSTOP of the leader past its lease, then SIGCONT.**  The standby takes over; the old
   leader, woken, finds its appends refused (fenced by the lease inside Redis) and exits (code 3)
   without answering anything it had not replicated.
3. **kill -9 of a gateway** (its clients go to the other one and send again what was not
   answered, with the same client order ids; it is restarted);
4. **kill -9 of a market-data process** (its subscribers go to the other; it is restarted);
5. **a restart of the Redis replica** (answers wait for it meanwhile).

``failover_s`` is, for 1 and 2, the time from the fault to the first order acknowledged with an
order id the old leader never gave.  The benchmark fails unless: ``acked_lost`` 0 (every answered
order is on the last leader with its client order id), ``duplicate_fills`` 0 (no lease twice, no
client order id journaled twice), ``standby_hash_equal`` (the last standby's state hashes, logged
when it stops, equal a fresh replay of the leader's journal to the same seq), ``settle_equal``
(`gpux settle`'s ledger equals the last leader's own and one built afresh from its journal),
``books_equal`` (every subscriber's level 2 equals the leader's, and the book rebuilt from each
market-data process's recording at the same seq) and every ``failover_s`` ≤ 5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.redis_outage import RedisServer, ledger_transfers
from client.api import Client, ClientError, TraderSession
from client.feeds import FeedClient
from gateway.accounts import AccountStore

REPO = Path(__file__).resolve().parents[1]
USD = 1_000_000
HOUR = 3600
LOST = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError)
CONFIG = """\
[server]
lease_ms = {lease_ms}
redis_replicas = {replicas}

[journal]
snapshot_every_s = 30

[limits]
max_open_orders = 100000
rate_per_s = 100000
rate_burst = 100000

[settlement]
provisioning = "auto"
"""


def gpux(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


class Proc:
    """One gpux process (core, gateway, market data); its output in ``work/logs``."""

    def __init__(self, name: str, work: Path, args: list[str], ready: str) -> None:
        self.name = name
        self.data = work / name
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.ready = ready  # the line it prints once it serves: "<ready> http://..."
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    @property
    def out(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def err(self) -> Path:
        return self.logs / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        self.url = ""
        if self.out.exists():
            self.out.write_text("")
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen(gpux(*self.args, "--data", str(self.data), "--port", "0"),
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)

    def serving(self) -> str:
        if not self.url and self.out.exists():
            m = re.search(re.escape(self.ready) + r" (http://\S+)", self.out.read_text())
            if m:
                self.url = m.group(1)
        return self.url

    async def wait_serving(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not self.serving():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not come up:\n{self.tail()}")
            await asyncio.sleep(0.01)
        return self.url

    def tail(self, n: int = 3000) -> str:
        return self.err.read_text()[-n:] if self.err.exists() else ""

    def logged(self, msg: str) -> list[dict[str, Any]]:
        if not self.err.exists():
            return []
        lines = [json.loads(x) for x in self.err.read_text().splitlines() if x.startswith("{")]
        return [r for r in lines if r.get("msg") == msg]

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def cpu_s(self) -> float:
        return cpu_s(self.proc)


def cpu_s(proc: subprocess.Popen | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    if proc is None or proc.poll() is not None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Other:
    """A process not started as a `Proc` (gpux settle, redis-server), for its CPU."""

    def __init__(self, name: str, proc: subprocess.Popen | None) -> None:
        self.name = name
        self.proc = proc

    def cpu_s(self) -> float:
        return cpu_s(self.proc)


class Cluster:
    """The gateways clients may use, what clients were told, and when."""

    def __init__(self, keys: dict[str, tuple[int, str, str]]) -> None:
        self.keys = keys
        self.gateways: list[str] = []  # URLs of the gateways that serve
        self.acked: dict[int, tuple[str, str]] = {}  # oid -> (owner, coid)
        self.by_coid: dict[tuple[str, str], int] = {}
        self.leases: dict[str, tuple[int, int]] = {}  # lease ref -> (bid oid, ask oid) seen in answers
        self.latencies: list[float] = []
        self.acks: list[tuple[float, int]] = []  # (monotonic time, oid) of each ack
        self.retried = 0
        self.mismatch: list[str] = []
        self.one_gateway = True  # every client on the first gateway (a throughput phase)

    def answered(self, owner: str, coid: str, ans: dict[str, Any], took: float) -> None:
        oid = ans["oid"]
        first = self.by_coid.setdefault((owner, coid), oid)
        if first != oid:
            self.mismatch.append(f"{owner} {coid}: oid {oid}, first answered {first}")
        self.acked[oid] = (owner, coid)
        for t in ans.get("trades", ()):
            self.leases.setdefault(t["lease"], (t["bid_oid"], t["ask_oid"]))
        self.latencies.append(took)
        self.acks.append((time.monotonic(), oid))

    def gateway_for(self, i: int, avoid: str = "") -> str:
        live = [g for g in self.gateways if g != avoid] or self.gateways
        return live[0] if self.one_gateway else live[i % len(live)]


async def _actor(cl: Cluster, i: int, name: str, provider: bool, stop: asyncio.Event) -> None:
    """Requests one after another through a gateway; what got no answer is sent again, with the
    same client order id, through the same gateway or, if it is gone, another."""
    _, key, secret = cl.keys[name]
    rng = random.Random(name)
    n = 0
    pending: list[dict[str, Any]] = []
    client: Client | None = None
    session: TraderSession | None = None
    url, avoid = "", ""
    while not stop.is_set() or pending:
        want = cl.gateway_for(i, avoid)
        if want != url or client is None:
            for c in (session, client):
                if c is not None:
                    try:
                        await c.close()
                    except Exception:  # noqa: BLE001 - a dead connection
                        pass
            client, session, url = Client(want, key, secret, timeout=15), None, want
        if pending:
            req, again = pending.pop(0), True
        else:
            n += 1
            now = int(time.time())
            if provider:
                req = {"class": "H100", "gpus": rng.randint(4, 16), "price": rng.randint(150, 300) * 10_000,
                       "end": now + rng.randint(4, 12) * HOUR, "client_order_id": f"{name}-{n}"}
            else:
                req = {"class": "H100", "kind": "on_demand", "gpus": rng.randint(1, 4), "hours": 1,
                       "limit": rng.randint(150, 300) * 10_000, "tif": rng.choice(["GTC", "IOC"]),
                       "client_order_id": f"{name}-{n}"}
            again = False
        t0 = time.perf_counter()
        try:
            if provider:
                ans = await client.ask(req["class"], req["gpus"], req["price"], req["end"],
                                       client_order_id=req["client_order_id"])
            else:
                if session is None or session.ws.closed:
                    session = await client.trader()
                ans = await session.bid(req["class"], req["kind"], req["gpus"], req["hours"], req["limit"],
                                        tif=req["tif"], client_order_id=req["client_order_id"])
        except ClientError as e:
            if e.code in ("UNAVAILABLE", "TIMEOUT", "HTTP_ERROR", "MALFORMED"):
                pending.insert(0, req)
                await asyncio.sleep(0.05)
            continue  # else: refused by the rules (e.g. INSUFFICIENT_FUNDS): an answer, nothing to check
        except LOST:  # the gateway went away: another one
            pending.insert(0, req)
            avoid = url
            client = None
            await asyncio.sleep(0.05)
            continue
        avoid = ""
        if again:
            cl.retried += 1
        cl.answered(name, req["client_order_id"], ans, time.perf_counter() - t0)
        await asyncio.sleep(0)
    for c in (session, client):
        if c is not None:
            await c.close()


class Subscriber:
    """Book and trades of H100 from a market-data process; to another one when it goes away."""

    def __init__(self, urls: list[str], i: int) -> None:
        self.urls = urls
        self.i = i
        self.fc: FeedClient | None = None
        self.reconnects = 0
        self.task: asyncio.Task | None = None

    async def connect(self) -> None:
        for k in range(len(self.urls)):
            url = self.urls[(self.i + k) % len(self.urls)]
            try:
                fc = FeedClient(url)
                await fc.connect()
                await fc.subscribe("book", "H100")
                await fc.subscribe("trades", "H100")
                self.fc = fc
                return
            except LOST:
                continue
        raise RuntimeError("no market-data process answers")

    async def run(self, stop: asyncio.Event) -> None:
        await self.connect()
        while not stop.is_set():
            assert self.fc is not None and self.fc.closed is not None
            done, _ = await asyncio.wait([asyncio.ensure_future(stop.wait()), self.fc.closed],
                                         return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                break
            self.reconnects += 1
            await self.fc.close()
            await asyncio.sleep(0.2)
            self.i += 1
            await self.connect()

    def level2(self) -> dict[str, Any] | None:
        book = self.fc.books.get("H100") if self.fc is not None else None
        return book.level2() if book is not None else None


def make_accounts(data: Path, providers: int, traders: int) -> dict[str, tuple[int, str, str]]:
    keys: dict[str, tuple[int, str, str]] = {}
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    with AccountStore(data / "accounts.db") as store:
        acc, key, secret = store.create_account("root", "admin")
        keys["root"] = (acc.id, key, secret)
        for i in range(providers):
            acc, key, secret = store.create_account(f"prov{i}", "provider")
            keys[f"prov{i}"] = (acc.id, key, secret)
        for i in range(traders):
            acc, key, secret = store.create_account(f"trader{i}", "trader", 10_000_000 * USD)
            keys[f"trader{i}"] = (acc.id, key, secret)
    return keys


def replay_hashes(journal_dir: Path, cfg: Any, upto: int) -> tuple[dict[str, str], str]:
    """State and money hashes of a fresh engine fed the journal's seqs 1..upto."""
    from exchange.engine import Engine
    from exchange.entries import decode_entries
    from exchange.journal import read
    from exchange.money import settlement_config

    engine = Engine(cfg.instruments, cfg.engine, None, settlement_config(cfg))
    chunk: list[bytes] = []
    for _, payload in read(journal_dir, 1, upto):
        chunk.append(payload)
        if len(chunk) >= 4096:
            engine.apply(decode_entries(chunk), results=False)
            chunk = []
    if chunk:
        engine.apply(decode_entries(chunk), results=False)
    out = ({k: str(v) for k, v in engine.state_hashes().items()}, str(engine.money.state_hash()))
    engine.close()
    return out


def fresh_ledger(journal_dir: Path, cfg: Any, path: Path) -> tuple[list, dict]:
    """The transfers and balances of a ledger built afresh from the journal files (a new replica,
    as `gpux settle` is, fed from seq 1)."""
    from exchange.stream import FileJournal
    from settlement.replica import Replica

    path.parent.mkdir(parents=True, exist_ok=True)
    rep = Replica(cfg, path, snapshot_every=1 << 40)
    src = FileJournal(journal_dir)
    try:
        while payloads := src.fetch(rep.engine.seq, 5000):
            rep.apply_chunk(rep.engine.seq + 1, payloads)
    finally:
        rep.close()
        src.reader.close()
    return ledger_transfers(path)


def journal_scan(journal_dir: Path, upto: int | None = None) -> tuple[int, int]:
    """(client order ids journaled more than once per account, the highest order id given), in the
    journal's seqs 1..upto."""
    import numpy as np

    from exchange.entries import Cmd, decode_entry
    from exchange.journal import read
    from orderbook.types import CMD_ASK, CMD_BID, COMMAND_DTYPE

    seen: set[tuple[int, str]] = set()
    dups = top = 0
    for _, payload in read(journal_dir, 1, upto):
        e = decode_entry(payload)
        if type(e) is Cmd:
            rec = np.frombuffer(e.rec, dtype=COMMAND_DTYPE)[0]
            if int(rec["type"]) in (CMD_BID, CMD_ASK):
                top = max(top, int(rec["oid"]))
            if e.coid:
                k = (int(rec["account"]), e.coid)
                dups += k in seen
                seen.add(k)
    return dups, top


def _taken_over_top(standby: Proc) -> int:
    """The highest order id the old leader gave (and replicated): in the new leader's journal, up to
    the seq it took over at."""
    m = re.search(r"caught up to journal seq (\d+)", standby.err.read_text())
    if m is None:
        raise RuntimeError(f"{standby.name} took over without saying where")
    return journal_scan(standby.data / "journal", int(m.group(1)))[1]


async def _failover_s(cl: Cluster, t: float, standby: Proc, timeout: float = 60) -> float:
    """Seconds from the fault at ``t`` to the first ack of an order id the old leader never gave."""
    old_top = _taken_over_top(standby)
    while not any(a > t and oid > old_top for a, oid in cl.acks[-500:]):
        if time.monotonic() - t > timeout:
            raise RuntimeError("no order was acknowledged by the new leader")
        await asyncio.sleep(0.01)
    return min(a for a, oid in cl.acks if a > t and oid > old_top) - t


async def _rate(cl: Cluster, seconds: float, procs: list[Any]) -> tuple[float, dict[str, float]]:
    """Orders/s over ``seconds``, and each process's CPU µs per order meanwhile."""
    cpu0 = {p.name: p.cpu_s() for p in procs}
    n0, t0 = len(cl.acked), time.monotonic()
    await asyncio.sleep(seconds)
    n, dt = len(cl.acked) - n0, time.monotonic() - t0
    cpu = {p.name: round((p.cpu_s() - cpu0[p.name]) * 1e6 / max(n, 1), 1) for p in procs}
    return round(n / dt, 1), cpu


async def scenario(work: Path, seconds: float = 24.0, traders: int = 4, providers: int = 2, lease_ms: int = 2000,
                   seed: int = 7, log: Any = print) -> dict[str, Any]:
    """The whole run (see the module docstring); returns the report."""
    from exchange.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    config = work / "gpux.toml"
    config.write_text(CONFIG.format(lease_ms=lease_ms, replicas=1))
    cfg = load_config(config)
    redis = RedisServer(work / "redis")
    redis.start()
    replica = RedisServer(work / "redis-replica", replica_of=redis.port)
    replica.start()
    prefix = "gpux"
    common = ["--redis", redis.url, "--prefix", prefix, "--config", str(config)]
    procs: list[Proc] = []
    settle: subprocess.Popen | None = None
    step = seconds / 6
    try:
        def core(name: str, standby: bool) -> Proc:
            p = Proc(name, work, ["serve", "--standby" if standby else "--ha", *common, "--log-level", "INFO"],
                     "serving on")
            procs.append(p)
            p.start()
            return p

        keys = make_accounts(work / "core-1", providers, traders)
        leader = core("core-1", False)
        await leader.wait_serving()
        standby = core("core-2", True)
        gws = [Proc(f"gw-{i}", work, ["gateway", *common], "order gateway on") for i in (1, 2)]
        fds = [Proc(f"feeds-{i}", work, ["feeds", *common], "market data on") for i in (1, 2)]
        for p in gws + fds:
            procs.append(p)
            p.start()
        cl = Cluster(keys)
        cl.gateways = [await g.wait_serving() for g in gws]
        feed_urls = [await f.wait_serving() for f in fds]
        settle_ledger = work / "settle" / "ledger.db"
        with open(work / "logs" / "settle.log", "wb") as err:
            settle = subprocess.Popen(gpux("settle", *common, "--ledger", str(settle_ledger)),
                                      stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
        stop, stop_feeds = asyncio.Event(), asyncio.Event()
        subs = [Subscriber(feed_urls, i) for i in range(4)]
        sub_tasks = [asyncio.create_task(s.run(stop_feeds)) for s in subs]
        actors = [asyncio.create_task(_actor(cl, i, f"prov{i}", True, stop)) for i in range(providers)]
        actors += [asyncio.create_task(_actor(cl, providers + i, f"trader{i}", False, stop)) for i in range(traders)]
        t0 = time.monotonic()
        while not cl.acked and time.monotonic() - t0 < 60:  # the gateways' replicas caught up, the first answer
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # warm
        rate_one, _ = await _rate(cl, step / 2, [])
        cl.one_gateway = False
        await asyncio.sleep(0.5)
        rate_two, cpu = await _rate(cl, step, [leader, *gws, *fds, standby, Other("settle", settle),
                                               Other("redis", redis.proc), Other("redis-replica", replica.proc)])
        log(f"orders/s through one gateway {rate_one}, through two {rate_two}; CPU µs/order {cpu}")
        failover: list[float] = []
        # 1. kill -9 of the leader
        t = time.monotonic()
        leader.signal(signal.SIGKILL)
        await asyncio.to_thread(leader.wait)
        await standby.wait_serving()
        failover.append(await _failover_s(cl, t, standby))
        log(f"failover 1 (kill -9 of the leader): {failover[-1]:.2f} s")
        leader, standby = standby, core("core-3", True)
        await asyncio.sleep(max(step, 2 * lease_ms / 1000 + 2))  # the new standby catches up meanwhile
        # 2. SIGSTOP of the leader past its lease, then SIGCONT
        t = time.monotonic()
        leader.signal(signal.SIGSTOP)
        await standby.wait_serving()
        leader.signal(signal.SIGCONT)
        try:
            deposed_rc = await asyncio.to_thread(leader.wait, 30)  # (the clients go on meanwhile)
        except subprocess.TimeoutExpired:
            deposed_rc = None
            leader.signal(signal.SIGKILL)
        failover.append(await _failover_s(cl, t, standby))
        log(f"failover 2 (SIGSTOP of the leader): {failover[-1]:.2f} s")
        old, leader = leader, standby
        standby = core("core-4", True)
        await asyncio.sleep(step)
        # 3. kill -9 of a gateway, restarted
        gws[0].signal(signal.SIGKILL)
        await asyncio.to_thread(gws[0].wait)
        cl.gateways = [gws[1].url]
        await asyncio.sleep(1.0)
        gws[0].start()
        cl.gateways = [await gws[0].wait_serving(), gws[1].url]
        log("gateway 1 killed and restarted")
        # 4. kill -9 of a market-data process, restarted
        fds[0].signal(signal.SIGKILL)
        await asyncio.to_thread(fds[0].wait)
        await asyncio.sleep(1.0)
        fds[0].start()
        feed_urls[0] = await fds[0].wait_serving()
        log("market-data process 1 killed and restarted")
        # 5. a restart of the Redis replica
        await asyncio.to_thread(replica.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(replica.start)
        log("Redis replica restarted")
        await asyncio.sleep(step)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*actors), 120)
        # what the clients were told, against the last leader
        lost = await _acked_lost(cl, leader.url)
        leases = await _all_leases(cl, leader.url)
        books_equal = await _books_converge(subs, leader.url)
        stop_feeds.set()
        await asyncio.gather(*sub_tasks, return_exceptions=True)
        for s in subs:
            if s.fc is not None:
                await s.fc.close()
        for f in fds:  # their recordings complete and closed
            f.signal(signal.SIGTERM)
            await asyncio.to_thread(f.wait, 60)
        books_recorded = all([await asyncio.to_thread(_book_as_recorded, s, f.data) for s in subs for f in fds])
        await asyncio.sleep(1.5 * lease_ms / 1000 + 1)  # the standby catches up
        standby.signal(signal.SIGTERM)
        standby.wait()
        leader.signal(signal.SIGTERM)
        leader_rc = leader.wait(60)
        deadline = time.monotonic() + 60
        want = ledger_transfers(leader.data / "ledger.db")
        got: tuple[list, dict] = ([], {})
        while time.monotonic() < deadline:
            got = ledger_transfers(settle_ledger) if settle_ledger.exists() else ([], {})
            if got == want:
                break
            await asyncio.sleep(0.5)
        fresh = await asyncio.to_thread(fresh_ledger, leader.data / "journal", cfg, work / "fresh" / "ledger.db")
        stopped = standby.logged("standby stopped")
        hash_equal = False
        if stopped:
            rec = stopped[-1]
            hashes, money = replay_hashes(leader.data / "journal", cfg, rec["seq"])
            hash_equal = hashes == json.loads(rec["state_hashes"]) and money == rec["money_hash"]
        dups, _ = journal_scan(leader.data / "journal")
        lat = sorted(cl.latencies)
        report = {
            "acked": len(cl.acked), "acked_lost": len(lost), "lost_examples": lost[:5],
            "answers_mismatched": len(cl.mismatch), "duplicate_fills": leases["duplicates"] + dups,
            "leases": leases["count"], "leases_missing": leases["missing"], "retried": cl.retried,
            "failover_s": [round(f, 3) for f in failover],
            "deposed_exit_code": deposed_rc, "deposed_logged": _said(old, "deposed"), "leader_exit_code": leader_rc,
            "standby_hash_equal": hash_equal, "standby_seq": stopped[-1]["seq"] if stopped else 0,
            "settle_equal": got == want == fresh and len(want[0]) > 0, "transfers": len(want[0]),
            "books_equal": books_equal and books_recorded, "books_as_recorded": books_recorded,
            "exchange_id_kept": _exchange_id(work / "core-1") == _exchange_id(leader.data) != "",
            "subscriber_reconnects": sum(s.reconnects for s in subs),
            "orders_per_s_one_gateway": rate_one, "orders_per_s_two_gateways": rate_two,
            "ack_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            "ack_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
            "cpu_us_per_order": cpu, "lease_ms": lease_ms, "seconds": seconds, "redis_replicas": 1,
        }
        report["ok"] = (report["acked_lost"] == 0 and report["duplicate_fills"] == 0 and report["leases_missing"] == 0
                        and report["answers_mismatched"] == 0 and report["standby_hash_equal"]
                        and report["books_equal"]
                        and report["settle_equal"] and all(f <= 5 for f in failover) and deposed_rc == 3
                        and report["exchange_id_kept"])
        return report
    finally:
        if settle is not None and settle.poll() is None:
            settle.send_signal(signal.SIGTERM)
            try:
                settle.wait(30)
            except subprocess.TimeoutExpired:
                settle.kill()
        for p in procs:
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGKILL)
            if p.proc is not None:
                p.proc.wait(10)
        replica.close()
        redis.close()


def _book_as_recorded(sub: Subscriber, data: Path) -> bool:
    """The subscriber's level 2 equals the book rebuilt from a market-data process's recording at
    the same event seq."""
    from feeds.model import SIDE_KEYS
    from feeds.replay import book_at

    book = sub.fc.books.get("H100") if sub.fc is not None else None
    if book is None:
        return False
    want = book_at(data, "H100", book.seq).level2()
    got = book.level2()
    return all(got.get(k, []) == want.get(k, []) for k in SIDE_KEYS)


async def _books_converge(subs: list[Subscriber], url: str, timeout: float = 30) -> bool:
    """Every subscriber's level 2 equals the leader's (GET /v1/book), once the feeds caught up."""
    from feeds.model import SIDE_KEYS

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(f"{url}/v1/book/H100", params={"depth": "1000"}) as r:
                book = await r.json()
            want = {k: book.get(k, []) for k in SIDE_KEYS}
            if all((l2 := sub.level2()) is not None and {k: l2.get(k, []) for k in SIDE_KEYS} == want for sub in subs):
                return True
            await asyncio.sleep(0.2)
    return False


def _exchange_id(data: Path) -> str:
    """A core's exchange id (whose deposit requests are whose): the same for every leader of a lineage."""
    path = data / "exchange.id"
    return path.read_text().strip() if path.exists() else ""


def _said(p: Proc, word: str) -> bool:
    return p.err.exists() and word in p.err.read_text()


async def _acked_lost(cl: Cluster, url: str) -> list[str]:
    """Acked orders the leader does not have (with the same owner's client order id)."""
    lost = []
    clients = {name: Client(url, key, secret, timeout=30) for name, (_, key, secret) in cl.keys.items()}
    try:
        for oid, (owner, coid) in sorted(cl.acked.items()):
            try:
                o = await clients[owner].order(oid)
            except ClientError as e:
                lost.append(f"{owner} oid {oid} ({coid}): {e.code}")
                continue
            if o.get("client_order_id") != coid:
                lost.append(f"{owner} oid {oid}: client order id {o.get('client_order_id')!r}, acked as {coid!r}")
    finally:
        for c in clients.values():
            await c.close()
    return lost


async def _all_leases(cl: Cluster, url: str) -> dict[str, int]:
    """Every trader's leases on the leader: none twice, and every lease an answer named is there."""
    refs: list[str] = []
    for name, (_, key, secret) in cl.keys.items():
        if not name.startswith("trader"):
            continue
        async with Client(url, key, secret, timeout=30) as c:
            refs += [x["lease"] for x in await c.leases()]
    return {"count": len(refs), "duplicates": len(refs) - len(set(refs)),
            "missing": len(set(cl.leases) - set(refs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=24.0, help="load time, split around the faults")
    ap.add_argument("--traders", type=int, default=4)
    ap.add_argument("--providers", type=int, default=2)
    ap.add_argument("--lease-ms", type=int, default=2000, help="the leader's lease (a failover takes about this)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", default=None, help="keep the run's files here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="gpux-cluster-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        report = asyncio.run(scenario(work, args.seconds, args.traders, args.providers, args.lease_ms, args.seed,
                                      log=say))
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>26}: {v}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
