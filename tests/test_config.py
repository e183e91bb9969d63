"""Instrument configuration (R1): bounds that make the rules work."""

from __future__ import annotations

import pytest

from orderbook.config import BookConfig


def test_notice_must_leave_room_to_preempt() -> None:
    """R12: with a notice of an hour or more, T0 would fall after every one-hour firm fill and
    no spot lease would ever make room: such a configuration is refused."""
    assert BookConfig(notice_s=3_599).notice_s == 3_599
    with pytest.raises(ValueError, match="notice_s"):
        BookConfig(notice_s=3_600)


@pytest.mark.parametrize(
    "kwargs",
    [dict(tick=0), dict(min_price=1_500), dict(max_price=500), dict(max_price=1_000_500),
     dict(max_gpus=0), dict(max_hours=2**31), dict(gate_s=-1), dict(notice_s=-1), dict(max_window_hours=0)],
)
def test_bad_configuration_is_refused(kwargs: dict) -> None:
    """R1, R3: ticks, price bounds and limits must be consistent before a book exists."""
    with pytest.raises(ValueError):
        BookConfig(**kwargs)
