"""The reference book: the market rules R1–R16 (docs/market-rules.md) written for clarity, not speed.

Plain Python over sortedcontainers.  The numba book (`orderbook.fast`) must produce
the same events, event for event, and the same state hash after every command; the
differential tests hold them to it.  When the two disagree, this file is the one to
read first.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from orderbook import reasons as R
from orderbook.config import BookConfig
from orderbook.invariants import BookInvariantError
from orderbook.quote import Quote, QuoteFill, QuoteRequest, check_request
from orderbook.rules import ask_code, bid_code
from orderbook.statehash import hash_record
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_CLOCK,
    CMD_RELEASE,
    END_FOK,
    END_GATE,
    END_GTD,
    END_IOC,
    END_USER,
    END_WINDOW,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_EXPIRED,
    EV_PREEMPTED,
    EV_REJECTED,
    EV_RELEASED,
    EV_TRADE,
    EVENT_DTYPE,
    FOK,
    GTC,
    GTD,
    HOUR,
    IOC,
    RESERVED,
    SIDE_ASK,
    SIDE_BID,
    SPOT,
)

MASK64 = (1 << 64) - 1


class Order:
    """A resting or incoming order.  Bids use `price` as their limit."""

    __slots__ = (
        "oid", "account", "side", "kind", "tif", "gpus", "remaining", "hours", "price",
        "spot_price", "start", "end", "min_hours", "block", "expire_at", "expire_reason",
        "lease_id", "post_only",
    )

    def __init__(self, **kw: int) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name, 0))


class Lease:
    """What a trade created (R16): GPUs of one ask, for one window, at one price."""

    __slots__ = (
        "trade_id", "ask_oid", "bid_oid", "buyer", "provider", "kind", "gpus", "start", "end",
        "price", "resold",
    )

    def __init__(self, **kw: int) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name, 0))


class ReferenceBook:
    """One GPU class's book.  `process(commands) -> events`, deterministic (R4, R15)."""

    def __init__(self, config: BookConfig | None = None) -> None:
        self.cfg = config or BookConfig()
        self.now = 0
        self.seq = 0  # last event sequence number
        self.last_oid = 0
        self.next_trade_id = 1
        self.orders: dict[int, Order] = {}
        # ladders of keys; asks cheapest first, bids highest limit first, then oldest
        self.asks_firm = SortedList()  # (price, oid)
        self.asks_spot = SortedList()  # (spot_price, oid)
        self.bids_firm = SortedList()  # (-limit, oid)
        self.bids_spot = SortedList()  # (-limit, oid)
        self.leases: dict[int, Lease] = {}  # running leases (end > now), by trade id
        self.ask_leases: dict[int, list[Lease]] = {}  # live ask oid -> its running leases
        self.expiries = SortedList()  # (time, oid) of resting orders
        self.lease_ends = SortedList()  # (end, trade_id)
        self.ask_starts = SortedList()  # (start, oid) of asks whose window starts later
        self._events: list[dict[str, int]] = []
        self._reoffer: set[int] = set()

    # ------------------------------------------------------------------ public API
    def process(self, commands: np.ndarray, firsts: np.ndarray | None = None) -> np.ndarray:
        """Apply a batch of command records; return the event records they produced.  ``firsts``
        (int64, one more than the commands): where each command's events start, then their count."""
        self._events = []
        for k, cmd in enumerate(commands):
            if firsts is not None:
                firsts[k] = len(self._events)
            self._apply({name: int(cmd[name]) for name in commands.dtype.names})
        if firsts is not None:
            firsts[len(commands)] = len(self._events)
        out = np.zeros(len(self._events), dtype=EVENT_DTYPE)
        for i, ev in enumerate(self._events):
            for k, v in ev.items():
                out[i][k] = v
        self._events = []
        return out

    def state_hash(self) -> int:
        """Order-independent hash of the logical state (orders, running leases, clocks)."""
        h = hash_record((0, self.now, self.seq, self.last_oid, self.next_trade_id))
        for o in self.orders.values():
            h += hash_record(
                (1, o.oid, o.account, o.side, o.kind, o.tif, o.gpus, o.remaining, o.hours, o.price,
                 o.spot_price, o.start, o.end, o.min_hours, o.block, o.expire_at, o.lease_id,
                 o.post_only)
            )
        for lease in self.leases.values():
            if lease.end > self.now:
                h += hash_record(
                    (2, lease.trade_id, lease.ask_oid, lease.bid_oid, lease.buyer, lease.provider,
                     lease.kind, lease.gpus, lease.start, lease.end, lease.price, lease.resold)
                )
        return h & MASK64

    def snapshot(self) -> bytes:
        """The full state as bytes; `ReferenceBook.restore` gives the book back."""
        return pickle.dumps(self._state(), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, config: BookConfig, blob: bytes) -> ReferenceBook:
        book = cls(config)
        state = pickle.loads(blob)
        book.now, book.seq, book.last_oid, book.next_trade_id = state["clock"]
        for kw in state["orders"]:
            book._insert(Order(**kw))
        for kw in state["leases"]:
            lease = Lease(**kw)
            book.leases[lease.trade_id] = lease
            book.lease_ends.add((lease.end, lease.trade_id))
            if lease.ask_oid in book.orders:
                book.ask_leases[lease.ask_oid].append(lease)
        return book

    def resting_orders(self) -> int:
        return len(self.orders)

    def quote(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
              account: int = 0, limit: int = 0) -> Quote:
        """What an IOC bid of these fields would fill now; changes nothing (orderbook/quote.py)."""
        req, fills = self._quote(kind, gpus, hours, start, block, account, limit)
        return req.refused() if req.reason else req.answer(fills)

    def quote_fills(self, kind: int, gpus: int, hours: int, start: int = 0, block: int = 1,
                    account: int = 0, limit: int = 0) -> tuple[QuoteRequest, np.ndarray]:
        """`quote`'s request check and its fills as rows ``ask_oid, provider, gpus, price``
        (int64; as `NumbaBook.quote_fills`)."""
        req, fills = self._quote(kind, gpus, hours, start, block, account, limit)
        rows = [(f.ask_oid, f.provider, f.gpus, f.price) for f in fills]
        return req, np.array(rows, dtype=np.int64).reshape(len(rows), 4)

    def _quote(self, kind: int, gpus: int, hours: int, start: int, block: int, account: int,
               limit: int) -> tuple[QuoteRequest, list[QuoteFill]]:
        req = check_request(self.cfg, self.now, kind, gpus, hours, start, block, account, limit)
        if req.reason:
            return req, []
        b = Order(account=req.account, side=SIDE_BID, kind=req.kind, tif=IOC, gpus=req.gpus,
                  remaining=req.gpus, hours=req.hours, price=req.limit,
                  start=req.start if req.kind == RESERVED else 0, block=req.block)
        fills = []
        for a in self._asks_for(b):  # _match_bid without the fills
            q = self._fill_qty(b, a, b.remaining)
            if q:
                # R11: the ask is the maker (a new bid's id is above every ask's)
                fills.append(QuoteFill(a.oid, a.account, q, a.spot_price if b.kind == SPOT else a.price))
                b.remaining -= q
                if b.remaining == 0:
                    break
        return req, fills

    def open_orders(self) -> list[Order]:
        return sorted(self.orders.values(), key=lambda o: o.oid)

    def running_leases(self) -> list[Lease]:
        return sorted((x for x in self.leases.values() if x.end > self.now), key=lambda x: x.trade_id)

    def crossing_pairs(self) -> list[tuple[int, int]]:
        """Resting (bid, ask) pairs that could trade now (R9).  Empty when quiescent."""
        pairs = []
        for b in self.orders.values():
            if b.side != SIDE_BID:
                continue
            for a in self.orders.values():
                if a.side == SIDE_ASK and self._fill_qty(b, a, b.remaining) > 0:
                    pairs.append((b.oid, a.oid))
        return pairs

    def validate(self) -> None:
        """Check the derived containers against the orders and leases; raise
        `BookInvariantError` naming the first that disagrees (see `Book.validate`).

        The primary data are `orders`, `leases` and the clocks; the ladders, `ask_leases`,
        `expiries`, `lease_ends` and `ask_starts` must hold exactly what they imply, and no
        re-offer is pending between commands."""

        def check(ok: bool, invariant: str, detail: str) -> None:
            if not ok:
                raise BookInvariantError(invariant, detail)

        now = self.now
        asks, bids = [], []
        for oid, o in self.orders.items():
            check(o.oid == oid, "orders", f"order {o.oid} filed under id {oid}")
            check(0 < oid <= self.last_oid, "orders", f"order id {oid} not in 1..last_oid {self.last_oid}")
            check(o.side in (SIDE_ASK, SIDE_BID), "orders", f"order {oid}: side {o.side}")
            if o.side == SIDE_ASK:
                asks.append(o)
            else:
                check(0 < o.remaining <= o.gpus, "orders", f"bid {oid}: remaining {o.remaining} of {o.gpus}")
                bids.append(o)
        ladders = (
            ("asks_firm", self.asks_firm, [(a.price, a.oid) for a in asks]),
            ("asks_spot", self.asks_spot, [(a.spot_price, a.oid) for a in asks if a.spot_price]),
            ("bids_firm", self.bids_firm, [(-b.price, b.oid) for b in bids if b.kind != SPOT]),
            ("bids_spot", self.bids_spot, [(-b.price, b.oid) for b in bids if b.kind == SPOT]),
        )
        for name, ladder, keys in ladders:
            check(list(ladder) == sorted(keys), "ladders", f"{name} does not hold exactly its orders' keys")
        check(list(self.expiries) == sorted((o.expire_at, o.oid) for o in self.orders.values() if o.expire_at),
              "expiries", "the expiry timers are not exactly the resting orders' expiries")
        check(list(self.ask_starts) == sorted((a.start, a.oid) for a in asks if a.start > now),
              "ask-starts", "the window-start timers are not exactly the asks that start later")
        for tid, lease in self.leases.items():
            check(lease.trade_id == tid, "leases", f"lease {lease.trade_id} filed under id {tid}")
            check(0 < tid < self.next_trade_id, "leases", f"trade id {tid} not below next_trade_id")
            # a spot lease preempted without notice ends now: it leaves at the next advance
            check(lease.end >= now, "leases", f"lease {tid} ended at {lease.end}, before now, but is still held")
        check(list(self.lease_ends) == sorted((x.end, x.trade_id) for x in self.leases.values()),
              "lease-ends", "the lease-end timers are not exactly the running leases' ends")
        check(self.ask_leases.keys() == {a.oid for a in asks}, "ask-leases",
              "ask_leases is not keyed by exactly the resting asks")
        listed = 0
        for oid, held in self.ask_leases.items():
            for x in held:
                check(self.leases.get(x.trade_id) is x and x.ask_oid == oid, "ask-leases",
                      f"ask {oid} lists lease {x.trade_id}, not one of its running leases")
            check(len({x.trade_id for x in held}) == len(held), "ask-leases", f"ask {oid} lists a lease twice")
            listed += len(held)
        check(listed == sum(x.ask_oid in self.ask_leases for x in self.leases.values()), "ask-leases",
              "a running lease of a resting ask is missing from its list")
        check(not self._reoffer and not self._events, "reoffers", "re-offers or events pending between commands")

    # ------------------------------------------------------------------ internals
    def _state(self) -> dict[str, Any]:
        return {
            "clock": (self.now, self.seq, self.last_oid, self.next_trade_id),
            "orders": [{k: getattr(o, k) for k in Order.__slots__} for o in self.open_orders()],
            "leases": [{k: getattr(x, k) for k in Lease.__slots__} for x in self.running_leases()],
        }

    def _emit(self, type_: int, **fields: int) -> None:
        self.seq += 1
        fields["seq"] = self.seq
        fields["time"] = self.now
        fields["type"] = type_
        self._events.append(fields)

    def _reject(self, cmd: dict[str, int], code: int) -> None:
        side = SIDE_ASK if cmd["type"] == CMD_ASK else SIDE_BID if cmd["type"] == CMD_BID else 0
        self._emit(EV_REJECTED, oid=cmd["oid"], account=cmd["account"], reason=code, side=side,
                   cmd=cmd["type"], lease_id=cmd["lease_id"])

    def _apply(self, cmd: dict[str, int]) -> None:
        if cmd["time"] < self.now:
            self._reject(cmd, R.STALE_TIME)
            return
        self._advance(cmd["time"])  # R4: a later stamp first advances the book
        self._run_reoffers()  # ... exactly as a clock command would, re-offers included (R4, R13)
        t = cmd["type"]
        if t == CMD_ASK:
            self._on_ask(cmd)
        elif t == CMD_BID:
            self._on_bid(cmd)
        elif t == CMD_CANCEL:
            self._on_cancel(cmd)
        elif t == CMD_AMEND:
            self._on_amend(cmd)
        elif t == CMD_RELEASE:
            self._on_release(cmd)
        elif t != CMD_CLOCK:
            self._reject(cmd, R.BAD_COMMAND)
        self._run_reoffers()

    # --- time (R4, R13, R14) ---------------------------------------------------
    def _advance(self, t: int) -> None:
        """Apply everything that expires or ends at or before t, in time order."""
        if t <= self.now:
            return
        while self.expiries and self.expiries[0][0] <= t:
            when, oid = self.expiries.pop(0)
            o = self.orders[oid]
            self.now = when  # the event happens at its own time
            self._remove(o)
            self._emit(EV_EXPIRED, oid=o.oid, account=o.account, side=o.side, kind=o.kind,
                       reason=o.expire_reason, remaining=o.remaining)
        self.now = t
        while self.lease_ends and self.lease_ends[0][0] <= t:
            _, tid = self.lease_ends.pop(0)
            self._drop_lease(self.leases[tid])
        while self.ask_starts and self.ask_starts[0][0] <= t:
            _, oid = self.ask_starts.pop(0)
            if oid in self.orders:
                self._reoffer.add(oid)

    def _drop_lease(self, lease: Lease) -> None:
        """A lease has ended: its GPUs return to its ask (R13)."""
        del self.leases[lease.trade_id]
        held = self.ask_leases.get(lease.ask_oid)
        if held is not None:
            held.remove(lease)
            self._reoffer.add(lease.ask_oid)

    # --- ladders ---------------------------------------------------------------
    def _insert(self, o: Order) -> None:
        self.orders[o.oid] = o
        if o.side == SIDE_ASK:
            self.asks_firm.add((o.price, o.oid))
            if o.spot_price:
                self.asks_spot.add((o.spot_price, o.oid))
            self.ask_leases.setdefault(o.oid, [])
            if o.start > self.now:
                self.ask_starts.add((o.start, o.oid))
        else:
            (self.bids_spot if o.kind == SPOT else self.bids_firm).add((-o.price, o.oid))
        if o.expire_at:
            self.expiries.add((o.expire_at, o.oid))

    def _remove(self, o: Order) -> None:
        del self.orders[o.oid]
        if o.side == SIDE_ASK:
            self.asks_firm.remove((o.price, o.oid))
            if o.spot_price:
                self.asks_spot.remove((o.spot_price, o.oid))
            if o.lease_id in self.leases:  # a resale ask gives its unsold GPUs back (R16)
                # (before its leases are forgotten: what it sold from now on stays resold)
                self.leases[o.lease_id].resold -= o.gpus - self._peak_usage(o, self.now, o.end, True)
            self.ask_leases.pop(o.oid)
            self.ask_starts.discard((o.start, o.oid))
            self._reoffer.discard(o.oid)
        else:
            (self.bids_spot if o.kind == SPOT else self.bids_firm).remove((-o.price, o.oid))
        if o.expire_at:
            self.expiries.discard((o.expire_at, o.oid))

    # --- capacity (R5, R9) ---------------------------------------------------------
    def _peak_usage(self, a: Order, ws: int, we: int, with_spot: bool) -> int:
        """max over t in [ws, we) of firm(a, t) (+ spot(a, t))."""
        held = [x for x in self.ask_leases.get(a.oid, ())
                if x.start < we and x.end > ws and (with_spot or x.kind != SPOT)]
        peak = 0
        for p in {ws} | {x.start for x in held if x.start > ws}:
            peak = max(peak, sum(x.gpus for x in held if x.start <= p < x.end))
        return peak

    def _window(self, b: Order) -> tuple[int, int]:
        start = b.start if b.kind == RESERVED else self.now
        return start, start + b.hours * HOUR

    def _fill_qty(self, b: Order, a: Order, want: int) -> int:
        """GPUs bid b could take from ask a now, up to `want`: 0 if they cannot trade (R9, R10)."""
        if a.account == b.account or b.hours < a.min_hours:
            return 0
        if b.kind == SPOT:
            if not a.spot_price or b.price < a.spot_price:
                return 0
        elif b.price < a.price:
            return 0
        ws, we = self._window(b)
        if ws < a.start or we > a.end:
            return 0
        free = a.gpus - self._peak_usage(a, ws, we, b.kind == SPOT)
        q = min(want, free)
        return q - q % b.block if q > 0 else 0

    # --- matching (R9–R12) -------------------------------------------------------------
    def _asks_for(self, b: Order) -> list[Order]:
        """Asks b may trade with by price, in priority order (R10)."""
        ladder = self.asks_spot if b.kind == SPOT else self.asks_firm
        return [self.orders[oid] for _, oid in ladder.irange(maximum=(b.price, float("inf")))]

    def _bids_for(self, a: Order) -> list[Order]:
        """Bids a may trade with by price: highest limit first, then oldest (R10)."""
        keys = list(self.bids_firm.irange(maximum=(-a.price, float("inf"))))
        if a.spot_price:
            keys += self.bids_spot.irange(maximum=(-a.spot_price, float("inf")))
        return [self.orders[oid] for _, oid in sorted(keys)]

    def _fill(self, b: Order, a: Order, q: int) -> None:
        ws, we = self._window(b)
        if b.oid < a.oid:  # R11: the maker's price
            maker, price = SIDE_BID, b.price
        else:
            maker, price = SIDE_ASK, a.spot_price if b.kind == SPOT else a.price
        lease = Lease(trade_id=self.next_trade_id, ask_oid=a.oid, bid_oid=b.oid, buyer=b.account,
                      provider=a.account, kind=b.kind, gpus=q, start=ws, end=we, price=price)
        self.next_trade_id += 1
        self.leases[lease.trade_id] = lease
        self.lease_ends.add((we, lease.trade_id))
        self.ask_leases[a.oid].append(lease)
        b.remaining -= q
        self._emit(EV_TRADE, trade_id=lease.trade_id, oid=b.oid, oid2=a.oid, account=b.account,
                   account2=a.account, kind=b.kind, gpus=q, remaining=b.remaining, price=price,
                   start=ws, end=we, maker=maker, lease_id=a.lease_id, hours=b.hours)
        if b.remaining == 0 and b.oid in self.orders:
            self._remove(b)
        if b.kind != SPOT:
            self._preempt(a, lease)

    def _preempt(self, a: Order, firm: Lease) -> None:
        """R12: whole spot leases make room for a firm fill, from T0 = max(now + notice, start).

        Usage over [T0, firm.end) steps only at lease starts and ends and is highest at T0 or at
        a start (as in `_peak_usage`): those are the moments checked.  Taking the spot leases in
        preemption order, each one that holds at a still overcommitted moment is preempted; one
        that holds at none is passed over for good, since preempting only lowers usage.  That is
        "the first victim, again and again" without recounting every lease after each victim."""
        t0 = max(self.now + self.cfg.notice_s, firm.start)
        if t0 >= firm.end:
            return
        held = self.ask_leases[a.oid]
        points = {t0} | {x.start for x in held if t0 < x.start < firm.end}
        usage = {p: sum(x.gpus for x in held if x.start <= p < x.end) for p in points}
        if all(u <= a.gpus for u in usage.values()):
            return
        spot = sorted((x for x in held if x.kind == SPOT and x.end > t0), key=lambda x: (x.price, -x.trade_id))
        for v in spot:
            over = [p for p in points if usage[p] > a.gpus]
            if not over:
                return
            if not any(v.start <= p < v.end for p in over):
                continue
            for p in points:
                if v.start <= p < v.end:
                    usage[p] -= v.gpus
            self.lease_ends.remove((v.end, v.trade_id))
            v.end = t0
            self.lease_ends.add((v.end, v.trade_id))
            self._emit(EV_PREEMPTED, trade_id=v.trade_id, oid=v.bid_oid, oid2=v.ask_oid,
                       account=v.buyer, account2=v.provider, kind=v.kind, gpus=v.gpus,
                       price=v.price, start=v.start, end=t0, lease_id=firm.trade_id)
            self._reoffer.add(a.oid)

    def _match_bid(self, b: Order) -> None:
        for a in self._asks_for(b):
            if b.remaining == 0:
                return
            q = self._fill_qty(b, a, b.remaining)
            if q:
                self._fill(b, a, q)

    def _match_ask(self, a: Order) -> None:
        for b in self._bids_for(a):
            q = self._fill_qty(b, a, b.remaining)
            if q:
                self._fill(b, a, q)

    def _run_reoffers(self) -> None:
        """R13: asks whose free capacity grew meet the resting bids again, in ask priority."""
        while self._reoffer:
            oid = min(self._reoffer, key=lambda i: (self.orders[i].price, i))
            self._reoffer.discard(oid)
            self._match_ask(self.orders[oid])

    # --- commands -------------------------------------------------------------------------
    def _check_new_order(self, cmd: dict[str, int]) -> int:
        if cmd["account"] <= 0:
            return R.BAD_ACCOUNT
        if cmd["oid"] <= self.last_oid:
            return R.BAD_ORDER_ID
        return R.OK

    def _on_ask(self, cmd: dict[str, int]) -> None:
        now = self.now
        start = max(cmd["start"], now)
        end = cmd["end"]
        min_hours = cmd["min_hours"] or 1
        code = self._check_new_order(cmd) or ask_code(
            self.cfg, now, cmd["gpus"], cmd["price"], cmd["spot_price"], start, end, min_hours)
        if not code and cmd["lease_id"]:
            code = self._check_resale(cmd, start, end)
        a = Order(oid=cmd["oid"], account=cmd["account"], side=SIDE_ASK, gpus=cmd["gpus"],
                  price=cmd["price"], spot_price=cmd["spot_price"], start=start, end=end,
                  min_hours=min_hours, expire_at=end, expire_reason=END_WINDOW,
                  lease_id=cmd["lease_id"], post_only=1 if cmd["post_only"] else 0)
        if not code and a.post_only and any(self._fill_qty(b, a, b.remaining) for b in self._bids_for(a)):
            code = R.POST_ONLY_WOULD_TRADE
        if code:
            self._reject(cmd, code)
            return
        self.last_oid = a.oid
        if a.lease_id:
            self.leases[a.lease_id].resold += a.gpus
        self._insert(a)
        self._emit(EV_ACCEPTED, oid=a.oid, account=a.account, side=SIDE_ASK, gpus=a.gpus,
                   price=a.price, price2=a.spot_price, start=a.start, end=a.end,
                   min_hours=a.min_hours, lease_id=a.lease_id, expire_at=a.end)
        self._match_ask(a)

    def _check_resale(self, cmd: dict[str, int], start: int, end: int) -> int:
        lease = self.leases.get(cmd["lease_id"])
        if lease is None or lease.end <= self.now:
            return R.UNKNOWN_LEASE
        if lease.buyer != cmd["account"]:
            return R.NOT_LEASE_HOLDER
        if lease.kind == SPOT:
            return R.LEASE_NOT_RESELLABLE
        if start < max(lease.start, self.now) or end > lease.end:
            return R.RESALE_WINDOW
        if cmd["gpus"] > lease.gpus - lease.resold:
            return R.RESALE_EXCEEDS_LEASE
        return R.OK

    def _on_bid(self, cmd: dict[str, int]) -> None:
        c = self.cfg
        now = self.now
        kind, tif, gpus, hours = cmd["kind"], cmd["tif"], cmd["gpus"], cmd["hours"]
        block = cmd["block"] or 1
        code = self._check_new_order(cmd) or bid_code(
            c, now, kind, tif, gpus, hours, cmd["price"], block, cmd["start"], cmd["expire_at"])
        if code:
            self._reject(cmd, code)
            return
        start = cmd["start"] if kind == RESERVED else 0
        expire_at, why = (cmd["expire_at"], END_GTD) if tif == GTD else (0, 0)
        if kind == RESERVED and tif in (GTC, GTD) and (not expire_at or start - c.gate_s < expire_at):
            expire_at, why = start - c.gate_s, END_GATE  # R14: reserved GTC expires at the gate
        b = Order(oid=cmd["oid"], account=cmd["account"], side=SIDE_BID, kind=kind, tif=tif,
                  gpus=gpus, remaining=gpus, hours=hours, price=cmd["price"], start=start,
                  end=start + hours * HOUR if kind == RESERVED else 0, block=block,
                  expire_at=expire_at, expire_reason=why)
        self.last_oid = b.oid
        self._emit(EV_ACCEPTED, oid=b.oid, account=b.account, side=SIDE_BID, kind=kind, tif=tif,
                   gpus=gpus, remaining=gpus, hours=hours, price=b.price, block=block,
                   start=b.start, end=b.end, expire_at=expire_at)
        if tif == FOK:
            fillable = 0
            for a in self._asks_for(b):
                fillable += self._fill_qty(b, a, gpus)
                if fillable >= gpus:
                    break
            if fillable < gpus:
                self._emit(EV_CANCELLED, oid=b.oid, account=b.account, side=SIDE_BID, kind=kind,
                           reason=END_FOK, remaining=gpus)
                return
        self._match_bid(b)
        if b.remaining == 0:
            return
        if tif in (IOC, FOK):
            self._emit(EV_CANCELLED, oid=b.oid, account=b.account, side=SIDE_BID, kind=kind,
                       reason=END_IOC, remaining=b.remaining)
        elif expire_at and expire_at <= now:  # a reserved bid placed exactly at its gate
            self._emit(EV_EXPIRED, oid=b.oid, account=b.account, side=SIDE_BID, kind=kind,
                       reason=why, remaining=b.remaining)
        else:
            self._insert(b)

    def _owned_order(self, cmd: dict[str, int]) -> tuple[Order | None, int]:
        o = self.orders.get(cmd["oid"])
        if o is None:
            return None, R.UNKNOWN_ORDER
        if o.account != cmd["account"]:
            return None, R.NOT_OWNER
        return o, R.OK

    def _on_cancel(self, cmd: dict[str, int]) -> None:
        o, code = self._owned_order(cmd)
        if o is None:
            self._reject(cmd, code)
            return
        self._remove(o)
        self._emit(EV_CANCELLED, oid=o.oid, account=o.account, side=o.side, kind=o.kind,
                   reason=END_USER, remaining=o.remaining)

    def _on_amend(self, cmd: dict[str, int]) -> None:
        o, code = self._owned_order(cmd)
        new = cmd["gpus"]
        if o is not None:
            if o.side == SIDE_BID:
                if not 1 <= new < o.remaining or new % o.block:
                    code = R.BAD_AMEND
            elif not 1 <= new < o.gpus:
                code = R.BAD_AMEND
            elif new < self._peak_usage(o, self.now, o.end, True):
                code = R.AMEND_BELOW_SOLD
        if code:
            self._reject(cmd, code)
            return
        assert o is not None
        if o.side == SIDE_BID:
            o.remaining = new
        else:
            if o.lease_id in self.leases:
                self.leases[o.lease_id].resold -= o.gpus - new
            o.gpus = new
        self._emit(EV_AMENDED, oid=o.oid, account=o.account, side=o.side, kind=o.kind,
                   gpus=new, remaining=o.remaining)

    def _on_release(self, cmd: dict[str, int]) -> None:
        lease = self.leases.get(cmd["lease_id"])
        code = R.OK
        if lease is None or lease.end <= self.now:
            code = R.UNKNOWN_LEASE
        elif lease.buyer != cmd["account"]:
            code = R.NOT_LEASE_HOLDER
        elif lease.kind == RESERVED:
            code = R.LEASE_NOT_RELEASABLE
        elif lease.resold:
            code = R.LEASE_RESOLD
        if code:
            self._reject(cmd, code)
            return
        assert lease is not None
        self.lease_ends.remove((lease.end, lease.trade_id))
        lease.end = self.now
        self._emit(EV_RELEASED, trade_id=lease.trade_id, oid=lease.bid_oid, oid2=lease.ask_oid,
                   account=lease.buyer, account2=lease.provider, kind=lease.kind, gpus=lease.gpus,
                   price=lease.price, start=lease.start, end=lease.end)
        self._drop_lease(lease)
