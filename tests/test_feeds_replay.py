"""Recording, replay and verification of market data (R21, docs/feeds.md), on real files written by
a real exchange: record -> replay round trip (numpy loader, `gpux replay`, the WebSocket replay
endpoint), `book_at` against the live book at the same sequence number, the recording rebuilt
from the command journal after it lost its tail, and `gpux verify` clean and tampered.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from cli.main import main as gpux
from client.feeds import FeedClient, Level2
from feeds.recording import iter_segments, load
from feeds.replay import book_at, feed_at, messages, replay_app, run_replay
from feeds.verify import verify
from orderbook.types import EV_TRADE, EVENT_DTYPE
from tests.exchange_helpers import running_exchange
from tests.test_feeds_live import CFG, CLASSES, quiet, session, subscribed_client
from tests.test_feeds_model import reference_level2


async def recorded_session(tmp_path: Path, n: int = 600, seed: int = 11) -> dict[str, Any]:
    """A session on a real exchange; returns what the live side saw: every event per class (from
    the bus), every live book message, (seq, time, level 2) after each of them, the final books."""
    out: dict[str, Any] = {"events": {c: [] for c in CLASSES}, "states": {c: [] for c in CLASSES}, "live": []}
    async with running_exchange(tmp_path, **CFG) as ex:
        x = ex.exchange

        def on_batch(batch: Any) -> None:
            for name, ev in batch.events.items():
                out["events"][name].append(ev.copy())

        x.bus.subscribe(on_batch)
        fc = await subscribed_client(ex.url)
        fc.keep = True
        rng = np.random.default_rng(seed)
        await session(x, rng, n // 2)
        await asyncio.sleep(1.2)  # engine time moves: preempted leases (notice 1 s) end
        await session(x, rng, n - n // 2)
        await quiet(x)
        await asyncio.sleep(0.3)
        books: dict[str, Level2] = {}
        for m in fc.messages:
            if m.get("type") == "book":
                b = books.setdefault(m["class"], Level2())
                b.apply(m)
                out["states"][m["class"]].append((m["seq"], m["time"], b.level2()))
        # ts_ms is the wall-clock time each message was sent: the recording cannot hold it
        out["live"] = [{k: v for k, v in m.items() if k != "ts_ms"} for m in fc.messages
                       if m.get("type") in ("book", "trades", "ticker")]
        await fc.close()
    # after the stop: the clock ticks every second until then, and the recording has every round
    out["final"] = {c: reference_level2(x.engine.books[c]) for c in CLASSES}
    out["seq"] = {c: x.feeds.feeds[c].seq for c in CLASSES}
    out["time"] = {c: x.engine.book_time(c) for c in CLASSES}
    return out


def test_record_replay_round_trip_and_book_at(tmp_path, capsys) -> None:
    live = asyncio.run(recorded_session(tmp_path))
    rec = load(tmp_path)
    assert set(CLASSES) <= set(rec.classes)
    for c in CLASSES:
        sent = np.concatenate(live["events"][c])
        assert rec.events[c].tobytes() == sent.tobytes(), f"{c}: the recording differs from what the bus published"
        assert rec.events[c].dtype == EVENT_DTYPE
        assert rec.events[c]["seq"].tolist() == list(range(1, len(sent) + 1))
    assert sum(int((rec.events[c]["type"] == EV_TRADE).sum()) for c in CLASSES) > 20

    # book_at: every live book message's state, and the final book
    for c in CLASSES:
        states = live["states"][c]
        assert len(states) > 20
        for seq, when, l2 in states[:: max(1, len(states) // 25)] + states[-1:]:
            assert book_at(rec, c, seq, time=when).level2() == l2, f"{c}: book_at({seq}, {when})"
        assert book_at(tmp_path, c, live["seq"][c]).level2() == live["final"][c]
        f = feed_at(rec, c, live["seq"][c])
        assert f.book.seq == live["seq"][c] and f.now == live["time"][c]
    assert book_at(rec, "H100", 0).level2() == {"bids": [], "spot_bids": [], "asks": [], "spot_asks": []}

    # the replayed messages are the live ones, byte for byte in content (same u, seq, time, levels)
    replayed = [m for _, ms in messages(rec, ["book", "trades", "ticker"]) for m in ms
                if m.get("action") != "snapshot" and m["class"] in CLASSES]
    live_updates = [m for m in live["live"] if m.get("action") != "snapshot"]
    key = lambda m: (m["class"], m["type"], m["u"])  # noqa: E731
    assert sorted(live_updates, key=key) == sorted(replayed, key=key)

    # gpux replay: events as JSON lines, with a progress bar on stderr
    assert gpux(["replay", str(tmp_path), "--class", "H100", "--progress"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == len(rec.events["H100"]) and lines[0]["class"] == "H100" and lines[0]["seq"] == 1
    assert "100.0%" in captured.err and "[##############################]" in captured.err
    # ... as CSV
    assert gpux(["replay", str(tmp_path), "--format", "csv", "--no-progress"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["class", "type", "seq"] and len(rows) == 1 + len(rec)
    # ... one channel's feed messages: a client applying them ends with the final book
    assert gpux(["replay", str(tmp_path), "--channel", "book", "--class", "A100", "--no-progress"]) == 0
    b = Level2()
    for line in capsys.readouterr().out.splitlines():
        b.apply(json.loads(line))
    assert b.level2() == live["final"]["A100"]
    # ... a time window
    t_mid = int(np.median(rec.events["H100"]["time"]))
    buf = io.StringIO()
    n = run_replay(tmp_path, buf, classes=["H100"], from_time=t_mid)
    got = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert n == len(got) and got and all(e["time"] >= t_mid for e in got)
    assert len(got) == int((rec.events["H100"]["time"] >= t_mid).sum())
    buf = io.StringIO()
    run_replay(tmp_path, buf, channel="trades", fmt="csv", classes=["L40S"])
    trades = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert len(trades) == int((rec.events["L40S"]["type"] == EV_TRADE).sum())

    # verify: the recording is what the command journal replays to
    res = verify(tmp_path)
    assert res.ok, res.message
    assert res.events == len(rec) and res.journal_seq > 0
    assert gpux(["verify", str(tmp_path)]) == 0
    assert "byte for byte" in capsys.readouterr().out


def _tamper(tmp_path: Path, fix_crc: bool) -> tuple[str, int, int]:
    """Change the price of the 5th trade in the recording; returns (class, seq, file offset)."""
    for seg in iter_segments(tmp_path):
        for j in range(len(seg.blocks)):
            ev = seg.block_events(j)
            trades = np.flatnonzero(ev["type"] == EV_TRADE)
            if len(trades) and seg.block_class(j) == "H100":
                k = int(trades[0])
                seq = int(ev["seq"][k])
                ev_off = int(seg.blocks[j, 4]) + k * EVENT_DTYPE.itemsize
                price_off = ev_off + EVENT_DTYPE.fields["price"][1]
                data = bytearray(seg.path.read_bytes())
                old = struct.unpack_from("<q", data, price_off)[0]
                struct.pack_into("<q", data, price_off, old + 1000)
                if fix_crc:
                    i = int(seg.blocks[j, 0])
                    off, length = int(seg.recs[i, 1]), int(seg.recs[i, 2])
                    struct.pack_into("<I", data, off + 4, zlib.crc32(bytes(data[off + 8:off + 16 + length])))
                seg.path.write_bytes(bytes(data))
                return "H100", seq, ev_off
    raise AssertionError("no H100 trade recorded")


def test_verify_pinpoints_a_tampered_record(tmp_path, capsys) -> None:
    asyncio.run(recorded_session(tmp_path, n=300, seed=12))
    assert verify(tmp_path).ok
    cls, seq, off = _tamper(tmp_path, fix_crc=True)
    res = verify(tmp_path)
    assert not res.ok
    d = res.difference
    assert (d["cls"], d["seq"], d["fields"], d["offset"]) == (cls, seq, ["price"], off)
    assert f"event seq {seq}" in res.message and "price" in res.message and ".seg" in res.message
    assert json.loads(d["recorded"])["price"] == json.loads(d["replayed"])["price"] + 1000
    assert gpux(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "first difference" in err and f"class H100, event seq {seq}" in err
    assert gpux(["verify", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["difference"]["seq"] == seq


def test_verify_reports_a_record_that_fails_its_crc(tmp_path) -> None:
    asyncio.run(recorded_session(tmp_path, n=200, seed=13))
    _tamper(tmp_path, fix_crc=False)
    res = verify(tmp_path)
    assert not res.ok and "fails its CRC" in res.message and "byte offset" in res.message


def test_a_recording_that_lost_its_tail_is_rebuilt_from_the_command_journal(tmp_path) -> None:
    """No fsync for the recording: whatever a crash cuts off is rebuilt from the command journal at
    the next start (here: the whole last half is cut, then the whole recording is removed)."""
    live = asyncio.run(recorded_session(tmp_path, n=300, seed=14))
    full = load(tmp_path)
    seg = list(iter_segments(tmp_path))[-1]
    keep = int(seg.recs[len(seg.recs) // 2, 1])
    with open(seg.path, "r+b") as f:  # a crash mid-write: half the records and a torn one
        f.truncate(keep + 7)
    assert len(load(tmp_path)) < len(full)

    async def restart() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            await quiet(ex.exchange)
            for c in CLASSES:
                assert ex.exchange.feeds.feeds[c].book.level2() == reference_level2(ex.exchange.engine.books[c])

    asyncio.run(restart())
    again = load(tmp_path)
    for c in CLASSES:
        assert again.events[c][: len(full.events[c])].tobytes() == full.events[c].tobytes()
    assert verify(tmp_path).ok
    shutil.rmtree(tmp_path / "market-data")
    asyncio.run(restart())
    assert verify(tmp_path).ok
    assert book_at(tmp_path, "H100", live["seq"]["H100"]).level2() == live["final"]["H100"]


def test_websocket_replay_serves_the_recording_in_the_live_format(tmp_path) -> None:
    live = asyncio.run(recorded_session(tmp_path, n=300, seed=15))
    rec = load(tmp_path)
    t_first = int(min(rec.blocks["time"]))

    async def replay_client(url: str) -> tuple[FeedClient, list[dict]]:
        fc = FeedClient(url)
        done = asyncio.get_running_loop().create_future()
        seen: list[dict] = []

        def on(m: dict) -> None:
            seen.append(m)
            if m.get("type") == "replay_end" and not done.done():
                done.set_result(m)

        fc.on_message = on
        await fc.connect()
        assert "replay" in fc.hello
        for c in CLASSES:  # the same calls as on the live feed
            await fc.subscribe("book", c)
            await fc.subscribe("trades", c)
        await asyncio.wait_for(done, 30)
        return fc, seen

    async def go() -> None:
        runner = web.AppRunner(replay_app(tmp_path))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            fc, seen = await replay_client(f"http://127.0.0.1:{port}/v1/replay?speed=0")
            for c in CLASSES:
                assert fc.books[c].level2() == live["final"][c]
            assert fc.gaps == 0
            trades = [t["trade_id"] for m in seen if m.get("type") == "trades" and m["class"] == "H100"
                      and m.get("action") == "update" for t in m["trades"]]
            assert trades == list(range(1, len(trades) + 1)) and trades
            await fc.close()
            # from a later time: the first snapshot is the book at that time, then the rest
            t_mid = int(np.median(rec.blocks["time"]))
            fc, seen = await replay_client(f"http://127.0.0.1:{port}/v1/replay?speed=0&from={t_mid}&class=H100,A100")
            snap = next(m for m in seen if m.get("type") == "book" and m["class"] == "H100")
            assert snap["action"] == "snapshot" and snap["time"] < t_mid
            assert {"bids": snap["bids"], "spot_bids": snap["spot_bids"], "asks": snap["asks"],
                    "spot_asks": snap["spot_asks"]} == book_at(rec, "H100", snap["seq"], time=snap["time"]).level2()
            assert fc.books["H100"].level2() == live["final"]["H100"]
            await fc.close()
            # paced: engine time at `speed` engine seconds per wall second
            span = int(max(rec.blocks["time"])) - t_first
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            fc, _ = await replay_client(f"http://127.0.0.1:{port}/v1/replay?speed=2&class=H100")
            assert loop.time() - t0 >= span / 2 - 1
            await fc.close()
            # bad parameters
            bad = FeedClient(f"http://127.0.0.1:{port}/v1/replay?speed=fast")
            try:
                await bad.connect()
                raise AssertionError("a bad speed should be refused")
            except Exception as e:  # the upgrade is refused with 400
                assert "400" in str(e)
            finally:
                await bad.close()
        finally:
            await runner.cleanup()

    asyncio.run(go())


def test_the_exchange_serves_its_own_recording(tmp_path) -> None:
    async def go() -> None:
        async with running_exchange(tmp_path, **CFG) as ex:
            x = ex.exchange
            await session(x, np.random.default_rng(16), 300)
            await quiet(x)
            await asyncio.sleep(1.5)  # preempted leases (1 s notice) have ended
            await quiet(x)
            fc = FeedClient(ex.url + "/v1/replay?speed=0")
            ended = asyncio.get_running_loop().create_future()
            fc.on_message = lambda m: m.get("type") == "replay_end" and not ended.done() and ended.set_result(m)
            await fc.connect()
            await fc.subscribe("book", "H100")
            end = await asyncio.wait_for(ended, 30)
            assert end["classes"]["H100"]["seq"] == x.feeds.feeds["H100"].seq
            assert fc.books["H100"].level2() == x.feeds.feeds["H100"].book.level2()
            await fc.close()

    asyncio.run(go())
