"""Damaged storage is noticed and named, never run on: a newest snapshot whose bytes are bad (its
deflated book blob, or its encoding) is skipped for an older one or the journal; an accounts.db
whose pages are damaged stops start-up with a sentence naming the file, instead of a server that
says ok while every signed call fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from app.exchange import Exchange
from exchange.config import ServerConfig
from exchange.recovery import recover
from exchange.sequencer import Request
from exchange.snapshots import Snapshot, snapshots, write_snapshot
from gateway.accounts import AccountError, AccountStore
from orderbook.types import ON_DEMAND, bid_command
from tests.exchange_helpers import USD, run, running_exchange


def _trade_and_snapshot(data: Path) -> None:
    async def scenario() -> None:
        async with running_exchange(data) as x:
            acc, _, _ = x.account("t", "trader", deposit=100 * USD)
            await x.settle()
            for k in range(1, 4):
                await x.exchange.sequencer.submit(Request("H100", bid_command(acc, ON_DEMAND, k, 1, 2_000_000), acc))
                x.exchange.sequencer.request_snapshot()
                await asyncio.sleep(0.05)

    run(scenario())


@pytest.mark.parametrize("damage", ["deflate", "encoding"])
def test_a_damaged_newest_snapshot_is_skipped_for_an_older_one(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "d"
    _trade_and_snapshot(data)
    cfg = ServerConfig(data_dir=str(data))
    want = recover(cfg, use_snapshots=False)
    assert len(snapshots(data)) >= 2
    seq, path = snapshots(data)[-1]
    if damage == "deflate":  # a valid encoding around a book blob that does not inflate
        snap = msgspec.msgpack.decode(path.read_bytes(), type=Snapshot)
        for b in snap.books.values():
            b.blob = b"\x78\x01" + bytes(64)
        write_snapshot(data, seq, msgspec.msgpack.encode(snap))
    else:
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2:len(blob) // 2 + 16] = b"\xff" * 16
        path.write_bytes(bytes(blob))
    got = recover(cfg)
    assert got.seq == want.seq
    assert got.state_hashes() == want.state_hashes()
    assert got.money.state_hash() == want.money.state_hash()


def test_a_damaged_account_store_stops_start_up_with_its_name(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    with AccountStore(data / "accounts.db") as store:
        for i in range(300):  # a few pages
            store.create_account(f"user{i}", "trader")
    db = data / "accounts.db"
    raw = bytearray(db.read_bytes())
    assert len(raw) > 4 * 4096
    raw[2 * 4096:3 * 4096] = b"\xa5" * 4096  # a page of garbage in the middle
    db.write_bytes(bytes(raw))
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    with pytest.raises(AccountError) as e:
        AccountStore(db)
    assert e.value.code == "CORRUPT" and "accounts.db" in e.value.message and "backup" in e.value.message

    async def start() -> None:
        ex = Exchange(ServerConfig(data_dir=str(data), port=0))
        await ex.start()

    with pytest.raises(AccountError):
        run(start())
