"""A market-data subscriber (Python, asyncio): level-2 books from snapshot + deltas, gap detection
and resubscription.  Works on the live feed (``/v1/feeds``) and on replay (``/v1/replay``).

    async with FeedClient("http://127.0.0.1:8080") as fc:
        await fc.subscribe("book", "H100")
        await fc.subscribe("trades", "H100")
        ...
        fc.books["H100"].level2()     # {"bids": [[price, gpus], ...], "asks": ..., ...}
        await fc.subscribe("products", "H100")       # live only: the executable books ...
        fc.products["H100"]["on_demand:24h:x1"]      # {"best_bid", "best_ask", "bids", "asks", ...}
        await fc.subscribe("quotes", "H100")         # ... and the standard sizes' quotes
        fc.quotes["H100"]["spot:8h:x8"]              # [{"gpus", "limit", "average"}, ...]

Gap rule (docs/feeds.md): every message of a stream carries ``u``, one more than the stream's
previous message; a snapshot carries the current ``u``.  A message whose ``u`` is not the last
one + 1, or a heartbeat whose ``u`` for a stream differs from the last one seen, means something
was missed: the client subscribes again (which gives a fresh snapshot) and ignores the stream's
messages until the new snapshot arrives.  A book message whose ``checksum`` differs from the
client's own copy's (docs/feeds.md) is handled the same way.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from feeds.model import CHECKSUM_DEPTH, SIDE_KEYS, book_checksum, message_stream, stream_name
from gateway.auth import Signer

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class Level2:
    """A level-2 book kept from snapshot + deltas (absolute sizes; 0 removes a level)."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[int, int]] = {k: {} for k in SIDE_KEYS}
        self.seq = 0
        self.time = 0
        self.u = 0

    def apply(self, msg: dict[str, Any]) -> None:
        if msg.get("action") == "snapshot":
            self.sides = {k: {} for k in SIDE_KEYS}
        for k in SIDE_KEYS:
            side = self.sides[k]
            for price, gpus in msg.get(k, ()):
                if gpus:
                    side[price] = gpus
                else:
                    side.pop(price, None)
        self.seq, self.time, self.u = msg["seq"], msg["time"], msg["u"]

    def checksum(self) -> int:
        """The book message checksum of this copy (`feeds.model.book_checksum`: top levels only)."""
        s = self.sides
        top = {k: (heapq.nsmallest if "asks" in k else heapq.nlargest)(CHECKSUM_DEPTH, s[k]) for k in SIDE_KEYS}
        return book_checksum({k: [[p, s[k][p]] for p in ps] for k, ps in top.items()})

    def level2(self) -> dict[str, list[list[int]]]:
        s = self.sides
        return {"bids": [[p, s["bids"][p]] for p in sorted(s["bids"], reverse=True)],
                "spot_bids": [[p, s["spot_bids"][p]] for p in sorted(s["spot_bids"], reverse=True)],
                "asks": [[p, s["asks"][p]] for p in sorted(s["asks"])],
                "spot_asks": [[p, s["spot_asks"][p]] for p in sorted(s["spot_asks"])]}


class FeedClient:
    def __init__(self, url: str, path: str = "/v1/feeds", session: aiohttp.ClientSession | None = None,
                 drop: Callable[[dict[str, Any]], bool] | None = None,
                 on_message: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.url = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        if not self.url.endswith(path) and "/v1/" not in self.url:
            self.url += path
        self._session = session
        self._own_session = session is None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.drop = drop  # tests: return True to lose a message on purpose
        self.on_message = on_message
        self.books: dict[str, Level2] = {}
        # the products' books and size quotes of each class (live only): class -> product id -> ...
        self.products: dict[str, dict[str, dict[str, Any]]] = {}
        self.quotes: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.last_u: dict[tuple[Any, str], int] = {}  # (class or account, stream) -> last u
        self.subs: dict[tuple[Any, str], dict[str, Any]] = {}  # the subscribe op of each stream
        self.pending: set[tuple[Any, str]] = set()  # resubscribed, waiting for the snapshot
        self.gaps = 0
        self.checksum_errors = 0  # book messages whose checksum this client's copy did not match
        self.received = 0
        self.account = 0
        self.closed: asyncio.Future | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader: asyncio.Task | None = None
        self._waiters: dict[Any, asyncio.Future] = {}
        self._next_id = 0
        self.hello: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.keep = False  # keep every message in self.messages

    async def __aenter__(self) -> FeedClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.ws = await self._session.ws_connect(self.url, autoping=True, heartbeat=None, max_msg_size=0)
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        first = await self.ws.receive_json(timeout=10)
        self.hello = first
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ requests
    def _send(self, op: dict[str, Any]) -> asyncio.Future:
        self._next_id += 1
        op["id"] = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._waiters[self._next_id] = fut
        assert self.ws is not None
        asyncio.ensure_future(self.ws.send_bytes(_enc.encode(op)))
        return fut

    async def subscribe(self, channel: str, gpu_class: str | None = None, interval: str | None = None,
                  kind: str | None = None) -> dict:
        op: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if gpu_class is not None:
            op["class"] = gpu_class
        if interval is not None:
            op["interval"] = interval
        if kind is not None:
            op["kind"] = kind
        key = self._key(channel, gpu_class, interval, kind)
        self.subs[key] = dict(op)
        self.pending.add(key)
        return await asyncio.wait_for(self._send(op), 10)

    async def unsubscribe(self, channel: str, gpu_class: str | None = None, interval: str | None = None,
                  kind: str | None = None) -> dict:
        op: dict[str, Any] = {"op": "unsubscribe", "channel": channel}
        if gpu_class is not None:
            op["class"] = gpu_class
        if interval is not None:
            op["interval"] = interval
        if kind is not None:
            op["kind"] = kind
        key = self._key(channel, gpu_class, interval, kind)
        self.subs.pop(key, None)
        self.pending.discard(key)
        self.last_u.pop(key, None)
        return await asyncio.wait_for(self._send(op), 10)

    async def auth(self, key_id: str, secret: str) -> dict:
        m = Signer(key_id, secret).ws_auth()
        m.pop("cancel_on_disconnect", None)
        ans = await asyncio.wait_for(self._send(m), 10)
        if ans.get("type") == "authenticated":
            self.account = ans["account"]
        return ans

    def _key(self, channel: str, gpu_class: str | None, interval: str | None,
             kind: str | None = None) -> tuple[Any, str]:
        if gpu_class is None:
            return (self.account, channel)
        return (gpu_class, stream_name(channel, interval, kind) or channel)

    def _resubscribe(self, key: tuple[Any, str]) -> None:
        self.gaps += 1
        op = self.subs.get(key)
        if op is None or key in self.pending:
            return
        self.pending.add(key)
        self._send(dict(op))

    # ------------------------------------------------------------------ reading
    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._handle(_dec.decode(msg.data))
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
        finally:
            self.close_code = ws.close_code
            if ws.close_code is not None and isinstance(getattr(ws, "_close_message", None), str):
                self.close_reason = ws._close_message  # type: ignore[attr-defined]
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(ws.close_code)
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the feed connection closed"))

    def _handle(self, m: dict[str, Any]) -> None:
        self.received += 1
        if self.drop is not None and self.drop(m):
            return
        if self.keep:
            self.messages.append(m)
        t = m.get("type")
        if t in ("subscribed", "unsubscribed", "authenticated", "error", "pong"):
            fut = self._waiters.pop(m.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(m)
        elif t == "heartbeat":
            self._heartbeat(m)
        elif "u" in m:
            self._stream(m)
        if self.on_message is not None:
            self.on_message(m)

    def _stream(self, m: dict[str, Any]) -> None:
        if "class" in m and "account" not in m:
            key: tuple[Any, str] = (m["class"], message_stream(m))
        else:
            key = (m["account"], m["type"])
        if m.get("action") == "snapshot":
            self.pending.discard(key)
            self.last_u[key] = m["u"]
        elif key in self.pending:
            return  # from before the snapshot we asked for
        else:
            last = self.last_u.get(key)
            if last is None or m["u"] != last + 1:
                self._resubscribe(key)
                return
            self.last_u[key] = m["u"]
        if key[1] in ("products", "quotes"):
            self._products(m)
        elif key[1] == "book":
            book = self.books.setdefault(m["class"], Level2())
            book.apply(m)
            if "checksum" in m and book.checksum() != m["checksum"]:
                self.checksum_errors += 1  # this copy went wrong: start again from a snapshot
                self._resubscribe(key)

    def _products(self, m: dict[str, Any]) -> None:
        """A products or quotes message: a snapshot replaces the class's copy, an update replaces
        the rows it lists, whole, and drops the products in ``removed``."""
        t, cls = m["type"], m["class"]
        store = self.products if t == "products" else self.quotes
        mine = {} if m["action"] == "snapshot" else store.setdefault(cls, {})
        for gone in m.get("removed", ()):
            mine.pop(gone, None)
        for row in m[t]:
            mine[row["product"]] = row if t == "products" else row["quotes"]
        store[cls] = mine

    def _heartbeat(self, m: dict[str, Any]) -> None:
        owner = m.get("class", m.get("account"))
        for stream, u in m["u"].items():
            key = (owner, stream)
            if key in self.last_u and key not in self.pending and self.last_u[key] != u:
                self._resubscribe(key)
