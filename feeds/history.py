"""Market-data history over REST (docs/feeds.md, "History over REST"): ``GET /v1/trades`` and
``GET /v1/candles``, served from the recording (`feeds.recording`), plus the trades the live feed
holds that the recording lacks (none while the recorder works: a round is recorded in the same
step that publishes it).

    h = TradeHistory(data_dir)
    rows, more = h.page("H100", kind=None, t_from=None, t_to=None, after=0, limit=100)
    rows = h.trades("H100", t_from, t_to)              # every trade in a time range
    candles(rows, 60)                                  # the 1-minute candles of those trades

**Cursor.** Trades of a class are ordered by their event ``seq`` (one sequence per book, R15),
which never changes and only grows: a page holds the first ``limit`` matching trades with
``seq`` greater than the cursor, and the next cursor is the last one's ``seq``.  New trades get
larger seqs, so pages join without a gap or a repeat however many arrive while a client walks.

The recording is read segment by segment: a sealed segment (one with a newer one after it) is
read once and its trades are kept in a small cache (`KEEP_SEGMENTS`), with a per-class summary
(first and last trade seq and time) kept for good, so a page skips the segments it does not
need without reading them; the open segment is read incrementally (only records appended since
the last read, each CRC-checked; a record the recorder is still writing ends the read).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from exchange.journal import segments
from feeds.model import candle_json, fold_candle
from feeds.recording import EVENT_SIZE, RecordingError, _crc_errors, _gather, recording_dir, scan_segment
from orderbook.types import EV_TRADE, EVENT_DTYPE, Event, events, join

KEEP_SEGMENTS = 8  # sealed segments whose trades are kept in memory


class _Seg:
    """The trades of one segment, per class, and their summary."""

    __slots__ = ("path", "first", "records", "trades", "summary", "sealed")

    def __init__(self, path: Path, first: int) -> None:
        self.path = path
        self.first = first
        self.records = 0  # records read so far
        self.trades: dict[str, list[np.ndarray]] | None = {}
        # class -> [first seq, last seq, first time, last time] of its trades here
        self.summary: dict[str, list[int]] = {}
        self.sealed = False

    def add(self, name: str, tr: np.ndarray) -> None:
        if not len(tr):
            return
        assert self.trades is not None
        self.trades.setdefault(name, []).append(tr)
        s = self.summary.get(name)
        seq, t = tr["seq"], tr["time"]
        if s is None:
            self.summary[name] = [int(seq[0]), int(seq[-1]), int(t[0]), int(t[-1])]
        else:
            s[1], s[3] = int(seq[-1]), int(t[-1])


class TradeHistory:
    """Every trade of a recording, by class, read lazily from its segments (see the module)."""

    def __init__(self, path: str | Path, keep: int = KEEP_SEGMENTS) -> None:
        self.dir = recording_dir(path)
        self.keep = keep
        self._segs: dict[Path, _Seg] = {}
        self._cached: OrderedDict[Path, None] = OrderedDict()  # sealed segments holding their trades
        self._classes: list[str] = []  # class ids of the scans (shared by every segment)
        self._lock = threading.Lock()  # pages are read in worker threads

    # ------------------------------------------------------------------ reading segments
    def _read(self, seg: _Seg, last: bool) -> None:
        """Read what the segment holds beyond ``seg.records`` (all of it if its trades were dropped)."""
        if seg.trades is None:  # dropped from the cache: read it again from the start
            seg.trades, seg.records = {}, 0
        s = scan_segment(seg.path, seg.first, last, check_crc=False, classes=self._classes)
        recs = s.recs
        n = len(recs)
        if n > seg.records:
            bad = _crc_errors(s.buf, recs[seg.records:])
            if bad >= 0:
                if not last:
                    raise RecordingError(f"{seg.path}: record seq {int(recs[seg.records + bad, 0])} fails its CRC")
                n = seg.records + bad  # in the open segment: a record the recorder is still writing
        if n > seg.records:
            b = s.blocks
            b = b[(b[:, 0] >= seg.records) & (b[:, 0] < n) & (b[:, 3] > 0)]
            words = s.buf[:len(s.buf) // 4 * 4].view(np.uint32)
            for cid in np.unique(b[:, 5]).tolist():
                sel = b[b[:, 5] == cid]
                out = np.empty(int(sel[:, 3].sum()) * EVENT_SIZE // 4, dtype=np.uint32)
                _gather(words, sel[:, 4] // 4, sel[:, 3].copy(), EVENT_SIZE // 4, out, 0)
                ev = out.view(EVENT_DTYPE)
                seg.add(self._classes[cid], ev[ev["type"] == EV_TRADE])
            seg.records = n
        del s
        if not last:
            seg.sealed = True

    def _segments(self) -> list[_Seg]:
        """The recording's segments, each read up to date (sealed ones only when first seen)."""
        found = segments(self.dir) if self.dir.is_dir() else []
        out = []
        for i, (first, path) in enumerate(found):
            seg = self._segs.get(path)
            if seg is None:
                seg = self._segs[path] = _Seg(path, first)
            last = i == len(found) - 1
            if not seg.sealed:
                self._read(seg, last)
                if seg.sealed:
                    self._keep(seg)
            out.append(seg)
        return out

    def _keep(self, seg: _Seg) -> None:
        self._cached[seg.path] = None
        self._cached.move_to_end(seg.path)
        while len(self._cached) > self.keep:
            old, _ = self._cached.popitem(last=False)
            s = self._segs.get(old)
            if s is not None:
                s.trades = None  # its summary stays: pages skip it without reading it

    def _trades_of(self, seg: _Seg, name: str) -> np.ndarray:
        if seg.trades is None:
            self._read(seg, False)
            seg.sealed = True
        if seg.sealed:
            self._keep(seg)
        assert seg.trades is not None
        parts = seg.trades.get(name)
        if not parts:
            return np.empty(0, dtype=EVENT_DTYPE)
        if len(parts) > 1:
            parts[:] = [join(parts, EVENT_DTYPE)]
        return parts[0]

    # ------------------------------------------------------------------ queries
    def page(self, name: str, kind: int | None, t_from: int | None, t_to: int | None, after: int,
             limit: int) -> tuple[np.ndarray, bool]:
        """The first ``limit`` trades of class ``name`` with seq > ``after``, of ``kind`` (None: all),
        with engine time in [t_from, t_to] (None: open); and whether more follow now."""
        got: list[np.ndarray] = []
        n = 0
        with self._lock:
            for seg in self._segments():
                s = seg.summary.get(name)
                if s is None or s[1] <= after or (t_from is not None and s[3] < t_from):
                    continue
                if t_to is not None and s[2] > t_to:
                    break
                tr = self._trades_of(seg, name)
                mask = tr["seq"] > after
                if t_from is not None:
                    mask &= tr["time"] >= t_from
                if t_to is not None:
                    mask &= tr["time"] <= t_to
                if kind is not None:
                    mask &= tr["kind"] == kind
                sel = tr[mask]
                if len(sel):
                    got.append(sel[:limit + 1 - n])
                    n += len(got[-1])
                    if n > limit:
                        break
        rows = join(got, EVENT_DTYPE) if got else np.empty(0, dtype=EVENT_DTYPE)
        return rows[:limit], len(rows) > limit

    def trades(self, name: str, t_from: int | None, t_to: int | None) -> np.ndarray:
        """Every trade of class ``name`` with engine time in [t_from, t_to] (None: open)."""
        got: list[np.ndarray] = []
        with self._lock:
            for seg in self._segments():
                s = seg.summary.get(name)
                if s is None or (t_from is not None and s[3] < t_from):
                    continue
                if t_to is not None and s[2] > t_to:
                    break
                tr = self._trades_of(seg, name)
                mask = np.ones(len(tr), dtype=bool)
                if t_from is not None:
                    mask &= tr["time"] >= t_from
                if t_to is not None:
                    mask &= tr["time"] <= t_to
                got.append(tr[mask])
        return join(got, EVENT_DTYPE) if got else np.empty(0, dtype=EVENT_DTYPE)


def merge_live(rows: np.ndarray, live: Iterable[Event], kind: int | None, t_from: int | None, t_to: int | None,
               after: int, limit: int | None) -> list[Event]:
    """``rows`` (from the recording, seq order) as Events, followed by the live trades the
    recording does not hold yet (seq beyond its last), filtered alike; at most ``limit`` + 1."""
    out = events(rows)
    last = max(after, out[-1].seq if out else 0)
    for ev in live:
        if limit is not None and len(out) > limit:
            break
        if ev.seq <= last or (kind is not None and ev.kind != kind):
            continue
        if (t_from is not None and ev.time < t_from) or (t_to is not None and ev.time > t_to):
            continue
        out.append(ev)
    return out


def candles(rows: Iterable[Event], width: int) -> list[dict[str, Any]]:
    """OHLCV candles of ``width`` seconds over trades in seq order, by the trades' engine time:
    the same arithmetic as the live candles channel (`feeds.model.MarketStats`)."""
    out: list[list[int]] = []
    for ev in rows:
        fold_candle(out, ev.time - ev.time % width, ev.price, ev.gpus * ev.hours)
    return [candle_json(c) for c in out]
