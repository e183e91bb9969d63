"""Distributed settlement end to end (issues 5 and 14): `gpux serve --redis` publishes its journal
(`exchange.stream`); `gpux settle --redis` (a replica: its own process, engine and ledger file)
applies it; its ledger ends identical to the exchange's own — provisioning answers, clock ticks
and metering included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from exchange_helpers import USD, running_exchange
from redis_helpers import REDIS_URL, redis_prefix

from settlement.service import Settlement

ROOT = Path(__file__).resolve().parent.parent
P = 2_000_000
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOdPSdz9ah8bAW35i9Mrn2clI3hDVNvhJHJ7jBIR6Dz4 alice@laptop"
# the same settlement settings on both sides; metering every second, so that the ledgers agree
# only if the consumer moves its clock where the exchange's ledger did (the streamed clock entries)
SETTINGS = {"meter_interval_s": 1, "provision_timeout_s": 3600}


@pytest.fixture
def prefix():
    yield from redis_prefix("settle-")


def _ledger(path: Path) -> tuple[list, dict, dict]:
    s = Settlement(path)
    try:
        leases = {}
        for cls in ("H100",):
            c = s.engine.classes.get(cls)
            for tid, x in (c.leases.items() if c else ()):
                leases[(cls, tid)] = (x.status, s.connection((cls, tid)))
        return sorted(s.transfers()), s.ledger.balances(), leases
    finally:
        s.close()


def test_gpux_settle_ends_with_the_exchanges_ledger(tmp_path: Path, prefix: str) -> None:
    data = tmp_path / "data"

    async def market() -> dict[str, int]:
        async with running_exchange(data, engine="numba", redis_url=REDIS_URL, redis_prefix=prefix,
                                    **SETTINGS) as ex:
            prov = ex.client("prov", "provider")
            ex.account("alice", "trader", 100 * USD, ssh_public_key=KEY)
            alice = ex.client_for("alice")
            bob = ex.client("bob", "trader", 50 * USD)
            await prov.ask("H100", gpus=8, price=P, spot_price=1_200_000, end=ex.now + 86_400)
            async with await alice.trader() as t:
                [a1] = (await t.bid("H100", "on_demand", gpus=2, hours=3, limit=P))["trades"]
                [a2] = (await t.bid("H100", "spot", gpus=1, hours=2, limit=1_200_000))["trades"]
                rest = await t.bid("H100", "on_demand", gpus=1, hours=1, limit=1_000_000)  # rests: escrow
                await t.cancel(rest["oid"])
            async with await bob.trader() as t:
                [b1] = (await t.bid("H100", "on_demand", gpus=1, hours=2, limit=P))["trades"]
                [b2] = (await t.bid("H100", "on_demand", gpus=1, hours=1, limit=P))["trades"]  # never answered
            await prov.request("POST", f"/v1/provisioning/{a1['lease']}",
                               {"status": "ready", "connection": {"host": "n1", "port": 22}})
            await prov.request("POST", f"/v1/provisioning/{a2['lease']}", {"status": "failed", "reason": "dead"})
            await prov.request("POST", f"/v1/provisioning/{b1['lease']}",
                               {"status": "ready", "connection": {"host": "n2", "port": 22}})
            await bob.release("H100", b1["trade_id"])  # a refund of the unused part
            admin = ex.client("root", "admin")
            await admin.deposit(ex.keys["bob"][0], 7 * USD)  # a deposit after start
            await asyncio.sleep(2.5)  # clock commands, no events: the ready lease is metered every second
            assert await ex.exchange.publisher.flush()
            return {"ready": a1["trade_id"], "failed": a2["trade_id"], "released": b1["trade_id"],
                    "waiting": b2["trade_id"]}

    tids = asyncio.run(market())
    want = _ledger(data / "ledger.db")
    assert len(want[0]) > 10
    assert sum(":meter:" in t.id for t in want[0]) >= 2  # metered between events, at clock commands
    assert want[2][("H100", tids["ready"])] == ("ready", '{"host":"n1","port":22}')
    assert want[2][("H100", tids["failed"])][0] == "failed"
    assert want[2][("H100", tids["waiting"])][0] == "provisioning"  # its start came; no answer yet

    config = tmp_path / "gpux.toml"
    config.write_text("[settlement]\n" + "".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    other = tmp_path / "other" / "ledger.db"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "settle", "--redis", REDIS_URL, "--prefix", prefix,
                             "--config", str(config), "--ledger", str(other), "--metrics", f"127.0.0.1:{port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        got = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if other.exists():
                got = _ledger(other)
                if got[0] == want[0]:
                    break
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert got is not None and got[0] == want[0], err.decode()[-3000:]
    assert got[1] == want[1]  # every balance
    assert got[2] == want[2]  # lease states and the agents' connections
    assert proc.returncode == 0, err.decode()[-3000:]
    # its own /metrics and /healthz: the journal seq it applied, no lag, no gap (the stream starts at 1)
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
    assert int(float(samples["gpux_settle_journal_seq"])) > 10 and samples["gpux_settle_gaps_total"] == "0"
    assert samples["gpux_settle_healthy"] == "1" and health["status"] == "ok" and health["seq"] > 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_restarted_exchange_publishes_each_entry_once(tmp_path: Path, prefix: str) -> None:
    """A restarted exchange's publisher goes on after the stream's last id (its cursor): the
    stream holds every journal entry once, from seq 1 (was: a restarted exchange streamed only the
    deposits it had not sent)."""
    import redis

    from exchange.journal import read
    from exchange.stream import FIELD, decode_chunk

    data = tmp_path / "data"

    async def run(new_accounts: list[str]) -> None:
        async with running_exchange(data, engine="numba", redis_url=REDIS_URL, redis_prefix=prefix,
                                    **SETTINGS) as ex:
            for name in new_accounts:
                ex.client(name, "provider")
            prov = ex.clients[-1]
            await prov.ask("H100", gpus=1, price=P, end=ex.now + 86_400)
            assert await ex.exchange.publisher.flush()

    asyncio.run(run(["alice"]))
    asyncio.run(run(["carol"]))
    r = redis.Redis.from_url(REDIS_URL)
    chunks = [decode_chunk(f[FIELD]) for _, f in r.xrange(f"{prefix}:journal")]
    r.close()
    payloads = [p for _, ps in chunks for p in ps]
    assert chunks[0][0] == 1
    assert [first for first, _ in chunks] == [1 + sum(len(ps) for _, ps in chunks[:i]) for i in range(len(chunks))]
    journal = [p for _, p in read(data / "journal")]
    assert payloads == journal[:len(payloads)] and len(payloads) >= len(journal) - 2


def test_gpux_settle_refuses_an_exchanges_data_directory(tmp_path: Path) -> None:
    """Its ledger would be the exchange's own: a clear error, exit code 2, nothing written."""
    (tmp_path / "journal").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "settle", "--redis", REDIS_URL, "--data", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is an exchange's data directory" in proc.stderr
    assert not (tmp_path / "ledger.db").exists()
