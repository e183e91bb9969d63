"""Helpers for tests of the running exchange: a real `Exchange` on a free loopback port with
its own data directory, accounts made in its real SQLite store, SDK clients.

    async def scenario():
        async with running_exchange(tmp_path) as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", deposit=10_000_000_000)
            ...
    asyncio.run(scenario())
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.exchange import Exchange
from client.api import Client
from exchange.config import ServerConfig

USD = 1_000_000  # µ$


@dataclass
class Running:
    exchange: Exchange
    url: str
    clients: list[Client] = field(default_factory=list)
    keys: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # name -> (account, key, secret)
    pending: list[Any] = field(default_factory=list)  # answers of deposits handed to the sequencer

    def account(self, name: str, role: str, deposit: int = 0,
                ssh_public_key: str | None = None) -> tuple[int, str, str]:
        acc, key, secret = self.exchange.store.create_account(name, role, deposit, ssh_public_key)
        self.pending += self.exchange.deposits.poll()  # journaled before anything this test sends next
        self.keys[name] = (acc.id, key, secret)
        return acc.id, key, secret

    def client(self, name: str, role: str = "trader", deposit: int = 0) -> Client:
        """A new account and an SDK client signed with its key."""
        _, key, secret = self.account(name, role, deposit)
        c = Client(self.url, key, secret)
        self.clients.append(c)
        return c

    def client_for(self, name: str) -> Client:
        _, key, secret = self.keys[name]
        c = Client(self.url, key, secret)
        self.clients.append(c)
        return c

    @property
    def now(self) -> int:
        return int(time.time())

    async def settle(self) -> None:
        """Wait until the sequencer has nothing queued (all answers sent)."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
            self.pending = []
        seq = self.exchange.sequencer
        for _ in range(500):
            if seq is None or not seq._queue:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_exchange(data_dir: Path, clock: Any = None, check_money: bool = True,
                           **overrides: Any) -> AsyncIterator[Running]:
    """An exchange serving on 127.0.0.1 (free port) over ``data_dir``; stopped gracefully after.
    ``clock``: an `exchange.clock.SimClock` for time under the test's control."""
    cfg = ServerConfig(data_dir=str(data_dir), port=0, **overrides)
    ex = Exchange(cfg, clock=clock) if clock is not None else Exchange(cfg)
    await ex.start()
    port = await ex.serve("127.0.0.1", 0)
    r = Running(ex, f"http://127.0.0.1:{port}")
    try:
        yield r
        if check_money:
            await assert_money_matches_ledger(ex)
    finally:
        for c in r.clients:
            await c.close()
        await ex.close()


async def assert_money_matches_ledger(ex: Exchange) -> None:
    """The core's balances equal the SQLite ledger's (a projection of the same journal), account
    by account and kind by kind, once the ledger has every batch answered so far."""
    seq = ex.sequencer
    if seq.failed is not None or not seq.running or not ex.settlement.healthy:
        return  # a test of a stopped or failing exchange: nothing to compare
    # The clock keeps sequencing batches (metering, lease ends) while this waits for the ledger:
    # take the core's balances at a quiet point, with no await between reading them and the
    # number of batches handed to the ledger, and compare once the ledger has exactly those.
    core, ledger = None, None
    for _ in range(100):
        for _ in range(500):
            if not seq._queue and not seq.busy:
                break
            await asyncio.sleep(0.01)
        core, at, handed = ex.engine.money.all(), ex.engine.seq, ex.settlement.handed
        await ex.settlement.synced()
        with ex.settlement.lock:
            ledger = ex.settlement.settlement.ledger.balances()
        if ex.engine.seq == at and ex.settlement.handed == handed:
            break
    assert core == ledger, f"core balances differ from the ledger's: {_diff(core, ledger)}"


def _diff(core: dict, ledger: dict) -> dict:
    return {k: (core.get(k, 0), ledger.get(k, 0)) for k in sorted(set(core) | set(ledger))
            if core.get(k, 0) != ledger.get(k, 0)}


def run(coro: Any) -> Any:
    return asyncio.run(coro)
