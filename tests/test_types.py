"""The record layout has one owner (orderbook/types.py): the `Command` and `Event` views match the
numpy dtypes field for field, read records by name, and the command builders the gateway uses
(built by position inside types.py) equal the same commands built by field name."""

from __future__ import annotations

import numpy as np

from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    COMMAND_DTYPE,
    EVENT_DTYPE,
    GTD,
    RESERVED,
    Command,
    Event,
    amend_command,
    ask_command,
    bid_command,
    cancel_command,
    clock_command,
    commands,
    events,
    release_command,
)


def test_views_have_the_dtypes_fields_in_order() -> None:
    assert Command._fields == COMMAND_DTYPE.names
    assert Event._fields == EVENT_DTYPE.names


def test_views_read_records_by_name() -> None:
    rng = np.random.default_rng(5)
    arr = np.zeros(50, EVENT_DTYPE)
    for name in EVENT_DTYPE.names:
        arr[name] = rng.integers(0, 100, 50)
    for rec, ev in zip(arr, events(arr), strict=True):
        assert all(getattr(ev, name) == rec[name] for name in EVENT_DTYPE.names)
    cmds = np.zeros(20, COMMAND_DTYPE)
    for name in COMMAND_DTYPE.names:
        cmds[name] = rng.integers(0, 100, 20)
    for rec, c in zip(cmds, commands(cmds), strict=True):
        assert all(getattr(c, name) == rec[name] for name in COMMAND_DTYPE.names)
    back = np.array(commands(cmds), dtype=COMMAND_DTYPE)  # and a Command is a record numpy takes
    assert back.tobytes() == cmds.tobytes()


def test_command_builders_equal_commands_by_field_name() -> None:
    assert ask_command(3, 8, 2_000, 99, spot_price=1_000, start=5, min_hours=2, lease_id=7, post_only=1) == Command(
        type=CMD_ASK, account=3, gpus=8, price=2_000, end=99, spot_price=1_000, start=5, min_hours=2, lease_id=7,
        post_only=1)
    assert bid_command(3, RESERVED, 4, 2, 5_000, 2, GTD, 3_600, 77) == Command(
        type=CMD_BID, account=3, kind=RESERVED, gpus=4, hours=2, price=5_000, block=2, tif=GTD, start=3_600,
        expire_at=77)
    assert cancel_command(3, 9) == Command(type=CMD_CANCEL, account=3, oid=9)
    assert amend_command(3, 9, 2) == Command(type=CMD_AMEND, account=3, oid=9, gpus=2)
    assert release_command(3, 4) == Command(type=CMD_RELEASE, account=3, lease_id=4)
    assert clock_command(5) == Command(type=CMD_CLOCK, time=5)
    assert all(type(c) is Command for c in (ask_command(1, 1, 1, 1), bid_command(1, 0, 1, 1, 1), clock_command()))
