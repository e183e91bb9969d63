"""Transfer ids: the documented strings and the two integers the ledger stores them as.

Every transfer's id names its cause (docs/settlement.md): ``order:H100:9:hold``,
``trade:H100:7:cost``, ``lease:H100:7:meter:86400:earn``, ``deposit:accounts:17``.  The
ledger keys its rows by two integers instead of the text (a text key cost a third of the
ledger's insert time and a third of its file), ``(ref, sub)``:

    ref = origin << 60 | class code << 48 | order or trade id     origin: ORDER, TRADE, LEASE
    sub = param << 8 | cause << 4 | leg                           param: a seq or a time

The class code is the class's row in the ledger's ``id_classes`` table (assigned on first
use).  Any other id (deposits, withdrawals, payouts, ids the tests make up) is *named*:
``ref = 0`` and ``sub`` its row in ``transfer_names``.  The mapping is one to one: `parse`
takes only the canonical spelling of a structured id (what `format_id` writes back), anything
else is named.  So the id is still the primary key, idempotency is unchanged, and
`Ledger.transfers` / `statement` (and the SQL view ``transfers_named``) show the strings.
"""

from __future__ import annotations

from collections.abc import Callable

ORDER, TRADE, LEASE = 1, 2, 3  # origins (0: a named id)
ORIGIN_SHIFT = 60
CLASS_SHIFT = 48
ID_LIMIT = 1 << CLASS_SHIFT  # order and trade ids below this (a book makes ~10^9 a year)
CLASS_LIMIT = 1 << (ORIGIN_SHIFT - CLASS_SHIFT)
PARAM_SHIFT = 8
PARAM_LIMIT = 1 << 54

# order:{C}:{oid}:{leg}, amend with the event's seq as param
HOLD, RELEASE, AMEND = 1, 2, 3
ORDER_LEGS = {HOLD: "hold", RELEASE: "release", AMEND: "amend"}
# trade:{C}:{tid}:{leg}
COST, BUYER_FEE, TRADE_RELEASE, TOP_UP = 1, 2, 3, 4
TRADE_LEGS = {COST: "cost", BUYER_FEE: "buyer_fee", TRADE_RELEASE: "release", TOP_UP: "top_up"}
# lease:{C}:{tid}:{cause}[:{param}]:{leg}; a cause as settle() takes it is ``param << 8 | cause << 4``
READY, METER, PREEMPTED, RELEASED, FAILED, END = 1, 2, 3, 4, 5, 6
CAUSES = {READY: "ready", METER: "meter", PREEMPTED: "preempted", RELEASED: "released", FAILED: "failed", END: "end"}
PARAM_CAUSES = (METER, PREEMPTED, RELEASED)  # these carry a time (meter) or an event seq
REFUND, FEE_REFUND, EARN, PROVIDER_FEE = 1, 2, 3, 4
LEASE_LEGS = {REFUND: "refund", FEE_REFUND: "fee_refund", EARN: "earn", PROVIDER_FEE: "provider_fee"}

ORIGINS = {ORDER: "order", TRADE: "trade", LEASE: "lease"}
ORIGIN_CODES = {name: code for code, name in ORIGINS.items()}
_ORDER_CODES = {name: code for code, name in ORDER_LEGS.items() if code != AMEND}
_TRADE_CODES = {name: code for code, name in TRADE_LEGS.items()}
_CAUSE_CODES = {name: code for code, name in CAUSES.items()}
_LEASE_CODES = {name: code for code, name in LEASE_LEGS.items()}


def cause(code: int, param: int = 0) -> int:
    """A lease cause as `leases.settle` takes it: ``cause(METER, t)``."""
    return param << PARAM_SHIFT | code << 4


def class_base(origin: int, class_code: int) -> int:
    """``ref`` of id 0 of ``origin`` in a class: a ref is ``class_base(...) | id``."""
    return origin << ORIGIN_SHIFT | class_code << CLASS_SHIFT


def format_id(ref: int, sub: int, class_name: Callable[[int], str], name: Callable[[int], str]) -> str:
    """The documented string of ``(ref, sub)``; ``class_name(code)`` and ``name(code)`` read the
    ledger's ``id_classes`` and ``transfer_names``."""
    origin = ref >> ORIGIN_SHIFT
    if not origin:
        return name(sub)
    head = f"{ORIGINS[origin]}:{class_name((ref >> CLASS_SHIFT) & (CLASS_LIMIT - 1))}:{ref & (ID_LIMIT - 1)}:"
    leg = sub & 15
    if origin == ORDER:
        return head + (f"amend:{sub >> PARAM_SHIFT}" if leg == AMEND else ORDER_LEGS[leg])
    if origin == TRADE:
        return head + TRADE_LEGS[leg]
    c = (sub >> 4) & 15
    if c in PARAM_CAUSES:
        return f"{head}{CAUSES[c]}:{sub >> PARAM_SHIFT}:{LEASE_LEGS[leg]}"
    return f"{head}{CAUSES[c]}:{LEASE_LEGS[leg]}"


def number(s: str, limit: int) -> int | None:
    """A canonical decimal below ``limit`` (no sign, no leading zero), else None."""
    if not (s.isascii() and s.isdigit()) or (len(s) > 1 and s[0] == "0"):
        return None
    n = int(s)
    return n if n < limit else None


def parse(text: str, class_code: Callable[[str], int | None]) -> tuple[int, int] | None:
    """``(ref, sub)`` of a structured id in its canonical spelling, or None (a named id, or a
    class that ``class_code`` does not know and will not create)."""
    parts = text.split(":")
    origin = ORIGIN_CODES.get(parts[0])
    if origin is None or len(parts) < 4 or not parts[1]:
        return None
    n = number(parts[2], ID_LIMIT)
    if n is None:
        return None
    rest = parts[3:]
    if origin == ORDER:
        if len(rest) == 1 and rest[0] in _ORDER_CODES:
            sub = _ORDER_CODES[rest[0]]
        elif len(rest) == 2 and rest[0] == "amend" and (seq := number(rest[1], PARAM_LIMIT)) is not None:
            sub = seq << PARAM_SHIFT | AMEND
        else:
            return None
    elif origin == TRADE:
        if len(rest) != 1 or rest[0] not in _TRADE_CODES:
            return None
        sub = _TRADE_CODES[rest[0]]
    else:
        c = _CAUSE_CODES.get(rest[0])
        leg = _LEASE_CODES.get(rest[-1])
        if c is None or leg is None:
            return None
        if c in PARAM_CAUSES:
            if len(rest) != 3 or (param := number(rest[1], PARAM_LIMIT)) is None:
                return None
        elif len(rest) != 2:
            return None
        else:
            param = 0
        sub = param << PARAM_SHIFT | c << 4 | leg
    code = class_code(parts[1])
    if code is None or not 0 < code < CLASS_LIMIT:
        return None
    return origin << ORIGIN_SHIFT | code << CLASS_SHIFT | n, sub


def sql_format(t: str, classes: str) -> str:
    """An SQL expression for the id string of transfers row ``t`` (``classes``: the joined
    ``id_classes`` row), for the view ``transfers_named``; the same as `format_id`."""

    def case(expr: str, names: dict[int, str], default: str = "'?'") -> str:
        whens = " ".join(f"WHEN {k} THEN '{v}'" for k, v in names.items())
        return f"CASE {expr} {whens} ELSE {default} END"

    head = f"':' || {classes}.name || ':' || ({t}.ref & {ID_LIMIT - 1}) || ':'"
    param = f"({t}.sub >> {PARAM_SHIFT})"
    order_leg = case(f"{t}.sub & 15", {k: v for k, v in ORDER_LEGS.items() if k != AMEND}, f"'amend:' || {param}")
    lease_cause = case(f"({t}.sub >> 4) & 15", {k: v for k, v in CAUSES.items() if k not in PARAM_CAUSES},
                       case(f"({t}.sub >> 4) & 15", {k: CAUSES[k] for k in PARAM_CAUSES}) + f" || ':' || {param}")
    return (f"CASE {t}.ref >> {ORIGIN_SHIFT} "
            f"WHEN 0 THEN (SELECT name FROM transfer_names WHERE code = {t}.sub) "
            f"WHEN {ORDER} THEN 'order' || {head} || {order_leg} "
            f"WHEN {TRADE} THEN 'trade' || {head} || {case(f'{t}.sub & 15', TRADE_LEGS)} "
            f"ELSE 'lease' || {head} || {lease_cause} || ':' || {case(f'{t}.sub & 15', LEASE_LEGS)} END")
