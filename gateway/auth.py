"""Request signing, verification, replay protection and rate limiting (no web framework here).

A request is signed with its API key's secret::

    signature = hex(HMAC-SHA256(key=secret.encode(), msg=f"{timestamp}{METHOD}{path}".encode() + body))

``timestamp`` is integer milliseconds since the epoch, ``METHOD`` upper-case, ``path`` the path
as sent, with its query string if any. REST requests carry ``GPUX-Key``, ``GPUX-Timestamp``
and ``GPUX-Signature``; a WebSocket session's first message is
``{"op":"auth","key":KEY_ID,"ts":MS,"sig":SIG}`` where SIG signs ``GET /v1/ws`` and no body.

The server accepts a timestamp within ``window_ms`` (30 s) of its clock on either side, and
each (key, signature) once (:class:`ReplayGuard`). docs/auth.md is the client's view.

Secrets appear in no exception message and no repr of anything here.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from gateway.accounts import ApiKey

HEADER_KEY = "GPUX-Key"
HEADER_TIMESTAMP = "GPUX-Timestamp"
HEADER_SIGNATURE = "GPUX-Signature"
WS_PATH = "/v1/ws"
WS_METHOD = "GET"
DEFAULT_WINDOW_MS = 30_000

STATUS = {
    "MISSING_AUTH": 401,
    "UNKNOWN_KEY": 401,
    "BAD_SIGNATURE": 401,
    "STALE_TIMESTAMP": 401,
    "REPLAYED": 401,
    "FORBIDDEN": 403,
}

_TIMESTAMP_RE = re.compile(r"[0-9]{1,16}")
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")
_SHOWABLE_KEY_RE = re.compile(r"gk_[A-Za-z0-9_-]{16}")


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def sign(secret: str, timestamp_ms: int, method: str, path: str, body: bytes = b"") -> str:
    """The hex HMAC-SHA256 signature of one request."""
    message = f"{int(timestamp_ms)}{method.upper()}{path}".encode() + bytes(body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def auth_headers(key_id: str, secret: str, method: str, path: str, body: bytes = b"",
                 now_ms: int | None = None) -> dict[str, str]:
    """The three GPUX-* headers of a signed request (timestamp: now, unless given)."""
    ts = wall_clock_ms() if now_ms is None else int(now_ms)
    return {HEADER_KEY: key_id, HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: sign(secret, ts, method, path, body)}


class AuthError(Exception):
    """A refused request: a stable ``code``, a one-sentence ``message`` and the HTTP ``status``.

    Codes: MISSING_AUTH, UNKNOWN_KEY, BAD_SIGNATURE, STALE_TIMESTAMP, REPLAYED (401), FORBIDDEN (403).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS[code]

    def as_dict(self) -> dict[str, str]:
        """The JSON error body: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"AuthError({self.code!r}, {self.message!r})"


class ReplayGuard:
    """Remembers each (key_id, signature) for ``2 × window_ms`` and refuses a second use.

    A signature can only be valid while its timestamp is within the window of the server's
    clock, i.e. for at most 2 × window after any moment it was seen, so forgetting it after that
    is safe. Entries are dropped as they expire: memory is bounded by the request rate × 2 × window.
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be positive")
        self.ttl_ms = 2 * int(window_ms)
        self._expiry: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def first_use(self, key_id: str, signature: str, now_ms: int) -> bool:
        """True (and remembered) the first time a pair is seen; False for a replay."""
        pair = (key_id, signature.lower())
        with self._lock:
            self._expire(now_ms)
            if pair in self._expiry:
                return False
            expiry = now_ms + self.ttl_ms
            self._expiry[pair] = expiry
            heapq.heappush(self._heap, (expiry, pair))
            return True

    def _expire(self, now_ms: int) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now_ms:
            _, pair = heapq.heappop(heap)
            del expiry[pair]

    def __len__(self) -> int:
        return len(self._expiry)


def _showable(key_id: str) -> str:
    """A key id for a message: as given if it has the shape of one, else a placeholder."""
    return key_id if _SHOWABLE_KEY_RE.fullmatch(key_id) else "(malformed key id)"


class Verifier:
    """Checks a signed request, in this order: all fields present, the timestamp is integer ms
    within ±window of the clock, the key is known, the signature matches, it was not used before.

    ``lookup`` is the caller's (cached) key lookup, e.g. ``AccountStore.key``.
    """

    def __init__(self, lookup: Callable[[str], ApiKey | None], window_ms: int = DEFAULT_WINDOW_MS,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.lookup = lookup
        self.window_ms = int(window_ms)
        self.clock_ms = clock_ms
        self.replays = ReplayGuard(window_ms)

    def verify(self, key_id: str | None, timestamp: str | int | None, signature: str | None,
               method: str, path: str, body: bytes) -> ApiKey:
        """The request's live key, or AuthError."""
        missing = [name for name, value in ((HEADER_KEY, key_id), (HEADER_TIMESTAMP, timestamp),
                                            (HEADER_SIGNATURE, signature)) if value is None or value == ""]
        if missing:
            raise AuthError("MISSING_AUTH", f"the request is not signed: {', '.join(missing)} missing "
                                            "(docs/auth.md says how to sign)")
        assert key_id is not None and timestamp is not None and signature is not None
        ts = self._parse_timestamp(timestamp)
        now = self.clock_ms()
        if abs(now - ts) > self.window_ms:
            raise AuthError("STALE_TIMESTAMP", f"the timestamp is {(ts - now) / 1000:+.3f} s from the "
                                               f"server's clock; at most ±{self.window_ms / 1000:g} s is "
                                               "accepted (is the client's clock right?)")
        key = self.lookup(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise AuthError("UNKNOWN_KEY", f"the API key {_showable(str(key_id))} is unknown or revoked")
        if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
            raise AuthError("BAD_SIGNATURE", "the signature must be 64 hex digits of HMAC-SHA256")
        expected = sign(key.secret, ts, method, path, body)
        if not hmac.compare_digest(expected, signature.lower()):
            raise AuthError("BAD_SIGNATURE", "the signature does not match the request "
                                             "(HMAC-SHA256 over timestamp, method, path and body)")
        if not self.replays.first_use(key.key_id, signature, now):
            raise AuthError("REPLAYED", "this signature was used already; sign each request anew")
        return key

    def verify_headers(self, headers: Mapping[str, str], method: str, path: str, body: bytes) -> ApiKey:
        """verify() with the three GPUX-* headers taken from a (case-insensitive or plain) mapping."""
        return self.verify(_header(headers, HEADER_KEY), _header(headers, HEADER_TIMESTAMP),
                           _header(headers, HEADER_SIGNATURE), method, path, body)

    def verify_ws(self, message: Mapping[str, Any]) -> ApiKey:
        """verify() for a WebSocket session's first message ``{"op":"auth","key":..,"ts":..,"sig":..}``."""
        if not isinstance(message, Mapping) or message.get("op") != "auth":
            raise AuthError("MISSING_AUTH",
                            'the first message must be {"op":"auth","key":..,"ts":..,"sig":..}')
        return self.verify(message.get("key"), message.get("ts"), message.get("sig"), WS_METHOD, WS_PATH, b"")

    @staticmethod
    def _parse_timestamp(timestamp: str | int) -> int:
        if isinstance(timestamp, int) and not isinstance(timestamp, bool) and timestamp >= 0:
            return timestamp
        if isinstance(timestamp, str) and _TIMESTAMP_RE.fullmatch(timestamp):
            return int(timestamp)
        raise AuthError("STALE_TIMESTAMP", "the timestamp must be integer milliseconds since the epoch")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look again ignoring case, as HTTP does
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def require_role(key: ApiKey, *allowed: str) -> None:
    """Pass if the key's account has one of the ``allowed`` roles, or is admin; else FORBIDDEN."""
    if key.role == "admin" or key.role in allowed:
        return
    needed = [r for r in allowed if r != "admin"]
    wanted = f"{' or '.join(_a(r) for r in needed)} account (or admin)" if needed else "an admin account"
    raise AuthError("FORBIDDEN", f"this needs {wanted}; key {key.key_id} belongs to {_a(key.role)} account")


class RateLimiter:
    """Token buckets by key: ``burst`` requests at once, refilled at ``rate_per_s``.  The one
    token bucket of the exchange: the gateway's per API key and per client address, the feeds'
    per connection (``feeds.hub.Hub.ops``, keyed by connection number).

    ``take(key)`` answers 0.0 when the request may go, else the seconds to wait before it would
    (the retry-after); a refused take consumes nothing. Buckets idle long enough to be full again
    are forgotten, and at most ``max_keys`` are kept (the least recently used go first), so a flood
    of distinct keys cannot grow memory without bound.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate_per_s)
        self.burst = int(burst)
        self.clock = clock
        self.max_keys = int(max_keys)
        self._refill_s = self.burst / self.rate  # an empty bucket is full again after this long
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [tokens, last], LRU first
        self._lock = threading.Lock()

    def take(self, key: Hashable, n: int = 1) -> float:
        if n != 1 and not 1 <= n <= self.burst:
            raise ValueError(f"n must be between 1 and the burst ({self.burst})")
        now = self.clock()
        burst = self.burst
        with self._lock:  # (one per request on the order path: the bucket is updated in place)
            buckets = self._buckets
            bucket = buckets.get(key)
            if bucket is None:
                tokens = float(burst)
                bucket = buckets[key] = [tokens, now]
            else:
                elapsed = now - bucket[1]
                tokens = bucket[0] + elapsed * self.rate if elapsed > 0 else bucket[0]
                if tokens > burst:
                    tokens = float(burst)
                buckets.move_to_end(key)
            if tokens >= n:
                bucket[0] = tokens - n
                wait = 0.0
            else:
                bucket[0] = tokens
                wait = (n - tokens) / self.rate
            bucket[1] = now
            if len(buckets) > self.max_keys or now - next(iter(buckets.values()))[1] >= self._refill_s:
                self._forget(now)
            return wait

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            _, (_, last) = next(iter(buckets.items()))
            if now - last < self._refill_s and len(buckets) <= self.max_keys:
                break
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


TokenBucket = RateLimiter  # the same thing: one bucket per key


# (key id, clock) -> the last timestamp any Signer of this process gave the key on that clock
_LAST_TS: dict[tuple[str, Callable[[], int]], int] = {}
_LAST_LOCK = threading.Lock()


class Signer:
    """Client side: signs requests with one key, with timestamps strictly increasing per key
    across every Signer of the process on the same clock (a clock that repeats or goes back gives
    last + 1 ms), so two identical requests in the same millisecond never share a signature — e.g.
    a trading session's and a market-data session's logins, whose signed text is the same."""

    def __init__(self, key_id: str, secret: str, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.key_id = key_id
        self._secret = secret
        self._clock_ms = clock_ms

    def next_timestamp(self) -> int:
        mine = (self.key_id, self._clock_ms)
        with _LAST_LOCK:
            ts = max(int(self._clock_ms()), _LAST_TS.get(mine, -1) + 1)
            _LAST_TS[mine] = ts
            return ts

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        """The GPUX-* headers for one request."""
        return auth_headers(self.key_id, self._secret, method, path, body, now_ms=self.next_timestamp())

    def ws_auth(self) -> dict[str, Any]:
        """The first message of a WebSocket session."""
        ts = self.next_timestamp()
        return {"op": "auth", "key": self.key_id, "ts": ts, "sig": sign(self._secret, ts, WS_METHOD, WS_PATH)}

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


class KeyCache:
    """A key lookup that remembers the keys it found (the account store is read once per key);
    `forget` drops a revoked one, so the next request looks it up again (and finds nothing)."""

    def __init__(self, lookup: Callable[[str], ApiKey | None]) -> None:
        self.lookup = lookup
        self.keys: dict[str, ApiKey] = {}

    def __call__(self, key_id: str) -> ApiKey | None:
        k = self.keys.get(key_id)
        if k is None:
            k = self.lookup(key_id)
            if k is not None:
                self.keys[key_id] = k
        return k

    def forget(self, key_id: str) -> None:
        self.keys.pop(key_id, None)


def cached(lookup: Callable[[str], ApiKey | None]) -> KeyCache:
    """A `KeyCache` over ``lookup``."""
    return KeyCache(lookup)
