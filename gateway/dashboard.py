"""The web dashboard (docs/demo.md): a static page at ``/`` with its assets under ``/static/``,
and one small public REST endpoint the page polls for what the market-data feeds do not carry.

    dashboard = Dashboard(engine, bus, public_rate)     # public_rate(request): the gateway's limit per IP
    dashboard.add_routes(app.router)

The page itself draws depth, trade tape, candles, ticker and the price index from the public
feeds (``/v1/feeds``, docs/feeds.md).  Capacity over the coming days and utilisation are not
market data, so they come from

    GET /v1/dashboard/{class}?hours=72

computed from the exchange state (open asks and the leases on them, kept from the books' events):

* ``calendar``: per hour slot from the current hour on (``start``, ``step`` 3600, ``hours``
  slots; the first slot is sampled at engine time *now*, the others at their start):
  ``free`` — GPUs a firm buyer could still take, summed over the open asks whose window holds the
  sample time (``gpus − firm leases``, R9), ``spot_free`` — the same for a spot buyer
  (``gpus − firm − spot``, asks that offer spot), ``capacity`` — providers' GPUs in the market
  then (open asks' GPUs, plus the GPUs still leased on asks that were cancelled), ``used`` —
  GPUs of those leased then;
* ``utilisation``: the first slot's figures (now) and ``ratio = used / capacity``;
* ``leases``: the leases not yet ended, by kind and status (running, scheduled), their GPUs;
* ``providers``: per provider account, capacity and use now.

Resale asks (R16) add to ``free`` (what is for sale) but not to ``capacity`` or ``used``: their
GPUs are the hardware of a lease on a provider's ask, counted there.  Answers are cached for
``CACHE_S`` per class and query, so any number of open pages costs one computation a second.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from exchange.bus import Bus
from exchange.clock import WALL, Clock
from exchange.engine import Engine
from exchange.errors import ApiError
from exchange.records import lease_ref
from orderbook.types import EV_TRADE, HOUR

STATIC = Path(__file__).resolve().parent / "static"
CACHE_S = 1.0
MAX_HOURS = 24 * 14
DEFAULT_HOURS = 72


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


class Dashboard:
    """The page's routes and the live-lease index the capacity endpoint reads."""

    def __init__(self, engine: Engine, bus: Bus, public_rate: Callable[[web.Request], None],
                 clock: Clock = WALL) -> None:
        self.engine = engine
        self.public_rate = public_rate
        self.clock = clock
        # leases not known to have ended, per class (refs into exchange.engine.state.leases)
        self.live: dict[str, set[str]] = {}
        self._ends: dict[str, list[tuple[int, str]]] = {}  # per class: a heap of (end, ref) of live leases
        self._cache: dict[tuple[str, int], tuple[float, dict[str, Any]]] = {}
        eng = engine
        for ref, lease in eng.state.leases.items():
            if lease.end > eng.book_time(lease.book):
                self.live.setdefault(lease.book, set()).add(ref)
                self._ends.setdefault(lease.book, []).append((lease.end, ref))
        for heap in self._ends.values():
            heapq.heapify(heap)
        bus.subscribe(self._on_batch)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/", self.index)
        r.add_get("/index.html", self.index)
        r.add_get("/static/{name}", self.static)
        r.add_get("/v1/dashboard/{cls}", self.capacity)

    # ------------------------------------------------------------------ the bus
    def _on_batch(self, batch: Any) -> None:
        eng = self.engine
        for name, ev in batch.events.items():
            trades = ev[ev["type"] == EV_TRADE] if len(ev) else ev
            if len(trades):
                live = self.live.setdefault(name, set())
                ends = self._ends.setdefault(name, [])
                for tid, end in zip(trades["trade_id"].tolist(), trades["end"].tolist(), strict=True):
                    ref = lease_ref(name, tid)
                    live.add(ref)
                    heapq.heappush(ends, (end, ref))
            self._prune(name, eng.book_time(name))

    def _prune(self, name: str, now: int) -> None:
        """Drop leases whose end has passed: a heap by original end, so each lease costs O(log n)
        once (a lease's end only moves earlier — preemption, release — so it has ended by then)."""
        ends = self._ends.get(name)
        if not ends:
            return
        live = self.live.get(name, set())
        while ends and ends[0][0] <= now:
            live.discard(heapq.heappop(ends)[1])

    # ------------------------------------------------------------------ static files
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return _json({"error": {"code": "NOT_FOUND", "message": f"no such file: /static/{name}"}}, 404)
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ capacity and utilisation
    async def capacity(self, request: web.Request) -> web.Response:
        self.public_rate(request)  # the public rate limit (per client IP)
        name = request.match_info["cls"]
        if name not in self.engine.books:
            raise ApiError("UNKNOWN_CLASS", f"no GPU class {name!r}; classes: {', '.join(self.engine.books)}")
        try:
            hours = int(request.query.get("hours", DEFAULT_HOURS))
        except ValueError:
            return _json({"error": {"code": "MALFORMED", "message": "hours must be an integer"}}, 400)
        if not 1 <= hours <= MAX_HOURS:
            return _json({"error": {"code": "MALFORMED", "message": f"hours must be between 1 and {MAX_HOURS}"}},
                         400)
        key = (name, hours)
        hit = self._cache.get(key)
        now_wall = self.clock.monotonic()
        if hit is None or now_wall - hit[0] > CACHE_S:
            hit = (now_wall, self.compute(name, hours))
            self._cache[key] = hit
        return _json(hit[1])

    def compute(self, name: str, hours: int = DEFAULT_HOURS) -> dict[str, Any]:
        """The endpoint's answer for class ``name`` (see the module docstring)."""
        eng = self.engine
        st = eng.state
        now = eng.book_time(name) or self.clock.time()
        h0 = now - now % HOUR
        samples = h0 + HOUR * np.arange(hours, dtype=np.int64)
        samples[0] = now

        # leases not ended yet, grouped by the ask they are on
        live = self.live.setdefault(name, set())
        by_ask: dict[int, list[Any]] = {}
        ended = []
        kinds: dict[str, dict[str, int]] = {}
        for ref in live:
            lease = st.leases.get(ref)
            if lease is None or lease.end <= now:
                ended.append(ref)
                continue
            by_ask.setdefault(lease.ask_oid, []).append(lease)
            k = kinds.setdefault(lease.kind, {"running": 0, "scheduled": 0, "gpus_running": 0})
            if lease.start <= now:
                k["running"] += 1
                k["gpus_running"] += lease.gpus
            else:
                k["scheduled"] += 1
        live.difference_update(ended)

        asks = {}
        for oids in st.open_by_account.values():
            for oid in oids:
                o = st.orders.get(oid)
                if o is not None and o.side == "ask" and o.book == name:
                    asks[oid] = o
        for oid in by_ask:
            if oid not in asks:
                o = st.orders.get(oid)
                if o is not None:
                    asks[oid] = o

        n = len(samples)
        free = np.zeros(n, np.int64)
        spot_free = np.zeros(n, np.int64)
        capacity = np.zeros(n, np.int64)
        used = np.zeros(n, np.int64)
        providers: dict[int, list[int]] = {}
        for oid, o in asks.items():
            firm = np.zeros(n, np.int64)
            spot = np.zeros(n, np.int64)
            for lease in by_ask.get(oid, ()):
                i0, i1 = np.searchsorted(samples, [lease.start, lease.end], side="left")
                if i1 > i0:
                    (spot if lease.kind == "spot" else firm)[i0:i1] += lease.gpus
            leased = np.minimum(firm + spot, o.gpus)
            if o.status == "open":
                inside = (samples >= max(o.start, 0)) & (samples < o.end)
                free += np.where(inside, np.maximum(o.gpus - firm, 0), 0)
                if o.spot_price:
                    spot_free += np.where(inside, np.maximum(o.gpus - firm - spot, 0), 0)
                cap = np.where(inside, o.gpus, leased)
            else:  # cancelled or expired: what it sold stands (R7), the rest left the market
                cap = leased
            if o.lease_id:  # a resale ask: hardware counted on the parent lease's ask
                continue
            capacity += cap
            used += leased
            p = providers.setdefault(o.account, [0, 0])
            p[0] += int(cap[0])
            p[1] += int(leased[0])

        cap_now, used_now = int(capacity[0]), int(used[0])
        return {
            "class": name,
            "time": now,
            "calendar": {"start": h0, "step": HOUR, "hours": n, "free": free.tolist(),
                         "spot_free": spot_free.tolist(), "capacity": capacity.tolist(), "used": used.tolist()},
            "utilisation": {"capacity": cap_now, "used": used_now, "free": int(free[0]),
                            "spot_free": int(spot_free[0]),
                            "ratio": round(used_now / cap_now, 4) if cap_now else None},
            "leases": {"open": sum(k["running"] + k["scheduled"] for k in kinds.values()),
                       "running": sum(k["running"] for k in kinds.values()),
                       "scheduled": sum(k["scheduled"] for k in kinds.values()),
                       "by_kind": kinds},
            "providers": [{"account": acc, "capacity": c, "used": u}
                          for acc, (c, u) in sorted(providers.items())],
        }
