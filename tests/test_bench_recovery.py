"""The recovery benchmark (bench/recovery.py) runs end to end on a small journal: the data directory
it builds recovers, from the newest snapshot and from none, to the live engine's state."""

from __future__ import annotations

import json

import numpy as np

from bench import recovery as bench_recovery
from orderbook.types import CMD_ASK, CMD_BID, CMD_CLOCK


def test_sequenced_workload_moves_time_only_with_clock_commands():
    cmds, names = bench_recovery.sequenced(5_000, seed=3)
    assert len(cmds) == len(names) == 5_000
    assert set(names) == set(bench_recovery.CLASSES)
    for name in bench_recovery.CLASSES:
        mine = cmds[np.array(names) == name]
        assert mine["type"][0] == CMD_CLOCK  # every book starts with a clock
        now = 0
        for typ, t in zip(mine["type"].tolist(), mine["time"].tolist(), strict=True):
            if typ == CMD_CLOCK:
                assert t > now
                now = t
            else:
                assert t == now  # stamped with its book's time


def test_bench_recovery_runs_and_recovers_the_live_state(capsys, tmp_path):
    argv = ["--commands", "6000", "--snapshot-every", "2500", "--repeat", "1", "--json", "--engine", "reference",
            "--keep", str(tmp_path / "data")]
    assert bench_recovery.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identical"] is True
    assert result["entries"] == 6000 and result["commands"] == 6000
    assert result["snapshots_written"] == 2
    assert 5000 <= result["snapshot_seq"] < 5000 + 64  # at the end of the batch that crossed it
    assert result["tail_entries"] == 6000 - result["snapshot_seq"]
    assert result["snapshot_bytes"] > 0
    for key in ("entries_per_s", "recover_none_s", "recover_snapshot_s", "snapshot_load_s"):
        assert result[key] > 0
    assert (tmp_path / "data" / "journal").is_dir()


def test_bench_recovery_with_client_order_ids_recovers_their_first_answers(capsys):
    """--coids: the journal's bids and asks carry client order ids; both recoveries remember the
    same first answers as the live engine (`identical` compares them too)."""
    argv = ["--commands", "4000", "--snapshot-every", "1500", "--repeat", "1", "--json", "--coids", "0.5"]
    assert bench_recovery.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identical"] is True and result["coids"] == 0.5
    cmds, _ = bench_recovery.sequenced(4000, seed=1)
    orders = int(np.isin(cmds["type"], (CMD_ASK, CMD_BID)).sum())
    assert 0.4 * orders < result["coids_remembered"] < 0.6 * orders
