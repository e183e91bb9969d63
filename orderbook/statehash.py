"""The state hash: one 64-bit number that two books agree on iff their states agree.

Each record (an order, a running lease, the clocks) is hashed on its own (FNV-1a over
64-bit words, then the splitmix64 finaliser) and the record hashes are summed mod 2**64,
so the result does not depend on the order in which a book stores its records.  The
Python and numba versions below compute the same function.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit

from orderbook import jitcache

jitcache.use(__name__)  # numba's cache for `hash_words`: keyed by this file

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MIX1 = 0xFF51AFD7ED558CCD
MIX2 = 0xC4CEB9FE1A85EC53


def hash_record(values: Iterable[int]) -> int:
    """Hash of one record of integers (Python ints; negatives as two's complement)."""
    h = FNV_OFFSET
    for v in values:
        h = ((h ^ (int(v) & MASK64)) * FNV_PRIME) & MASK64
    h ^= h >> 33
    h = (h * MIX1) & MASK64
    h ^= h >> 33
    h = (h * MIX2) & MASK64
    h ^= h >> 33
    return h


@njit(cache=True)
def hash_words(words: np.ndarray, n: int) -> np.uint64:
    """numba twin of `hash_record` over the first n entries of an int64 array."""
    h = np.uint64(FNV_OFFSET)
    for i in range(n):
        h = (h ^ np.uint64(words[i])) * np.uint64(FNV_PRIME)
    h ^= h >> np.uint64(33)
    h *= np.uint64(MIX1)
    h ^= h >> np.uint64(33)
    h *= np.uint64(MIX2)
    h ^= h >> np.uint64(33)
    return h
