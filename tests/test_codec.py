"""The JSON-lines codec (orderbook/codec.py, docs/formats.md): round trips and refusals."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook import reasons as R
from orderbook.book import make_book
from orderbook.codec import (
    MAX_I32,
    MAX_I64,
    CodecError,
    CommandDecoder,
    LineError,
    command_to_json,
    commands_from_jsonl,
    decode_command,
    event_from_json,
    event_from_jsonl,
    event_to_json,
    events_to_json,
    events_to_jsonl,
    read_commands,
)
from orderbook.types import (
    CMD_ASK,
    CMD_BID,
    CMD_CLOCK,
    COMMAND_DTYPE,
    END_USER,
    EV_CANCELLED,
    EV_NAMES,
    EV_REJECTED,
    EVENT_DTYPE,
    ON_DEMAND,
    RESERVED,
    SIDE_ASK,
    SIDE_BID,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "simulate.jsonl"

i64 = st.integers(0, MAX_I64)
i32 = st.integers(0, MAX_I32)
count32 = st.integers(1, MAX_I32)


def _maybe(d: dict, key: str, strategy) -> st.SearchStrategy:
    return st.one_of(st.just(d), strategy.map(lambda v: {**d, key: v}))


@st.composite
def command_dicts(draw) -> dict:
    """A valid JSON command of any type, optional fields present or not."""
    kind = draw(st.sampled_from(["ask", "bid", "cancel", "amend", "clock", "release"]))
    d: dict = {"type": kind}
    if kind == "clock" or draw(st.booleans()):
        d["time"] = draw(i64)
    if kind in ("ask", "bid") and draw(st.booleans()):
        d["oid"] = draw(i64)
    if kind == "ask":
        d.update(account=draw(i64), gpus=draw(i32), price=draw(i64), end=draw(i64))
        for key, strategy in (("spot_price", i64), ("start", i64), ("min_hours", count32),
                              ("post_only", st.booleans()), ("lease_id", i64)):
            d = draw(_maybe(d, key, strategy))
    elif kind == "bid":
        d.update(account=draw(i64), kind=draw(st.sampled_from(["spot", "on_demand", "reserved"])),
                 gpus=draw(i32), hours=draw(i32), limit=draw(i64))
        for key, strategy in (("block", count32), ("tif", st.sampled_from(["GTC", "IOC", "FOK", "GTD"])),
                              ("start", i64), ("expire_at", i64)):
            d = draw(_maybe(d, key, strategy))
    elif kind in ("cancel", "amend"):
        d.update(oid=draw(i64), account=draw(i64))
        if kind == "amend":
            d["gpus"] = draw(i32)
    elif kind == "release":
        d.update(account=draw(i64), lease_id=draw(i64))
    return d


DEFAULTS = {"spot_price": 0, "start": 0, "min_hours": 1, "post_only": False, "lease_id": 0, "block": 1,
            "tif": "GTC", "expire_at": 0}


@given(command_dicts(), i64, st.integers(0, MAX_I64 - 1))
@settings(max_examples=400)
def test_command_round_trip(d: dict, time: int, last_oid: int) -> None:
    """JSON -> record -> JSON -> the same record; every field given comes back as given."""
    rec = CommandDecoder(time=time, last_oid=last_oid).decode(msgspec.json.encode(d))
    back = command_to_json(rec)
    assert back["type"] == d["type"]
    for key, value in d.items():
        assert back.get(key, DEFAULTS.get(key)) == value, key
    assert back["time"] == d.get("time", time)
    if d["type"] in ("ask", "bid"):
        assert back["oid"] == d.get("oid", last_oid + 1)
    again = decode_command(msgspec.json.encode(back))
    assert again.tobytes() == rec.tobytes()


def test_missing_time_and_oid_are_filled_from_earlier_lines() -> None:
    dec = CommandDecoder()
    lines = [
        b'{"type":"ask","time":100,"account":1,"gpus":8,"price":2000000,"end":7300}',
        b'{"type":"bid","account":2,"kind":"spot","gpus":1,"hours":1,"limit":1000}',
        b'{"type":"bid","oid":10,"account":2,"kind":"spot","gpus":1,"hours":1,"limit":1000}',
        b'{"type":"bid","time":50,"oid":4,"account":2,"kind":"spot","gpus":1,"hours":1,"limit":1000}',
        b'{"type":"ask","account":1,"gpus":8,"price":2000000,"end":7300}',
        b'{"type":"cancel","account":1,"oid":1}',
    ]
    recs = [dec.decode(line) for line in lines]
    assert [int(r["time"]) for r in recs] == [100, 100, 100, 50, 100, 100]  # a stale stamp is kept as sent
    assert [int(r["oid"]) for r in recs] == [1, 2, 10, 4, 11, 1]
    assert int(recs[0]["min_hours"]) == 1 and int(recs[1]["block"]) == 1


def test_refused_line_changes_nothing() -> None:
    dec = CommandDecoder(time=5, last_oid=7)
    with pytest.raises(CodecError):
        dec.decode(b'{"type":"bid","time":99,"oid":50,"account":2,"kind":"spot","gpus":-1,"hours":1,"limit":1}')
    assert (dec.time, dec.last_oid) == (5, 7)


def test_bid_fields_land_in_the_record() -> None:
    rec = decode_command(b'{"type":"bid","time":7200,"oid":3,"account":9,"kind":"reserved","gpus":16,'
                         b'"hours":4,"limit":2500000,"block":8,"tif":"GTD","start":14400,"expire_at":9000}')
    assert rec["type"] == CMD_BID and rec["kind"] == RESERVED and rec["tif"] == 3
    assert (rec["price"], rec["block"], rec["start"], rec["expire_at"]) == (2500000, 8, 14400, 9000)
    ask = decode_command(b'{"type":"ask","time":1,"account":1,"gpus":2,"price":3000,"spot_price":2000,'
                         b'"end":7201,"post_only":true,"min_hours":2,"lease_id":4}')
    assert ask["type"] == CMD_ASK and ask["post_only"] == 1 and ask["lease_id"] == 4
    assert ask["spot_price"] == 2000 and ask["min_hours"] == 2
    assert decode_command('{"type":"clock","time":3600}')["type"] == CMD_CLOCK


@pytest.mark.parametrize(
    "line, needle",
    [
        (b'{"type":"ask","account":1,"gpus":8,"price":2000000,"end":7300,"colour":"red"}', "`colour`"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":"four","hours":1,"limit":1000}', "$.gpus"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1.5,"hours":1,"limit":1000}', "$.gpus"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":-1,"hours":1,"limit":1000}', "$.gpus"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":2147483648,"hours":1,"limit":1000}', "$.gpus"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1,"hours":1,"limit":%d}' % (2**62 + 1), "$.limit"),
        (b'{"type":"bid","account":1,"kind":"cheap","gpus":1,"hours":1,"limit":1000}', "$.kind"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1,"hours":1,"limit":1000,"tif":"gtc"}', "$.tif"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1,"hours":1,"limit":1000,"block":0}', "$.block"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1,"hours":1}', "`limit`"),
        (b'{"type":"bid","account":1,"kind":"spot","gpus":1,"hours":1,"price":1000}', "`price`"),
        (b'{"type":"ask","account":1,"gpus":8,"price":2000000,"end":7300,"post_only":1}', "$.post_only"),
        (b'{"type":"ask","account":1,"gpus":8,"price":2000000,"end":7300,"min_hours":0}', "$.min_hours"),
        (b'{"type":"ask","time":-5,"account":1,"gpus":8,"price":2000000,"end":7300}', "$.time"),
        (b'{"type":"clock"}', "`time`"),
        (b'{"type":"buy","account":1}', "$.type"),
        (b'{"account":1}', "`type`"),
        (b'{"type":"cancel","account":1}', "`oid`"),
        (b'{"type":"clock","time":1', "truncated"),
        (b'[1, 2]', "object"),
        (b'not json', "malformed"),
    ],
)
def test_malformed_lines_name_what_is_wrong(line: bytes, needle: str) -> None:
    with pytest.raises(CodecError) as info:
        decode_command(line)
    assert info.value.reason == R.MALFORMED
    assert info.value.reason_name == "MALFORMED"
    assert needle in info.value.message


def test_stream_keeps_errors_in_line_order_and_batches() -> None:
    lines = [b'{"type":"clock","time":1}', b"", b'{"type":"clock","time":2}', b"{oops",
             b'{"type":"clock","time":3}', b'{"type":"clock","time":4}', b'{"type":"clock","time":5}']
    items = list(read_commands(lines, batch=2))
    shape = [item.line if isinstance(item, LineError) else [int(t) for t in item["time"]] for item in items]
    assert shape == [[1, 2], 4, [3, 4], [5]]
    commands, errors = commands_from_jsonl(lines)
    assert [int(t) for t in commands["time"]] == [1, 2, 3, 4, 5]
    assert [(e.line, e.reason) for e in errors] == [(4, R.MALFORMED)]
    assert errors[0].to_json()["type"] == "error" and errors[0].to_json()["reason"] == "MALFORMED"
    empty, none = commands_from_jsonl([])
    assert empty.dtype == COMMAND_DTYPE and len(empty) == 0 and none == []


# --- events -------------------------------------------------------------------------------------
def _record(values: dict[str, int]) -> np.void:
    rec = np.zeros(1, dtype=EVENT_DTYPE)[0]
    for k, v in values.items():
        rec[k] = v
    return rec


_BOUNDS = {np.dtype("<i8"): (-(2**63), 2**63 - 1), np.dtype("<i4"): (-(2**31), 2**31 - 1),
           np.dtype("<i2"): (-(2**15), 2**15 - 1), np.dtype("i1"): (-128, 127)}


def _field(name: str) -> st.SearchStrategy:
    lo, hi = _BOUNDS[EVENT_DTYPE.fields[name][0]]
    wide = st.integers(lo, hi)
    small = {"type": st.sampled_from(sorted(EV_NAMES)), "side": st.integers(0, 2), "kind": st.integers(0, 2),
             "tif": st.integers(0, 3), "maker": st.integers(0, 2), "cmd": st.integers(1, 6),
             "reason": st.integers(0, 31)}.get(name)
    if small is None:
        return st.one_of(st.just(0), wide)
    return st.one_of(small, small, wide)  # mostly meaningful values, sometimes anything


event_records = st.fixed_dictionaries({name: _field(name) for name in EVENT_DTYPE.names}).map(_record)


@given(event_records)
@settings(max_examples=500)
def test_event_round_trip_any_record(rec: np.void) -> None:
    """record -> JSON text -> record is the identity, even for fields a layout does not expect."""
    d = event_to_json(rec)
    assert event_from_json(d).tobytes() == rec.tobytes()
    assert event_from_jsonl(msgspec.json.encode(d)).tobytes() == rec.tobytes()


def test_events_of_a_real_run_round_trip_and_stay_compact() -> None:
    commands, errors = commands_from_jsonl(EXAMPLE.read_bytes().splitlines())
    assert [e.line for e in errors] == [5]
    events = make_book(engine="reference").process(commands)
    as_json = events_to_json(events)
    assert as_json == [event_to_json(e) for e in events]
    lines = events_to_jsonl(events).splitlines()
    assert len(lines) == len(events)
    for rec, d, line in zip(events, as_json, lines, strict=True):
        assert event_from_json(d).tobytes() == rec.tobytes()
        assert msgspec.json.decode(line) == d
        assert list(d)[:3] == ["type", "seq", "time"]
        if d["type"] == "accepted" and d["side"] == "ask":
            assert "kind" not in d and "tif" not in d and "limit" not in d
        if d["type"] == "trade":
            assert {"trade_id", "bid_oid", "ask_oid", "buyer", "provider", "price", "maker"} <= set(d)
            assert "oid" not in d and "account" not in d
    assert {d["type"] for d in as_json} >= {"accepted", "trade", "preempted", "rejected", "cancelled"}


def test_rejection_and_end_reasons_by_name() -> None:
    rejected = event_to_json(_record(dict(seq=3, time=10, type=EV_REJECTED, cmd=CMD_BID, oid=4, account=2,
                                          side=SIDE_BID, reason=R.OFF_TICK)))
    assert rejected == {"type": "rejected", "seq": 3, "time": 10, "cmd": "bid", "oid": 4, "account": 2,
                        "side": "bid", "reason": "OFF_TICK", "message": R.reason_text(R.OFF_TICK)}
    clock = event_to_json(_record(dict(seq=4, time=5, type=EV_REJECTED, cmd=CMD_CLOCK, reason=R.STALE_TIME)))
    assert clock == {"type": "rejected", "seq": 4, "time": 5, "cmd": "clock", "reason": "STALE_TIME",
                     "message": R.reason_text(R.STALE_TIME)}
    bid = event_to_json(_record(dict(seq=5, time=6, type=EV_CANCELLED, oid=7, account=2, side=SIDE_BID,
                                     kind=ON_DEMAND, remaining=3, reason=END_USER)))
    assert bid == {"type": "cancelled", "seq": 5, "time": 6, "oid": 7, "account": 2, "side": "bid",
                   "kind": "on_demand", "remaining": 3, "reason": "user"}
    ask = event_to_json(_record(dict(seq=6, time=6, type=EV_CANCELLED, oid=1, account=1, side=SIDE_ASK,
                                     reason=END_USER)))
    assert ask == {"type": "cancelled", "seq": 6, "time": 6, "oid": 1, "account": 1, "side": "ask",
                   "reason": "user"}


@pytest.mark.parametrize(
    "d",
    [
        {"type": "trade", "seq": 1, "colour": 3},
        {"type": "trade", "seq": "one"},
        {"type": "trade", "seq": True},
        {"type": "cancelled", "seq": 1, "reason": "bored"},
        {"type": "nonsense", "seq": 1},
        {"seq": 1},
    ],
)
def test_event_from_json_refuses_what_it_cannot_read(d: dict) -> None:
    with pytest.raises(CodecError) as info:
        event_from_json(d)
    assert info.value.reason == R.MALFORMED
