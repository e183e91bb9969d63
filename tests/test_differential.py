"""The numba book against the reference book, event for event (R4–R16, R15, R21).

Random command streams (tests/streams.py) go through both books one command at a time.
After every command: the same events, the same state hash, a quiescent book — no resting
bid and resting ask that could trade (R9) — and both books' invariants hold (`validate()`).
Then: batching changes nothing, and snapshot -> restore -> continue gives the same events as
never stopping.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams import command_streams, drawn_streams, random_stream

from orderbook.book import make_book, restore_book
from orderbook.config import BookConfig
from orderbook.types import EVENT_DTYPE

# small price range so levels fill up; short gate and notice so they matter in short streams
CFG = BookConfig(name="T", max_price=20_000, gate_s=300, notice_s=120)
# no notice: preempted spot leases end at once; a long gate: reserved bids expire early
CONFIGS = [CFG, BookConfig(name="T", max_price=20_000, gate_s=300, notice_s=0),
           BookConfig(name="T", max_price=20_000, gate_s=7_200, notice_s=3_599),
           BookConfig(name="T", min_price=5_000, max_price=11_000)]  # prices outside the bounds
EXAMPLES = int(os.environ.get("GPUX_DIFF_EXAMPLES", "300"))
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def _show(events: np.ndarray) -> list[dict[str, int]]:
    return [{k: int(e[k]) for k in EVENT_DTYPE.names if e[k]} for e in events]


def _run_both(commands: np.ndarray, cfg: BookConfig = CFG) -> tuple[list[np.ndarray], object, object]:
    ref = make_book(cfg, engine="reference")
    fast = make_book(cfg, engine="numba")
    out = []
    for i in range(len(commands)):
        one = commands[i : i + 1]
        e_ref = ref.process(one)
        e_fast = fast.process(one)
        assert _show(e_fast) == _show(e_ref), f"command {i}: {one[0]}"
        assert np.array_equal(e_fast, e_ref)
        assert fast.state_hash() == ref.state_hash(), f"state differs after command {i}: {one[0]}"
        assert fast.crossing_pairs() == [], f"book not quiescent after command {i}: {one[0]}"
        ref.validate()  # every derived structure agrees with the orders and leases
        fast.validate()
        out.append(e_ref)
    return out, ref, fast


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW)
@given(command_streams(400), st.sampled_from(CONFIGS))
def test_numba_book_equals_reference_book(commands: np.ndarray, cfg: BookConfig) -> None:
    events, ref, fast = _run_both(commands, cfg)
    assert ref.crossing_pairs() == []  # the reference's own check agrees at the end
    assert fast.resting_orders() == ref.resting_orders()
    assert fast.lease_count() == len(ref.running_leases())
    seqs = np.concatenate([e["seq"] for e in events]) if events else np.zeros(0)
    assert np.array_equal(seqs, np.arange(1, len(seqs) + 1))  # R15: consecutive per book


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, suppress_health_check=SLOW)
@given(drawn_streams(60), st.sampled_from(CONFIGS))
def test_numba_book_equals_reference_book_shrinkable(commands: np.ndarray, cfg: BookConfig) -> None:
    """Short streams drawn intent by intent: a failure shrinks to a minimal stream."""
    _run_both(commands, cfg)


@settings(max_examples=max(EXAMPLES // 6, 10), deadline=None, suppress_health_check=SLOW)
@given(command_streams(300), st.data())
def test_batching_does_not_change_events(commands: np.ndarray, data: st.DataObject) -> None:
    """One batch, many batches or one command at a time: the same events (ARCHITECTURE: batches)."""
    whole = make_book(CFG, engine="numba").process(commands)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(commands)), max_size=8)))
    book = make_book(CFG, engine="numba")
    parts = [book.process(commands[a:b]) for a, b in zip([0, *cuts], [*cuts, len(commands)], strict=True)]
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("engine", ["reference", "numba"])
@pytest.mark.parametrize("seed", range(6))
def test_snapshot_restore_continue_equals_never_stopping(engine: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    commands = random_stream(rng, 400)
    cut = int(rng.integers(50, 350))
    straight = make_book(CFG, engine=engine)
    expected = straight.process(commands)
    first = make_book(CFG, engine=engine)
    head = first.process(commands[:cut])
    blob = first.snapshot()
    second = restore_book(CFG, blob, engine=engine)
    second.validate()
    assert second.state_hash() == first.state_hash()
    tail = second.process(commands[cut:])
    assert np.array_equal(np.concatenate([head, tail]), expected)
    assert second.state_hash() == straight.state_hash()


def test_restore_refuses_other_configuration() -> None:
    book = make_book(CFG, engine="numba")
    book.process(random_stream(np.random.default_rng(1), 50))
    with pytest.raises(ValueError):
        restore_book(BookConfig(name="T", max_price=20_000, notice_s=60), book.snapshot(), engine="numba")


def _rewrite(blob: bytes, **arrays: np.ndarray | None) -> bytes:
    """A numba book's snapshot with some arrays replaced (None: left out), every array stored
    whole (as snapshots before the sparse form were: restore takes both)."""
    from orderbook.fast import _dense

    with np.load(io.BytesIO(blob)) as z:
        out = {k: z[k] for k in z.files}
    _dense(out)
    for name, a in arrays.items():
        if a is None:
            del out[name]
        else:
            out[name] = a
    buf = io.BytesIO()
    np.savez(buf, **out)
    return buf.getvalue()


def test_restore_refuses_snapshots_of_another_layout() -> None:
    """Only the current snapshot layout restores; older ones are refused with ValueError (the
    exchange's recovery then replays the journal)."""
    from orderbook.fast import LAYOUT, NS

    book = make_book(CFG, engine="numba")
    book.process(random_stream(np.random.default_rng(2), 200))
    blob = book.snapshot()
    whole = _rewrite(blob)  # the dense form of the same snapshot restores the same book
    again = restore_book(CFG, whole, engine="numba")
    again.validate()
    assert again.state_hash() == book.state_hash()
    assert len(whole) > 10 * len(blob)  # mostly empty arrays are stored sparse
    with np.load(io.BytesIO(whole)) as z:
        ag, bm = z["AG"], z["BM"]
    for bad in (_rewrite(blob, LAYOUT=np.array([LAYOUT - 1])), _rewrite(blob, LAYOUT=None),
                _rewrite(blob, S=np.zeros(NS + 1, dtype=np.int64)),  # layout 2's 20 scalars
                _rewrite(blob, AG=ag[:, :, :-1]), _rewrite(blob, BM=bm[:-2]), _rewrite(blob, RO=None)):
        with pytest.raises(ValueError, match="layout"):
            restore_book(CFG, bad, engine="numba")


@pytest.mark.parametrize("seed", range(3))
def test_pools_grow_without_changing_events(seed: int) -> None:
    """A book that starts tiny grows its arrays mid-batch; events stay those of the reference."""
    from orderbook.fast import NumbaBook

    commands = random_stream(np.random.default_rng(100 + seed), 600)
    tiny = NumbaBook(CFG, orders=2)
    ref = make_book(CFG, engine="reference")
    assert np.array_equal(tiny.process(commands), ref.process(commands))
    assert tiny.state_hash() == ref.state_hash()
    tiny.validate()


def test_random_streams_reach_every_event_and_most_reasons() -> None:
    """The streams the differential test draws from do exercise the rules: every event type,
    preemptions, resale fills, releases and most rejection codes show up in 40 seeds."""
    from orderbook import reasons as R
    from orderbook.types import EV_NAMES

    seen_types: set[int] = set()
    seen_reasons: set[int] = set()
    resale_fills = 0
    for seed in range(40):
        events = make_book(CFG, engine="reference").process(random_stream(np.random.default_rng(seed), 300))
        seen_types |= set(events["type"].tolist())
        seen_reasons |= set(events["reason"][events["type"] == 2].tolist())
        resale_fills += int(((events["type"] == 3) & (events["lease_id"] > 0)).sum())
    assert seen_types == set(EV_NAMES)
    assert resale_fills > 0
    never = {R.OK, R.MALFORMED, R.BAD_COMMAND}  # the codec's; unknown types come only from raw bytes
    missing = {R.reason_name(c) for c in set(R.REASONS) - never - seen_reasons}
    assert len(missing) <= 3, f"reason codes the random streams never produce: {sorted(missing)}"


@pytest.mark.parametrize("engine", ["reference", "numba"])
@pytest.mark.parametrize("seed", range(4))
def test_firsts_say_where_each_commands_events_start(engine: str, seed: int) -> None:
    """`process(commands, firsts)`: firsts[i] is where command i's events start in the batch's
    events, firsts[n] their count; the same as processing the commands one at a time (clock
    commands, whose events have no leading one, and re-offers included), and the same events."""
    commands = random_stream(np.random.default_rng(100 + seed), 400)
    firsts = np.full(len(commands) + 1, -1, np.int64)
    whole = make_book(CFG, engine=engine).process(commands, firsts)
    book = make_book(CFG, engine=engine)
    counts = [len(book.process(commands[i:i + 1])) for i in range(len(commands))]
    assert firsts.tolist() == np.concatenate([[0], np.cumsum(counts)]).tolist()
    assert firsts[-1] == len(whole) > len(commands)
    assert make_book(CFG, engine=engine).process(commands).tobytes() == whole.tobytes()
