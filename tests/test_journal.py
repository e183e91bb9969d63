"""The command journal (exchange/journal.py): format, rotation, reading, torn tails, corruption."""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import signal
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange import journal as journal_module
from exchange.journal import MAX_PAYLOAD, Journal, JournalError, read, segments

HEADER = struct.Struct("<IIQ")  # the documented layout, independent of the module's constant


def record_spans(path: Path) -> list[tuple[int, int, int]]:
    """(seq, start offset, end offset) of every whole record in a segment, parsed by the test itself."""
    data = path.read_bytes()
    spans = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, _crc, seq = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if end > len(data):
            break
        spans.append((seq, offset, end))
        offset = end
    return spans


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def payload(i: int) -> bytes:
    return f"command {i} ".encode() * (1 + i % 7)


def write_journal(
    directory: Path, count: int, *, segment_bytes: int = 64 << 20, batch: int = 10
) -> list[bytes]:
    written = [payload(i) for i in range(1, count + 1)]
    with Journal.open(directory, segment_bytes=segment_bytes, fsync=False) as j:
        for start in range(0, count, batch):
            j.append(written[start : start + batch])
            j.sync()
    return written


def test_record_layout_on_disk(tmp_path):
    with Journal.open(tmp_path) as j:
        assert j.append([b"abc", b""]) == 2
        j.sync()
    ((first, path),) = segments(tmp_path)
    assert (first, path.name) == (1, "00000000000000000001.seg")
    seq1, seq2 = struct.pack("<Q", 1), struct.pack("<Q", 2)
    expected = (
        struct.pack("<II", 3, zlib.crc32(seq1 + b"abc"))
        + seq1
        + b"abc"
        + struct.pack("<II", 0, zlib.crc32(seq2))
        + seq2
    )
    assert path.read_bytes() == expected


def test_fresh_directory_is_created_and_empty(tmp_path):
    directory = tmp_path / "a" / "journal"
    with Journal.open(directory) as j:
        assert j.last_seq == 0
        assert j.recovered_truncated_bytes == 0
        assert segments(directory) == []  # the first segment appears with the first append
    assert list(read(directory)) == []
    with Journal.open(directory) as j:
        assert j.append([b"x"]) == 1
    assert list(read(directory)) == [(1, b"x")]


def test_round_trip_across_rotations(tmp_path):
    written = write_journal(tmp_path, 300, segment_bytes=700, batch=7)
    segs = segments(tmp_path)
    assert len(segs) >= 10
    got = list(read(tmp_path))
    assert got == list(enumerate(written, start=1))
    # every segment is named after its first record and continues the previous one
    expected_first = 1
    for first, path in segs:
        spans = record_spans(path)
        assert first == expected_first == spans[0][0]
        assert [s for s, _, _ in spans] == list(range(first, first + len(spans)))
        expected_first = first + len(spans)
    # rotation happens at the start of an append once the segment is over the size, never before
    for _first, path in segs[:-1]:
        assert path.stat().st_size > 700
        assert path.stat().st_size <= 700 + 7 * (HEADER.size + max(map(len, written)))


def test_read_from_the_middle_and_up_to(tmp_path):
    written = write_journal(tmp_path, 120, segment_bytes=400)
    expected = list(enumerate(written, start=1))
    assert list(read(tmp_path, 37)) == expected[36:]
    assert list(read(tmp_path, 37, 52)) == expected[36:52]
    assert list(read(tmp_path, 52, 52)) == [expected[51]]
    assert list(read(tmp_path, 1, 1)) == [expected[0]]
    assert list(read(tmp_path, 120)) == [expected[-1]]
    assert list(read(tmp_path, 121)) == []
    assert list(read(tmp_path, 100, 500)) == expected[99:]
    assert list(read(tmp_path, 60, 59)) == []
    with pytest.raises(ValueError):
        list(read(tmp_path, 0))


def test_read_starts_at_the_right_segment(tmp_path):
    written = write_journal(tmp_path, 120, segment_bytes=400)
    segs = segments(tmp_path)
    # corrupt a payload in the first segment: reading from a later segment never looks at it
    _, start, _ = record_spans(segs[0][1])[1]
    flip_byte(segs[0][1], start + HEADER.size)
    later = segs[2][0] + 1
    assert list(read(tmp_path, later)) == list(enumerate(written, start=1))[later - 1 :]
    with pytest.raises(JournalError):
        list(read(tmp_path, 1))


def test_reopen_continues_the_sequence(tmp_path):
    write_journal(tmp_path, 25, segment_bytes=300)
    with Journal.open(tmp_path, segment_bytes=300) as j:
        assert j.last_seq == 25
        assert j.recovered_truncated_bytes == 0
        assert j.append([b"a", b"b"]) == 27
        j.sync()
        assert j.append([b"c"]) == 28
    with Journal.open(tmp_path, segment_bytes=300) as j:
        assert j.last_seq == 28
    got = list(read(tmp_path, 26))
    assert got == [(26, b"a"), (27, b"b"), (28, b"c")]


@pytest.mark.parametrize("segment_bytes", [64 << 20, 1], ids=["one-segment", "last-record-alone"])
def test_torn_last_record_at_every_offset(tmp_path, segment_bytes):
    pristine = tmp_path / "pristine"
    written = write_journal(pristine, 6, segment_bytes=segment_bytes, batch=1)
    last_name = segments(pristine)[-1][1].name
    seq, start, end = record_spans(pristine / last_name)[-1]
    assert seq == 6
    if segment_bytes == 1:
        assert start == 0  # the torn record is the whole last segment
    for cut in range(start, end):
        directory = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, directory)
        last = directory / last_name
        os.truncate(last, cut)
        assert list(read(directory)) == list(enumerate(written[:5], start=1)), cut  # torn tail: silent
        with Journal.open(directory, segment_bytes=segment_bytes) as j:
            assert j.last_seq == 5, cut
            assert j.recovered_truncated_bytes == cut - start, cut
            assert last.stat().st_size == start, cut
            assert j.append([b"after the tear"]) == 6
        assert list(read(directory)) == [*enumerate(written[:5], start=1), (6, b"after the tear")], cut


def test_flipped_payload_byte_in_last_record_is_dropped_at_open(tmp_path):
    written = write_journal(tmp_path, 10)
    ((_, path),) = segments(tmp_path)
    seq, start, end = record_spans(path)[-1]
    flip_byte(path, end - 1)
    assert seq == 10
    assert list(read(tmp_path)) == list(enumerate(written[:9], start=1))  # at the very end: a torn tail
    with Journal.open(tmp_path) as j:
        assert j.last_seq == 9
        assert j.recovered_truncated_bytes == end - start
        assert path.stat().st_size == start
        assert j.append([b"x"]) == 10
    assert list(read(tmp_path, 9)) == [(9, written[8]), (10, b"x")]


def test_flipped_byte_inside_last_segment_raises_on_read_and_stops_open_changing_nothing(tmp_path):
    """A record that fails its CRC with intact records after it is damage, not a torn write: the
    records after it were acknowledged, so open refuses to cut them, names the segment, the
    offset and the seqs at risk, and leaves the file as it was."""
    written = write_journal(tmp_path, 10)
    ((_, path),) = segments(tmp_path)
    seq, start, end = record_spans(path)[6]
    assert seq == 7
    flip_byte(path, end - 1)
    before = path.read_bytes()
    with pytest.raises(JournalError, match=rf"{path.name}.*CRC.*byte offset {start}\b"):
        list(read(tmp_path))
    assert list(read(tmp_path, 1, 6)) == list(enumerate(written[:6], start=1))
    with pytest.raises(JournalError, match=rf"{path.name}.*byte offset {start} \(after seq 6\).*from seq 7 on"):
        Journal.open(tmp_path)
    assert path.read_bytes() == before  # nothing cut, nothing zeroed


def test_a_torn_last_record_is_cut_and_the_cut_is_logged(tmp_path, caplog):
    write_journal(tmp_path, 10)
    ((_, path),) = segments(tmp_path)
    seq, start, end = record_spans(path)[-1]
    assert seq == 10
    with open(path, "r+b") as f:
        f.truncate(end - 3)  # the crash cut the last write short
    with caplog.at_level("WARNING", logger="gpux.journal"):
        with Journal.open(tmp_path) as j:
            assert j.last_seq == 9
    cut = [r for r in caplog.records if "torn last record" in r.getMessage()]
    assert len(cut) == 1 and cut[0].bytes == end - 3 - start and cut[0].last_seq == 9


def test_flipped_byte_in_an_earlier_segment_makes_read_raise_naming_the_file(tmp_path):
    written = write_journal(tmp_path, 60, segment_bytes=300)
    segs = segments(tmp_path)
    assert len(segs) >= 3
    target = segs[1][1]
    seq, start, end = record_spans(target)[2]
    flip_byte(target, start + HEADER.size + 3)
    with pytest.raises(JournalError, match=rf"{target}: .*CRC.* at byte offset {start}\b") as info:
        list(read(tmp_path))
    assert target.name in str(info.value)
    # records before the damage were yielded, the damaged one never is
    got = []
    with pytest.raises(JournalError):
        for item in read(tmp_path):
            got.append(item)
    assert got == list(enumerate(written[: seq - 1], start=1))
    # open checks earlier segments only cheaply (first and last record), so it still opens
    with Journal.open(tmp_path, segment_bytes=300) as j:
        assert j.last_seq == 60
        assert j.recovered_truncated_bytes == 0


def test_a_missing_segment_is_a_gap(tmp_path):
    write_journal(tmp_path, 60, segment_bytes=300)
    segs = segments(tmp_path)
    segs[1][1].unlink()
    with pytest.raises(JournalError, match=rf"{segs[2][1].name}.*starts at seq {segs[2][0]}"):
        list(read(tmp_path))
    with pytest.raises(JournalError, match=segs[0][1].name):
        Journal.open(tmp_path)


def test_reading_records_older_than_the_first_segment_raises(tmp_path):
    write_journal(tmp_path, 60, segment_bytes=300)
    segs = segments(tmp_path)
    segs[0][1].unlink()  # as if pruned after a snapshot
    with pytest.raises(JournalError, match="starts at seq"):
        list(read(tmp_path, 1))
    assert [s for s, _ in read(tmp_path, segs[1][0])] == list(range(segs[1][0], 61))


def test_torn_tail_of_an_earlier_segment_is_refused_at_open(tmp_path):
    write_journal(tmp_path, 60, segment_bytes=300)
    segs = segments(tmp_path)
    penultimate = segs[-2][1]
    os.truncate(penultimate, penultimate.stat().st_size - 1)
    with pytest.raises(JournalError, match=penultimate.name):
        Journal.open(tmp_path)
    with pytest.raises(JournalError, match=rf"{penultimate.name}.*torn"):
        list(read(tmp_path))


def test_last_segment_empty_or_with_a_partial_header(tmp_path):
    written = write_journal(tmp_path, 30, segment_bytes=300)
    # a crash right after rotation created the next segment: it is empty
    empty = tmp_path / f"{31:020d}.seg"
    empty.touch()
    with Journal.open(tmp_path, segment_bytes=300) as j:
        assert j.last_seq == 30
        assert j.recovered_truncated_bytes == 0
    assert list(read(tmp_path)) == list(enumerate(written, start=1))
    # ... or holds only part of a header
    empty.write_bytes(HEADER.pack(5, 0, 31)[:7])
    assert list(read(tmp_path)) == list(enumerate(written, start=1))
    with Journal.open(tmp_path, segment_bytes=300) as j:
        assert j.last_seq == 30
        assert j.recovered_truncated_bytes == 7
        assert empty.stat().st_size == 0
        assert j.append([b"31"]) == 31
    assert record_spans(empty) == [(31, 0, HEADER.size + 2)]
    assert list(read(tmp_path, 30)) == [(30, written[-1]), (31, b"31")]


def test_zeroed_tail_is_a_torn_tail(tmp_path):
    written = write_journal(tmp_path, 8)
    ((_, path),) = segments(tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(100))  # the file grew, but the data never reached the disk
    assert list(read(tmp_path)) == list(enumerate(written, start=1))
    with Journal.open(tmp_path) as j:
        assert j.last_seq == 8
        assert j.recovered_truncated_bytes == 100
    assert path.stat().st_size == size


def test_wrong_seq_in_last_segment_ends_the_log(tmp_path):
    write_journal(tmp_path, 5)
    ((_, path),) = segments(tmp_path)
    seq7 = struct.pack("<Q", 7)
    with open(path, "ab") as f:
        f.write(struct.pack("<II", 1, zlib.crc32(seq7 + b"z")) + seq7 + b"z")  # a good record, wrong seq
    assert [s for s, _ in read(tmp_path)] == [1, 2, 3, 4, 5]
    with Journal.open(tmp_path) as j:
        assert j.last_seq == 5
        assert j.recovered_truncated_bytes == HEADER.size + 1


def test_empty_payloads(tmp_path):
    with Journal.open(tmp_path, segment_bytes=40) as j:
        assert j.append([b""] * 5) == 5
        assert j.append([]) == 5  # nothing to write
        assert j.append([b"", b"y", b""]) == 8
    assert list(read(tmp_path)) == [(s, b"") for s in range(1, 7)] + [(7, b"y"), (8, b"")]
    assert len(segments(tmp_path)) == 2  # the second batch started a new segment (5 * 16 bytes > 40)


def test_payload_too_large_raises_and_writes_nothing(tmp_path):
    with Journal.open(tmp_path) as j:
        j.append([b"first"])
        j.sync()
        ((_, path),) = segments(tmp_path)
        size = path.stat().st_size
        with pytest.raises(ValueError, match="exceeds"):
            j.append([b"fine", bytes(MAX_PAYLOAD + 1), b"fine"])
        assert j.last_seq == 1
        assert path.stat().st_size == size
        assert j.append([bytes(MAX_PAYLOAD)]) == 2  # exactly the limit is allowed
    got = list(read(tmp_path))
    assert [s for s, _ in got] == [1, 2]
    assert got[1][1] == bytes(MAX_PAYLOAD)


def test_one_sync_per_sync_and_none_with_fsync_false(tmp_path, monkeypatch):
    calls = []  # ("fsync" | "fdatasync", fd)
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def counting_fsync(fd):
        calls.append(("fsync", fd))
        real_fsync(fd)

    def counting_fdatasync(fd):
        calls.append(("fdatasync", fd))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    with Journal.open(tmp_path / "nosync", fsync=False) as j:
        for _ in range(5):
            j.append([b"a"] * 50)
            j.sync()
    assert calls == []
    assert len(list(read(tmp_path / "nosync"))) == 250

    with Journal.open(tmp_path / "sync") as j:
        j.append([b"a"] * 50)  # the first segment: its creation fsyncs the directory
        calls.clear()
        for _ in range(5):
            j.sync()
            assert [c for c, _ in calls] == ["fdatasync"]  # a batch costs one data sync
            j.sync()  # nothing new: no sync
            assert len(calls) == 1
            calls.clear()
            j.append([b"a"] * 50)
            assert calls == []  # append never syncs
    assert [c for c, _ in calls] == ["fdatasync"]  # close synced the last batch
    assert len(list(read(tmp_path / "sync"))) == 300


def test_only_one_writer(tmp_path):
    with Journal.open(tmp_path) as j:
        j.append([b"a"])
        with pytest.raises(JournalError, match="elsewhere"):
            Journal.open(tmp_path)
    with Journal.open(tmp_path) as j:
        assert j.last_seq == 1


def test_closed_journal_refuses_appends(tmp_path):
    j = Journal.open(tmp_path)
    j.append([b"a"])
    j.close()
    j.close()
    with pytest.raises(ValueError, match="closed"):
        j.append([b"b"])
    assert list(read(tmp_path)) == [(1, b"a")]


def test_a_failed_append_leaves_nothing_behind_and_the_journal_goes_on(tmp_path):
    j = Journal.open(tmp_path)
    j.append([b"x" * 100] * 3)
    j.sync()
    ((_, path),) = segments(tmp_path)
    size = path.stat().st_size
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, old_limit[1]))
        with pytest.raises(OSError) as info:
            j.append([b"y" * 100] * 3)  # a short write of 50 bytes, then EFBIG
        assert info.value.errno == errno.EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert j.last_seq == 3 and j.failed is None
    assert path.stat().st_size == size  # the 50 bytes that reached the file were cut
    assert j.append([b"z"]) == 4  # the file may grow again: the journal goes on
    j.sync()
    j.close()
    with Journal.open(tmp_path) as j:
        assert j.last_seq == 4
        assert j.recovered_truncated_bytes == 0
    assert list(read(tmp_path)) == [(1, b"x" * 100), (2, b"x" * 100), (3, b"x" * 100), (4, b"z")]


def test_failed_fsync_is_never_retried(tmp_path, monkeypatch):
    j = Journal.open(tmp_path)
    j.append([b"a"])

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.setattr(os, "fdatasync", failing_fsync)
    with pytest.raises(OSError):
        j.sync()
    monkeypatch.undo()
    with pytest.raises(JournalError):
        j.sync()
    with pytest.raises(JournalError):
        j.append([b"b"])
    j.close()


def test_inspection_command(tmp_path, capsys):
    write_journal(tmp_path, 12, segment_bytes=200)
    assert journal_module.main([str(tmp_path), "3", "4", "--records"]) == 0
    out = capsys.readouterr().out
    assert f"3\t{len(payload(3))}\t{payload(3)[:32].hex()}...\n" in out
    assert f"4\t{len(payload(4))}\t{payload(4)[:32].hex()}...\n" in out
    assert out.strip().endswith("2 records read, last seq 4")
    (_, first), *_ = segments(tmp_path)
    flip_byte(first, HEADER.size + 1)
    assert journal_module.main([str(tmp_path)]) == 1
    assert first.name in capsys.readouterr().err


batches_strategy = st.lists(st.lists(st.binary(max_size=60), max_size=8), max_size=14)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, segment_bytes=st.integers(1, 400), cut_seed=st.integers(0, 2**32))
def test_property_written_is_read_and_truncation_leaves_a_prefix(batches, segment_bytes, cut_seed):
    written = [p for batch in batches for p in batch]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with Journal.open(directory, segment_bytes=segment_bytes, fsync=False) as j:
            for batch in batches:
                j.append(batch)
                j.sync()
            assert j.last_seq == len(written)
        assert list(read(directory)) == list(enumerate(written, start=1))

        segs = segments(directory)
        if not segs:
            assert written == []
            return
        first, last = segs[-1]
        cut = random.Random(cut_seed).randint(0, last.stat().st_size)
        os.truncate(last, cut)
        with Journal.open(directory, segment_bytes=segment_bytes, fsync=False) as j:
            got = list(read(directory))
            assert got == list(enumerate(written[: len(got)], start=1))
            assert j.last_seq == len(got) >= first - 1  # only the last segment can lose records
            assert j.recovered_truncated_bytes == cut - last.stat().st_size
            assert j.append([b"next"]) == len(got) + 1
        assert list(read(directory, len(got) + 1)) == [(len(got) + 1, b"next")]


def test_rotation_happens_only_once_a_segment_is_over_the_size(tmp_path):
    with Journal.open(tmp_path, segment_bytes=2 * HEADER.size) as j:
        for _ in range(4):
            j.append([b""])  # 16 bytes each: at 32 bytes the segment is not over 32, at 48 it is
        j.append([b"", b"", b""])
    assert [(first, path.stat().st_size) for first, path in segments(tmp_path)] == [(1, 48), (4, 64)]


# ---------------------------------------------------------------- preallocated segments


def _prealloc(directory: Path, **kw) -> Journal:
    return Journal.open(directory, preallocate=True, **kw)


def test_preallocated_segment_is_allocated_up_front_and_written_in_place(tmp_path):
    seg_bytes = 1 << 16
    with _prealloc(tmp_path, segment_bytes=seg_bytes) as j:
        assert j.append([b"abc", b""]) == 2
        j.sync()
        ((_, path),) = segments(tmp_path)
        allocated = seg_bytes + journal_module.PREALLOC_SLACK
        assert path.stat().st_size == allocated  # the batch did not grow the file
        j.append([b"defg"])
        j.sync()
        assert path.stat().st_size == allocated
    data = path.read_bytes()
    used = 3 * HEADER.size + 3 + 4
    assert [s for s, _, _ in record_spans(path)[:3]] == [1, 2, 3]
    assert data[used:] == bytes(allocated - used)  # zeros after the last record
    assert list(read(tmp_path)) == [(1, b"abc"), (2, b""), (3, b"defg")]
    with _prealloc(tmp_path, segment_bytes=seg_bytes) as j:  # the zeros are the end, nothing is cut
        assert j.last_seq == 3
        assert j.recovered_truncated_bytes == 0
        assert j.append([b"h"]) == 4
    assert path.stat().st_size == allocated
    assert list(read(tmp_path, 3)) == [(3, b"defg"), (4, b"h")]


def test_preallocated_rotation_cuts_the_old_segment_to_its_records(tmp_path):
    written = [payload(i) for i in range(1, 61)]
    with _prealloc(tmp_path, segment_bytes=300) as j:
        for start in range(0, 60, 5):
            j.append(written[start:start + 5])
            j.sync()
    segs = segments(tmp_path)
    assert len(segs) > 3
    for _, path in segs[:-1]:  # only the last segment ends in zeros
        spans = record_spans(path)
        assert spans[-1][2] == path.stat().st_size
    assert segs[-1][1].stat().st_size == 300 + journal_module.PREALLOC_SLACK
    assert list(read(tmp_path)) == list(enumerate(written, start=1))
    with _prealloc(tmp_path, segment_bytes=300) as j:  # the checks of the earlier segments pass
        assert j.last_seq == 60
        assert j.recovered_truncated_bytes == 0
    with Journal.open(tmp_path, segment_bytes=300) as j:  # a plain writer cuts the zeros off
        assert j.last_seq == 60
    assert record_spans(segs[-1][1])[-1][2] == segs[-1][1].stat().st_size


def test_preallocated_torn_record_is_zeroed_in_place(tmp_path):
    with _prealloc(tmp_path, segment_bytes=4096) as j:
        j.append([b"one", b"two"])
        j.sync()
    ((_, path),) = segments(tmp_path)
    size = path.stat().st_size
    end = record_spans(path)[1][2]
    seq3 = struct.pack("<Q", 3)
    record = struct.pack("<II", 5, zlib.crc32(seq3 + b"three")) + seq3 + b"three"
    with open(path, "r+b") as f:  # the crash: the record's first 20 bytes reached the disk
        f.seek(end)
        f.write(record[:20])
    assert list(read(tmp_path)) == [(1, b"one"), (2, b"two")]
    with _prealloc(tmp_path, segment_bytes=4096) as j:
        assert j.last_seq == 2
        assert j.recovered_truncated_bytes == 20
        assert path.stat().st_size == size  # zeroed, not cut: the allocation stays
        assert path.read_bytes()[end:] == bytes(size - end)
        assert j.append([b"3"]) == 3
    assert list(read(tmp_path)) == [(1, b"one"), (2, b"two"), (3, b"3")]


def test_preallocated_garbage_after_zeros_raises_on_read_and_is_zeroed_on_open(tmp_path):
    # a later write that reached the disk while an earlier one did not: neither was acknowledged
    with _prealloc(tmp_path, segment_bytes=4096) as j:
        j.append([b"one"])
        j.sync()
    ((_, path),) = segments(tmp_path)
    end = record_spans(path)[0][2]
    with open(path, "r+b") as f:
        f.seek(end + 100)
        f.write(b"\x07" * 30)
    with pytest.raises(JournalError, match="byte offset 19"):  # like damage inside the last segment
        list(read(tmp_path))
    with _prealloc(tmp_path, segment_bytes=4096) as j:  # which open cuts (here: zeroes)
        assert j.last_seq == 1
        assert j.recovered_truncated_bytes == 130
        assert j.append([b"two"]) == 2
    assert list(read(tmp_path)) == [(1, b"one"), (2, b"two")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12),
    segment_bytes=st.sampled_from([200, 700, 1 << 20]),
    cut_seed=st.integers(min_value=0, max_value=10**9),
)
def test_property_preallocated_crash_leaves_a_prefix(batches, segment_bytes, cut_seed):
    """The data of the last segment reached the disk up to a random byte, zeros after it (the
    allocation did): reading and re-opening give a prefix of what was written, and the journal
    goes on from it."""
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        written: list[bytes] = []
        with _prealloc(directory, segment_bytes=segment_bytes, fsync=False) as j:
            for n in batches:
                part = [payload(len(written) + k + 1) for k in range(n)]
                j.append(part)
                written += part
        _, last = segments(directory)[-1]
        data = bytearray(last.read_bytes())
        spans = [span for span in record_spans(last) if span[0] != 0]  # seq 0: the zeros
        used = spans[-1][2] if spans else 0
        cut = random.Random(cut_seed).randint(0, used)
        data[cut:] = bytes(len(data) - cut)
        last.write_bytes(bytes(data))
        got = list(read(directory))
        assert got == list(enumerate(written[: len(got)], start=1))
        with _prealloc(directory, segment_bytes=segment_bytes, fsync=False) as j:
            assert j.last_seq == len(got)
            assert j.append([b"next"]) == len(got) + 1
        assert list(read(directory)) == [*got, (len(got) + 1, b"next")]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 64))
def test_the_jitted_crc_is_zlibs(data, cut):
    """`exchange.framescan.crc32`, which checks every record on replay, is zlib's CRC-32."""
    import numpy as np

    from exchange.framescan import crc32

    arr = np.frombuffer(data, np.uint8)
    lo = min(cut, len(data))
    assert crc32(arr, lo, len(data)) == zlib.crc32(data[lo:])


def test_runs_hold_the_records_read_gives_one_by_one_from_any_seq(tmp_path):
    """`read_runs` (replay) gives the same records as `read`, in runs, across segments."""
    from exchange.journal import read_runs

    rng = random.Random(3)
    with Journal.open(tmp_path, segment_bytes=3000, fsync=False) as j:
        for _ in range(60):
            j.append([rng.randbytes(rng.randrange(0, 90)) for _ in range(rng.randrange(1, 9))])
    records = list(read(tmp_path))
    assert len(segments(tmp_path)) > 3
    for lo, hi in [(1, None), (7, None), (len(records), None), (5, 9), (13, 13), (2, len(records) - 1)]:
        got = [(seq + k, p) for seq, run in read_runs(tmp_path, lo, hi) for k, p in enumerate(run)]
        assert got == [r for r in records if r[0] >= lo and (hi is None or r[0] <= hi)]
