"""The OpenAPI document (/v1/openapi.json, gateway/openapi.py) agrees with the server: a bounded
schemathesis run against a real exchange on a free loopback port, every operation of the
document, signed requests really signed (gateway.auth, as the SDK signs them), and no failure of
any check allowed — no server error and no conformance failure (status codes, content types,
response schemas and headers, 405 with ``Allow`` for methods a path does not take, valid data
accepted, invalid data refused, signed operations refusing unsigned and badly signed requests).

Bounded and repeatable: schemathesis's examples, coverage and fuzzing phases, with a fixed seed,
deterministic generation and at most ``MAX_EXAMPLES`` fuzzed cases per operation.  The figures
(operations, cases, failures) are printed at the end of the run (``pytest -s``) and checked by
the last test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig

from feeds import replay
from gateway.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer
from gateway.openapi import document
from tests.exchange_helpers import USD, running_exchange

MAX_EXAMPLES = 12  # fuzzed cases per operation (and mode); the coverage phase adds its own
SEED = 17
PLACEHOLDER = "signed-at-send"  # what schemathesis puts in GPUX-Signature; the session signs it

CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    # a request the schemas allow may still be refused by a market rule that depends on the
    # instrument or on the time (400 with the book's code) or by the account's money (402), as the
    # document says; 101 is the WebSocket endpoints' answer to a handshake.  `not_malformed` below
    # holds that such a refusal is never MALFORMED: what the document allows always decodes.
    "checks": {"not_a_server_error": {"expected-statuses": ["101", "2xx", "3xx", "4xx"]},
               "positive_data_acceptance": {"expected-statuses": ["101", "2xx", "400", "401", "402", "403", "404",
                                                                  "409", "429"]}},
})
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG)
OPERATIONS = {f"{method.upper()} {path}" for path, ops in document()["paths"].items() for method in ops}
CASES: Counter[str] = Counter()
STATUSES: dict[str, Counter[int]] = {}  # operation -> answers by status
FAILURES: list[str] = []


class Live:
    """A real exchange served from a thread of its own (its own event loop), with an admin key."""

    def __init__(self, tmp: Any) -> None:
        self.tmp = tmp
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.url = ""
        self.key_id = self.secret = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 -- reported to the test
            self.error = e
            self.ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        # a rate limit the run does not reach (it is tested elsewhere); fsync off: a test's journal
        async with running_exchange(self.tmp, fsync="off", provisioning="auto", rate_per_s=1e6, rate_burst=10**6,
                                    check_money=True) as ex:
            _, self.key_id, self.secret = ex.account("root", "admin", 10**6 * USD)
            prov = ex.client("prov", "provider")
            await ex.settle()
            await prov.ask("H100", gpus=8, price=2_000_000, end=ex.now + 86_400, spot_price=1_000_000)
            self.url = ex.url
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> Live:
        self.thread.start()
        self.ready.wait(120)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        if self.error is not None:
            raise self.error


class Signed(requests.auth.AuthBase):
    """Signs a request as the SDK does (timestamp + METHOD + path with query + body), when
    schemathesis gave it our key and the placeholder signature; anything else (no auth, or the
    made-up credentials of the ignored-auth check) goes out as it is."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.signer = Signer(key_id, secret)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if r.headers.get(HEADER_SIGNATURE) == PLACEHOLDER and r.headers.get(HEADER_KEY) == self.signer.key_id:
            body = r.body or b""
            body = body.encode() if isinstance(body, str) else body
            r.headers.update(self.signer.headers(r.method or "GET", r.path_url, body))
        return r


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with Live(tmp_path_factory.mktemp("conformance")) as server:
        GpuxAuth.key_id = server.key_id
        yield server


@pytest.fixture(scope="module")
def session(live: Live) -> Iterator[requests.Session]:
    s = requests.Session()
    s.headers.clear()  # schemathesis lets a session's headers override the case's (requests' Connection: keep-alive)
    s.auth = Signed(live.key_id, live.secret)
    s.hooks["response"].append(_close_upgraded)
    yield s
    s.close()


@schemathesis.check
def not_malformed(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request generated to fit the document is never refused as MALFORMED (the document says
    no more than the gateway decodes)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 -- the other checks say what is wrong with the body
        return None
    message = response.json()["error"]["message"]
    if code == "MALFORMED" and "got `float`" in message:
        return None  # 2.0 for an integer: JSON Schema counts it one, the wire takes integers only (docs/api.md)
    assert code != "MALFORMED", f"a request the document allows was refused as MALFORMED: {response.text[:300]}"
    return None


def _close_upgraded(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A 101 hands the connection over to WebSocket: this HTTP client closes it, never reuses it,
    and waits until the server has let a replay go (one replay at a time per address, so the next
    handshake is not refused for the one before)."""
    if response.status_code == 101:
        response.raw.close()
        conn = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
        if conn is not None:
            conn.close()
        if (response.request.path_url or "").startswith("/v1/replay"):
            deadline = time.monotonic() + 60
            while replay._by_peer and time.monotonic() < deadline:  # the server is in this process
                time.sleep(0.005)


@SCHEMA.auth()
class GpuxAuth:
    """The admin key for every signed operation (an admin may do everything, docs/auth.md);
    the signature is made when the request is sent (`Signed`)."""

    key_id = ""

    def get(self, case: Any, ctx: Any) -> str:
        return GpuxAuth.key_id

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), HEADER_KEY: data, HEADER_TIMESTAMP: "0", HEADER_SIGNATURE: PLACEHOLDER}


@SCHEMA.parametrize()
def test_the_server_conforms_to_its_openapi_document(case: Any, live: Live, session: requests.Session) -> None:
    label = f"{case.operation.method.upper()} {case.operation.path}"
    CASES[label] += 1
    try:
        response = case.call_and_validate(base_url=live.url, session=session, timeout=30)
        STATUSES.setdefault(label, Counter())[response.status_code] += 1
    except BaseException as e:
        FAILURES.append(f"{label}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        raise


def test_the_router_answers_in_the_error_shape(live: Live, session: requests.Session) -> None:
    """A path the API does not have is a JSON 404 NOT_FOUND; a method a path does not take is a
    JSON 405 METHOD_NOT_ALLOWED whose Allow header lists the methods it takes; and the document
    the server serves is the one this run used."""
    r = session.get(live.url + "/v1/no-such-thing")
    assert (r.status_code, r.headers["Content-Type"].split(";")[0]) == (404, "application/json")
    assert r.json()["error"]["code"] == "NOT_FOUND"
    r = session.delete(live.url + "/v1/asks")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD", "POST"}
    r = session.put(live.url + "/metrics")
    assert r.status_code == 405 and {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD"}
    assert session.get(live.url + "/v1/openapi.json").json() == document()


def test_every_operation_was_run_and_none_failed() -> None:
    """Runs after the parametrized test (file order): every operation of the document had cases."""
    print(f"\nschemathesis: {len(CASES)} of {len(OPERATIONS)} operations, {sum(CASES.values())} cases, "
          f"{len(FAILURES)} failures")
    for label in sorted(STATUSES):
        print(f"  {label}: {dict(sorted(STATUSES[label].items()))}")
    assert set(CASES) == OPERATIONS, f"operations without a case: {sorted(OPERATIONS - set(CASES))}"
    assert not FAILURES, FAILURES
    # signing really works: every signed operation had answers past the signature check
    signed = {f"{m.upper()} {p}" for p, ops in document()["paths"].items() for m, op in ops.items() if "security" in op}
    unsigned_only = sorted(op for op in signed if not set(STATUSES.get(op, {})) - {401, 405})
    assert not unsigned_only, f"signed operations that never got past the signature: {unsigned_only}"
