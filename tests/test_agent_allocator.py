"""The agent's GPU allocator (settlement/agent/backend.py): ids held until a lease's end, reused
from then on; a firm lease that preempted spot learns when its GPUs come free (R12's T0)."""

from __future__ import annotations

import pytest

from agent.backend import BackendError, GpuAllocator


def test_ids_are_held_until_the_end_and_reused_after() -> None:
    a = GpuAllocator(4)
    assert a.allocate("H100-1", 3, 100, 200, 100) == [0, 1, 2]
    assert a.allocate("H100-1", 3, 100, 200, 150) == [0, 1, 2]  # the same lease keeps its ids
    with pytest.raises(BackendError, match="needs 2, 1 of 4 are free"):
        a.allocate("H100-2", 2, 150, 300, 150)
    assert a.allocate("H100-3", 2, 200, 300, 150) == [0, 1]  # starts when H100-1 has ended
    a.release("H100-3")
    assert GpuAllocator(0).allocate("X-1", 8, 0, 10, 0) == []  # no ids assigned


def test_free_at_is_when_enough_holders_have_ended() -> None:
    """R12: a firm lease starting now waits for the spot lease it preempted, which ends at T0."""
    a = GpuAllocator(4)
    a.allocate("spot", 3, 100, 7200, 100)
    a.allocate("other", 1, 100, 500, 100)
    assert a.free_at(1, 100) == 500  # the first holder to end frees one
    a.move_end("spot", 130)  # the preemption notice: the spot lease now ends at T0 = 130
    assert a.free_at(3, 100) == 130
    assert a.free_at(4, 100) == 500  # all four: when the last holder ends
    assert a.free_at(5, 100) is None  # more than the host has
    assert a.free_at(0, 100) == 100
    assert a.allocate("firm", 3, 100, 3700, 130) == [0, 1, 2]
