"""Per-instrument configuration of a book (R1): tick, bounds, gate and notice times."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BookConfig:
    """Everything a book needs to know about its GPU class.  Configuration, not code (R1)."""

    name: str = "H100"
    tick: int = 1_000  # µ$ per GPU-hour (R3)
    min_price: int = 1_000  # µ$ per GPU-hour
    max_price: int = 100_000_000  # µ$ per GPU-hour ($100)
    max_gpus: int = 100_000  # per order
    max_hours: int = 8_784  # per bid, and longest min_hours (a leap year)
    max_window_hours: int = 8_784  # longest ask window
    gate_s: int = 300  # reserved bids must start at least this long after now (R6)
    notice_s: int = 120  # spot preemption notice (R12)

    def __post_init__(self) -> None:
        if self.tick <= 0:
            raise ValueError("tick must be positive")
        if self.min_price < self.tick or self.min_price % self.tick:
            raise ValueError("min_price must be a positive multiple of tick")
        if self.max_price < self.min_price or self.max_price % self.tick:
            raise ValueError("max_price must be a multiple of tick, at least min_price")
        if not (1 <= self.max_gpus < 2**31 and 1 <= self.max_hours < 2**31):
            raise ValueError("max_gpus and max_hours must fit in int32")
        if self.max_window_hours < 1 or self.gate_s < 0 or self.notice_s < 0:
            raise ValueError("max_window_hours must be >= 1, gate_s and notice_s >= 0")
        if self.notice_s >= 3600:
            # R12 preempts spot only from T0 = now + notice_s on, inside the firm fill's window;
            # the shortest firm fill is one hour, so a longer notice would never make room
            raise ValueError("notice_s must be below 3600 (the shortest firm lease is one hour)")

    @property
    def levels(self) -> int:
        """Number of price levels (prices are tick multiples in [min_price, max_price])."""
        return (self.max_price - self.min_price) // self.tick + 1

    def as_array(self) -> np.ndarray:
        """The numeric parameters as an int64 array, in the order numba code reads them."""
        return np.array(
            [
                self.tick,
                self.min_price,
                self.max_price,
                self.max_gpus,
                self.max_hours,
                self.max_window_hours,
                self.gate_s,
                self.notice_s,
            ],
            dtype=np.int64,
        )

    def to_dict(self) -> dict:
        return asdict(self)


# indices into BookConfig.as_array()
P_TICK, P_MIN_PRICE, P_MAX_PRICE, P_MAX_GPUS, P_MAX_HOURS, P_MAX_WINDOW_HOURS, P_GATE_S, P_NOTICE_S = range(8)
