"""The cores' int -> int hash map (clearing/intmap.py) against a plain dict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing import intmap

# keys near each other (order ids), far apart (lease keys: class << 40 | trade id) and colliding
# in the first slot (multiples of a power of two)
_keys = st.one_of(st.integers(0, 64), st.integers(0, 2**62), st.integers(0, 8).map(lambda k: k << 40),
                  st.integers(0, 32).map(lambda k: k * 1024))
_ops = st.lists(st.tuples(st.sampled_from(("put", "delete", "get")), _keys, st.integers(0, 2**40)),
                max_size=400)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_the_map_holds_what_a_dict_holds(ops: list[tuple[str, int, int]]) -> None:
    M = intmap.new()
    d: dict[int, int] = {}
    for op, k, v in ops:
        if op == "put":
            M = intmap.room(M, 1)
            intmap.put(M, k, v)
            d[k] = v
        elif op == "delete":
            assert intmap.delete(M, k) == (k in d)
            d.pop(k, None)
        assert intmap.get(M, k) == d.get(k, -1)
        assert intmap.size(M) == len(d)
        assert 2 * intmap.size(M) <= int(M[1]) + 1  # room keeps it half full at most
    keys, values = intmap.items(M)
    assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == d
    probe = np.array(sorted(d) + [k + 1 for k in d], np.int64)
    assert intmap.get_many(M, probe).tolist() == [d.get(k, -1) for k in probe.tolist()]


def test_room_grows_a_copy_and_fill_puts_many() -> None:
    M = intmap.new()
    keys = np.arange(0, 3000 * 7, 7, dtype=np.int64)
    grown = intmap.room(M, len(keys))
    assert grown is not M and int(grown[1]) + 1 >= 2 * len(keys)
    intmap.fill(grown, keys, keys * 2)
    assert intmap.size(grown) == 3000 and intmap.size(M) == 0
    assert intmap.get(grown, 7 * 2999) == 2 * 7 * 2999 and intmap.get(grown, 1) == -1
    assert intmap.room(grown, 10) is grown  # room enough already: the same array


def test_a_put_without_room_is_refused_not_a_hang() -> None:
    M = intmap.new(16)
    for k in range(12):
        intmap.put(M, k, k)
    with pytest.raises(RuntimeError, match="three quarters full"):
        intmap.put(M, 99, 1)
    assert intmap.size(M) == 12 and intmap.get(M, 99) == -1
