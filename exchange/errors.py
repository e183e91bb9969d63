"""One error format everywhere (R8): a stable machine-readable code and a sentence.

REST answers ``{"error": {"code": ..., "message": ...}}`` with the HTTP status below; the
WebSocket answers ``{"type": "error", "id": <request id>, "code": ..., "message": ...}``.
Book reason codes (orderbook/reasons.py) keep their names; the codes here are the
gateway's own.  docs/api.md lists them all.
"""

from __future__ import annotations

from typing import Any

from orderbook import reasons as R

# code -> (HTTP status, sentence)
ERRORS: dict[str, tuple[int, str]] = {
    "MALFORMED": (400, "the message could not be decoded"),
    "TOO_LARGE": (413, "the message is larger than the maximum message size"),
    "REQUEST_TIMEOUT": (408, "the request did not arrive in time"),
    "BAD_START": (400, "a reserved bid may start at most two years ahead"),
    "NOT_FOUND": (404, "no such resource"),
    "UNKNOWN_PRODUCT": (404, "no such product"),
    "BAD_RANGE": (400, "the range's from is after its to"),
    "BAD_CURSOR": (400, "the cursor is not one this endpoint gave: pass the previous page's next"),
    "METHOD_NOT_ALLOWED": (405, "this resource does not accept that method"),
    "UNKNOWN_CLASS": (404, "no such GPU class"),
    "HALTED": (409, "trading in this GPU class is halted; resting orders are kept, cancels are accepted"),
    "INSUFFICIENT_FUNDS": (402, "the bid's escrow (gpus x hours x limit + fees) exceeds the available balance"),
    "TOO_MANY_ORDERS": (409, "the account has reached its maximum number of open orders"),
    "RATE_LIMITED": (429, "too many requests for this key; retry after retry_after_ms"),
    "MISSING_AUTH": (401, "the request is not signed"),
    "UNKNOWN_KEY": (401, "no such API key"),
    "BAD_SIGNATURE": (401, "the signature does not match the request"),
    "STALE_TIMESTAMP": (401, "the request timestamp is outside the allowed window"),
    "REPLAYED": (401, "this signature was already used"),
    "FORBIDDEN": (403, "this key's role may not do that"),
    "NOT_AUTHENTICATED": (401, "authenticate first: the first message must be {\"op\": \"auth\", ...}"),
    "DUPLICATE_SESSION_OP": (409, "already authenticated"),
    "UNAVAILABLE": (503, "the exchange is shutting down or recovering; retry shortly"),
    "CORE_ONLY": (421, "this order gateway cannot reach the core to forward this: send it to the core (gpux serve)"),
    "INTERNAL": (500, "internal error; the request may not have been applied"),
}

# book reason code -> HTTP status (the default is 400: the request was invalid)
_BOOK_STATUS = {
    R.UNKNOWN_ORDER: 404,
    R.UNKNOWN_LEASE: 404,
    R.NOT_OWNER: 403,
    R.NOT_LEASE_HOLDER: 403,
    R.POST_ONLY_WOULD_TRADE: 409,
    R.AMEND_BELOW_SOLD: 409,
    R.LEASE_RESOLD: 409,
}


class ApiError(Exception):
    """A refusal: code, sentence, HTTP status, and optional extra fields (retry_after_ms)."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None,
                 **extra: Any) -> None:
        default_status, default_message = ERRORS.get(code, (400, code))
        self.code = code
        self.message = message or default_message
        self.status = status or default_status
        self.extra = extra
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def ws(self, request_id: Any = None) -> dict[str, Any]:
        return {"type": "error", "id": request_id, "code": self.code, "message": self.message, **self.extra}


def book_error(reason: int) -> ApiError:
    """The ApiError of a book reason code (R8)."""
    return ApiError(R.reason_name(reason), R.reason_text(reason), _BOOK_STATUS.get(reason, 400))


def status_of(code: str) -> int:
    """HTTP status of an error code (gateway or book)."""
    if code in ERRORS:
        return ERRORS[code][0]
    return _BOOK_STATUS.get(R.NAME_TO_CODE.get(code, -1), 400)
