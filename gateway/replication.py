"""The account store over Redis: the leader's accounts and API keys for a standby (issue 15).

    pub = AccountPublisher(store, url, prefix)     # in the leader (gpux serve --ha)
    await pub.start(); ...; await pub.close()
    pull_accounts(redis, prefix, store)            # in a standby: its accounts.db made equal

Keys are not in the journal (money is; a deposit request is journaled as a ``Fund`` entry), so a
standby that takes over needs them from elsewhere: the leader writes its accounts and API keys,
whole, to ``{prefix}:accounts`` (msgpack) whenever its store changed (checked every `POLL_S`:
a new account, a new key, a revocation), and a standby pulls that copy into its own store as
often.  A key revoked on the leader is revoked on the standby within about a second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from exchange.supervise import supervise
from gateway.accounts import AccountStore

log = logging.getLogger("gpux.accounts")
POLL_S = 0.25


def accounts_key(prefix: str) -> str:
    return f"{prefix}:accounts"


def pull_accounts(redis: Any, prefix: str, store: AccountStore) -> int:
    """The leader's accounts and keys into ``store``; how many rows changed (0: none, or no copy yet)."""
    blob = redis.get(accounts_key(prefix))
    if blob is None:
        return 0
    return store.import_rows(msgspec.msgpack.decode(blob))


def exchange_id_key(prefix: str) -> str:
    return f"{prefix}:exchange-id"


def pull_exchange_id(redis: Any, prefix: str) -> str | None:
    """The leader's exchange id (``DATA/exchange.id``: whose deposit requests are whose), if it said."""
    got = redis.get(exchange_id_key(prefix))
    return got.decode() if got is not None else None


class AccountPublisher:
    """The leader's account store, copied to ``{prefix}:accounts`` whenever it changes; with
    ``exchange_id``, also the leader's exchange id (a standby that takes over journals, as the same
    exchange, the deposit requests its predecessor had taken but not journaled)."""

    def __init__(self, store: AccountStore, url: str, prefix: str, poll_s: float = POLL_S,
                 exchange_id: str | None = None) -> None:
        self.store = store
        self.url = url
        self.key = accounts_key(prefix)
        self.exchange_id = exchange_id
        self.id_key = exchange_id_key(prefix)
        self.poll_s = poll_s
        self.version: tuple[int, int] | None = None
        self.pushes = 0
        self.errors = 0
        self.last_error = ""
        self._task: asyncio.Task | None = None
        self._closing = False
        self._redis: Any = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
        try:
            if self.exchange_id:
                await self._redis.set(self.id_key, self.exchange_id)
            await self.push()  # the standby can authenticate the leader's clients from the start
        except Exception as e:  # noqa: BLE001 - Redis down at start: retried by the task
            self._failed(e)
        self._task = supervise(asyncio.create_task(self._run(), name="account-publisher"), "the account publisher",
                               lambda: self._closing)

    async def push(self) -> None:
        version = self.store.data_version()
        if version == self.version:
            return
        blob = msgspec.msgpack.encode(self.store.export_rows())
        await self._redis.set(self.key, blob)
        self.version = version
        self.pushes += 1

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        if repr(e) != self.last_error:
            log.error("cannot copy the accounts to Redis (%s); retried", e)
        self.last_error = repr(e)

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.poll_s)
            try:
                await self.push()
                self.last_error = ""
            except Exception as e:  # noqa: BLE001 - retried
                self._failed(e)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    def health(self) -> str:
        if self._task is not None and self._task.done() and not self._closing:
            return "the account publisher stopped"
        return "ok" if not self.last_error else f"cannot copy the accounts to Redis: {self.last_error}"

    def metric_samples(self) -> list[tuple[str, float, str, str]]:
        return [("gpux_accounts_pushes_total", self.pushes, "copies of the account store written to Redis", "counter"),
                ("gpux_accounts_push_errors_total", self.errors, "copies that failed (Redis unreachable)", "counter")]
