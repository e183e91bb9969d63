"""The market-data model (feeds/model.py) against the reference book, and the recording format.

R20: level 2 is "free GPUs now per ask price; remaining GPUs per bid price".  The model builds it
from events only; `reference_level2` computes it directly from the reference book's internals
(its orders, its running leases through `_peak_usage`), and after every batch of a random stream
(preemptions, releases, resales, expiries, clock jumps) the two must agree, and so must a client
that applies only the snapshot and the deltas.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from feeds.model import DAY, BookModel, ClassFeed, MarketStats
from feeds.products import BidLadders
from feeds.recording import BLOCK_DTYPE, decode_record, encode_record, load
from orderbook import types as T
from orderbook.config import BookConfig
from orderbook.reference import ReferenceBook
from orderbook.types import EV_TRADE, EVENT_DTYPE, HOUR, ON_DEMAND, RESERVED, SIDE_ASK, SPOT, Event
from tests.helpers import ask, bid, cancel, clock, release
from tests.streams import random_stream

T0 = 1_800_000_000 - 1_800_000_000 % HOUR


def batch(*cmds: np.ndarray) -> np.ndarray:
    return np.stack(cmds)


def reference_level2(book: ReferenceBook) -> dict[str, list[list[int]]]:
    """Level 2 straight from the reference book's state (R20): per firm ask price, GPUs free now
    for a firm buyer; per spot price, GPUs free now for a spot buyer; per bid limit, remaining."""
    now = book.now
    sides: dict[str, dict[int, int]] = {"bids": {}, "spot_bids": {}, "asks": {}, "spot_asks": {}}
    for o in book.orders.values():
        if o.side == SIDE_ASK:
            if o.start <= now < o.end:
                firm_free = max(0, o.gpus - book._peak_usage(o, now, now + 1, False))
                sides["asks"][o.price] = sides["asks"].get(o.price, 0) + firm_free
                if o.spot_price:
                    spot_free = max(0, o.gpus - book._peak_usage(o, now, now + 1, True))
                    sides["spot_asks"][o.spot_price] = sides["spot_asks"].get(o.spot_price, 0) + spot_free
        else:
            k = "spot_bids" if o.kind == SPOT else "bids"
            sides[k][o.price] = sides[k].get(o.price, 0) + o.remaining
    return {k: sorted(([p, g] for p, g in v.items() if g), reverse=k.endswith("bids")) for k, v in sides.items()}


class Client:
    """Applies snapshot + deltas only."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[int, int]] = {}
        self.u = 0

    def apply(self, m: dict) -> None:
        if m["action"] == "snapshot":
            self.sides = {k: {} for k in ("bids", "spot_bids", "asks", "spot_asks")}
        else:
            assert m["u"] == self.u + 1
        for k, side in self.sides.items():
            for p, g in m.get(k, ()):
                assert g >= 0
                if g:
                    side[p] = g
                else:
                    assert p in side, "a delta removed a level the client does not have"
                    del side[p]
        self.u = m["u"]

    def level2(self) -> dict[str, list[list[int]]]:
        return {k: sorted(([p, g] for p, g in v.items()), reverse=k.endswith("bids")) for k, v in self.sides.items()}


@pytest.mark.parametrize("seed", range(60))
def test_level2_equals_the_reference_book_after_every_batch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cmds = random_stream(rng, 400)
    book = ReferenceBook(BookConfig(name="T", max_price=20_000))
    feed = ClassFeed("T")
    client = Client()
    client.apply(feed.snapshot("book"))
    i = 0
    while i < len(cmds):
        n = int(rng.integers(1, 9))
        events = book.process(cmds[i:i + n])
        i += n
        for stream, m in feed.update(events, book.now):
            assert m["seq"] == feed.seq and m["time"] == book.now
            if stream == "book":
                client.apply(m)
        want = reference_level2(book)
        assert feed.book.level2() == want, f"model differs after command {i}"
        assert client.level2() == want, f"snapshot + deltas differ after command {i}"
        if rng.random() < 0.05:  # a late subscriber's snapshot is the same book
            late = Client()
            late.apply(feed.snapshot("book"))
            assert late.level2() == want


def test_free_now_moves_with_engine_time_alone() -> None:
    """A reserved lease starting later holds no GPUs now; when the clock reaches its start the ask's
    level shrinks, and grows back when it ends, with no event in between (R13)."""
    book = ReferenceBook(BookConfig(name="T"))
    feed = ClassFeed("T")
    start = T0 + 2 * HOUR
    evs = book.process(batch(
        ask(T0, 1, 1, gpus=8, price=2_000_000, end=T0 + 10 * HOUR, spot_price=1_000_000),
        bid(T0, 2, 2, RESERVED, gpus=3, hours=1, limit=2_000_000, start=start),
    ))
    feed.update(evs, book.now)
    assert feed.book.level2()["asks"] == [[2_000_000, 8]]
    for t, free in ((start - 1, 8), (start, 5), (start + HOUR - 1, 5), (start + HOUR, 8)):
        out = feed.update(book.process(batch(clock(t))), book.now)
        assert feed.book.level2()["asks"] == [[2_000_000, free]] == reference_level2(book)["asks"]
        assert feed.book.level2() == reference_level2(book)
        if t in (start, start + HOUR):
            assert [s for s, _ in out] == ["book", "ticker"]
            assert out[0][1]["asks"] == [[2_000_000, free]] and out[0][1]["seq"] == feed.seq


def test_preempted_spot_lease_frees_capacity_at_its_new_end() -> None:
    book = ReferenceBook(BookConfig(name="T", notice_s=120))
    feed = ClassFeed("T")
    evs = book.process(batch(
        ask(T0, 1, 1, gpus=4, price=2_000_000, end=T0 + 10 * HOUR, spot_price=1_000_000),
        bid(T0, 2, 2, SPOT, gpus=4, hours=3, limit=1_000_000),
        bid(T0 + 10, 3, 3, ON_DEMAND, gpus=4, hours=1, limit=2_000_000),
    ))
    feed.update(evs, book.now)
    # the firm lease holds the ask for firm buyers; the spot lease still runs for 120 s
    assert feed.book.level2() == reference_level2(book) == {"bids": [], "spot_bids": [], "asks": [],
                                                            "spot_asks": []}
    feed.update(book.process(batch(clock(T0 + 10 + 120))), book.now)
    assert feed.book.level2() == reference_level2(book)
    feed.update(book.process(batch(release(T0 + 200, 3, 2))), book.now)
    assert feed.book.level2() == reference_level2(book) == {"bids": [], "spot_bids": [], "asks": [[2_000_000, 4]],
                                                            "spot_asks": [[1_000_000, 4]]}


def test_model_from_exchange_state_equals_model_from_events() -> None:
    from exchange.config import Instrument
    from exchange.tables import ExchangeState

    rng = np.random.default_rng(7)
    cmds = random_stream(rng, 400)
    cfg = BookConfig(name="T", max_price=20_000)
    inst = {"T": Instrument(cfg)}
    book = ReferenceBook(cfg)
    state = ExchangeState(inst)
    feed = ClassFeed("T")
    for k in range(len(cmds)):
        c = cmds[k:k + 1]
        if c["time"][0] > book.now:  # as the sequencer does it: time moves by clock commands only
            tick = batch(clock(int(c["time"][0])))
            ev = book.process(tick)
            state.apply("T", ev)
            feed.update(ev, book.now)
        ev = book.process(c)
        state.apply("T", ev)
        feed.update(ev, book.now)
    m = BookModel.from_state("T", book.seq, book.now, state.orders.values(), state.leases.values())
    assert m.level2() == feed.book.level2() == reference_level2(book)


def test_statistics_ticker_candles_and_index() -> None:
    book = ReferenceBook(BookConfig(name="T"))
    feed = ClassFeed("T")
    evs = book.process(batch(
        ask(T0, 1, 1, gpus=100, price=2_000_000, end=T0 + 100 * HOUR, spot_price=1_000_000),
        bid(T0 + 5, 2, 2, ON_DEMAND, gpus=2, hours=3, limit=2_000_000),   # 6 GPU-h firm at $2
        bid(T0 + 70, 3, 3, SPOT, gpus=4, hours=1, limit=1_000_000),       # 4 GPU-h spot at $1
        bid(T0 + 80, 4, 4, ON_DEMAND, gpus=1, hours=2, limit=1_500_000),  # rests: best bid
    ))
    out = dict(feed.update(evs, book.now))
    t = out["ticker"]
    assert (t["best_bid"], t["best_bid_gpus"], t["best_ask"], t["best_spot_ask"]) == (1_500_000, 1, 2_000_000,
                                                                                      1_000_000)
    assert (t["last"], t["last_kind"], t["volume_24h"], t["trades_24h"]) == (1_000_000, "spot", 10, 2)
    assert t["vwap_24h"] == (6 * 2_000_000 + 4 * 1_000_000) // 10
    assert out["index"]["value"] == 2_000_000 and out["index"]["volume_24h"] == 6  # firm trades only
    one_min = out["candles:1m"]["candles"]
    assert [(c["start"], c["open"], c["close"], c["volume"]) for c in one_min] == [
        (T0, 2_000_000, 2_000_000, 6), (T0 + 60, 1_000_000, 1_000_000, 4)]
    hour = out["candles:1h"]["candles"]
    assert [(c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"]) for c in hour] == [
        (2_000_000, 2_000_000, 1_000_000, 1_000_000, 10, 2)]
    assert [tr["kind"] for tr in out["trades"]["trades"]] == ["on_demand", "spot"]
    assert "buyer" not in out["trades"]["trades"][0]  # accounts are private
    # a day later the trades leave the window: ticker and index say so with no new trade
    out = dict(feed.update(book.process(batch(clock(T0 + 80 + DAY))), book.now))
    assert out["ticker"]["volume_24h"] == 0 and out["ticker"]["vwap_24h"] is None
    assert out["index"]["value"] is None
    assert feed.snapshot("candles:1m")["candles"][-1]["volume"] == 4  # candles stay


def test_stats_window_is_by_engine_time() -> None:
    s = MarketStats()
    for t in (0, 10, 20):
        s.add(Event(type=EV_TRADE, gpus=1, hours=1, price=1000, kind=ON_DEMAND, time=T0 + t))
    assert not s.expire(T0 + DAY - 1)  # the window is (now - 24 h, now]
    assert s.expire(T0 + DAY) and s.count == 2
    assert s.expire(T0 + DAY + 10) and s.count == 1 and s.volume == 1


def test_record_format_round_trip(tmp_path) -> None:
    from exchange.journal import Journal

    rng = np.random.default_rng(3)
    book = ReferenceBook(BookConfig(name="T", max_price=20_000))
    cmds = random_stream(rng, 300)
    d = tmp_path / "market-data"
    j = Journal.open(d, segment_bytes=4096, fsync=False)  # many segments
    sent = []
    for k in range(0, len(cmds), 7):
        ev = book.process(cmds[k:k + 7])
        blocks = [("T", book.now, ev.tobytes()), ("U", k, b"")]
        payload = encode_record(100 + k, blocks)
        jseq, back = decode_record(payload)
        assert jseq == 100 + k and back[0][0] == "T" and back[0][2].tobytes() == ev.tobytes()
        j.append([payload])
        sent.append(ev)
    j.close()
    assert len(list(d.glob("*.seg"))) > 3
    rec = load(tmp_path)
    allev = np.concatenate(sent)
    assert rec.events["T"].tobytes() == allev.tobytes()
    assert rec.blocks.dtype == BLOCK_DTYPE and rec.classes == ["T", "U"]
    trades = load(tmp_path, classes="T", types=[EV_TRADE])
    assert trades.events["T"].tobytes() == allev[allev["type"] == EV_TRADE].tobytes()
    # per-block counts after filtering still cover the events, in order
    b = trades.blocks
    assert b["count"].sum() == len(trades.events["T"])
    mid = int(allev["seq"][len(allev) // 2])
    part = load(tmp_path, classes=["T"], from_seq=mid, to_seq=mid + 10)
    assert part.events["T"]["seq"].tolist() == list(range(mid, mid + 11))


def test_cancel_of_an_ask_removes_its_levels() -> None:
    book = ReferenceBook(BookConfig(name="T"))
    feed = ClassFeed("T")
    feed.update(book.process(batch(ask(T0, 1, 1, gpus=8, price=2_000_000, end=T0 + 10 * HOUR,
                                             spot_price=1_000_000))), book.now)
    out = dict(feed.update(book.process(batch(cancel(T0 + 1, 1, 1))), book.now))
    assert out["book"]["asks"] == [[2_000_000, 0]] and out["book"]["spot_asks"] == [[1_000_000, 0]]
    assert feed.book.level2() == reference_level2(book)


def test_moments_of_cancelled_asks_do_not_pile_up() -> None:
    """Asks cancelled long before their end leave nothing behind for months (memory stays bounded)."""
    book = ReferenceBook(BookConfig(name="T"))
    feed = ClassFeed("T")
    oid = 0
    for k in range(6000):
        oid += 1
        cmds = [ask(T0 + k, oid, 1, gpus=4, price=2_000_000 + 1000 * (k % 7), end=T0 + 700 * HOUR),
                bid(T0 + k, oid + 1, 2, ON_DEMAND, gpus=1, hours=1, limit=2_000_000 + 1000 * (k % 7)),
                cancel(T0 + k, oid, 1)]
        oid += 1
        feed.update(book.process(batch(*cmds)), book.now)
    assert len(feed.book._moments) < 4096  # without compaction: ~9,600 (an end per ask, months ahead)
    feed.update(book.process(batch(clock(T0 + 6000 + 2 * HOUR))), book.now)
    assert feed.book.level2() == reference_level2(book)


def test_recent_reads_only_the_last_segments(tmp_path) -> None:
    from exchange.journal import Journal
    from feeds.recording import recent

    d = tmp_path / "market-data"
    j = Journal.open(d, segment_bytes=2048, fsync=False)
    rows = np.zeros(3, dtype=EVENT_DTYPE)
    rows["type"] = EV_TRADE
    for k in range(200):
        rows["time"] = T0 + k * 600
        rows["seq"] = [3 * k + 1, 3 * k + 2, 3 * k + 3]
        j.append([encode_record(k + 1, [("T", T0 + k * 600, rows.tobytes())])])
    j.close()
    since = T0 + 150 * 600
    got = recent(tmp_path, since, types=[EV_TRADE], slack=0)["T"]
    assert got["seq"].tolist() == list(range(3 * 150 + 1, 3 * 200 + 1))
    assert (got["time"] >= since).all()


@pytest.mark.parametrize("events_per_record", [1, 200])
def test_a_damaged_record_in_an_earlier_segment_is_named(tmp_path, events_per_record: int) -> None:
    """Both CRC paths (compiled loop for small records, zlib for large ones) catch damage in any
    segment; only a bad *last* record of the last segment is a torn tail."""
    import zlib

    from exchange.journal import Journal
    from feeds.recording import _CRC, RecordingError, _crc32

    data = np.frombuffer(np.random.default_rng(1).bytes(5000), dtype=np.uint8)
    for a, b in ((0, 5000), (3, 1003), (5, 12), (7, 7)):
        assert _crc32(data, a, b, _CRC) == zlib.crc32(data[a:b])
    d = tmp_path / "market-data"
    j = Journal.open(d, segment_bytes=20_000, fsync=False)
    rows = np.zeros(events_per_record, dtype=EVENT_DTYPE)
    records = 300 if events_per_record == 1 else 60
    for k in range(records):
        rows["seq"] = np.arange(k * events_per_record + 1, (k + 1) * events_per_record + 1)
        j.append([encode_record(k + 1, [("T", T0 + k, rows.tobytes())])])
    j.close()
    segs = sorted(d.glob("*.seg"))
    assert len(segs) >= 3
    assert len(load(tmp_path)) == records * events_per_record
    raw = bytearray(segs[0].read_bytes())
    raw[16 + 16 + 48 + 5] ^= 0xFF  # inside the first record's first event
    segs[0].write_bytes(bytes(raw))
    with pytest.raises(RecordingError, match=f"{segs[0].name}: record seq 1 fails its CRC at byte offset 0"):
        load(tmp_path)


def test_statistics_by_kind() -> None:
    """Candles, last price, VWAP and the index per kind; the class-wide ones keep mixing kinds
    (candles, ticker) or firm trades (index) as documented."""
    feed = ClassFeed("T")

    def trade(t: int, kind: int, price: int, gpus: int, hours: int) -> Event:
        return Event(type=EV_TRADE, seq=t - T0 + 1, time=t, trade_id=t - T0 + 1, kind=kind, price=price, gpus=gpus,
                     hours=hours, start=t, end=t + hours * HOUR, oid=-1, oid2=-1)

    rows = [trade(T0 + 1, ON_DEMAND, 2_000_000, 2, 3),   # 6 GPU-h
            trade(T0 + 2, SPOT, 1_000_000, 4, 1),        # 4 GPU-h
            trade(T0 + 3, RESERVED, 1_800_000, 1, 10),   # 10 GPU-h
            trade(T0 + 4, SPOT, 1_200_000, 1, 1)]        # 1 GPU-h
    out = dict(feed.update(rows, T0 + 4))
    k = out["ticker"]["kinds"]
    assert k["spot"] == {"last": 1_200_000, "last_time": T0 + 4, "volume_24h": 5, "notional_24h": 5_200_000,
                         "vwap_24h": 1_040_000, "trades_24h": 2}
    assert k["on_demand"]["vwap_24h"] == 2_000_000 and k["reserved"]["vwap_24h"] == 1_800_000
    assert out["ticker"]["last"] == 1_200_000 and out["ticker"]["trades_24h"] == 4  # class-wide: every kind
    assert out["index"]["value"] == (12_000_000 + 18_000_000) // 16 and out["index"]["method"] == "vwap_24h_firm"
    assert out["index:spot"]["value"] == 1_040_000 and out["index:spot"]["kind"] == "spot"
    assert out["index:spot"]["method"] == "vwap_24h_spot"
    assert out["index:reserved"]["volume_24h"] == 10
    spot = out["candles:1m:spot"]
    assert spot["kind"] == "spot" and spot["interval"] == "1m"
    assert [(c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"]) for c in spot["candles"]] == [
        (1_000_000, 1_200_000, 1_000_000, 1_200_000, 5, 2)]
    assert out["candles:1m"]["candles"][0]["trades"] == 4
    assert feed.snapshot("candles:1h:reserved")["candles"][0]["notional"] == 18_000_000
    assert feed.snapshot("index:on_demand")["value"] == 2_000_000
    # a new on-demand trade changes only the streams it belongs to
    out = dict(feed.update([trade(T0 + 5, ON_DEMAND, 2_200_000, 1, 1)], T0 + 5))
    assert "candles:1m:on_demand" in out and "candles:1m:spot" not in out and "index:spot" not in out
    assert feed.u["candles:1m:spot"] == 1 and feed.u["candles:1m:on_demand"] == 2
    # a day later every kind's window is empty; the candles stay
    out = dict(feed.update(None, T0 + 5 + DAY))
    assert all(v["volume_24h"] == 0 and v["vwap_24h"] is None for v in out["ticker"]["kinds"].values())
    assert out["index:spot"]["value"] is None and out["index:reserved"]["value"] is None
    assert feed.snapshot("candles:1m:spot")["candles"][0]["volume"] == 5
    assert feed.snapshot("ticker")["kinds"]["spot"]["last"] == 1_200_000  # the last trade stays


def test_streams_nobody_wants_are_counted_not_built() -> None:
    """A stream without subscribers counts its updates (u) exactly as one with subscribers, so a
    subscriber that joins later gets a snapshot with the right u and the next update follows it."""
    full, lean = ClassFeed("T"), ClassFeed("T")
    book = ReferenceBook(BookConfig(name="T", max_price=20_000))
    cmds = random_stream(np.random.default_rng(7), 600)
    for k in range(0, len(cmds), 20):
        ev = book.process(cmds[k:k + 20])
        built = dict(full.update(ev, book.now))
        kept = dict(lean.update(ev, book.now, wanted=lambda s: s in ("book", "trades")))
        assert set(kept) <= {"book", "trades", "ticker"} and set(built) >= set(kept)
        assert lean.u == full.u
    assert sum(full.u[s] for s in full.u if s.count(":") == 2) > 0  # per-kind candles were published
    for s in full.u:
        assert lean.snapshot(s) == full.snapshot(s)


@pytest.mark.parametrize("seed", range(3))
def test_resting_bids_and_live_leases_cost_the_collector_nothing(seed: int) -> None:
    """The feed models keep a flat tuple of ints per resting bid and per live lease, replaced when
    it changes: the collector stops tracking such a tuple at the first collection that sees it, so
    a book with many of them adds nothing to later scans (docs/perf/order-path.md §17), where a list
    per bid and per lease stayed tracked for ever, and a tuple holding a key tuple could reach the
    older generations still tracked."""
    rng = np.random.default_rng(seed)
    cmds = random_stream(rng, 2000)
    book = ReferenceBook(BookConfig(name="T", max_price=20_000))
    feed = ClassFeed("T")
    ladders = BidLadders()
    seen = {"bids": 0, "leases": 0, "ladders": 0}
    for k, i in enumerate(range(0, len(cmds), 7)):
        events = book.process(cmds[i:i + 7])
        feed.update(events, book.now)
        ladders.apply(T.events(events) if isinstance(events, np.ndarray) else events)
        if k % 60 != 59:
            continue
        gc.collect(0)  # a young collection: what survived earlier ones was seen by them
        kept = {"bids": list(feed.book.bids.values()), "ladders": list(ladders.bids.values()),
                "leases": [x for a in feed.book.asks.values() for x in a.leases.values()]}
        for what, values in kept.items():
            assert not [v for v in values if gc.is_tracked(v)], what
            seen[what] += len(values)
    assert min(seen.values()) > 0, seen  # each kind was there to check
