"""Signing, verification, replay protection, roles and rate limits (exchange/auth.py)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from gateway.accounts import AccountStore, ApiKey
from gateway.auth import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    STATUS,
    WS_METHOD,
    WS_PATH,
    AuthError,
    RateLimiter,
    ReplayGuard,
    Signer,
    TokenBucket,
    Verifier,
    auth_headers,
    require_role,
    sign,
)

KEY_ID = "gk_abcdefghijklmnop"
SECRET = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-x"
T0 = 1_767_225_600_000
BODY = b'{"type":"bid","gpus":8}'
PATH = "/v1/orders?class=H100"


class Clock:
    """A settable clock (ms for the verifier, s for the rate limiter)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_verifier(clock: Clock, window_ms: int = 30_000, role: str = "trader") -> Verifier:
    keys = {KEY_ID: ApiKey(KEY_ID, 7, role, SECRET)}
    return Verifier(keys.get, window_ms=window_ms, clock_ms=clock)  # type: ignore[arg-type]


def signed(ts: int = T0, method: str = "POST", path: str = PATH, body: bytes = BODY,
           secret: str = SECRET) -> tuple[str, int, str]:
    return KEY_ID, ts, sign(secret, ts, method, path, body)


def code_of(verifier: Verifier, *args: object) -> str:
    with pytest.raises(AuthError) as e:
        verifier.verify(*args)  # type: ignore[arg-type]
    assert e.value.status == STATUS[e.value.code]
    assert SECRET not in str(e.value) and SECRET not in repr(e.value) and SECRET not in e.value.message
    return e.value.code


# -- signing ------------------------------------------------------------------------------------


def test_sign_is_documented_hmac() -> None:
    expected = hmac.new(SECRET.encode(), f"{T0}POST{PATH}".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T0, "post", PATH, BODY) == expected
    assert len(expected) == 64


def test_sign_worked_examples_of_the_docs() -> None:
    # docs/auth.md gives these numbers in its Python and openssl examples
    body = b'{"class":"H100","gpus":16,"price":2000000,"end":1767312000}'
    assert sign("example-secret", 1767225600000, "POST", "/v1/asks", body) == (
        "c68bd9f7b8967bccb397783e8b87deb3f89bdc72a657aa28cc66ac9461d33413")
    assert sign("example-secret", 1767225600000, "GET", "/v1/quote?class=H100&kind=spot&gpus=8&hours=2") == (
        "985b11f755d2fc1cf55b4afcf44cca10291d2e7ff2182c2d19b80db998151b81")
    assert sign("example-secret", 1767225600000, "GET", "/v1/ws") == (
        "4bf4cfb5ef362d6766d408cda29b83f2d55f5cc6a734040e4ad9e13f8bff766f")


def test_auth_headers() -> None:
    h = auth_headers(KEY_ID, SECRET, "GET", "/v1/book", now_ms=T0)
    assert h == {HEADER_KEY: KEY_ID, HEADER_TIMESTAMP: str(T0),
                 HEADER_SIGNATURE: sign(SECRET, T0, "GET", "/v1/book")}
    assert SECRET not in str(h)


# -- verification -------------------------------------------------------------------------------


def test_round_trip() -> None:
    v = make_verifier(Clock(T0))
    key = v.verify(*signed(), "POST", PATH, BODY)
    assert key.key_id == KEY_ID and key.account_id == 7 and key.role == "trader"


def test_round_trip_with_string_timestamp_and_headers() -> None:
    v = make_verifier(Clock(T0 + 5))
    h = auth_headers(KEY_ID, SECRET, "DELETE", "/v1/orders/9", now_ms=T0)
    key = v.verify(h[HEADER_KEY], h[HEADER_TIMESTAMP], h[HEADER_SIGNATURE], "DELETE", "/v1/orders/9", b"")
    assert key.account_id == 7
    h = auth_headers(KEY_ID, SECRET, "DELETE", "/v1/orders/10", now_ms=T0)
    lower = {k.lower(): val for k, val in h.items()}  # header names are case-insensitive
    assert v.verify_headers(lower, "DELETE", "/v1/orders/10", b"").key_id == KEY_ID


def test_round_trip_with_a_real_store(tmp_path: Path) -> None:
    with AccountStore(tmp_path / "accounts.db") as store:
        account, key_id, secret = store.create_account("alice", "provider")
        v = Verifier(store.key, clock_ms=lambda: T0)
        key = v.verify(key_id, T0, sign(secret, T0, "GET", "/v1/leases"), "GET", "/v1/leases", b"")
        assert key.account_id == account.id
        store.revoke_key(key_id)
        assert code_of(v, key_id, T0, sign(secret, T0, "GET", "/v1/x"), "GET", "/v1/x", b"") == "UNKNOWN_KEY"


@pytest.mark.parametrize("change", ["secret", "body", "path", "query", "method", "timestamp"])
def test_any_alteration_is_a_bad_signature(change: str) -> None:
    v = make_verifier(Clock(T0))
    key_id, ts, sig = signed()
    method, path, body = "POST", PATH, BODY
    if change == "secret":
        sig = sign("another secret", ts, method, path, body)
    elif change == "body":
        body = b'{"type":"bid","gpus":9}'
    elif change == "path":
        path = "/v1/orderz?class=H100"
    elif change == "query":
        path = "/v1/orders?class=A100"
    elif change == "method":
        method = "PUT"
    elif change == "timestamp":
        ts += 1
    assert code_of(v, key_id, ts, sig, method, path, body) == "BAD_SIGNATURE"
    # the genuine request still passes afterwards: a failed check remembers nothing
    assert v.verify(*signed(), "POST", PATH, BODY).key_id == KEY_ID


def test_method_case_does_not_matter() -> None:
    v = make_verifier(Clock(T0))
    assert v.verify(KEY_ID, T0, sign(SECRET, T0, "post", PATH, BODY), "POST", PATH, BODY).key_id == KEY_ID


@pytest.mark.parametrize("sig", ["", "zz" * 32, "ab" * 31, "ab" * 33, "é" * 64])
def test_malformed_signature(sig: str) -> None:
    v = make_verifier(Clock(T0))
    expected = "MISSING_AUTH" if sig == "" else "BAD_SIGNATURE"
    assert code_of(v, KEY_ID, T0, sig, "POST", PATH, BODY) == expected


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_missing_fields(missing: int) -> None:
    v = make_verifier(Clock(T0))
    fields: list[object] = list(signed())
    for empty in (None, ""):
        fields[missing] = empty
        assert code_of(v, *fields, "POST", PATH, BODY) == "MISSING_AUTH"


def test_missing_message_names_the_headers() -> None:
    v = make_verifier(Clock(T0))
    with pytest.raises(AuthError) as e:
        v.verify(None, None, None, "GET", "/", b"")
    assert e.value.status == 401
    for header in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE):
        assert header in e.value.message


@pytest.mark.parametrize("skew", [-30_000, -29_999, 0, 29_999, 30_000])
def test_window_accepts_30s_both_sides(skew: int) -> None:
    v = make_verifier(Clock(T0 + skew))  # the server's clock is off by `skew` from the client's
    assert v.verify(*signed(), "POST", PATH, BODY).key_id == KEY_ID


@pytest.mark.parametrize("skew", [-30_001, 30_001, -3_600_000, 10**12])
def test_window_refuses_beyond(skew: int) -> None:
    v = make_verifier(Clock(T0 + skew))
    assert code_of(v, *signed(), "POST", PATH, BODY) == "STALE_TIMESTAMP"


def test_window_is_configurable() -> None:
    v = make_verifier(Clock(T0 + 5_001), window_ms=5_000)
    assert code_of(v, *signed(), "POST", PATH, BODY) == "STALE_TIMESTAMP"


@pytest.mark.parametrize("ts", ["abc", "-5", "1.5e12", " 1767225600000", 1.7e12, True, "1" * 17])
def test_unparseable_timestamp(ts: object) -> None:
    v = make_verifier(Clock(T0))
    assert code_of(v, KEY_ID, ts, "ab" * 32, "POST", PATH, BODY) == "STALE_TIMESTAMP"


def test_check_order() -> None:
    v = make_verifier(Clock(T0))
    # a stale timestamp is reported before an unknown key, an unknown key before a bad signature
    assert code_of(v, "gk_unknownunknownu", T0 - 60_000, "ab" * 32, "GET", "/", b"") == "STALE_TIMESTAMP"
    assert code_of(v, "gk_unknownunknownu", T0, "ab" * 32, "GET", "/", b"") == "UNKNOWN_KEY"
    assert code_of(v, KEY_ID, T0, "ab" * 32, "GET", "/", b"") == "BAD_SIGNATURE"


def test_unknown_key_message_does_not_echo_junk() -> None:
    v = make_verifier(Clock(T0))
    with pytest.raises(AuthError) as e:
        v.verify("<script>" * 100, T0, "ab" * 32, "GET", "/", b"")
    assert e.value.code == "UNKNOWN_KEY" and "<script>" not in e.value.message


def test_replay_is_refused() -> None:
    clock = Clock(T0)
    v = make_verifier(clock)
    request = (*signed(), "POST", PATH, BODY)
    assert v.verify(*request).key_id == KEY_ID
    assert code_of(v, *request) == "REPLAYED"
    clock.now += 29_000  # still within the window: still a replay
    assert code_of(v, *request) == "REPLAYED"
    # an upper-case copy of the same signature is the same signature
    key_id, ts, sig = signed()
    assert code_of(v, key_id, ts, sig.upper(), "POST", PATH, BODY) == "REPLAYED"
    # the same request signed one ms later is a new request
    assert v.verify(*signed(ts=T0 + 1), "POST", PATH, BODY).key_id == KEY_ID


def test_replay_after_the_window_is_stale_not_accepted() -> None:
    clock = Clock(T0)
    v = make_verifier(clock)
    request = (*signed(), "POST", PATH, BODY)
    v.verify(*request)
    clock.now += 60_001  # the guard may have forgotten it, but the timestamp is too old now
    assert code_of(v, *request) == "STALE_TIMESTAMP"


def test_replay_guard_forgets_after_twice_the_window() -> None:
    guard = ReplayGuard(window_ms=1_000)
    for i in range(1_000):
        assert guard.first_use(KEY_ID, f"{i:064x}", T0 + i)
    assert not guard.first_use(KEY_ID, f"{0:064x}", T0 + 1_000)
    assert len(guard) == 1_000
    assert guard.first_use(KEY_ID, "f" * 64, T0 + 5_000)  # every older entry has expired
    assert len(guard) == 1
    assert guard.first_use(KEY_ID, f"{0:064x}", T0 + 5_000)


def test_replay_guard_memory_stays_bounded_under_steady_load() -> None:
    guard = ReplayGuard(window_ms=100)
    sizes = []
    for i in range(10_000):
        guard.first_use(KEY_ID, f"{i:064x}", T0 + i)  # one request per ms
        sizes.append(len(guard))
    assert max(sizes) <= 201  # 2 x window worth of requests


def test_replay_guard_keys_are_separate() -> None:
    guard = ReplayGuard()
    assert guard.first_use("gk_a", "ab" * 32, T0)
    assert guard.first_use("gk_b", "ab" * 32, T0)
    assert not guard.first_use("gk_a", "ab" * 32, T0)


def test_ws_auth_message() -> None:
    clock = Clock(T0)
    v = make_verifier(clock)
    message = Signer(KEY_ID, SECRET, clock_ms=lambda: T0).ws_auth()
    assert message == {"op": "auth", "key": KEY_ID, "ts": T0, "sig": sign(SECRET, T0, "GET", "/v1/ws")}
    assert v.verify_ws(message).key_id == KEY_ID
    assert code_of_ws(v, message) == "REPLAYED"
    assert code_of_ws(v, {"op": "subscribe"}) == "MISSING_AUTH"
    assert code_of_ws(v, {"op": "auth", "key": KEY_ID, "ts": T0 + 1}) == "MISSING_AUTH"
    assert code_of_ws(v, {**message, "ts": T0 + 1}) == "BAD_SIGNATURE"


def code_of_ws(v: Verifier, message: dict) -> str:
    with pytest.raises(AuthError) as e:
        v.verify_ws(message)
    return e.value.code


# -- roles --------------------------------------------------------------------------------------


def test_require_role() -> None:
    trader = ApiKey(KEY_ID, 1, "trader", SECRET)
    analyst = ApiKey(KEY_ID, 2, "analyst", SECRET)
    admin = ApiKey(KEY_ID, 3, "admin", SECRET)
    require_role(trader, "trader")
    require_role(trader, "provider", "trader")
    require_role(admin, "trader")
    require_role(admin)  # admin-only operations
    with pytest.raises(AuthError) as e:
        require_role(trader, "provider")
    assert e.value.code == "FORBIDDEN" and e.value.status == 403
    assert "a provider account" in e.value.message and "trader" in e.value.message
    assert SECRET not in e.value.message
    with pytest.raises(AuthError) as e:
        require_role(analyst, "trader", "provider")
    assert "a trader or a provider account" in e.value.message and "an analyst account" in e.value.message
    with pytest.raises(AuthError) as e:
        require_role(trader)
    assert "an admin account" in e.value.message


def test_auth_error_shape() -> None:
    e = AuthError("REPLAYED", "again")
    assert (e.code, e.message, e.status, str(e)) == ("REPLAYED", "again", 401, "again")
    assert e.as_dict() == {"code": "REPLAYED", "message": "again"}
    assert AuthError("FORBIDDEN", "no").status == 403


# -- rate limits --------------------------------------------------------------------------------


def test_token_bucket_burst_then_retry_after_then_refill() -> None:
    clock = Clock(100.0)
    bucket = TokenBucket(rate_per_s=2.0, burst=5, clock=clock)
    assert [bucket.take("k") for _ in range(5)] == [0.0] * 5
    wait = bucket.take("k")
    assert wait == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take("k") == pytest.approx(0.5)  # a refusal costs nothing
    clock.now += 0.25
    assert bucket.take("k") == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take("k") == 0.0
    assert bucket.take("k") == pytest.approx(0.5)
    clock.now += 100  # refills to the burst, no further
    assert [bucket.take("k") for _ in range(5)] == [0.0] * 5
    assert bucket.take("k") > 0


def test_rate_limiter_keys_are_separate_and_n_counts() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=1.0, burst=3, clock=clock)
    assert limiter.take("a", 3) == 0.0
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0
    clock.now += 1.0
    assert limiter.take("a", 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        limiter.take("a", 4)  # more than the burst can ever allow
    with pytest.raises(ValueError):
        limiter.take("a", 0)


def test_rate_limiter_memory_bounded() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate_per_s=10.0, burst=10, clock=clock, max_keys=1_000)
    for i in range(5_000):
        limiter.take(f"k{i}")
    assert len(limiter) == 1_000  # the cap
    clock.now += 1.0  # every bucket is full again: forgetting them changes nothing
    limiter.take("fresh")
    assert len(limiter) == 1
    # a bucket still refilling is remembered
    for _ in range(10):
        limiter.take("busy")
    clock.now += 0.5
    limiter.take("other")
    assert len(limiter) == 3  # fresh and busy (used 0.5 s ago) and other
    assert limiter.take("busy") == 0.0  # 5 tokens back, 4 left
    assert limiter.take("busy", 5) == pytest.approx(0.1)  # its state was kept, not reset to full
    clock.now += 1.0
    limiter.take("last")
    assert len(limiter) == 1


def test_rate_limiter_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 5)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)


# -- the client's signer ------------------------------------------------------------------------


def test_signer_timestamps_strictly_increase_with_a_frozen_clock() -> None:
    signer = Signer(KEY_ID, SECRET, clock_ms=lambda: T0)
    stamps = [int(signer.headers("GET", "/v1/book")[HEADER_TIMESTAMP]) for _ in range(5)]
    stamps.append(signer.ws_auth()["ts"])
    assert stamps == list(range(T0, T0 + 6))
    sigs = {signer.headers("POST", PATH, BODY)[HEADER_SIGNATURE] for _ in range(100)}
    assert len(sigs) == 100


def test_signer_with_a_clock_going_back() -> None:
    clock = Clock(T0)
    signer = Signer(KEY_ID, SECRET, clock_ms=clock)  # type: ignore[arg-type]
    assert signer.next_timestamp() == T0
    clock.now = T0 - 1_000
    assert signer.next_timestamp() == T0 + 1
    clock.now = T0 + 50
    assert signer.next_timestamp() == T0 + 50


def test_signer_requests_verify_and_never_replay() -> None:
    clock = Clock(T0)
    v = make_verifier(clock)
    signer = Signer(KEY_ID, SECRET, clock_ms=lambda: T0)
    for _ in range(10):  # identical requests in one frozen millisecond
        h = signer.headers("POST", PATH, BODY)
        assert v.verify_headers(h, "POST", PATH, BODY).key_id == KEY_ID


def test_signer_hides_the_secret() -> None:
    signer = Signer(KEY_ID, SECRET)
    assert SECRET not in repr(signer) and SECRET not in str(signer)
    assert KEY_ID in repr(signer)


def test_two_signers_of_one_key_never_sign_the_same_login_in_one_millisecond() -> None:
    """A trading session and a market-data session log in with the same key: the signed text is
    the same, so on a clock that stands still the second login would be REPLAYED unless the
    process's signers share the key's last timestamp (docs/auth.md, step 5)."""
    def still() -> int:
        return T0

    v = make_verifier(Clock(T0))
    first, second = Signer(KEY_ID, SECRET, clock_ms=still).ws_auth(), Signer(KEY_ID, SECRET, clock_ms=still).ws_auth()
    assert first["ts"] == T0 and second["ts"] == T0 + 1
    for m in (first, second):
        assert v.verify(m["key"], m["ts"], m["sig"], WS_METHOD, WS_PATH, b"").account_id == 7
