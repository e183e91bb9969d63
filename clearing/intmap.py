"""An int64 -> int64 hash map in one numpy array, for the jitted cores.

The cores' maps (an order id to its row, a lease to its row, an account to its index) have int
keys and row numbers as values.  numba's typed dict serves them at ~50-150 ns a lookup (a call
into numba's C helpers, a memcmp of the key, reference counts on the dict object), and compiles
its methods at their first call from Python.  Here they are open-addressed tables with linear
probing, in an int64 array that jitted code reads like any other:

    M[0] count   M[1] mask (capacity - 1)   M[2] shift (64 - log2 capacity)   M[3] (unused)
    M[4 + 2i], M[5 + 2i]: slot i's key (EMPTY: none) and its value

A key's first slot is Fibonacci hashing of it (multiply by 2**64 / golden ratio, keep the top
bits).  Deleting shifts the entries after it back (no tombstones), so a lookup's cost depends on
the load only.  Jitted code cannot replace an array it was given, so whoever calls a kernel that
may add keys first makes room for that many (`room`: at most half full after them); `put` refuses
past three quarters, so a forgotten `room` fails loudly instead of slowing down.  Values are
non-negative (rows, indexes): `get` answers -1 for a missing key.  `items` lists in slot order,
which depends on the history of the map: whoever needs an order sorts.

    M = intmap.new()
    M = intmap.room(M, 3)         # before a call that may add up to 3 keys
    intmap.put(M, 42, 7); intmap.get(M, 42) == 7; intmap.delete(M, 42)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from orderbook import jitcache

jitcache.use(__name__)  # numba's cache for the functions below: keyed by the sources they are compiled from

EMPTY = -(2**63)  # no key: every key of the cores is non-negative
HEAD = 4
_GOLDEN = 0x9E3779B97F4A7C15
MIN_CAPACITY = 16

_nj = njit(cache=True, nogil=True)


def new(capacity: int = MIN_CAPACITY) -> np.ndarray:
    """An empty map with room for ``capacity`` slots (rounded up to a power of two)."""
    cap = MIN_CAPACITY
    while cap < capacity:
        cap *= 2
    M = np.full(HEAD + 2 * cap, EMPTY, np.int64)
    M[0] = 0
    M[1] = cap - 1
    M[2] = 64 - (cap.bit_length() - 1)
    M[3] = 0
    return M


def room(M: np.ndarray, extra: int) -> np.ndarray:
    """``M``, or a bigger copy of it, that stays at most half full with ``extra`` more keys."""
    need = 2 * (int(M[0]) + extra)
    cap = int(M[1]) + 1
    if need <= cap:
        return M
    while cap < need:
        cap *= 2
    out = new(cap)
    _rehash(M, out)
    return out


def size(M: np.ndarray) -> int:
    """How many keys ``M`` holds."""
    return int(M[0])


def free(M: np.ndarray) -> int:
    """How many more keys ``M`` takes before `room` would grow it."""
    return (int(M[1]) + 1) // 2 - int(M[0])


@_nj
def _slot(M: np.ndarray, k: int) -> int:
    return np.int64((np.uint64(k) * np.uint64(_GOLDEN)) >> np.uint64(M[2]))


@_nj
def get(M: np.ndarray, k: int) -> int:
    """The value of ``k``, or -1 if ``M`` does not hold it."""
    mask = M[1]
    i = _slot(M, k)
    while True:
        kk = M[HEAD + 2 * i]
        if kk == k:
            return M[HEAD + 2 * i + 1]
        if kk == EMPTY:
            return -1
        i = (i + 1) & mask


@_nj
def put(M: np.ndarray, k: int, v: int) -> None:
    """``M[k] = v`` (a new key, or a new value for one it holds).  The caller made room (`room`)."""
    mask = M[1]
    i = _slot(M, k)
    while True:
        j = HEAD + 2 * i
        kk = M[j]
        if kk == k:
            M[j + 1] = v
            return
        if kk == EMPTY:
            if 4 * (M[0] + 1) > 3 * (mask + 1):
                raise RuntimeError("intmap.put: the map is three quarters full (no room was made)")
            M[j] = k
            M[j + 1] = v
            M[0] += 1
            return
        i = (i + 1) & mask


@_nj
def delete(M: np.ndarray, k: int) -> bool:
    """Remove ``k``; False if ``M`` did not hold it."""
    mask = M[1]
    i = _slot(M, k)
    while True:
        kk = M[HEAD + 2 * i]
        if kk == k:
            break
        if kk == EMPTY:
            return False
        i = (i + 1) & mask
    # shift back every entry of the run after i that may sit at i (its first slot is not in (i, j])
    j = i
    while True:
        M[HEAD + 2 * i] = EMPTY
        while True:
            j = (j + 1) & mask
            kj = M[HEAD + 2 * j]
            if kj == EMPTY:
                M[0] -= 1
                return True
            h = _slot(M, kj)
            if (h - i - 1) & mask >= (j - i) & mask:  # h outside (i, j]: move it back to i
                break
        M[HEAD + 2 * i] = kj
        M[HEAD + 2 * i + 1] = M[HEAD + 2 * j + 1]
        i = j


@_nj
def get_many(M: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`get` of each key."""
    out = np.empty(len(keys), np.int64)
    for n in range(len(keys)):
        out[n] = get(M, keys[n])
    return out


@_nj
def fill(M: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
    """`put` of each pair (a restore's many entries in one call).  The caller made room."""
    for n in range(len(keys)):
        put(M, keys[n], values[n])


@_nj
def items(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The keys and the values, in slot order."""
    n = M[0]
    keys = np.empty(n, np.int64)
    values = np.empty(n, np.int64)
    c = 0
    for i in range(M[1] + 1):
        k = M[HEAD + 2 * i]
        if k != EMPTY:
            keys[c] = k
            values[c] = M[HEAD + 2 * i + 1]
            c += 1
    return keys, values


@_nj
def _rehash(M: np.ndarray, out: np.ndarray) -> None:
    for i in range(M[1] + 1):
        k = M[HEAD + 2 * i]
        if k != EMPTY:
            put(out, k, M[HEAD + 2 * i + 1])
