"""The provider's inventory file: the asks the agent keeps posted, so that a provider joins by
writing a few lines of TOML.

    [[asks]]
    class = "H100"
    gpus = 8
    price_usd = 2.10          # firm, USD per GPU-hour (read exactly: no float ever)
    spot_price_usd = 1.20     # optional: also offered to spot bids
    hours = 720               # the window is [now, now + 720 h); posted again when it ends

    [[asks]]
    name = "a100-june"        # optional: names the entry (else a digest of its fields)
    class = "A100"
    gpus = 4
    price = 1500000           # or µ$ per GPU-hour directly
    start = 2026-06-01T00:00:00Z   # or UTC seconds
    end = 2026-07-01T00:00:00Z
    min_hours = 4

Fields: ``class``, ``gpus``, ``price_usd`` or ``price`` (µ$), ``spot_price_usd`` or
``spot_price`` (optional), either ``hours`` or ``end`` (with optional ``start``), ``min_hours``
(default 1), ``post_only`` (default false), ``name``, ``repost`` (``hours`` entries: post again
once the window has ended; default true).

Each posted ask carries ``client_order_id = "inv:" + entry id + ":" + end``.  Before posting,
the agent lists its open asks (``GET /v1/asks``) and skips an entry that has one, so restarts do
not duplicate; the exchange's client-order-id idempotency covers the rest (an entry with a fixed
window is posted at most once, ever).  For ``hours`` entries the end of the last posting is kept
in ``STATE_DIR/inventory.json``: an ask that was cancelled or sold before its end is not posted
again before that end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from client.api import ClientError

log = logging.getLogger("gpux.agent.inventory")

HOUR = 3600
MICRO = 1_000_000
COID_PREFIX = "inv:"


class InventoryError(ValueError):
    """The inventory file is wrong; the message names the entry and the field."""


@dataclass(frozen=True)
class AskEntry:
    id: str
    gpu_class: str
    gpus: int
    price: int  # µ$ per GPU-hour
    spot_price: int = 0
    hours: int = 0  # > 0: a window of this many hours from when it is posted
    start: int = 0
    end: int = 0
    min_hours: int = 1
    post_only: bool = False
    repost: bool = True

    def window(self, now: int) -> tuple[int, int]:
        """(start, end) of a posting made now."""
        if self.hours:
            return 0, now + self.hours * HOUR
        return self.start, self.end

    def coid(self, end: int) -> str:
        return f"{COID_PREFIX}{self.id}:{end}"

    def body(self, now: int) -> dict[str, Any]:
        """The ``POST /v1/asks`` body of a posting made now."""
        start, end = self.window(now)
        body: dict[str, Any] = {"class": self.gpu_class, "gpus": self.gpus, "price": self.price, "end": end,
                                "client_order_id": self.coid(end)}
        for k, v, default in (("spot_price", self.spot_price, 0), ("start", start, 0),
                              ("min_hours", self.min_hours, 1), ("post_only", self.post_only, False)):
            if v != default:
                body[k] = v
        return body


def usd_to_micro(value: Any, where: str) -> int:
    """USD (a TOML number read as Decimal, or a string like "2.10") → integer µ$, exactly."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InventoryError(f"{where}: a number of USD, like 2.10")
    try:
        d = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise InventoryError(f"{where}: {value!r} is not a number of USD") from None
    micro = d * MICRO
    if not d.is_finite() or micro != micro.to_integral_value() or d <= 0:
        raise InventoryError(f"{where}: {value} is not a positive amount with at most 6 decimals")
    return int(micro)


def _time(value: Any, where: str) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InventoryError(f"{where}: give a time zone (…Z)")
        return int(value.timestamp()) if value.microsecond == 0 else int(value.replace(microsecond=0).timestamp())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InventoryError(f"{where}: UTC seconds or a TOML date-time like 2026-06-01T00:00:00Z")


def _int(entry: dict[str, Any], key: str, where: str, default: int | None = None, low: int = 1) -> int:
    v = entry.get(key, default)
    if v is None:
        raise InventoryError(f"{where}: {key} is missing")
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InventoryError(f"{where}: {key} must be an integer ≥ {low}")
    return v


def _price(entry: dict[str, Any], name: str, where: str, required: bool) -> int:
    usd, micro = entry.get(f"{name}_usd"), entry.get(name)
    if usd is not None and micro is not None:
        raise InventoryError(f"{where}: give {name}_usd or {name}, not both")
    if usd is not None:
        return usd_to_micro(usd, f"{where}: {name}_usd")
    if micro is not None:
        return _int(entry, name, where)
    if required:
        raise InventoryError(f"{where}: {name}_usd (or {name} in µ$) is missing")
    return 0


KNOWN = {"name", "class", "gpus", "price_usd", "price", "spot_price_usd", "spot_price", "hours", "start", "end",
         "min_hours", "post_only", "repost"}


def parse_entry(entry: dict[str, Any], index: int) -> AskEntry:
    where = f"asks[{index}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else "")
    unknown = sorted(set(entry) - KNOWN)
    if unknown:
        raise InventoryError(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(KNOWN))}")
    cls = entry.get("class")
    if not isinstance(cls, str) or not cls:
        raise InventoryError(f"{where}: class is missing")
    gpus = _int(entry, "gpus", where)
    price = _price(entry, "price", where, True)
    spot = _price(entry, "spot_price", where, False)
    hours = _int(entry, "hours", where, 0, low=0)
    start = _time(entry["start"], f"{where}: start") if "start" in entry else 0
    end = _time(entry["end"], f"{where}: end") if "end" in entry else 0
    if bool(hours) == bool(end):
        raise InventoryError(f"{where}: give either hours (from when it is posted) or end (with an optional start)")
    if hours and start:
        raise InventoryError(f"{where}: start goes with end, not with hours")
    if end and end <= start:
        raise InventoryError(f"{where}: end must be after start")
    for flag in ("post_only", "repost"):
        if flag in entry and not isinstance(entry[flag], bool):
            raise InventoryError(f"{where}: {flag} must be true or false")
    fields = dict(gpu_class=cls, gpus=gpus, price=price, spot_price=spot, hours=hours, start=start, end=end,
                  min_hours=_int(entry, "min_hours", where, 1), post_only=entry.get("post_only", False),
                  repost=entry.get("repost", True))
    name = entry.get("name")
    if name is not None:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,32}", name):
            raise InventoryError(f"{where}: name must be 1-32 of A-Z a-z 0-9 _ . -")
        eid = name
    else:
        eid = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return AskEntry(id=eid, **fields)


def load_inventory(path: Path | str) -> list[AskEntry]:
    """The entries of an inventory file; InventoryError says what is wrong and where."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f, parse_float=Decimal)
    except OSError as e:
        raise InventoryError(f"cannot read the inventory {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"{path}: {e}") from None
    unknown = sorted(set(doc) - {"asks"})
    if unknown:
        raise InventoryError(f"{path}: unknown table {unknown[0]!r} (the inventory has [[asks]] entries)")
    asks = doc.get("asks", [])
    if not isinstance(asks, list):
        raise InventoryError(f"{path}: asks must be [[asks]] tables")
    entries = [parse_entry(e, i) for i, e in enumerate(asks)]
    ids = [e.id for e in entries]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise InventoryError(f"{path}: two entries are the same ({dup}); give them different names")
    return entries


class InventoryPoster:
    """Keeps the inventory's asks posted: ``await poster.sync(client, now)`` at start-up and then
    periodically.  ``client`` is an `client.api.Client` of the provider."""

    def __init__(self, entries: list[AskEntry], state_file: Path | None = None) -> None:
        self.entries = entries
        self.state_file = state_file
        self.posted: dict[str, int] = {}  # entry id -> end of its last posting
        if state_file is not None and state_file.exists():
            try:
                self.posted = {str(k): int(v) for k, v in json.loads(state_file.read_text()).items()}
            except (ValueError, AttributeError) as e:
                log.warning("ignoring %s: %s", state_file, e)

    async def sync(self, client: Any, now: int) -> list[dict[str, Any]]:
        """Post the entries that have no open ask; returns the answers of the asks posted."""
        open_coids = {a.get("client_order_id") or "" for a in await client.asks()}
        answers = []
        for e in self.entries:
            if any(c.startswith(f"{COID_PREFIX}{e.id}:") for c in open_coids):
                continue
            _, end = e.window(now)
            if e.hours:
                last = self.posted.get(e.id, 0)
                if last > now or (last and not e.repost):
                    continue  # cancelled or sold out before its end; or not to be posted again
            elif end <= now:
                continue
            try:
                ans = await client.request("POST", "/v1/asks", e.body(now))
            except ClientError as err:  # this entry is refused (e.g. off tick): the others go on
                log.warning("inventory entry %s refused: %s", e.id, err)
                continue
            log.info("posted ask %s for inventory entry %s: %s GPUs of %s until %s", ans.get("oid"), e.id, e.gpus,
                     e.gpu_class, end)
            answers.append(ans)
            if e.hours:
                self.posted[e.id] = end
                self._save()
        return answers

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the agent's only, whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.posted, sort_keys=True))
        tmp.replace(self.state_file)
