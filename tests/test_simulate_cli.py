"""`gpux simulate` and `gpux demo` run as real processes, over the documented example.

docs/examples/simulate.jsonl is the example of docs/formats.md: two asks, a spot bid that
is preempted by an on-demand bid, a malformed line (line 5), a reserved bid, an off-tick
bid, a cancel, a clock tick and a last bid that takes its time from the clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "simulate.jsonl"
INSTRUMENTS = ROOT / "docs" / "examples" / "instruments.toml"


def _engine_or_skip(engine: str) -> str:
    if engine == "numba":
        try:
            import orderbook.fast  # noqa: F401
        except Exception as e:  # being written: a missing or broken module
            pytest.skip(f"numba engine unavailable: `import orderbook.fast` failed ({e!r})")
    return engine


@pytest.fixture(params=["reference", "numba"])
def engine(request: pytest.FixtureRequest) -> str:
    return _engine_or_skip(request.param)


def gpux(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `python -m cli.main ARGS` from the repository root, as a user would run `gpux`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], input=stdin, capture_output=True,
                          cwd=ROOT, env=env, timeout=540)


def _lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("batch", ["4096", "1"])
def test_simulate_example(engine: str, batch: str) -> None:
    proc = gpux("simulate", "--engine", engine, "--batch", batch, stdin=EXAMPLE.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    out = _lines(proc.stdout)
    events = [d for d in out if d["type"] != "error"]
    errors = [d for d in out if d["type"] == "error"]

    # the malformed line: an error line naming the field, and the run went on
    assert errors == [{"type": "error", "line": 5, "reason": "MALFORMED",
                       "message": "Expected `int`, got `str` - at `$.gpus`"}]
    at = out.index(errors[0])
    before, after = out[:at], out[at + 1:]
    assert before and after
    assert all(d["time"] <= 1767225720 for d in before)  # lines 1-4
    assert all(d["time"] >= 1767225780 for d in after)  # lines 6-10

    assert [d["seq"] for d in events] == list(range(1, len(events) + 1))  # R15
    trades = [d for d in events if d["type"] == "trade"]
    assert [(t["bid_oid"], t["kind"]) for t in trades][:2] == [(3, "spot"), (4, "on_demand")]
    assert [d["trade_id"] for d in events if d["type"] == "preempted"] == [1]  # R12
    # line 6: the reserved bid gets order id 5 (the malformed line used none) and trades
    assert any(d["type"] == "trade" and d["bid_oid"] == 5 and d["kind"] == "reserved" for d in after)
    # line 7: off tick, refused by the book with its own reason code
    assert any(d["type"] == "rejected" and d["oid"] == 6 and d["reason"] == "OFF_TICK" for d in after)
    # line 8: the provider cancels its ask
    assert any(d["type"] == "cancelled" and d["oid"] == 2 and d["reason"] == "user" for d in after)
    # line 10: no time given, so it runs at the clock's time (line 9), and trades
    last = events[-1]
    assert last["type"] == "trade" and last["bid_oid"] == 7 and last["time"] == 1767236400


def test_documented_output_is_what_simulate_prints() -> None:
    """docs/formats.md shows the example's output; it must be the real one."""
    doc = (ROOT / "docs" / "formats.md").read_text()
    block = doc.split("Output (reference engine")[1].split("```json\n")[1].split("```")[0]
    proc = gpux("simulate", "--engine", "reference", stdin=EXAMPLE.read_bytes())
    assert proc.stdout.decode() == block


def test_engines_agree_on_the_example() -> None:
    _engine_or_skip("numba")
    ref = gpux("simulate", "--engine", "reference", stdin=EXAMPLE.read_bytes())
    fast = gpux("simulate", "--engine", "numba", stdin=EXAMPLE.read_bytes())
    assert fast.returncode == ref.returncode == 0
    assert fast.stdout == ref.stdout


def test_simulate_reads_instrument_config(tmp_path: Path) -> None:
    config = tmp_path / "coarse.toml"
    config.write_text("[instruments.H100]\ntick = 100000\nmin_price = 100000\nmax_price = 10000000\n")
    proc = gpux("simulate", "--engine", "reference", "--config", str(config), stdin=EXAMPLE.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    refused = {d["oid"]: d["reason"] for d in _lines(proc.stdout) if d["type"] == "rejected"}
    assert refused[3] == "OFF_TICK"  # limit 1,250,000 is not a multiple of 100,000

    ok = gpux("simulate", "--engine", "reference", "--config", str(INSTRUMENTS), "--class", "RTX4090",
              stdin=EXAMPLE.read_bytes())
    assert ok.returncode == 0, ok.stderr.decode()
    refused = [(d["cmd"], d["oid"], d["reason"]) for d in _lines(ok.stdout) if d["type"] == "rejected"]
    assert ("ask", 2, "BAD_PRICE") in refused  # $2.10 is above the RTX4090's max_price of $2.00
    assert ("cancel", 2, "UNKNOWN_ORDER") in refused  # so there is no ask 2 to cancel
    assert all(oid != 1 for _, oid, _ in refused)  # $2.00 itself is allowed


@pytest.mark.parametrize(
    "toml, needle",
    [
        ("[instruments.H100]\ntick = 0\n", "tick must be positive"),
        ("[instruments.H100]\ntick_size = 1000\n", "unknown key(s) tick_size"),
        ("[instruments.H100]\ntick = 1000.0\n", "tick must be an integer"),
        ("[instruments.A100]\ntick = 1000\n", "no [instruments.H100] table"),
        ("[instruments.H100\n", "coarse.toml"),
        ("title = 'no instruments'\n", "no [instruments.NAME] tables"),
    ],
)
def test_simulate_refuses_bad_config(tmp_path: Path, toml: str, needle: str) -> None:
    config = tmp_path / "coarse.toml"
    config.write_text(toml)
    proc = gpux("simulate", "--engine", "reference", "--config", str(config), stdin=EXAMPLE.read_bytes())
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert needle in proc.stderr.decode()


def test_simulate_strict_and_empty_input() -> None:
    strict = gpux("simulate", "--engine", "reference", "--strict", stdin=EXAMPLE.read_bytes())
    assert strict.returncode == 1 and b'"type":"error"' in strict.stdout
    empty = gpux("simulate", "--engine", "reference", stdin=b"")
    assert empty.returncode == 0 and empty.stdout == b""


@pytest.mark.parametrize("cls", ["H100", "A100", "RTX4090"])
def test_the_demo_classes_trade_through_the_books_alone(engine: str, cls: str) -> None:
    """The books alone (what `gpux demo --offline` used to do): a provider's ask at the demo's
    typical price for the class and three traders' bids, through `gpux simulate --class`; each bid
    fills at the ask's price (R11), and the last one, larger than what is left, fills in part."""
    from demo.live import BY_NAME

    c = BY_NAME[cls]
    t = 1_767_225_600
    lines = [{"type": "ask", "time": t, "account": 1, "gpus": 2 * c.node, "price": c.firm, "end": t + 86_400}]
    lines += [{"type": "bid", "time": t + k, "account": 10 + k, "kind": "on_demand", "gpus": c.node // 2,
               "hours": 2, "limit": c.firm, "tif": "IOC"} for k in range(1, 3)]
    lines += [{"type": "bid", "time": t + 3, "account": 13, "kind": "on_demand", "gpus": 2 * c.node, "hours": 1,
               "limit": c.firm, "tif": "IOC"}]
    proc = gpux("simulate", "--engine", engine, "--class", cls, stdin="\n".join(map(json.dumps, lines)).encode())
    assert proc.returncode == 0, proc.stderr.decode()
    trades = [e for e in _lines(proc.stdout) if e["type"] == "trade"]
    assert [(e["buyer"], e["gpus"], e["price"]) for e in trades] == [
        (11, c.node // 2, c.firm), (12, c.node // 2, c.firm), (13, c.node, c.firm)]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "gpux"
    if not script.exists():
        pytest.skip("gpux is not installed in this environment (run `make .venv`)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, timeout=120)
    assert proc.returncode == 0
    assert b"simulate" in proc.stdout and b"demo" in proc.stdout


def _read_line(proc: subprocess.Popen, timeout: float) -> dict:
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no event arrived while the input was paused"
    return json.loads(proc.stdout.readline())


def test_simulate_answers_each_line_while_input_is_open() -> None:
    """A user typing commands (or a pipe that pauses) gets the events of each line at once,
    not only when a batch of 4096 fills or the input ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "simulate", "--engine", "reference"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, bufsize=0)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b'{"type":"ask","time":1767225600,"account":1,"gpus":8,"price":2000000,'
                         b'"end":1767312000}\n')
        proc.stdin.flush()
        first = _read_line(proc, 60)
        assert (first["type"], first["side"], first["oid"]) == ("accepted", "ask", 1)
        proc.stdin.write(b'{"type":"bid","account":2,"kind":"on_demand","gpus":4,"hours":2,'
                         b'"limit":2100000}\n')
        proc.stdin.flush()
        accepted, trade = _read_line(proc, 60), _read_line(proc, 60)
        assert (accepted["type"], accepted["oid"]) == ("accepted", 2)
        assert (trade["type"], trade["gpus"], trade["price"]) == ("trade", 4, 2_000_000)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def _multi_class_lines() -> list[dict]:
    """Two classes in one run: asks and bids on H100 (the default: some lines name it, some do
    not) and A100, most with a client_order_id, a clock per class."""
    t = 1_767_225_600
    return [
        {"type": "ask", "time": t, "account": 1, "gpus": 16, "price": 2_000_000, "spot_price": 1_200_000,
         "end": t + 86_400, "client_order_id": "h-ask-1"},
        {"type": "ask", "time": t, "account": 2, "gpus": 8, "price": 1_100_000, "end": t + 86_400, "class": "A100",
         "client_order_id": "a-ask-1"},
        {"type": "bid", "time": t + 60, "account": 101, "kind": "spot", "gpus": 8, "hours": 3, "limit": 1_250_000,
         "class": "H100", "client_order_id": "h-spot"},
        {"type": "bid", "time": t + 60, "account": 102, "kind": "on_demand", "gpus": 4, "hours": 2,
         "limit": 1_200_000, "class": "A100", "client_order_id": "a-od"},
        {"type": "bid", "account": 103, "kind": "on_demand", "gpus": 16, "hours": 2, "limit": 2_050_000,
         "tif": "IOC", "client_order_id": "h-od"},
        {"type": "bid", "account": 104, "kind": "on_demand", "gpus": 8, "hours": 1, "limit": 1_000_000,
         "class": "A100"},
        {"type": "clock", "time": t + 7_200, "class": "A100"},
        {"type": "cancel", "account": 2, "oid": 2, "class": "A100", "client_order_id": "a-cancel"},
        {"type": "clock", "time": t + 3_600},
    ]


@pytest.mark.parametrize("batch", ["4096", "1"])
def test_simulate_spans_classes_and_tags_events_with_client_order_ids(engine: str, batch: str) -> None:
    lines = _multi_class_lines()
    proc = gpux("simulate", "--engine", engine, "--batch", batch, stdin="\n".join(map(json.dumps, lines)).encode())
    assert proc.returncode == 0, proc.stderr.decode()
    out = _lines(proc.stdout)
    assert all(d["type"] != "error" for d in out)

    # each class's events are its own book's: numbered from 1 (R15), and the same as a run of that
    # class's lines alone (without the two new fields)
    for cls in ("H100", "A100"):
        mine = [d for d in out if d.get("class", "H100") == cls]
        assert [d["seq"] for d in mine] == list(range(1, len(mine) + 1))
        # order ids are given out across the run (one sequence, as the exchange does): the lone run
        # gets them written out
        alone_in, oid = [], 0
        for d in lines:
            oid += d["type"] in ("ask", "bid")
            if d.get("class", "H100") == cls:
                d = {k: v for k, v in d.items() if k not in ("class", "client_order_id")}
                alone_in.append({**d, "oid": oid} if d["type"] in ("ask", "bid") else d)
        alone = gpux("simulate", "--engine", engine, "--class", cls,
                     stdin="\n".join(map(json.dumps, alone_in)).encode())
        assert [{k: v for k, v in d.items() if k not in ("class", "client_order_id")} for d in mine] == \
            _lines(alone.stdout)

    # events carry the class and client_order_id of the line that produced them, and only those
    by_coid: dict[str, list[dict]] = {}
    for d in out:
        if "client_order_id" in d:
            by_coid.setdefault(d["client_order_id"], []).append(d)
    assert set(by_coid) == {d["client_order_id"] for d in lines if "client_order_id" in d}
    for line in lines:
        coid = line.get("client_order_id")
        if coid is None:
            continue
        evs = by_coid[coid]
        assert all(("class" in e) == ("class" in line) and e.get("class") == line.get("class") for e in evs)
        head = evs[0]
        assert head["type"] in ("accepted", "cancelled", "rejected")
        if line["type"] in ("ask", "bid"):
            assert head["type"] == "accepted" and head["account"] == line["account"]
    assert [e["type"] for e in by_coid["h-od"]] == ["accepted", "trade", "preempted"]  # R12: the spot lease
    assert [e["type"] for e in by_coid["a-od"]] == ["accepted", "trade"]
    assert by_coid["a-od"][1]["price"] == 1_100_000 and by_coid["a-od"][1]["ask_oid"] == by_coid["a-ask-1"][0]["oid"]
    assert [e["type"] for e in by_coid["a-cancel"]] == ["cancelled"]
    untagged = [d for d in out if "client_order_id" not in d]
    assert [(d.get("class"), d["type"], d["account"]) for d in untagged] == [("A100", "accepted", 104)]


def test_simulate_refuses_an_unknown_class_or_a_bad_client_order_id(tmp_path: Path) -> None:
    t = 1_767_225_600
    lines = [
        {"type": "ask", "time": t, "account": 1, "gpus": 8, "price": 2_000_000, "end": t + 86_400},
        {"type": "ask", "time": t, "account": 1, "gpus": 8, "price": 2_000_000, "end": t + 86_400, "class": "B200"},
        {"type": "ask", "time": t, "account": 1, "gpus": 8, "price": 2_000_000, "end": t + 86_400,
         "client_order_id": "no spaces"},
        {"type": "ask", "time": t, "account": 1, "gpus": 8, "price": 1_000_000, "end": t + 86_400, "class": "A100"},
    ]
    proc = gpux("simulate", "--engine", "reference", "--config", str(INSTRUMENTS),
                stdin="\n".join(map(json.dumps, lines)).encode())
    assert proc.returncode == 0, proc.stderr.decode()
    out = _lines(proc.stdout)
    errors = [d for d in out if d["type"] == "error"]
    assert [(e["line"], e["reason"]) for e in errors] == [(2, "MALFORMED"), (3, "MALFORMED")]
    assert "no GPU class 'B200'" in errors[0]["message"] and "$.class" in errors[0]["message"]
    assert "$.client_order_id" in errors[1]["message"]
    # the refused lines used no order id: the A100 ask is order 2
    assert [(d.get("class"), d["oid"]) for d in out if d["type"] == "accepted"] == [(None, 1), ("A100", 2)]
