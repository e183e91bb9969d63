"""Deposit requests into the journal: the account store records them (`gpux accounts deposit`,
``POST /v1/admin/deposit``, an account's initial deposit), the exchange journals each one as a
`Fund` entry, and from then on the money is the core's (`exchange.money`).

    inbox = DepositInbox(store, sequencer, engine.money, exchange_id(data_dir))
    inbox.poll()            # at start and every clock tick: journal the requests not journaled yet

Exactly once: the core remembers the last request row it applied (a repeat is skipped, also on
replay), and a request is *taken* by one exchange before it is journaled
(`AccountStore.claim_deposits`), so two exchanges sharing an account store can never both
credit the same deposit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from exchange.entries import Fund
from exchange.money import ACCOUNTS_REF, DEPOSIT, Money
from exchange.sequencer import Request, Sequencer
from gateway.accounts import AccountStore

log = logging.getLogger("gpux.deposits")
ID_FILE = "exchange.id"


def exchange_id(data_dir: Path) -> str:
    """This exchange's id (``DATA/exchange.id``, made once): whose deposit requests are whose."""
    path = data_dir / ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    new = secrets.token_hex(8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # never replaces one another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


class DepositInbox:
    """The account store's deposit requests, journaled by this exchange."""

    def __init__(self, store: AccountStore, sequencer: Sequencer, money: Money, owner: str) -> None:
        self.store = store
        self.sequencer = sequencer
        self.money = money
        self.owner = owner
        self._posted = 0  # the last row handed to the sequencer
        self.journaled = 0
        self.errors = 0
        self.last_error: Exception | None = None  # the last poll's failure to read the requests (None: it worked)

    def poll(self) -> list[asyncio.Future]:
        """Hand the requests this exchange has not journaled to the sequencer; their answers."""
        after = max(self.money.deposit_row, self._posted)
        try:
            rows = self.store.claim_deposits(self.owner, after)
        except Exception as e:  # the account store is busy or gone: next tick
            self.errors += 1
            if self.last_error is None:
                log.exception("could not read deposit requests (tried again every clock tick)")
            self.last_error = e
            return []
        if self.last_error is not None:
            log.warning("deposit requests read again")
            self.last_error = None
        futs = []
        posted = []
        for row, account, amount in rows:
            fund = Fund(DEPOSIT, account, amount, f"{ACCOUNTS_REF}{row}", 0)
            try:
                futs.append(self.sequencer.submit(Request("", None, account, fund=fund)))
            except Exception:  # the sequencer stopped: the request stays ours, journaled after a restart
                return futs
            self._posted = row
            posted.append(row)
        if futs:
            asyncio.ensure_future(self._count(futs, posted))
        return futs

    async def _count(self, futs: list[asyncio.Future], rows: list[int]) -> None:
        for r, row in zip(await asyncio.gather(*futs, return_exceptions=True), rows, strict=True):
            if isinstance(r, dict):
                self.journaled += 1
            else:  # not journaled (e.g. the journal could not write): handed over again at the next poll
                self.errors += 1
                self._posted = min(self._posted, row - 1)

    def health(self) -> str:
        """"ok" while the deposit requests can be read (each clock tick); else why not."""
        if self.last_error is not None:
            return (f"deposit requests cannot be read ({self.last_error!r}): deposits are not credited; "
                    "retried each tick")
        return "ok"

    def metric_samples(self) -> list[tuple[str, Any, str, str]]:
        return [("gpux_deposits_journaled_total", self.journaled, "deposit requests journaled", "counter"),
                ("gpux_deposit_errors_total", self.errors, "deposit requests that could not be read or journaled",
                 "counter")]
