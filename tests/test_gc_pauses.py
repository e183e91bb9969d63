"""`gpux serve` reports the garbage collector's pauses on /metrics (app.exchange.GcPauses): a full
collection holds the whole process, so its length is latency every client sees."""

from __future__ import annotations

import gc
import logging

from app.exchange import GcPauses


def test_pauses_are_counted_by_generation_and_slow_ones_logged(caplog):
    pauses = GcPauses()
    gc.callbacks.append(pauses.callback)
    try:
        gc.collect(0)
        gc.collect(2)
        pauses.SLOW_S = 0.0  # every pause counts as slow from now on
        with caplog.at_level(logging.WARNING, logger="gpux.server"):
            gc.collect(1)
    finally:
        gc.callbacks.remove(pauses.callback)
    assert pauses.count[0] >= 1 and pauses.count[1] >= 1 and pauses.count[2] >= 1
    assert pauses.max[2] > 0 and pauses.total[2] >= pauses.max[2]
    assert any(r.getMessage() == "garbage collection paused the process" and r.generation == 1
               for r in caplog.records)
    samples = {name: value for name, value, _, _ in pauses.metric_samples()}
    assert samples['gpux_gc_pauses_total{generation="1"}'] == pauses.count[1]
    assert samples['gpux_gc_pause_max_seconds{generation="2"}'] > 0
