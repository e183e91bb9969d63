"""`gpux journal check` and `gpux journal salvage` on real journals and snapshots: every segment
and snapshot verified, each problem named on a line of its own (segment, byte offset, seqs lost, or
the snapshot file), preallocated zeros and torn tails not taken for damage; salvage copies every
intact record, those past a damaged one too, into a new journal that check names the gap of."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cli.main import main
from exchange.integrity import check_journal, salvage
from exchange.journal import Journal, read, segments
from exchange.snapshots import snapshots

HEADER = struct.Struct("<IIQ")  # the documented record header


def spans(path: Path) -> list[tuple[int, int, int]]:
    """(seq, start, end) of each record of a segment, parsed by the test (zeros end it)."""
    data = path.read_bytes()
    out, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, _, seq = HEADER.unpack_from(data, offset)
        if seq == 0:
            break
        out.append((seq, offset, offset + HEADER.size + length))
        offset += HEADER.size + length
    return out


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def payload(i: int) -> bytes:
    return f"entry {i};".encode() * (1 + i % 5)


def make_journal(data: Path, count: int = 600) -> list[tuple[int, Path]]:
    """A preallocated journal (as the exchange writes it) of a few segments."""
    with Journal.open(data / "journal", segment_bytes=4096, fsync=False, preallocate=True) as j:
        for start in range(1, count + 1, 20):
            j.append([payload(i) for i in range(start, min(start + 20, count + 1))])
    segs = segments(data / "journal")
    assert len(segs) >= 4
    return segs


def test_a_good_journal_checks_clean_and_preallocated_zeros_are_no_damage(tmp_path, capsys):
    data = tmp_path / "d"
    segs = make_journal(data)
    last = segs[-1][1]
    assert last.read_bytes().endswith(bytes(1000))  # the last segment is preallocated: zeros after its records
    assert main(["journal", "check", str(data)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert "600 record(s) (seqs 1-600)" in out.out and "all good" in out.out


def test_a_flipped_bit_in_an_older_segment_and_in_the_last_are_each_named(tmp_path, capsys):
    data = tmp_path / "d"
    segs = make_journal(data)
    older = segs[1][1]
    seq_a, start_a, _ = spans(older)[5]
    flip(older, start_a + HEADER.size + 3)  # a payload byte of a middle record
    last = segs[-1][1]
    seq_b, start_b, _ = spans(last)[2]
    flip(last, start_b + HEADER.size + 1)
    assert main(["journal", "check", str(data)]) == 1
    err = capsys.readouterr().err.splitlines()
    problems = [line for line in err if "byte offset" in line]
    assert len(problems) == 2, err
    assert str(older) in problems[0] and f"byte offset {start_a}" in problems[0]
    assert f"seq {seq_a} is lost" in problems[0] and f"resume at seq {seq_a + 1}" in problems[0]
    assert str(last) in problems[1] and f"byte offset {start_b}" in problems[1]
    assert f"seq {seq_b} is lost" in problems[1]
    assert "2 problem(s)" in err[-1]


def test_zeros_in_place_of_records_in_an_older_segment_are_damage(tmp_path, capsys):
    data = tmp_path / "d"
    segs = make_journal(data)
    seg = segs[0][1]
    recs = spans(seg)
    raw = bytearray(seg.read_bytes())
    cut = recs[-4][1]
    raw[cut:] = bytes(len(raw) - cut)  # the segment's last four records zeroed (a lost block)
    seg.write_bytes(bytes(raw))
    res = check_journal(data / "journal")
    assert len(res.problems) == 1
    assert f"byte offset {cut}" in res.problems[0]
    assert f"seqs {recs[-4][0]}-{recs[-1][0]} are lost" in res.problems[0]


def test_a_torn_last_record_is_a_note_not_a_problem(tmp_path, capsys):
    data = tmp_path / "d"
    segs = make_journal(data)
    last = segs[-1][1]
    seq, start, end = spans(last)[-1]
    raw = bytearray(last.read_bytes())
    raw[start + HEADER.size:end] = b"\xee" * (end - start - HEADER.size)  # the last record's payload garbled
    last.write_bytes(bytes(raw))
    assert main(["journal", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "torn last record" in out and f"byte offset {start}" in out


def test_a_damaged_snapshot_is_named(tmp_path, capsys):
    from tests.test_damaged_storage import _trade_and_snapshot

    data = tmp_path / "d"
    _trade_and_snapshot(data)
    assert main(["journal", "check", str(data)]) == 0
    assert "restores" in capsys.readouterr().out
    _, path = snapshots(data)[-1]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    assert main(["journal", "check", str(data)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "snapshot not usable" in line] == [line for line in err if str(path) in line]
    assert len([line for line in err if str(path) in line]) == 1


def test_salvage_copies_every_intact_record_past_the_damage(tmp_path, capsys):
    data = tmp_path / "d"
    segs = make_journal(data)
    want = dict(read(data / "journal"))
    seg = segs[1][1]
    recs = spans(seg)
    lost = {recs[3][0], recs[4][0]}
    raw = bytearray(seg.read_bytes())
    raw[recs[3][1]:recs[4][2]] = b"\x5a" * (recs[4][2] - recs[3][1])  # two whole records overwritten
    seg.write_bytes(bytes(raw))
    before = {p.name: p.read_bytes() for _, p in segments(data / "journal")}
    out = tmp_path / "salvaged"
    assert main(["journal", "salvage", str(data), str(out)]) == 1  # records were lost
    text = capsys.readouterr()
    lo, hi = min(lost), max(lost)
    assert f"missing: seqs {lo}-{hi}" in text.out
    assert f"copied {len(want) - 2} record(s)" in text.out
    assert {p.name: p.read_bytes() for _, p in segments(data / "journal")} == before  # the source only read
    # every record but the lost ones, with its own seq and bytes; the gap between two segments
    got = {}
    for _, path in segments(out):
        raw = path.read_bytes()
        for seq, start, end in spans(path):
            assert seq not in got
            got[seq] = raw[start + HEADER.size:end]
    assert got == {s: b for s, b in want.items() if s not in lost}
    assert main(["journal", "check", str(out.parent / "x")]) == 2  # not a directory
    capsys.readouterr()
    res = check_journal(out)
    assert len(res.problems) == 1 and f"seqs {lo}-{hi} are lost" in res.problems[0]
    with pytest.raises(Exception, match="not empty"):
        salvage(data / "journal", out)
