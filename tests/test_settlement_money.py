"""The money rules (clearing/money.py, R17, R19) and the jitted core's twins of them, which are
compiled from the same functions and must give the same integers."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from clearing import core, money


def test_the_rules() -> None:
    assert money.fee(1_000_000, 25) == 2_500
    assert money.fee(1, 25) == 1  # rounded up to the µ$
    assert money.fee(0, 25) == money.fee(-5, 25) == money.fee(1_000, 0) == 0
    assert money.hold_fee_bps(10, 25) == money.hold_fee_bps(25, 10) == 25
    assert money.hold_per_gpu(2, 1_000_000, 25) == 2_000_000 + 5_000
    assert money.hold(3, 2, 1_000_000, 25) == 3 * 2_005_000
    assert money.lease_value(2, 1_000_000, 1_800) == 1_000_000
    assert money.lease_value(1, 1_000_001, 1) == 277  # rounded down
    assert money.lease_value(2, 1_000_000, 0) == money.lease_value(2, 1_000_000, -60) == 0


def test_the_core_compiles_the_same_functions() -> None:
    for twin, rule in ((core._fee, money.fee), (core._hold_per_gpu, money.hold_per_gpu),
                       (core._lease_value, money.lease_value)):
        assert getattr(twin, "py_func", twin).__code__ is rule.__code__


# within what the engine lets into the core (lease values and holds below 2**62)
_small = st.integers(-(1 << 20), 1 << 31)


@settings(max_examples=300, deadline=None)
@given(_small, _small, st.integers(-1, 10_000), st.integers(-(1 << 20), 1 << 20))
def test_the_core_twins_give_the_same_integers(a: int, b: int, bps: int, seconds: int) -> None:
    assert core._fee(a * 1000, bps) == money.fee(a * 1000, bps)
    assert core._hold_per_gpu(a % 10_000, b, bps) == money.hold_per_gpu(a % 10_000, b, bps)
    # the engine refuses a lease whose gpus × price × seconds reaches 2**62 (clearing.engine._check_money)
    assume(abs(a % 100_000 * b * seconds) < 1 << 62)
    assert core._lease_value(a % 100_000, b, seconds) == money.lease_value(a % 100_000, b, seconds)
