"""The analyst's path (docs/feeds.md "For analysts"), on a recording made by a real `gpux demo` run:
the documented exports and one-line loads run exactly as written, every Parquet table equals its
CSV in pandas and in polars, the tables keep every field with enumerations by name, `--every`
book snapshots are the book at that time, and `--anonymize` hides every account and order id
while keeping joins."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")
pytest.importorskip("pyarrow")
from polars.testing import assert_frame_equal as assert_pl_equal  # noqa: E402

from cli.main import main as gpux  # noqa: E402
from feeds.model import book_checksum  # noqa: E402
from feeds.recording import load  # noqa: E402
from feeds.replay import book_at  # noqa: E402
from feeds.tables import STRING_COLUMNS, Anonymizer  # noqa: E402
from orderbook.codec import event_enums  # noqa: E402
from orderbook.types import EV_NAMES, EV_TRADE, EVENT_DTYPE, SIDE_BID  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "feeds.md"
DEMO_SECONDS = 25


def demo_recording(data: Path, seconds: int = DEMO_SECONDS) -> Path:
    """A short `gpux demo` run that keeps its data directory: a real market's recording."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--port", "0", "--data", str(data),
                           "--seconds", str(seconds), "--every", "60"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / "market-data").is_dir()
    return data


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_recording(tmp_path_factory.mktemp("demo") / "gpux-data")


def documented_blocks() -> tuple[list[str], str]:
    """The shell lines and the Python block that docs/feeds.md gives for loading the tables."""
    text = DOCS.read_text()
    at = text.index("One line each, after exporting")
    sh = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    py = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert sh and py
    return [line for line in sh.group(1).splitlines() if line.strip()], py.group(1)


def run_gpux_line(line: str, data: Path) -> None:
    argv = shlex.split(line)
    assert argv[0] == "gpux"
    assert gpux([str(data) if a == "gpux-data" else a for a in argv[1:]]) == 0, line


def test_documented_loads_give_the_same_tables_from_parquet_and_csv(recording: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines, block = documented_blocks()
    for line in lines:
        run_gpux_line(line, recording)
    ns: dict = {}
    exec(compile(block, str(DOCS), "exec"), ns)  # exactly the documented calls

    rec = load(recording)
    trades = ns["trades"]
    pd.testing.assert_frame_equal(trades, ns["trades_csv"])
    assert_pl_equal(ns["trades_pl"], ns["trades_csv_pl"])
    pd.testing.assert_frame_equal(ns["trades_pl"].to_pandas(), trades, check_dtype=False)

    # the trades table holds every trade of the recording, resale_of included, kinds by name
    recorded = {c: ev[ev["type"] == EV_TRADE] for c, ev in rec.events.items()}
    assert len(trades) == sum(len(t) for t in recorded.values()) > 20
    assert list(trades.columns) == ["class", "seq", "time", "u", "trade_seq", "trade_time", "trade_id", "kind",
                                    "gpus", "hours", "price", "start", "end", "maker", "resale_of"]
    for c, t in recorded.items():
        mine = trades[trades["class"] == c].sort_values("trade_seq")
        assert mine["trade_id"].tolist() == t["trade_id"].tolist()
        assert mine["resale_of"].tolist() == t["lease_id"].tolist()
        assert mine["price"].tolist() == t["price"].tolist()
    assert set(trades["kind"]) <= {"spot", "on_demand", "reserved"} and set(trades["maker"]) <= {"bid", "ask"}

    # the events table: every field, enumerations by name exactly where formats.md has them
    events = ns["events"]
    assert list(events.columns) == ["class", "type"] + [n for n in EVENT_DTYPE.names if n != "type"]
    assert len(events) == len(rec)
    for c, ev in rec.events.items():
        mine = events[events["class"] == c].sort_values("seq")
        for name in EVENT_DTYPE.names:
            if name in ("type", "reason", "kind", "side", "tif", "maker", "cmd"):
                continue
            assert mine[name].tolist() == ev[name].tolist(), (c, name)
        assert mine["type"].tolist() == [EV_NAMES[t] for t in ev["type"].tolist()]
        for row, rec_ev in zip(mine.itertuples(index=False), ev[:300], strict=False):
            enums = event_enums(int(rec_ev["type"]), int(rec_ev["side"]) == SIDE_BID)
            for field in ("reason", "kind", "side", "tif", "maker", "cmd"):
                got = getattr(row, field)
                if field in enums and (enums[field].get(int(rec_ev[field])) or ""):
                    assert got == enums[field][int(rec_ev[field])], (c, field)
                else:
                    assert pd.isna(got), (c, field, got)

    # candles, events and book snapshots (every 5 s: the demo ran for less than a minute): Parquet
    # equals CSV in both libraries
    assert list(ns["book"].columns) == ["class", "seq", "time", "u", "action", "checksum", "side", "price", "gpus"]
    assert gpux(["replay", str(recording), "--channel", "candles", "--format", "csv", "-o", "candles.csv"]) == 0
    assert gpux(["replay", str(recording), "--format", "csv", "-o", "events.csv"]) == 0
    for fmt in ("csv", "parquet"):
        assert gpux(["replay", str(recording), "--channel", "book", "--every", "5", "--format", fmt,
                     "-o", f"book5.{fmt}"]) == 0
    for name in ("candles", "book5", "events"):
        # a CSV column cannot say its type: one empty throughout (no rejection, so no `cmd`) reads as
        # float64 unless told it holds text
        text = {c: "str" for c in STRING_COLUMNS}
        pd.testing.assert_frame_equal(pd.read_parquet(f"{name}.parquet"), pd.read_csv(f"{name}.csv", dtype=text))
        assert_pl_equal(pl.read_parquet(f"{name}.parquet"), pl.read_csv(f"{name}.csv"))
    assert len(ns["candles"]) > 0 and len(ns["candles_pl"]) == len(ns["candles"])

    # --every: each snapshot is the book at that time
    book = pd.read_parquet("book5.parquet")
    assert set(book["action"]) == {"snapshot"} and book["time"].nunique() >= 3
    for (c, t), snap in book.groupby(["class", "time"]):
        assert t % 5 == 0
        seq = int(snap["seq"].iloc[0])
        l2 = book_at(rec, c, seq, time=int(t)).level2()
        assert set(snap["checksum"]) == {book_checksum(l2)}
        got = {side: [[int(p), int(g)] for p, g in zip(rows["price"], rows["gpus"], strict=True)]
               for side, rows in snap.groupby("side")}
        assert got == {k: v for k, v in l2.items() if v}, (c, t)


def test_tables_of_every_channel_match_between_formats(recording: Path, tmp_path) -> None:
    for channel in ("ticker", "index"):
        p, c = tmp_path / f"{channel}.parquet", tmp_path / f"{channel}.csv"
        assert gpux(["replay", str(recording), "--channel", channel, "--format", "parquet", "-o", str(p)]) == 0
        assert gpux(["replay", str(recording), "--channel", channel, "--format", "csv", "-o", str(c)]) == 0
        pd.testing.assert_frame_equal(pd.read_parquet(p), pd.read_csv(c))
        # a CSV column cannot say its type, and one that is empty throughout (no bid all along) reads
        # as strings: given Parquet's schema, polars reads the same table
        assert_pl_equal(pl.read_parquet(p), pl.read_csv(c, schema=pl.read_parquet_schema(p)))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


ID_FIELDS = {"oid": "order", "oid2": "order", "account": "account", "account2": "account"}


def test_anonymized_events_hide_every_id_and_keep_joins(recording: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GPUX_ANONYMIZE_KEY", raising=False)
    plain, anon = tmp_path / "plain.csv", tmp_path / "anon.csv"
    assert gpux(["replay", str(recording), "--format", "csv", "-o", str(plain)]) == 0
    assert gpux(["replay", str(recording), "--format", "csv", "--anonymize", "-o", str(anon)]) == 0
    a, b = _csv(plain), _csv(anon)
    assert len(a) == len(b) > 100
    originals = {kind: set() for kind in ("order", "account")}
    mapping: dict[tuple[str, str], str] = {}
    back: dict[tuple[str, str], str] = {}
    for ra, rb in zip(a, b, strict=True):
        for field, kind in ID_FIELDS.items():
            x, y = ra[field], rb[field]
            if x == "0":
                assert y == "0"
                continue
            originals[kind].add(x)
            assert mapping.setdefault((kind, x), y) == y, "one id, one pseudonym"
            assert back.setdefault((kind, y), x) == x, "one pseudonym, one id"
        for field in ra:
            if field not in ID_FIELDS:
                assert ra[field] == rb[field], field  # everything else is kept
    assert len(originals["order"]) > 50 and len(originals["account"]) > 5
    everything = set().union(*originals.values())
    assert not everything & {rb[f] for rb in b for f in ID_FIELDS if rb[f] != "0"}, "an original id is still there"

    # joins: each trade's ask (oid2) and bid (oid) are found among the accepted orders, as before
    def joined(rows: list[dict[str, str]]) -> int:
        accepted = {(r["class"], r["oid"]) for r in rows if r["type"] == "accepted"}
        return sum((r["class"], r["oid2"]) in accepted and (r["class"], r["oid"]) in accepted
                   for r in rows if r["type"] == "trade")
    assert joined(b) == joined(a) > 20

    # JSON lines too: buyers, providers and order ids are pseudonyms, the same as in the CSV
    out = tmp_path / "anon.jsonl"
    monkeypatch.setenv("GPUX_ANONYMIZE_KEY", "shared secret")
    assert gpux(["replay", str(recording), "--anonymize", "-o", str(out)]) == 0
    keyed = Anonymizer(b"shared secret")
    trades = [json.loads(line) for line in out.read_text().splitlines() if '"trade"' in line]
    assert trades
    for ra, t in zip([r for r in a if r["type"] == "trade"], trades, strict=True):
        assert t["buyer"] == keyed.pseudonym("account", int(ra["account"]))
        assert t["provider"] == keyed.pseudonym("account", int(ra["account2"]))
        assert t["ask_oid"] == keyed.pseudonym("order", int(ra["oid2"]))
    # the same key gives the same export; a fresh random key another one
    again = tmp_path / "again.jsonl"
    assert gpux(["replay", str(recording), "--anonymize", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    monkeypatch.delenv("GPUX_ANONYMIZE_KEY")
    other = tmp_path / "anon2.csv"
    assert gpux(["replay", str(recording), "--format", "csv", "--anonymize", "-o", str(other)]) == 0
    assert [r["account"] for r in _csv(other)] != [r["account"] for r in b]


def test_anonymizer_is_a_keyed_injective_mapping() -> None:
    an = Anonymizer(b"k")
    ids = np.arange(0, 5000, dtype=np.int64)
    out = an.ids("order", ids)
    assert out[0] == 0 and len(set(out.tolist())) == 5000 and (out[1:] > 0).all() and (out < 2**53).all()
    assert an.ids("order", ids[::-1]).tolist() == out[::-1].tolist()
    assert Anonymizer(b"k").pseudonym("order", 7) == an.pseudonym("order", 7) != Anonymizer(b"j").pseudonym("order", 7)
    assert an.pseudonym("account", 7) != an.pseudonym("order", 7)


@pytest.mark.parametrize(("args", "message"), [
    (["--channel", "trades", "--anonymize"], "--anonymize applies to --channel events"),
    (["--format", "parquet", "--speed", "2", "-o", "x.parquet"], "does not apply to a Parquet file"),
    (["--channel", "trades", "--every", "60"], "--every applies to --channel book only"),
    (["--channel", "book", "--every", "0"], "at least 1 second"),
])
def test_bad_replay_options_say_why(recording: Path, tmp_path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert gpux(["replay", str(recording), *args]) == 2
    assert message in capsys.readouterr().err


def _vwap(ev: np.ndarray) -> int:
    gpu_h = ev["gpus"].astype(np.int64) * ev["hours"]
    return int((ev["price"] * gpu_h).sum() // gpu_h.sum())


def test_worked_example_plots_the_forward_curve_and_the_spread(recording: Path, tmp_path) -> None:
    """docs/examples/forward_curve.py, run as the docs say, headless: its PNG is written and its
    series are those computed here straight from the recording's numpy arrays."""
    out = tmp_path / "figures"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "forward_curve.py"), str(recording),
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = out / "forward_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    got = json.loads((out / "forward_curve.json").read_text())

    rec = load(recording, types=[EV_TRADE])
    forward: dict[str, list[list[int]]] = {}
    spread: dict[str, list[list[int]]] = {}
    for c, ev in sorted(rec.events.items()):
        r = ev[ev["kind"] == 2]  # reserved
        day = r["start"] - r["start"] % 86_400
        rows = []
        for d in np.unique(day).tolist():
            x = r[day == d]
            rows.append([d, int(x["price"].min()), _vwap(x), int((x["gpus"].astype(np.int64) * x["hours"]).sum())])
        if rows:
            forward[c] = rows
        minute = ev["time"] // 60 * 60
        rows = []
        for m in np.unique(minute).tolist():
            spot = ev[(minute == m) & (ev["kind"] == 0)]
            firm = ev[(minute == m) & (ev["kind"] == 1)]
            if len(spot) and len(firm):
                rows.append([m, _vwap(firm), _vwap(spot), _vwap(firm) - _vwap(spot)])
        if rows:
            spread[c] = rows
    assert forward and spread, "the demo made reserved trades and minutes with spot and on-demand trades"
    assert got == {"by": "day", "forward": forward, "spread": spread}


def test_event_columns_name_enumerations_and_hide_nothing() -> None:
    from feeds.tables import event_columns
    from orderbook.types import EV_ACCEPTED, EV_REJECTED, IOC, ON_DEMAND, RESERVED, SIDE_ASK, empty_events

    ev = empty_events(4)
    ev["seq"] = [1, 2, 3, 4]
    for i, fields in enumerate([
        {"type": EV_ACCEPTED, "side": SIDE_BID, "kind": RESERVED, "tif": IOC},
        {"type": EV_ACCEPTED, "side": SIDE_ASK},
        {"type": EV_REJECTED, "cmd": 2, "reason": 8},
        {"type": EV_TRADE, "kind": ON_DEMAND, "maker": SIDE_ASK, "side": SIDE_BID},  # side: not a trade's field
    ]):
        for k, v in fields.items():
            ev[k][i] = v
    cols = event_columns([("H100", ev[:2]), ("A100", ev[2:])])
    assert cols["class"].tolist() == ["H100", "H100", "A100", "A100"]
    assert cols["type"].tolist() == ["accepted", "accepted", "rejected", "trade"]
    assert cols["kind"].tolist() == ["reserved", None, None, "on_demand"]
    assert cols["tif"].tolist() == ["IOC", None, None, None]
    assert cols["side"].tolist() == ["bid", "ask", None, "1"]  # set where it means nothing: shown as it is
    assert cols["cmd"].tolist() == [None, None, "bid", None]
    assert cols["reason"].tolist() == [None, None, "OFF_TICK", None]
    assert cols["maker"].tolist() == [None, None, None, "ask"]
    assert cols["seq"].tolist() == [1, 2, 3, 4]
