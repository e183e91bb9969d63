"""Compile the jitted parts once, ahead of use: `python -m cli.warm`.

The numba book (orderbook/fast.py) and settlement's core (clearing/core.py) are compiled on
first use and kept in numba's cache (a directory per version of their sources,
orderbook/jitcache.py); a cold compile takes most of a minute on a small machine, a warm start
a second or two.  `make .venv` runs this after
installing, and the test session runs it before the first test (tests/conftest.py), so that
neither the first `gpux serve` nor a test waiting for a server subprocess pays for it.

It drives a tiny market through every entry point a server uses: a book call with an ask, a
bid that fills, an amend, a cancel and a clock; the state hash, crossing pairs and a quote; a
snapshot restored; settlement's engine applying the events, provisioning answers (ready and
failed), a tick, reading out changes, a restore and a lease lookup; then the core's exchange
state (its tables) and the journal's framing check, through a journal written and read back.
"""

from __future__ import annotations

import time

import numpy as np


def warm() -> float:
    """Compile (or load from numba's cache) everything jitted; returns the seconds it took."""
    t0 = time.perf_counter()
    from clearing.engine import SettlementConfig, SettlementEngine
    from orderbook.book import make_book
    from orderbook.config import BookConfig
    from orderbook.fast import NumbaBook
    from orderbook.types import CMD_AMEND, CMD_ASK, CMD_BID, CMD_CANCEL, CMD_CLOCK, COMMAND_DTYPE, GTC, HOUR, ON_DEMAND

    now = 1_800_000_000
    price = 2_000_000
    rows = [
        dict(type=CMD_ASK, time=now, oid=1, account=1, gpus=8, price=price, spot_price=price // 2, end=now + 10 * HOUR),
        dict(type=CMD_BID, time=now, oid=2, account=2, gpus=2, hours=2, price=price, kind=ON_DEMAND, tif=GTC),
        dict(type=CMD_BID, time=now, oid=3, account=3, gpus=2, hours=9, price=price // 4, kind=ON_DEMAND, tif=GTC),
        dict(type=CMD_AMEND, time=now, oid=3, account=3, gpus=1),
        dict(type=CMD_CANCEL, time=now, oid=3, account=3),
        dict(type=CMD_CLOCK, time=now + 60),
    ]
    cmds = np.zeros(len(rows), COMMAND_DTYPE)
    for i, r in enumerate(rows):
        for k, v in r.items():
            cmds[i][k] = v
    config = BookConfig()
    book = make_book(config, "numba")
    events = book.process(cmds)
    book.state_hash()
    book.crossing_pairs()
    book.quote(ON_DEMAND, 1, 1)
    NumbaBook.restore(config, book.snapshot()).state_hash()

    engine = SettlementEngine(SettlementConfig(fees={"W": (10, 25)}, auto_ready=False, provision_timeout_s=600,
                                               meter_interval_s=HOUR))
    engine.apply("W", events)
    leases = sorted(engine.state("W").leases)
    if not leases:
        raise RuntimeError("warm: the tiny market made no trade; the jitted paths of leases were not compiled")
    for tid in leases:
        engine.mark_provisioning("W", tid)
        engine.mark_ready("W", tid, now + 1)
    engine.tick(now + 3 * HOUR)
    changes = engine.take_changes()
    other = SettlementEngine(engine.config)
    other.restore("W", engine.last_seq("W"), now + 3 * HOUR, list(engine.state("W").bids.items()),
                  [x for xs in changes.leases.values() for x in xs])
    other.tick(now + 20 * HOUR)
    other.state("W").find(status="ended")
    _warm_core(cmds, now)
    return time.perf_counter() - t0


def _warm_core(cmds: np.ndarray, now: int) -> None:
    """The core's own jitted parts: the exchange state's tables (`exchange.statecore`: a batch
    with a client order id, the reads, a snapshot restored), the journal's framing check and
    replay's record reader (`exchange.framescan`), through a journal written, read back and
    replayed, and the money's bulk helpers."""
    import tempfile
    from pathlib import Path

    from clearing import core, intmap
    from exchange.config import Instrument
    from exchange.engine import Engine
    from exchange.entries import Cmd, decode_entry, encode_entry
    from exchange.journal import Journal, read_runs
    from exchange.recovery import replay
    from orderbook.config import BookConfig
    from orderbook.types import HOUR

    entries = [Cmd("W", cmds[i:i + 1].tobytes(), "warm" if i == 1 else "") for i in range(len(cmds))]
    instruments = {"W": Instrument(BookConfig(name="W"))}
    with tempfile.TemporaryDirectory(prefix="gpux-warm-") as tmp:
        with Journal.open(tmp, fsync=False) as journal:
            journal.append([encode_entry(e) for e in entries])
        entries = [decode_entry(p) for _, run in read_runs(tmp) for p in run]
        replayed = Engine(instruments, "numba")
        replay(replayed, Path(tmp))  # commands read straight from the journal's bytes (framescan.commands)
        replayed.close()
    core.net_moves(np.zeros((0, 6), np.int64))  # a replay's big posts
    intmap.fill(intmap.new(), np.zeros(0, np.int64), np.zeros(0, np.int64))  # a snapshot's open bids
    engine = Engine(instruments, "numba")
    engine.apply(entries[:3], answers=True)
    engine.apply(entries[3:], results=False)
    st = engine.state
    st.orders.get(2)
    st.open_orders(1)
    st.account_leases(2)
    st.open_records("W")
    st.prune("W", now + 30 * 86_400 + 20 * HOUR)
    twin = Engine(engine.instruments, "numba")
    twin.load_snapshot(engine.snapshot())
    engine.close()
    twin.close()


def main() -> None:
    print(f"jitted code compiled or loaded from numba's cache in {warm():.1f} s")


if __name__ == "__main__":
    main()
