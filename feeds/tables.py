"""The recording as tables: the columns `gpux replay --format csv|parquet` writes, and the
anonymization of account and order ids (`--anonymize`), docs/feeds.md "For analysts".

Both formats come from the same rows, so a CSV file and a Parquet file of the same replay hold
the same table: enumerations by name (never their numbers), every field kept, an empty CSV
field where the Parquet column is null.

* events: ``class``, ``type``, then every EVENT_DTYPE field (orderbook/types.py) in record
  order, numbers as recorded; the enumerated ones (``reason``, ``kind``, ``side``, ``tif``,
  ``maker``, ``cmd``) by the names of docs/formats.md, and empty where the field means nothing
  for that event (an ask has no ``kind``) — unless the record has a number there anyway, which
  is then written as it is, so that nothing is hidden.
* a channel: one row per level (``book``), trade (``trades``), candle (``candles``) or message
  (``ticker``, ``index``), with the message's head (``class``, ``seq``, ``time``, ``u``).

pyarrow is imported only when Parquet is written (the ``analysis`` extra of pyproject.toml).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np

from orderbook.codec import event_enums
from orderbook.types import EV_NAMES, EVENT_DTYPE, SIDE_BID, join

ENUM_FIELDS = ("reason", "kind", "side", "tif", "maker", "cmd")
EVENT_COLUMNS = ["class", "type"] + [n for n in EVENT_DTYPE.names if n != "type"]

#: columns of each channel's table, in order
CHANNEL_COLUMNS = {
    "book": ["class", "seq", "time", "u", "action", "checksum", "side", "price", "gpus"],
    "trades": ["class", "seq", "time", "u", "trade_seq", "trade_time", "trade_id", "kind", "gpus", "hours", "price",
               "start", "end", "maker", "resale_of"],
    "ticker": ["class", "seq", "time", "u", "best_bid", "best_bid_gpus", "best_ask", "best_ask_gpus", "best_spot_bid",
               "best_spot_bid_gpus", "best_spot_ask", "best_spot_ask_gpus", "last", "last_time", "last_kind",
               "volume_24h", "notional_24h", "vwap_24h", "trades_24h"],
    "candles": ["class", "interval", "seq", "time", "u", "start", "open", "high", "low", "close", "volume", "notional",
                "trades"],
    "index": ["class", "seq", "time", "u", "value", "volume_24h", "trades_24h"],
}
STRING_COLUMNS = {"class", "type", "interval", "action", "side", "kind", "maker", "last_kind", *ENUM_FIELDS}

ANONYMIZE_KEY_ENV = "GPUX_ANONYMIZE_KEY"
ID_MODULUS = 2**53 - 1  # anonymized ids are 1 .. 2**53 - 1: exact in JSON, JavaScript and float64


# ---------------------------------------------------------------------- events
def _names(table: dict[int, str], codes: np.ndarray) -> np.ndarray:
    """Codes as names (object array); 0 without a name (an optional field left empty) is None."""
    uniq, inv = np.unique(codes, return_inverse=True)
    names = np.array([table.get(int(c)) or (str(int(c)) if c else None) for c in uniq.tolist()] + [None],
                     dtype=object)
    return names[inv] if len(uniq) else np.empty(len(codes), dtype=object)


def event_columns(parts: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The events table of some (class, EVENT_DTYPE array) parts, end to end, as columns."""
    parts = list(parts)
    ev = join([p for _, p in parts], EVENT_DTYPE) if parts else np.empty(0, dtype=EVENT_DTYPE)
    cols: dict[str, np.ndarray] = {
        "class": np.repeat(np.array([n for n, _ in parts], dtype=object), [len(p) for _, p in parts]),
        "type": _names(EV_NAMES, ev["type"]),
    }
    for name in EVENT_COLUMNS[2:]:
        if name not in ENUM_FIELDS:
            cols[name] = ev[name]
        else:
            cols[name] = np.full(len(ev), None, dtype=object)
    if len(ev):
        key = ev["type"].astype(np.int64) * 2 + (ev["side"] == SIDE_BID)
        for k in np.unique(key).tolist():
            mask = key == k
            for field, table in event_enums(k // 2, bool(k % 2)).items():
                cols[field][mask] = _names(table, ev[field][mask])
        for field in ENUM_FIELDS:  # a field that means nothing for its event but is set: its number, shown
            odd = np.flatnonzero(np.equal(cols[field], None) & (ev[field] != 0))
            if len(odd):
                cols[field][odd] = [str(v) for v in ev[field][odd].tolist()]
    return {name: cols[name] for name in EVENT_COLUMNS}


# ---------------------------------------------------------------------- channels
def channel_rows(msg: dict[str, Any]) -> Iterator[list[Any]]:
    """The rows of one feed message (`feeds.replay.messages`), in the order of CHANNEL_COLUMNS;
    None where the message has null."""
    ch = msg["type"]
    head = [msg["class"], msg["seq"], msg["time"], msg["u"]]
    if ch == "book":
        for side in ("bids", "spot_bids", "asks", "spot_asks"):
            for price, gpus in msg.get(side, ()):
                yield head + [msg["action"], msg.get("checksum"), side, price, gpus]
    elif ch == "trades":
        for t in msg["trades"]:
            yield head + [t["seq"], t["time"], t["trade_id"], t["kind"], t["gpus"], t["hours"], t["price"],
                          t["start"], t["end"], t["maker"], t.get("resale_of", 0)]
    elif ch == "candles":
        for c in msg["candles"]:
            yield [msg["class"], msg["interval"]] + head[1:] + [c[k] for k in CHANNEL_COLUMNS["candles"][5:]]
    else:
        yield head + [msg.get(k) for k in CHANNEL_COLUMNS[ch][4:]]


def rows_to_columns(rows: list[list[Any]], columns: list[str]) -> dict[str, list[Any]]:
    return {name: [r[i] for r in rows] for i, name in enumerate(columns)}


# ---------------------------------------------------------------------- Parquet
class ParquetOut:
    """A Parquet file written in row groups (pyarrow), from column dicts of a fixed set of columns:
    strings for STRING_COLUMNS, int64 (nullable) for the rest."""

    def __init__(self, out: BinaryIO, columns: list[str]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("--format parquet needs pyarrow: pip install 'gpux[analysis]'") from None
        self.pa = pa
        self.schema = pa.schema([(c, pa.string() if c in STRING_COLUMNS else pa.int64()) for c in columns])
        self.writer = pq.ParquetWriter(out, self.schema, compression="zstd")
        self.rows = 0

    def write(self, cols: dict[str, Any]) -> None:
        pa = self.pa
        arrays = [pa.array(cols[f.name], type=f.type) for f in self.schema]
        n = len(arrays[0]) if arrays else 0
        if n:
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
            self.rows += n

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------- anonymization
class Anonymizer:
    """Account and order ids replaced by keyed pseudonyms, so a recording can be shared.

    An id ``i`` of kind ``k`` (``"account"`` or ``"order"``) becomes
    ``int.from_bytes(HMAC-SHA256(key, f"{k}:{i}")[:8], "big") % (2**53 - 1) + 1``: the same id
    gives the same pseudonym wherever it appears (an ask's ``oid`` and a trade's ``oid2``; a
    provider's ``account2`` and its ``account`` when it buys), so joins still work; without the
    key the mapping cannot be computed or reversed.  0 ("none") stays 0.  The key is
    ``GPUX_ANONYMIZE_KEY`` (UTF-8) if set, so that runs with the same key agree; otherwise 32
    random bytes drawn for the run and forgotten.  Two ids of a kind that met the same pseudonym
    would raise (odds about n²/2⁵⁴ for n ids)."""

    FIELDS = {"oid": "order", "oid2": "order", "account": "account", "account2": "account"}

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            env = os.environ.get(ANONYMIZE_KEY_ENV)
            key = env.encode() if env else secrets.token_bytes(32)
        self.key = key
        self.seen: dict[str, dict[int, int]] = {"account": {}, "order": {}}
        self.taken: dict[str, dict[int, int]] = {"account": {}, "order": {}}

    def pseudonym(self, kind: str, i: int) -> int:
        if i == 0:
            return 0
        seen = self.seen[kind]
        p = seen.get(i)
        if p is None:
            digest = hmac.new(self.key, f"{kind}:{i}".encode(), hashlib.sha256).digest()
            p = int.from_bytes(digest[:8], "big") % ID_MODULUS + 1
            other = self.taken[kind].setdefault(p, i)
            if other != i:
                raise ValueError(f"anonymization: {kind} ids {other} and {i} met the same pseudonym; use another key")
            seen[i] = p
        return p

    def ids(self, kind: str, values: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(values, return_inverse=True)
        mapped = np.array([self.pseudonym(kind, int(v)) for v in uniq.tolist()], dtype=values.dtype)
        return mapped[inv].reshape(values.shape) if len(uniq) else values.copy()

    def events(self, ev: np.ndarray) -> np.ndarray:
        """The events with their account and order ids replaced (a copy)."""
        out = ev.copy()
        for field, kind in self.FIELDS.items():
            out[field] = self.ids(kind, ev[field])
        return out
