"""A running exchange and its storage (issue 17): closed journal segments are verified in the
background and damage shows in /healthz and /metrics while the exchange trades on; after a full
disk the exchange resumes by itself once writes succeed again, with nothing acknowledged lost and
nothing refused accepted."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import subprocess
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest

from app.exchange import JOURNAL
from client.api import Client, ClientError
from exchange.config import ServerConfig
from exchange.journal import FileOps, Journal, JournalError, read, segments
from exchange.recovery import recover
from exchange.sequencer import Request
from feeds.verify import verify
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


# ------------------------------------------------------------------------------------ a full disk
class DiskFull(FileOps):
    """The journal's system calls on a disk that is full while ``full`` is set.  ``mode``:
    "rotate" fails making a new segment (posix_fallocate, where a preallocating journal meets a
    full disk); "write" takes ``room`` more bytes past what each file held (a short write), then
    fails (rewriting bytes already written needs no room); "sync" fails fdatasync (a batch's sync),
    "fsync" fails fsync (closing a segment, making one)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.full = False
        self.room = 0
        self.failures = 0
        self.high: dict[int, int] = {}  # fd -> end of the bytes written to it

    def _enospc(self) -> OSError:
        self.failures += 1
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self.high[fd] = 0  # a new segment (its fd number may be an old one's)
        if self.full and self.mode == "rotate":
            os.posix_fallocate(fd, offset, 4096)  # a part of it, as a real full disk may leave
            raise self._enospc()
        super().fallocate(fd, offset, length)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        high = self.high.get(fd, 0)
        if self.full and self.mode == "write" and offset + len(data) > high:
            n = max(0, min(len(data), high + self.room - offset))
            if n == 0:
                raise self._enospc()
            self.room -= max(0, offset + n - high)
            data = data[:n]
        n = super().pwrite(fd, data, offset)
        self.high[fd] = max(high, offset + n)
        return n

    def fdatasync(self, fd: int) -> None:
        if self.full and self.mode == "sync":
            raise self._enospc()
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.full and self.mode == "fsync":
            raise self._enospc()
        super().fsync(fd)


def test_a_failed_append_leaves_nothing_readable_and_the_journal_goes_on(tmp_path: Path) -> None:
    ops = DiskFull("write")
    j = Journal.open(tmp_path / "j", segment_bytes=4096, preallocate=True, ops=ops)
    j.append([b"a" * 40] * 5)
    j.sync()
    ops.full, ops.room = True, 3 * 56 + 20  # three whole records of the next batch fit, and a bit
    with pytest.raises(OSError):
        j.append([b"b" * 40] * 6)  # a short write (seqs 6-8 whole in the file), then ENOSPC
    assert j.failed is None and j.last_seq == 5
    assert [s for s, _ in read(tmp_path / "j")] == [1, 2, 3, 4, 5]
    ops.full = False
    j.append([b"c" * 10])  # a shorter batch where the failed one was: no stale record after it
    j.sync()
    j.close()
    assert [(s, p[:1]) for s, p in read(tmp_path / "j")] == [(k, b"a") for k in range(1, 6)] + [(6, b"c")]
    ops.mode, ops.full = "rotate", True
    j = Journal.open(tmp_path / "j", segment_bytes=64, preallocate=True, ops=ops)
    with pytest.raises(OSError):
        j.append([b"d"])  # the segment is over 64 bytes: rotation fails, the new segment is removed
    assert len(segments(tmp_path / "j")) == 1 and j.failed is None
    ops.full = False
    assert j.append([b"d"]) == 7
    j.sync()
    j.close()
    assert [s for s, _ in read(tmp_path / "j")] == list(range(1, 8))


def test_a_failed_sync_is_cured_only_by_writing_again(tmp_path: Path) -> None:
    ops = DiskFull("sync")
    j = Journal.open(tmp_path / "j", segment_bytes=4096, preallocate=True, ops=ops)
    j.append([b"a"])
    ops.full = True
    with pytest.raises(OSError):
        j.sync()
    assert j.retryable
    with pytest.raises(JournalError):
        j.append([b"b"])
    with pytest.raises(OSError):
        j.resync()
    ops.full = False
    j.resync()
    assert j.failed is None and j.append([b"b"]) == 2
    j.close()
    assert [s for s, _ in read(tmp_path / "j")] == [1, 2]
    # closing a segment at rotation syncs it: a failure there is a failed sync too
    ops.mode = "fsync"
    j = Journal.open(tmp_path / "k", segment_bytes=64, preallocate=True, ops=ops)
    j.append([b"c" * 100])  # not synced: only the rotation's fsync would make it durable
    ops.full = True
    with pytest.raises(OSError):
        j.append([b"d"])
    assert j.retryable and j.last_seq == 1 and len(segments(tmp_path / "k")) == 1
    ops.full = False
    j.resync()
    assert j.append([b"d"]) == 2
    j.sync()
    j.close()
    assert [s for s, _ in read(tmp_path / "k")] == [1, 2] and len(segments(tmp_path / "k")) == 2


def test_only_a_syncing_journal_keeps_its_unsynced_records(tmp_path: Path) -> None:
    """The copy `resync` writes again is kept until the next sync; a journal that never syncs (the
    market-data recorder's) keeps none, or it would hold everything it ever wrote."""
    lazy = Journal.open(tmp_path / "lazy", fsync=False)
    for _ in range(50):
        lazy.append([b"x" * 1000])
    assert lazy._unsynced == []
    lazy.close()
    j = Journal.open(tmp_path / "j")
    j.append([b"x" * 1000])
    assert len(j._unsynced) == 1
    j.sync()
    assert j._unsynced == []
    j.close()


async def _ask(c: Client, k: int) -> dict:
    return await c.ask("H100", 1, 2_000_000 + 1000 * k, int(time.time()) + 30 * 86_400, client_order_id=f"a{k}")


@pytest.mark.parametrize("mode", ["rotate", "write", "sync", "fsync"])
def test_after_a_full_disk_the_exchange_resumes_by_itself(tmp_path: Path, mode: str) -> None:
    data = tmp_path / "d"
    accepted: dict[str, int] = {}  # client order id -> oid, acknowledged
    refused: list[str] = []
    account = 0
    keys: dict = {}

    # "sync": the ask's own batch must be the first whose fsync fails (then it is held); a clock
    # batch journaled between the disk filling and the ask's arrival would fail first, and the
    # ask, queued behind it, be refused instead (seen once on a loaded machine): no clock batches
    quiet = {"clock_interval_s": 3600} if mode == "sync" else {}

    async def scenario() -> None:
        async with running_exchange(data, segment_bytes=1024, **quiet) as x:
            nonlocal account, keys
            c = x.client("p", "provider")
            account = x.keys["p"][0]
            await x.settle()
            ops = DiskFull(mode)
            x.exchange.app[JOURNAL].ops = ops
            for k in range(5):
                accepted[f"a{k}"] = (await _ask(c, k))["oid"]
            ops.full, ops.room = True, 100
            k = 5
            if mode == "sync":  # the batch is applied, its fsync fails: held, not answered, until the disk has room
                held = asyncio.ensure_future(_ask(c, k))
                await _until(lambda: ops.failures >= 2, "fsync retried")
                assert not held.done()
            else:  # refused (a rotation fails only when a batch starts a new segment: asks until one does)
                while True:
                    try:
                        accepted[f"a{k}"] = (await _ask(c, k))["oid"]
                    except ClientError as e:
                        assert e.status == 503 and e.code == "UNAVAILABLE"
                        assert "No space left on device" in e.message and "retries by itself" in e.message
                        refused.append(f"a{k}")
                        break
                    k += 1
                    assert k < 200
            status, body = await _get(x.url + "/healthz")
            assert status == 503 and "cannot write" in body and "ENOSPC" in body
            _, text = await _get(x.url + "/metrics")
            assert _metric(text, "gpux_journal_stalled") == 1
            assert _metric(text, "gpux_journal_write_failures_total") >= 1
            ops.full = False  # space again: nothing restarts the exchange

            async def healthy() -> bool:
                return (await _get(x.url + "/healthz"))[0] == 200

            await _until(healthy, "the exchange resumes")
            if mode == "sync":
                accepted[f"a{k}"] = (await held)["oid"]
            for n in range(k + 1, k + 40):  # and goes on, rotating segments
                accepted[f"a{n}"] = (await _ask(c, n))["oid"]
            _, text = await _get(x.url + "/metrics")
            assert _metric(text, "gpux_journal_stalled") == 0 and _metric(text, "gpux_journal_stalls_total") == 1
            keys = dict(x.keys)
        # the state the exchange had in memory when it stopped (its final snapshot) is the journal's
        cfg = ServerConfig(data_dir=str(data))
        mem, journal = recover(cfg), recover(cfg, use_snapshots=False)
        assert mem.seq == journal.seq and mem.state_hashes() == journal.state_hashes()
        assert mem.money.state_hash() == journal.money.state_hash()
        # restarted: every acknowledged order is there, the refused one is not
        async with running_exchange(data, segment_bytes=1024) as x:
            x.keys.update(keys)
            c = x.client_for("p")
            assert sorted(o["oid"] for o in await c.asks()) == sorted(accepted.values())
            coids = x.exchange.engine.state.coids
            assert all((account, coid) in coids for coid in accepted)
            assert not any((account, coid) in coids for coid in refused)

    asyncio.run(scenario())


def test_a_recorder_that_cannot_write_is_rebuilt_without_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"

    async def scenario() -> None:
        async with running_exchange(data) as x:
            c = x.client("p", "provider")
            await x.settle()
            for k in range(3):
                await _ask(c, k)
            feeds = x.exchange.feeds
            ops = DiskFull("write")
            ops.full = True
            feeds.recorder.journal.ops = ops  # this recorder's writes fail from now on
            for k in range(3, 10):
                await _ask(c, k)  # trading goes on
            await _until(lambda: ops.failures >= 1, "the recorder failed")
            await _until(lambda: feeds.recorder is not None and feeds.recorder.journal.ops is not ops,
                         "the recorder rebuilt from the command journal")
            for k in range(10, 15):
                await _ask(c, k)
            status, _ = await _get(x.url + "/healthz")
            assert status == 200
            _, text = await _get(x.url + "/metrics")
            assert _metric(text, "gpux_feeds_recorder_failures_total") == 1
            assert _metric(text, "gpux_feeds_recording") == 1

    asyncio.run(scenario())
    res = verify(data)  # every event recorded once, in order: the ones of the failed round too
    assert res.ok, res.message


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def test_a_real_full_disk_every_part_resumes_by_itself(tmp_path: Path) -> None:
    """The data directory on a small tmpfs, filled up: the market-data recorder and the journal
    (at its next segment) meet ENOSPC; once space is freed, the exchange is healthy again without
    a restart, and the journal, the snapshot taken at the stop and the recording agree."""
    fs = tmp_path / "fs"
    if not _mount_tmpfs(fs, "24m"):
        pytest.skip("needs root and mount -t tmpfs")
    data = fs / "d"
    accepted: dict[str, int] = {}
    try:
        async def scenario() -> None:
            async with running_exchange(data, segment_bytes=8192, check_money=False) as x:
                c = x.client("p", "provider")
                keys.update(x.keys)
                await x.settle()
                filler = fs / "filler"
                with open(filler, "wb") as f:
                    with pytest.raises(OSError) as e:
                        while True:
                            f.write(b"x" * 65536)
                    assert e.value.errno == errno.ENOSPC  # not a byte left
                k = 0
                while True:  # until the journal meets the full disk
                    try:
                        accepted[f"a{k}"] = (await _ask(c, k))["oid"]
                    except ClientError as e:
                        assert e.status == 503 and e.code == "UNAVAILABLE" and "No space left" in e.message
                        break
                    k += 1
                    assert k < 5000
                status, body = await _get(x.url + "/healthz")
                assert status == 503 and "ENOSPC" in body
                filler.unlink()  # space again

                async def healthy() -> bool:
                    return (await _get(x.url + "/healthz"))[0] == 200

                await _until(healthy, "every part healthy again, no restart")
                for n in range(k + 1, k + 30):
                    accepted[f"a{n}"] = (await _ask(c, n))["oid"]
                assert {o["oid"] for o in await c.asks()} == set(accepted.values())
                _, text = await _get(x.url + "/metrics")
                assert _metric(text, "gpux_feeds_recorder_failures_total") >= 1
                assert _metric(text, "gpux_journal_stalls_total") == 1

        keys: dict = {}
        asyncio.run(scenario())
        cfg = ServerConfig(data_dir=str(data))
        mem, journal = recover(cfg), recover(cfg, use_snapshots=False)
        assert mem.seq == journal.seq and mem.state_hashes() == journal.state_hashes()
        assert journal.state.open_count(keys["p"][0]) == len(accepted)
        res = verify(data)  # the recording, rebuilt after the failure, is the journal's events byte for byte
        assert res.ok, res.message
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


# ------------------------------------------------------------------------- background tasks
class BrokenClock:
    """A clock whose reading fails (what killed the clock task in issue 17's finding 5)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def time(self) -> int:
        raise RuntimeError("injected clock fault")

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _kill(part: str, x: Running, data: Path) -> tuple[str, str]:
    """Make one background part of a running exchange die; (the /healthz check that must say so,
    words of what it says).  The log must say why (CRITICAL or ERROR)."""
    ex = x.exchange
    if part == "clock":  # the clock task's next tick reads the clock
        ex.sequencer.clock = BrokenClock(ex.sequencer.clock)
        return "sequencer", "injected clock fault"
    if part == "fsync-thread":  # its hand-back to a loop that is gone raises in the thread
        gone = asyncio.new_event_loop()
        gone.close()
        ex.sequencer._syncer._jobs.put((gone, None, lambda: None))
        return "sequencer", "fsync thread died"
    if part == "revocations":
        from app.exchange import REVOCATIONS

        ex.app[REVOCATIONS]._task.cancel()
        return "revocations", "cancelled"
    if part == "feeds-heartbeat":
        ex.feeds.hub.heartbeat_task.cancel()
        return "feeds", "heartbeat"
    if part == "verifier":  # its directory is gone (replaced by a file)
        ver = ex.segment_verifier
        ver.dir = data / "accounts.db"
        ver.wake()
        return "journal_verify", "NotADirectoryError"
    if part == "deposits":  # the account store cannot be read
        ex.store.close()
        return "deposits", "cannot be read"
    if part == "snapshots":  # the snapshot directory cannot be written
        snaps = data / "snapshots"
        if snaps.exists():
            for p in snaps.iterdir():
                p.unlink()
            snaps.rmdir()
        snaps.write_bytes(b"not a directory")
        ex.sequencer.request_snapshot()
        return "sequencer", "snapshot failed"
    raise AssertionError(part)


@pytest.mark.parametrize("part", ["clock", "fsync-thread", "revocations", "feeds-heartbeat", "verifier", "deposits",
                                  "snapshots"])
def test_a_background_part_that_dies_makes_the_process_unhealthy_and_is_logged(tmp_path: Path, part: str,
                                                                                caplog) -> None:
    data = tmp_path / "d"

    async def scenario() -> None:
        async with running_exchange(data, check_money=False) as x:
            acc, _, _ = x.account("t", "trader", deposit=1000 * USD)
            await x.settle()
            await _bids(x, acc, 2)
            status, _ = await _get(x.url + "/healthz")
            assert status == 200
            caplog.clear()
            check, words = _kill(part, x, data)

            async def reported() -> bool:
                status, body = await _get(x.url + "/healthz")
                return status == 503 and words in msgspec.json.decode(body)["checks"][check]

            await _until(reported, f"/healthz reports {part} in its check {check!r}")
            bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert bad, f"nothing logged when {part} died"

    asyncio.run(scenario())
