"""A core with a hot standby on its own Redis, under load, through failures (issue 15).

    python -m bench.cluster [--seconds 20] [--traders 4] [--lease-ms 2000] [--json]

Starts a private `redis-server` on a free loopback port, a leader (`gpux serve --ha`), a standby
(`gpux serve --standby`, its own data directory) and `gpux settle`, drives providers' asks over
REST and traders' bids over WebSocket (every request with a client order id) against whichever
core leads, and injects, one at a time:

1. **kill -9 of the leader.**  The standby takes the lease, reads the stream to its end and
   starts as the leader.  ``failover_s``: from the kill to the first order the new leader
   acknowledged.  A new standby is started to follow it.
2. **SIGSTOP of the leader past its lease, then SIGCONT.**  The standby takes over; the old
   leader, woken, finds its appends refused (fenced by the lease's epoch inside Redis) and exits
   (code 3) without answering anything it had not replicated.

Clients that lose their connection (or get UNAVAILABLE) wait for the new leader and send what was
not answered again with the same client order ids.  At the end, and the benchmark fails unless
they hold:

* ``acked_lost`` 0: every order a client got an answer for is on the last leader, with its oid
  and client order id;
* ``duplicate_fills`` 0: no lease twice, no client order id journaled twice;
* ``standby_hash_equal``: the last standby's state hashes (logged when it stops) equal a fresh
  replay of the leader's journal to the same seq;
* ``settle_equal``: `gpux settle`'s ledger equals the last leader's own, transfer for transfer;
* ``failover_s`` ≤ 5 for each failover.

Also reported: orders/s and the ack p50/p99 while the leader replicates every batch before it
answers.
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
from gateway.accounts import AccountStore

REPO = Path(__file__).resolve().parents[1]
USD = 1_000_000
HOUR = 3600
LOST = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError)
CONFIG = """\
[server]
lease_ms = {lease_ms}

[journal]
snapshot_every_s = 5

[limits]
max_open_orders = 100000
rate_per_s = 100000
rate_burst = 100000

[settlement]
provisioning = "auto"
"""


def gpux(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


class Node:
    """One `gpux serve` (leader or standby) as a process; its output in ``work/logs``."""

    def __init__(self, name: str, work: Path, redis_url: str, prefix: str, config: Path) -> None:
        self.name = name
        self.data = work / name
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.prefix = prefix
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def out(self) -> Path:
        return self.logs / f"{self.name}.out"

    @property
    def err(self) -> Path:
        return self.logs / f"{self.name}.log"

    def start(self, standby: bool) -> None:
        role = "--standby" if standby else "--ha"
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen(
                gpux("serve", role, "--redis", self.redis_url, "--prefix", self.prefix, "--config", str(self.config),
                     "--data", str(self.data), "--port", "0", "--log-level", "INFO"),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)

    def serving(self) -> str:
        """Its URL once it serves (as the leader), else ""."""
        if not self.url and self.out.exists():
            m = re.search(r"serving on (http://\S+)", self.out.read_text())
            if m:
                self.url = m.group(1)
        return self.url

    async def wait_serving(self, timeout: float = 60) -> str:
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


class Cluster:
    """Which core leads (its URL), what clients were told, and the load."""

    def __init__(self, keys: dict[str, tuple[int, str, str]], seed: int) -> None:
        self.keys = keys
        self.url = ""
        self.changed = asyncio.Event()
        self.rng = random.Random(seed)
        self.acked: dict[int, tuple[str, str]] = {}  # oid -> (owner, coid)
        self.by_coid: dict[tuple[str, str], int] = {}
        self.leases: dict[str, tuple[int, int]] = {}  # lease ref -> (bid oid, ask oid) seen in answers
        self.latencies: list[float] = []
        self.retried = 0
        self.answers_after: list[tuple[float, str]] = []  # (monotonic time, leader's URL) of each ack
        self.mismatch: list[str] = []

    def lead(self, url: str) -> None:
        self.url = url
        self.changed.set()
        self.changed = asyncio.Event()

    def answered(self, owner: str, coid: str, ans: dict[str, Any], took: float, url: str) -> None:
        oid = ans["oid"]
        first = self.by_coid.setdefault((owner, coid), oid)
        if first != oid:
            self.mismatch.append(f"{owner} {coid}: oid {oid}, first answered {first}")
        self.acked[oid] = (owner, coid)
        for t in ans.get("trades", ()):
            self.leases.setdefault(t["lease"], (t["bid_oid"], t["ask_oid"]))
        self.latencies.append(took)
        self.answers_after.append((time.monotonic(), url))


async def _actor(cl: Cluster, name: str, provider: bool, stop: asyncio.Event) -> None:
    """Requests one after another against the current leader; what got no answer is sent again,
    with the same client order id, once a leader answers."""
    _, key, secret = cl.keys[name]
    rng = random.Random(f"{name}")
    n = 0
    pending: list[dict[str, Any]] = []
    client: Client | None = None
    session: TraderSession | None = None
    url = ""
    while not stop.is_set() or pending:
        if url != cl.url:
            for c in (session, client):
                if c is not None:
                    try:
                        await c.close()
                    except Exception:  # noqa: BLE001 - a dead connection
                        pass
            client, session, url = Client(cl.url, key, secret, timeout=10), None, cl.url
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
        changed = cl.changed  # set when another core leads: what is in flight to this one is sent again

        async def send(req: dict[str, Any] = req, client: Client | None = client) -> dict[str, Any]:
            nonlocal session
            assert client is not None
            if provider:
                return await client.ask(req["class"], req["gpus"], req["price"], req["end"],
                                        client_order_id=req["client_order_id"])
            if session is None or session.ws.closed:
                session = await client.trader()
            return await session.bid(req["class"], req["kind"], req["gpus"], req["hours"], req["limit"],
                                     tif=req["tif"], client_order_id=req["client_order_id"])

        sending = asyncio.ensure_future(send())
        leader_changed = asyncio.ensure_future(changed.wait())
        await asyncio.wait([sending, leader_changed], return_when=asyncio.FIRST_COMPLETED)
        leader_changed.cancel()
        if not sending.done():  # (a leader paused: its answer may never come) the same request to the new one
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            pending.insert(0, req)
            continue
        try:
            ans = sending.result()
        except ClientError as e:
            if e.code in ("UNAVAILABLE", "TIMEOUT", "HTTP_ERROR", "MALFORMED"):
                pending.insert(0, req)
                await _await_leader(cl, url)
            # else: refused by the rules (e.g. INSUFFICIENT_FUNDS): an answer, nothing to check
            continue
        except LOST:
            pending.insert(0, req)
            await _await_leader(cl, url)
            continue
        if again:
            cl.retried += 1
        cl.answered(name, req["client_order_id"], ans, time.perf_counter() - t0, url)
        await asyncio.sleep(0)
    for c in (session, client):
        if c is not None:
            await c.close()


async def _await_leader(cl: Cluster, url: str) -> None:
    """Until another core leads than ``url``, or a short while (the same one may answer again)."""
    if cl.url != url:
        return
    try:
        await asyncio.wait_for(cl.changed.wait(), 0.5)
    except TimeoutError:
        pass


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


def journal_duplicates(journal_dir: Path) -> int:
    """Client order ids that reached the journal more than once (per account)."""
    import numpy as np

    from exchange.entries import Cmd, decode_entry
    from exchange.journal import read
    from orderbook.types import COMMAND_DTYPE

    seen: set[tuple[int, str]] = set()
    dups = 0
    for _, payload in read(journal_dir):
        e = decode_entry(payload)
        if type(e) is Cmd and e.coid:
            account = int(np.frombuffer(e.rec, dtype=COMMAND_DTYPE)["account"][0])
            k = (account, e.coid)
            dups += k in seen
            seen.add(k)
    return dups


async def scenario(work: Path, seconds: float = 20.0, traders: int = 4, providers: int = 2, lease_ms: int = 2000,
                   seed: int = 7, log: Any = print) -> dict[str, Any]:
    """The whole run (see the module docstring); returns the report."""
    from exchange.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    config = work / "gpux.toml"
    config.write_text(CONFIG.format(lease_ms=lease_ms))
    cfg = load_config(config)
    redis = RedisServer(work / "redis")
    redis.start()
    prefix = "gpux"
    nodes: list[Node] = []
    settle: subprocess.Popen | None = None
    try:
        def node(name: str) -> Node:
            n = Node(name, work, redis.url, prefix, config)
            nodes.append(n)
            return n

        keys = make_accounts(work / "core-1", providers, traders)
        leader = node("core-1")
        leader.start(standby=False)
        cl = Cluster(keys, seed)
        cl.lead(await leader.wait_serving())
        standby = node("core-2")
        standby.start(standby=True)
        settle_ledger = work / "settle" / "ledger.db"
        with open(work / "logs" / "settle.log", "wb") as err:
            settle = subprocess.Popen(gpux("settle", "--redis", redis.url, "--prefix", prefix, "--config",
                                           str(config), "--ledger", str(settle_ledger)),
                                      stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
        stop = asyncio.Event()
        actors = [asyncio.create_task(_actor(cl, f"prov{i}", True, stop)) for i in range(providers)]
        actors += [asyncio.create_task(_actor(cl, f"trader{i}", False, stop)) for i in range(traders)]
        third = seconds / 3
        await asyncio.sleep(third)
        # 1. kill -9 of the leader
        before = len(cl.acked)
        t_kill = time.monotonic()
        leader.signal(signal.SIGKILL)
        leader.wait()
        log(f"killed the leader after {before} acked orders")
        cl.lead(await standby.wait_serving(timeout=60))
        failover = [await _first_ack_after(cl, t_kill)]
        log(f"failover 1 (kill -9): {failover[0]:.2f} s")
        leader, standby = standby, node("core-3")
        standby.start(standby=True)
        await asyncio.sleep(max(third, 2 * lease_ms / 1000 + 2))  # the new standby catches up meanwhile
        # 2. SIGSTOP of the leader past its lease, then SIGCONT
        t_stop = time.monotonic()
        leader.signal(signal.SIGSTOP)
        cl.lead(await standby.wait_serving(timeout=60))
        failover.append(await _first_ack_after(cl, t_stop))
        log(f"failover 2 (SIGSTOP): {failover[1]:.2f} s")
        leader.signal(signal.SIGCONT)
        try:
            deposed_rc = leader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            deposed_rc = None
            leader.signal(signal.SIGKILL)
        old, leader = leader, standby
        standby = node("core-4")
        standby.start(standby=True)
        await asyncio.sleep(third)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*actors), 120)
        elapsed = time.monotonic() - t_kill + third
        # what the clients were told, against the last leader
        lost = await _acked_lost(cl, leader.url)
        leases = await _all_leases(cl, leader.url)
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
        stopped = standby.logged("standby stopped")
        hash_equal = False
        if stopped:
            rec = stopped[-1]
            hashes, money = replay_hashes(leader.data / "journal", cfg, rec["seq"])
            hash_equal = hashes == json.loads(rec["state_hashes"]) and money == rec["money_hash"]
        lat = sorted(cl.latencies)
        report = {
            "acked": len(cl.acked), "acked_lost": len(lost), "lost_examples": lost[:5],
            "answers_mismatched": len(cl.mismatch),
            "duplicate_fills": leases["duplicates"] + journal_duplicates(leader.data / "journal"),
            "leases": leases["count"], "leases_missing": leases["missing"],
            "retried": cl.retried, "failover_s": [round(f, 3) for f in failover],
            "deposed_exit_code": deposed_rc, "deposed_logged": _said(old, "deposed"),
            "leader_exit_code": leader_rc,
            "standby_hash_equal": hash_equal, "standby_seq": stopped[-1]["seq"] if stopped else 0,
            "settle_equal": got == want and len(want[0]) > 0, "transfers": len(want[0]),
            "orders_per_s": round(len(cl.acked) / elapsed, 1),
            "ack_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            "ack_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
            "lease_ms": lease_ms, "seconds": seconds,
        }
        report["ok"] = (report["acked_lost"] == 0 and report["duplicate_fills"] == 0 and report["leases_missing"] == 0
                        and report["answers_mismatched"] == 0 and report["standby_hash_equal"]
                        and report["settle_equal"] and all(f <= 5 for f in failover) and deposed_rc == 3)
        return report
    finally:
        if settle is not None and settle.poll() is None:
            settle.send_signal(signal.SIGTERM)
            try:
                settle.wait(30)
            except subprocess.TimeoutExpired:
                settle.kill()
        for n in nodes:
            n.signal(signal.SIGCONT)
            n.signal(signal.SIGKILL)
            if n.proc is not None:
                n.proc.wait(10)
        redis.close()


def _said(node: Node, word: str) -> bool:
    return node.err.exists() and word in node.err.read_text()


async def _first_ack_after(cl: Cluster, t: float, timeout: float = 60) -> float:
    """Seconds from ``t`` to the first order the current leader acknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = [a for a, url in cl.answers_after[-200:] if a > t and url == cl.url]
        if after:
            return min(after) - t
        await asyncio.sleep(0.005)
    raise RuntimeError("no order was acknowledged after the failover")


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
    ap.add_argument("--seconds", type=float, default=20.0, help="load time, split around the two failovers")
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
            print(f"{k:>22}: {v}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
