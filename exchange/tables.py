"""The exchange state the core runs: what `exchange.state.ReferenceState` keeps (orders by
account with their escrow, leases, client order ids, halted classes), kept in int64 tables that
`exchange.statecore`'s jitted code changes from each book call's events array, with no Python
per event.  The reference is the specification; tests/test_state_tables.py checks that both
answer the same for every query after the same events.

    state = ExchangeState(instruments)
    state.apply(book, part, commands, events, coids, spans, order)   # live and on replay
    state.orders.get(oid), state.leases.get(ref)                     # records, made when read

Records (`OrderInfo`, `LeaseInfo`) are made from a row when they are read: reads are the API's
and the answers', a few per command, where events are many per command on replay.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec
import numpy as np

from clearing import intmap
from clearing.money import hold_fee_bps, hold_per_gpu
from exchange import state as spec
from exchange import statecore as K
from exchange.config import Instrument
from exchange.records import LeaseInfo, OrderInfo
from exchange.state import Encoded, StateData, _encode_array
from orderbook.types import (
    CMD_AMEND,
    CMD_ASK,
    CMD_BID,
    CMD_CANCEL,
    CMD_RELEASE,
    END_NAMES,
    EV_ACCEPTED,
    KIND_NAMES,
    SIDE_BID,
    TIF_NAMES,
    Command,
    Event,
)

_ZLEVEL = 1
_ORDER_CMDS = (CMD_ASK, CMD_BID, CMD_CANCEL, CMD_AMEND)  # commands whose answer shows an order (exchange.views.answer)
ROOM = 1 << 16  # rows of every table beyond the closed orders remembered, before any growing


class TableData(msgspec.Struct, kw_only=True):
    """The snapshot form of the tables: the rows in use up to each high-water mark (deflated
    int64, little-endian), the heaps, the strings the rows refer to."""

    classes: list[str]
    orders: bytes
    leases: bytes
    closed: bytes
    forget: list[bytes]  # per class, in `classes` order
    next_ord: int
    order_coids: list[tuple[int, str]]
    coids: list[tuple[int, str, bytes]]
    halted: list[str]


def _pack(a: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(a, dtype="<i8").tobytes(), _ZLEVEL)


def _unpack(blob: bytes, width: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype="<i8").reshape(-1, width).astype(np.int64)


class _Orders(Mapping[int, OrderInfo]):
    """``state.orders``: oid -> `OrderInfo`, read from the table (iterated by order id)."""

    def __init__(self, st: ExchangeState) -> None:
        self._st = st

    def __getitem__(self, oid: int) -> OrderInfo:
        s = _look(self._st._omap, oid)
        if s < 0:
            raise KeyError(oid)
        return self._st._order(s)

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, int) and _look(self._st._omap, oid) >= 0

    def __len__(self) -> int:
        S = self._st._S
        return int(S[K.S_OHW] - S[K.S_NOFREE])

    def __iter__(self) -> Iterator[int]:
        return iter(self._st._live_order_rows()[1].tolist())

    def values(self) -> list[OrderInfo]:  # type: ignore[override]
        rows, _ = self._st._live_order_rows()
        return [self._st._order(s) for s in rows.tolist()]


class _Leases(Mapping[str, LeaseInfo]):
    """``state.leases``: ref -> `LeaseInfo`, in the order the leases were recorded."""

    def __init__(self, st: ExchangeState) -> None:
        self._st = st

    def _row(self, ref: object) -> int:
        if not isinstance(ref, str):
            return -1
        book, _, tid = ref.rpartition("-")
        ci = self._st._index.get(book)
        if ci is None or not (tid.isascii() and tid.isdigit()) or int(tid) >= 1 << K.KEY_SHIFT:
            return -1
        return _look(self._st._lmap, K.lease_key(ci, int(tid)))

    def __getitem__(self, ref: str) -> LeaseInfo:
        s = self._row(ref)
        if s < 0:
            raise KeyError(ref)
        return self._st._lease(s)

    def __contains__(self, ref: object) -> bool:
        return self._row(ref) >= 0

    def __len__(self) -> int:
        S = self._st._S
        return int(S[K.S_LHW] - S[K.S_NLFREE])

    def __iter__(self) -> Iterator[str]:
        return (x.ref for x in self.values())

    def values(self) -> list[LeaseInfo]:  # type: ignore[override]
        return [self._st._lease(s) for s in self._st._live_lease_rows().tolist()]

    def items(self) -> list[tuple[str, LeaseInfo]]:  # type: ignore[override]
        return [(x.ref, x) for x in self.values()]


_I64 = (-(1 << 63), (1 << 63) - 1)
_NONE = np.zeros(0, np.int64)
_NO_MARKS = np.zeros((0, 3), np.int64)
_NO_CAP = np.zeros((0, K.NO + 1), np.int64)


def _look(m: np.ndarray, key: int) -> int:
    """The row of ``key`` (-1: none; a key past int64, from a client's path, is none too)."""
    if not _I64[0] <= key <= _I64[1]:
        return -1
    return intmap.get(m, int(key))  # int: one compiled signature, whatever integer type came


class ExchangeState(spec.FirstAnswers):
    """Orders, leases, client order ids and escrow, kept from the books' events in tables."""

    def __init__(self, instruments: dict[str, Instrument]) -> None:
        self.instruments = instruments
        self._names = list(instruments)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._fee_bps = [hold_fee_bps(i.maker_fee_bps, i.taker_fee_bps) for i in instruments.values()]
        self.coids: dict[tuple[int, str], bytes] = {}  # (account, client_order_id) -> first answer
        self._pending_coids: list[tuple[int, tuple[int, str], bytes]] = []
        self.order_coids: dict[int, str] = {}  # oid -> its client order id, for the orders that had one
        self.halted: set[str] = set()
        self._reset()
        self.orders = _Orders(self)
        self.leases = _Leases(self)

    def _reset(self) -> None:
        """Empty tables.  Their rows are zeroed by the system when first touched (np.zeros of a
        large array maps fresh pages), so room for the closed orders remembered and tens of
        thousands of leases costs nothing until used, and spares the copies of growing."""
        rows, room = spec.MAX_CLOSED_ORDERS + ROOM, ROOM
        self._O = np.zeros((rows, K.NO), np.int64)
        self._ofree = np.zeros(rows, np.int64)
        self._omap = intmap.new()  # order id -> row of _O (grown by `_room`)
        self._LS = np.zeros((room, K.NLS), np.int64)
        self._lfree = np.zeros(room, np.int64)
        self._lmap = intmap.new()  # lease key -> row of _LS
        self._closed = np.zeros((min(rows, spec.MAX_CLOSED_ORDERS + 1) + room, 2), np.int64)
        self._fheap = [np.zeros((room, 2), np.int64) for _ in self._names]
        self._FC = np.zeros(len(self._names), np.int64)
        self._S = np.zeros(K.NS, np.int64)
        self._S[K.S_MAXCLOSED] = spec.MAX_CLOSED_ORDERS
        self._S[K.S_RETENTION] = spec.LEASE_RETENTION_S
        self._accs = intmap.new()  # account -> its place in _OC
        self._acc: dict[int, int] = {}  # the same, for reads from Python
        self._OC = np.zeros((room, 2), np.int64)  # per account: open orders, the first one's row + 1
        self._newacc = np.zeros(room, np.int64)
        self._gone = np.zeros(room, np.int64)
        self._args = np.zeros(6, np.int64)
        self._budget = 0  # (`_room`)

    # ------------------------------------------------------------------ room
    def _room(self, n: int, ci: int) -> None:
        """Make room for ``n`` more events of class ``ci`` (one row, one heap entry each at most).
        ``_budget``: events every table has room for, counted down (most calls check nothing)."""
        S = self._S
        S[K.S_NGONE] = S[K.S_NNEW] = 0
        if n <= self._budget and n <= len(self._gone):
            self._budget -= n
            return
        S[K.S_MAXCLOSED] = spec.MAX_CLOSED_ORDERS  # the caps are exchange.state's (a test may lower them)
        if S[K.S_OHW] + n > len(self._O):
            self._O = _grown(self._O, S[K.S_OHW] + n)
            self._ofree = np.resize(self._ofree, len(self._O))
        if S[K.S_LHW] + n > len(self._LS):
            self._LS = _grown(self._LS, S[K.S_LHW] + n)
            self._lfree = np.resize(self._lfree, len(self._LS))
        if S[K.S_NCLOSED] + n + 1 > len(self._closed):
            self._closed = _grown(self._closed, S[K.S_NCLOSED] + n + 1)
        if self._FC[ci] + 2 * n > len(self._fheap[ci]):
            self._fheap[ci] = _grown(self._fheap[ci], self._FC[ci] + 2 * n)
        if S[K.S_NACC] + n > len(self._OC):
            self._OC = _grown(self._OC, S[K.S_NACC] + n)
        if n > len(self._gone):
            self._gone = np.zeros(2 * n, np.int64)
            self._newacc = np.zeros(2 * n, np.int64)
        self._omap = intmap.room(self._omap, n)
        self._lmap = intmap.room(self._lmap, n)
        self._accs = intmap.room(self._accs, n)
        self._budget = min(len(self._O) - S[K.S_OHW], len(self._LS) - S[K.S_LHW],
                           len(self._closed) - S[K.S_NCLOSED] - 1, len(self._OC) - S[K.S_NACC],
                           *(intmap.free(m) for m in (self._omap, self._lmap, self._accs)),
                           *(len(h) - c for h, c in zip(self._fheap, self._FC.tolist(), strict=True))) - n

    def _run(self, ci: int, ev: np.ndarray, lo: int, hi: int, coidx: list[int] | None = None,
             marks: list[tuple[int, int, int]] | None = None) -> np.ndarray:
        """The kernel over ``ev[lo:hi]``: ``coidx``, the events that accepted an order whose command
        carried a client order id; ``marks``, the rows to copy after given events (`statecore.apply`).
        Returns the copies (one row per mark, its last column 1 where the row was found)."""
        self._room(hi - lo, ci)
        S, args = self._S, self._args
        cx = np.array(coidx, np.int64) if coidx else _NONE
        mk = np.array(marks, np.int64).reshape(-1, 3) if marks else _NO_MARKS
        cap = np.zeros((len(mk), K.NO + 1), np.int64) if marks else _NO_CAP
        args[0], args[1], args[2], args[3], args[4], args[5] = lo, hi, ci, self._fee_bps[ci], len(cx), len(mk)
        first = int(S[K.S_NACC])
        K.apply(self._O, self._omap, self._ofree, self._LS, self._lmap, self._lfree, self._closed,
                self._fheap[ci], self._FC, S, self._accs, self._OC, self._newacc, self._gone, ev, args, cx, mk, cap)
        if S[K.S_NNEW]:
            for k, acc in enumerate(self._newacc[:S[K.S_NNEW]].tolist()):
                self._acc[acc] = first + k
        if S[K.S_NGONE]:
            for oid in self._gone[:self._S[K.S_NGONE]].tolist():
                self.order_coids.pop(oid, None)
        return cap

    # ------------------------------------------------------------------ queries
    def _order(self, s: int) -> OrderInfo:
        return self._order_of(self._O[s].tolist())

    def _order_of(self, r: list[int], coid: str = "") -> OrderInfo:
        """The record of an order row (``coid``: its client order id, when the caller knows it)."""
        oid = r[K.O_OID]
        if r[K.O_COID] and not coid:
            coid = self.order_coids.get(oid, "")
        status = K.STATUS_NAMES[r[K.O_STATUS]]
        reason = END_NAMES.get(r[K.O_REASON], "") if r[K.O_REASON] else ""
        if r[K.O_SIDE] == SIDE_BID:
            return OrderInfo(oid=oid, book=self._names[r[K.O_BOOK]], account=r[K.O_ACCOUNT], side="bid",
                             gpus=r[K.O_GPUS], price=r[K.O_PRICE], time=r[K.O_TIME], status=status,
                             remaining=r[K.O_REM], filled=r[K.O_FILLED], kind=KIND_NAMES[r[K.O_KIND]],
                             tif=TIF_NAMES[r[K.O_TIF]], hours=r[K.O_HOURS], block=r[K.O_BLOCK], start=r[K.O_START],
                             end=r[K.O_END], expire_at=r[K.O_EXPIRE], reason=reason, client_order_id=coid,
                             hold=r[K.O_HOLD], hold_per_gpu=r[K.O_HPG])
        return OrderInfo(oid=oid, book=self._names[r[K.O_BOOK]], account=r[K.O_ACCOUNT], side="ask",
                         gpus=r[K.O_GPUS], price=r[K.O_PRICE], time=r[K.O_TIME], status=status,
                         remaining=r[K.O_REM], filled=r[K.O_FILLED], spot_price=r[K.O_SPOT], start=r[K.O_START],
                         end=r[K.O_END], min_hours=r[K.O_MINH], expire_at=r[K.O_EXPIRE], lease_id=r[K.O_LEASE],
                         reason=reason, client_order_id=coid)

    def _lease(self, s: int) -> LeaseInfo:
        return self._lease_of(self._LS[s].tolist())

    def _lease_of(self, r: list[int]) -> LeaseInfo:
        return LeaseInfo(book=self._names[r[K.L_BOOK]], trade_id=r[K.L_TID], bid_oid=r[K.L_BID],
                         ask_oid=r[K.L_ASK], buyer=r[K.L_BUYER], provider=r[K.L_PROV], kind=KIND_NAMES[r[K.L_KIND]],
                         gpus=r[K.L_GPUS], start=r[K.L_START], end=r[K.L_END], price=r[K.L_PRICE],
                         time=r[K.L_TIME], resale_of=r[K.L_RESALE], ended_by=K.ENDED_NAMES[r[K.L_ENDED]],
                         cost=r[K.L_COST])

    def _live_order_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows in use, by order id, and their order ids."""
        OT = self._O[:self._S[K.S_OHW]]
        rows = np.flatnonzero(OT[:, K.O_STATUS] != K.FREE)
        oids = OT[rows, K.O_OID]
        by = np.argsort(oids, kind="stable")
        return rows[by], oids[by]

    def _live_lease_rows(self) -> np.ndarray:
        """The rows in use, in the order the leases were recorded."""
        order = self._LS[:self._S[K.S_LHW], K.L_ORD]
        rows = np.flatnonzero(order > 0)
        return rows[np.argsort(order[rows], kind="stable")]

    def _open_rows(self, book: str | None = None) -> np.ndarray:
        OT = self._O[:self._S[K.S_OHW]]
        mask = OT[:, K.O_STATUS] == K.OPEN
        if book is not None:
            mask &= OT[:, K.O_BOOK] == self._index.get(book, -1)
        rows = np.flatnonzero(mask)
        return rows[np.argsort(OT[rows, K.O_OID], kind="stable")]

    def open_orders(self, account: int) -> list[OrderInfo]:
        """The account's open orders, by order id (its list of open rows: no scan of the table)."""
        k = self._acc.get(account)
        if k is None or not self._OC[k, 0]:
            return []
        return sorted((self._order(s) for s in K.open_rows(self._O, self._OC, k).tolist()), key=lambda o: o.oid)

    def open_records(self, book: str | None = None) -> list[OrderInfo]:
        """Every open order (of class ``book``), by order id: a feed starting from the state
        reads only these, not the closed orders remembered."""
        return [self._order(s) for s in self._open_rows(book=book).tolist()]

    def open_count(self, account: int) -> int:
        k = self._acc.get(account)
        return 0 if k is None else int(self._OC[k, 0])

    def account_leases(self, account: int) -> list[LeaseInfo]:
        LS = self._LS[:self._S[K.S_LHW]]
        rows = np.flatnonzero((LS[:, K.L_ORD] > 0) & ((LS[:, K.L_BUYER] == account) | (LS[:, K.L_PROV] == account)))
        rows = rows[np.argsort(LS[rows, K.L_ORD], kind="stable")]
        return [self._lease(s) for s in rows.tolist()]

    @property
    def open_by_account(self) -> dict[int, set[int]]:
        """account -> the ids of its open orders (built when read)."""
        OT = self._O[:self._S[K.S_OHW]]
        rows = np.flatnonzero(OT[:, K.O_STATUS] == K.OPEN)
        out: dict[int, set[int]] = {}
        for acc, oid in zip(OT[rows, K.O_ACCOUNT].tolist(), OT[rows, K.O_OID].tolist(), strict=True):
            out.setdefault(acc, set()).add(oid)
        return out

    @property
    def leases_by_account(self) -> dict[int, dict[str, None]]:
        """account -> the refs of its leases, in trade order (built when read)."""
        out: dict[int, dict[str, None]] = {}
        for x in self.leases.values():
            out.setdefault(x.buyer, {})[x.ref] = None
            out.setdefault(x.provider, {})[x.ref] = None
        return out

    @property
    def closed(self) -> list[int]:
        """The closed orders remembered (a heap of their ids)."""
        return self._closed[:self._S[K.S_NCLOSED], 0].tolist()

    def orders_of(self, oids: list[int]) -> dict[int, OrderInfo]:
        """The records of those of ``oids`` remembered: one look-up for all of them (answers)."""
        if not oids:
            return {}
        oids = [oid for oid in oids if _I64[0] <= oid <= _I64[1]]
        rows = intmap.get_many(self._omap, np.array(oids, np.int64)).tolist()
        return {oid: self._order(s) for oid, s in zip(oids, rows, strict=True) if s >= 0}

    def prune(self, book: str, now: int) -> int:
        """Forget the class's leases that ended the retention or more before ``now``
        (`exchange.state.LEASE_RETENTION_S`)."""
        ci = self._index[book]
        heap = self._fheap[ci]
        if not self._FC[ci] or heap[0, 0] > now:  # nothing due (most clock ticks): no jitted call
            return 0
        return int(K.prune(self._LS, self._lmap, self._lfree, heap, self._FC, self._S, ci, now))

    def hold_for(self, book: str, gpus: int, hours: int, limit: int) -> int:
        return gpus * hold_per_gpu(hours, limit, self._fee_bps[self._index[book]] if book in self._index else 0)

    # ------------------------------------------------------------------ applying events
    def apply(self, book: str, part: np.ndarray, commands: list[Command] | None = None,
              events: list[Event] | None = None, coids: list[str] | None = None,
              spans: list[tuple[int, int]] | None = None, order: list[int] | None = None,
              per_command: list[list[Event]] | None = None) -> None:
        """Apply one book call's events (``part``, EVENT_DTYPE).  With client order ids
        (``coids[i]`` for command i, '' none) the commands, their events as tuples and the spans
        of their events (from the book's ``firsts``) are needed too: the first answer to each client order
        id is remembered (in journal order, ``order``, by `flush_coids`).  ``per_command``: each
        command's events already read as tuples (``events`` is not read then)."""
        ci = self._index[book]
        if not coids or not any(coids):
            if len(part):
                self._run(ci, part, 0, len(part))
            return
        assert commands is not None and (events is not None or per_command is not None) and spans is not None
        # one kernel call for the whole run: the rows each first answer is made from are copied
        # right after its command's events (marks), as they stood then
        coidx: list[int] = []
        mine: dict[int, str] = {}  # orders accepted here with a client order id
        marks: list[tuple[int, int, int]] = []
        asked: list[tuple[int, int]] = []  # (command, its mark or -1)
        evs_of: dict[int, list[Event]] = {}  # each such command's events, read once
        for i, (a, b) in enumerate(spans):
            coid = coids[i]
            if not coid:
                continue
            cmd = commands[i]
            evs = evs_of[i] = events[a:b] if per_command is None else per_command[i]
            if evs and evs[0].oid == cmd.oid and evs[0].type == EV_ACCEPTED:  # an order accepted with it
                coidx.append(a)
                self.order_coids[cmd.oid] = mine[cmd.oid] = coid
            if evs and cmd.type in _ORDER_CMDS:
                marks.append((b - 1, 0, cmd.oid))
            elif evs and cmd.type == CMD_RELEASE:
                marks.append((b - 1, 1, cmd.lease_id))
            else:
                asked.append((i, -1))
                continue
            asked.append((i, len(marks) - 1))
        cap = self._run(ci, part, 0, len(part), coidx, marks).tolist()
        for i, m in asked:
            cmd = commands[i]
            orders: dict[int, OrderInfo] | None = None  # (None: the state's own, for answers that read none)
            leases: dict[str, LeaseInfo] | None = None
            if m >= 0:
                orders, leases = {}, {}
                if cap[m][-1] and marks[m][1] == 0:
                    orders[cmd.oid] = self._order_of(cap[m], mine.get(cmd.oid, ""))
                elif cap[m][-1]:
                    x = self._lease_of(cap[m])
                    leases[x.ref] = x
            self._first_answer(book, cmd, evs_of[i], coids[i], None if order is None else order[i], orders, leases)

    # ------------------------------------------------------------------ snapshots
    def to_data(self) -> StateData:
        """The records (the reference's snapshot form): tests and benchmarks compare states by it."""
        return StateData(orders=list(self.orders.values()), closed=self.closed, leases=self.leases.values(),
                         coids=[(acc, coid, ans) for (acc, coid), ans in self.coids.items()],
                         halted=sorted(self.halted))

    def capture(self) -> Callable[[], TableData]:
        """The state now, for a snapshot taken off the event loop: copies of the tables' rows in
        use (a few milliseconds); the function returned deflates them (zlib lets go of the GIL)
        and encodes the client order ids a chunk at a time, in a worker thread."""
        S = self._S
        OT = self._O[:S[K.S_OHW]].copy()
        LS = self._LS[:S[K.S_LHW]].copy()
        closed = self._closed[:S[K.S_NCLOSED]].copy()
        forget = [h[:n].copy() for h, n in zip(self._fheap, self._FC.tolist(), strict=True)]
        next_ord = int(S[K.S_ORD])
        order_coids = list(self.order_coids.items())
        coids = list(self.coids.items())
        halted = sorted(self.halted)
        names = list(self._names)

        def data() -> TableData:
            return TableData(classes=names, orders=_pack(OT), leases=_pack(LS), closed=_pack(closed),
                             forget=[_pack(h) for h in forget], next_ord=next_ord,
                             order_coids=_encode_array(order_coids, len(order_coids)),  # type: ignore[arg-type]
                             coids=_encode_array(((acc, coid, ans) for (acc, coid), ans in coids),  # type: ignore[arg-type]
                                                 len(coids)),
                             halted=halted)

        return data

    def load_data(self, data: TableData) -> None:
        if data.classes != self._names:
            raise ValueError(f"the snapshot's classes {data.classes} are not the configuration's {self._names}")
        OT, LS, closed = _unpack(data.orders, K.NO), _unpack(data.leases, K.NLS), _unpack(data.closed, 2)
        self._reset()
        self._O = _grown(self._O, len(OT))
        self._ofree = np.zeros(len(self._O), np.int64)
        self._LS = _grown(self._LS, len(LS))
        self._lfree = np.zeros(len(self._LS), np.int64)
        self._closed = _grown(self._closed, len(closed) + 1)
        self._OC = _grown(self._OC, len(OT))
        self._newacc = np.zeros(len(self._OC), np.int64)
        self._O[:len(OT)] = OT
        self._LS[:len(LS)] = LS
        self._closed[:len(closed)] = closed
        S = self._S
        S[K.S_OHW], S[K.S_LHW], S[K.S_NCLOSED], S[K.S_ORD] = len(OT), len(LS), len(closed), data.next_ord
        for ci, blob in enumerate(data.forget):
            h = _unpack(blob, 2)
            self._fheap[ci] = _grown(self._fheap[ci], len(h))
            self._fheap[ci][:len(h)] = h
            self._FC[ci] = len(h)
        self._omap = intmap.room(self._omap, len(OT))
        self._lmap = intmap.room(self._lmap, len(LS))
        self._accs = intmap.room(self._accs, len(OT))
        K.rebuild(self._O, self._omap, self._ofree, self._LS, self._lmap, self._lfree, S, self._accs, self._OC,
                  self._newacc)
        self._acc = {acc: k for k, acc in enumerate(self._newacc[:S[K.S_NACC]].tolist())}
        self.order_coids = dict(data.order_coids)
        self.coids = {(acc, coid): ans for acc, coid, ans in data.coids}
        self.halted = set(data.halted)

    def digest(self) -> dict[str, Any]:
        """Aggregates that two equal states share (the crash test compares them)."""
        OT = self._O[:self._S[K.S_OHW]]
        open_ = OT[:, K.O_STATUS] == K.OPEN
        LS = self._LS[:self._S[K.S_LHW]]
        live = LS[:, K.L_ORD] > 0
        return {"orders_open": int(open_.sum()), "leases": int(live.sum()),
                "held": int(OT[open_, K.O_HOLD].sum()), "cost": int(LS[live, K.L_COST].sum())}


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    """``a`` with at least ``need`` rows (doubling), the new ones zero."""
    if need <= len(a):
        return a
    out = np.zeros((max(need, 2 * len(a)), a.shape[1]), np.int64)
    out[:len(a)] = a
    return out


__all__ = ["ExchangeState", "TableData", "Encoded"]
