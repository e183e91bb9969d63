"""A running exchange and its storage (issue 17): closed journal segments are verified in the
background and damage shows in /healthz and /metrics while the exchange trades on."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import aiohttp

from exchange.journal import segments
from exchange.sequencer import Request
from orderbook.types import ON_DEMAND, bid_command
from tests.exchange_helpers import USD, Running, running_exchange

HEADER = struct.Struct("<IIQ")


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def _until(cond, what: str, turns: int = 2000) -> None:
    """Wait (in 10 ms steps, at most ``turns``) until ``cond()`` (a bool, or awaitable of one) holds."""
    for _ in range(turns):
        got = cond()
        if got if isinstance(got, bool) else await got:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def _bids(x: Running, acc: int, n: int) -> None:
    for k in range(n):
        await x.exchange.sequencer.submit(Request("H100", bid_command(acc, ON_DEMAND, 1 + k % 3, 1, 2_000_000), acc))


def test_damage_in_a_closed_segment_shows_in_healthz_and_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(tmp_path / "d", segment_bytes=2048, check_money=False) as x:
            acc, _, _ = x.account("t", "trader", deposit=1000 * USD)
            await x.settle()
            await _bids(x, acc, 40)  # a few closed segments
            segs = segments(tmp_path / "d" / "journal")
            assert len(segs) >= 3
            ver = x.exchange.segment_verifier
            ver.wake()
            await _until(lambda: ver.segments_verified >= len(segs) - 1, "the closed segments verified")
            status, body = await _get(x.url + "/healthz")
            assert status == 200 and '"journal_verify":"ok"' in body.replace(" ", "")
            # a bit flips in a middle record of a closed segment, under the running exchange
            path = segs[1][1]
            raw = bytearray(path.read_bytes())
            length, _, seq = HEADER.unpack_from(raw, 0)
            second = HEADER.size + length
            _, _, seq2 = HEADER.unpack_from(raw, second)
            raw[second + HEADER.size + 2] ^= 0x01
            path.write_bytes(bytes(raw))
            ver.recheck()

            async def reported() -> bool:
                return (await _get(x.url + "/healthz"))[0] == 503

            await _until(reported, "/healthz reports the damage")
            status, body = await _get(x.url + "/healthz")
            assert path.name in body and f"byte offset {second}" in body and f"seq {seq2} is lost" in body
            _, text = await _get(x.url + "/metrics")
            assert _metric(text, "gpux_journal_damaged_segments") == 1
            assert _metric(text, "gpux_journal_verifier_up") == 1
            await _bids(x, acc, 1)  # trading goes on
            raw[second + HEADER.size + 2] ^= 0x01  # repaired (restored from a backup)
            path.write_bytes(bytes(raw))
            ver.recheck()

            async def healthy() -> bool:
                return (await _get(x.url + "/healthz"))[0] == 200

            await _until(healthy, "/healthz ok again")
            _, text = await _get(x.url + "/metrics")
            assert _metric(text, "gpux_journal_damaged_segments") == 0

    asyncio.run(scenario())
