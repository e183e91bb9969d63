"""A revoked API key stops working on every path within a second, open sessions included
(gateway/revocations.py): signed REST calls and new WebSocket logins get UNKNOWN_KEY, and every
trader or market-data session authenticated with it is closed with 1008 and the reason.  The
revocation comes from another process, as `gpux accounts revoke` makes it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.api import Client, ClientError
from client.feeds import FeedClient
from tests.exchange_helpers import USD, run, running_exchange

ROOT = Path(__file__).resolve().parent.parent


async def until(cond, what: str, seconds: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > seconds:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def revoke_in_another_process(data: Path, key_id: str) -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "accounts", "revoke", key_id, "--data", str(data)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"revoked {key_id}" in out.stdout


def test_a_revoked_key_stops_working_everywhere_within_a_second(tmp_path: Path) -> None:
    data = tmp_path / "d"

    async def scenario() -> None:
        async with running_exchange(data) as x:
            acc, key, secret = x.account("mallory", "trader", deposit=100 * USD)
            _, other_key, other_secret = x.account("olivia", "trader", deposit=100 * USD)
            await x.settle()
            rest = x.client_for("mallory")
            assert (await rest.account())["account"] == acc  # the key is cached from here on
            session = await rest.trader()
            feeds = FeedClient(x.url)
            await feeds.connect()
            assert (await feeds.auth(key, secret))["type"] == "authenticated"
            bystander = await x.client_for("olivia").trader()

            revoke_in_another_process(data, key)
            took = await until(lambda: session.ws.closed and feeds.ws.closed, "the sessions to close")
            assert took < 1.5  # polled every 0.25 s (the subprocess's own start is not counted)
            assert session.ws.close_code == 1008 and feeds.ws.close_code == 1008
            with pytest.raises(ClientError) as e:
                await rest.account()
            assert e.value.code == "UNKNOWN_KEY"
            with pytest.raises(ClientError) as e:
                await Client(x.url, key, secret).trader()
            assert e.value.code == "UNKNOWN_KEY"
            assert not bystander.ws.closed  # other keys are untouched
            assert (await Client(x.url, other_key, other_secret).account())["account"] != acc
            assert x.exchange.gateway.metrics.get("ws_cut_off_total", 0) == 0  # not counted as slow
            await bystander.close()
            await feeds.close()

    run(scenario())
