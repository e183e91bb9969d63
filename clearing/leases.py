"""A lease (R16) as settlement keeps it, and the money rule of one lease (R17, R18, R19).

Life cycle::

    pending ─► provisioning ─► ready ─► ended          (its end passed)
       │             │           ├────► released       (EV_RELEASED moved its end to the release time)
       │             │           └────► preempted      (EV_PREEMPTED moved its end to T0, and T0 passed)
       └─────────────┴─────────────────► failed         (mark_failed, provision timeout, or never ready by its end)

The money of a lease follows from its state alone (`targets`): what the buyer owes at most
(``cap``) and what the provider has earned so far (``earned``):

* not ready yet: cap = the whole window at the trade price; earned = 0;
* ready, reserved: cap = earned = the whole window (paid up front, earned in full once delivered);
* ready, on_demand / spot (metered): cap = from max(ready, start) to the end; earned = from
  there to the last metering point (at most the end), per second;
* failed: cap = earned = 0 (R18: refunded in full, the provider earns nothing).

`settle` compares the targets with what the ledger already moved for the lease and emits the
difference as transfers whose ids name the cause (``lease:H100:7:ready:refund``; as the
ledger's integer keys, `clearing.ids`).  The buyer's
fee follows the cap (fee on what the buyer pays), the provider's fee follows what it earned;
both at the rates of the trade (maker or taker, R19).  So every path — metering in many or few
steps, a preemption, a late ready — ends in the same totals.
"""

from __future__ import annotations

from typing import Any

import msgspec

from clearing.ids import EARN, FEE_REFUND, PROVIDER_FEE, REFUND
from clearing.money import AVAILABLE, BPS, EXCHANGE, FEES, HOUR, PREPAID, RECEIVABLE, fee, lease_value
from orderbook.types import KIND_NAMES, RESERVED, SIDE_NAMES

PENDING = "pending"
PROVISIONING = "provisioning"
READY = "ready"
ENDED = "ended"
RELEASED = "released"
PREEMPTED = "preempted"
FAILED = "failed"
STATUSES = (PENDING, PROVISIONING, READY, ENDED, RELEASED, PREEMPTED, FAILED)
LIVE = (PENDING, PROVISIONING, READY)
TERMINAL = (ENDED, RELEASED, PREEMPTED, FAILED)


class Lease(msgspec.Struct, array_like=True, gc=False):
    """One lease and the money settlement has moved for it so far (µ$).  (Positional fields:
    the engine makes one per trade, and keyword construction costs five times as much.)"""

    cls: str
    trade_id: int
    buyer: int
    provider: int  # the ask's owner: the provider, or the reseller of a sub-lease (R16)
    kind: int  # SPOT / ON_DEMAND / RESERVED
    gpus: int
    price: int  # µ$ per GPU-hour (R11)
    start: int
    end: int  # now: moves earlier on preemption or release
    booked_end: int  # as traded
    time: int  # engine time of the trade
    bid_oid: int
    ask_oid: int
    resale_of: int = 0  # parent lease's trade id for a sub-lease (R16)
    maker: int = 0  # SIDE_* of the maker
    buyer_fee_bps: int = 0
    provider_fee_bps: int = 0
    status: str = PENDING
    ready_at: int = 0  # when the provider's agent reported it ready (0: not yet)
    metered_to: int = 0  # metered (earned) up to this time
    ended_by: str = ""  # "" | "preempted" | "released"
    failed_reason: str = ""
    # money moved so far
    cost: int = 0  # paid into lease_prepaid at the trade
    buyer_fee: int = 0  # the buyer's fee charged, net of refunds
    earned: int = 0  # gross earnings recognised (the provider got them net of its fee)
    provider_fee: int = 0  # charged once, when the lease is settled (ended or failed)
    refunded: int = 0  # cost refunded to the buyer

    @property
    def ref(self) -> str:
        """The lease's id across the exchange (as `exchange.state.lease_ref`)."""
        return f"{self.cls}-{self.trade_id}"

    @property
    def metered(self) -> bool:
        return self.kind != RESERVED

    @property
    def prepaid(self) -> int:
        """What of the buyer's payment still sits in lease_prepaid for this lease (the provider's
        fee on what it earned stays there until the lease is settled)."""
        return self.cost - self.refunded - self.earned + fee(self.earned, self.provider_fee_bps) - self.provider_fee

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def meter_from(self) -> int:
        return max(self.ready_at, self.start)

    def view(self) -> dict[str, Any]:
        d = msgspec.structs.asdict(self)
        d["lease"] = self.ref
        d["class"] = d.pop("cls")
        d["kind"] = KIND_NAMES.get(self.kind, self.kind)
        d["maker"] = SIDE_NAMES.get(self.maker, self.maker)
        d["paid"] = self.cost - self.refunded + self.buyer_fee
        return d


def targets(lease: Lease) -> tuple[int, int]:
    """(cap, earned): what the buyer pays at most for the lease and what its provider has
    earned by now, both before fees, from the lease's state alone."""
    if lease.status == FAILED:
        return 0, 0
    if not lease.ready_at:
        return lease_value(lease.gpus, lease.price, lease.end - lease.start), 0
    if lease.kind == RESERVED:
        whole = lease_value(lease.gpus, lease.price, lease.end - lease.start)
        return whole, whole
    rf = lease.meter_from()
    cap = lease_value(lease.gpus, lease.price, lease.end - rf)
    return cap, lease_value(lease.gpus, lease.price, min(lease.metered_to, lease.end) - rf)


FEES_ACCOUNT = EXCHANGE << 3 | FEES  # accounts in the ledger's rows: owner << 3 | kind


def settle(lease: Lease, ref: int, cause: int, time: int, out: list) -> None:
    """Append to ``out`` the transfers that bring the ledger to `targets` for ``lease``, named
    ``lease:{class}:{trade_id}:{cause}:{leg}`` (as the ledger's rows: ``ref`` is the lease's,
    ``cause`` is `ids.cause`), and record them on the lease.  Legs:
    ``refund`` (lease_prepaid -> buyer's available), ``fee_refund`` (fees -> buyer),
    ``earn`` (lease_prepaid -> provider's receivable, net of its fee), ``provider_fee``
    (lease_prepaid -> fees, once, when the lease is settled: ended, released, preempted or
    failed).  A negative difference (a clawback, only when time was told out of order) is the
    same leg in the other direction."""
    # `targets` and `money.fee`, inlined: this runs for every lease several times
    start, end = lease.start, lease.end
    rate = lease.gpus * lease.price
    if lease.status == FAILED:
        cap = earned = 0
    elif not lease.ready_at:
        cap = rate * (end - start) // HOUR if end > start else 0
        earned = 0
    elif lease.kind == RESERVED:
        cap = earned = rate * (end - start) // HOUR if end > start else 0
    else:
        rf = lease.ready_at if lease.ready_at > start else start
        cap = rate * (end - rf) // HOUR if end > rf else 0
        m = lease.metered_to if lease.metered_to < end else end
        earned = rate * (m - rf) // HOUR if m > rf else 0
    refund = lease.cost - cap - lease.refunded
    bps = lease.buyer_fee_bps
    buyer_fee = -(-cap * bps // BPS) if bps and cap > 0 else 0
    bps = lease.provider_fee_bps
    if bps:
        fee_now = -(-earned * bps // BPS) if earned > 0 else 0
        fee_before = -(-lease.earned * bps // BPS) if lease.earned > 0 else 0
        net = earned - fee_now - (lease.earned - fee_before)
        provider_fee = fee_now if lease.status in TERMINAL else 0
    else:
        net = earned - lease.earned
        provider_fee = 0
    d_fee_refund = lease.buyer_fee - buyer_fee
    d_provider_fee = provider_fee - lease.provider_fee
    if not (refund or d_fee_refund or net or d_provider_fee):
        lease.earned = earned
        return
    prepaid = lease.buyer << 3 | PREPAID
    if refund:
        _move(out, ref, cause | REFUND, prepaid, prepaid - PREPAID + AVAILABLE, refund, time)
    if d_fee_refund:
        _move(out, ref, cause | FEE_REFUND, FEES_ACCOUNT, prepaid - PREPAID + AVAILABLE, d_fee_refund, time)
    if net > 0:
        out.append((ref, cause | EARN, prepaid, lease.provider << 3 | RECEIVABLE, net, time))
    elif net:
        out.append((ref, cause | EARN, lease.provider << 3 | RECEIVABLE, prepaid, -net, time))
    if d_provider_fee:
        _move(out, ref, cause | PROVIDER_FEE, prepaid, FEES_ACCOUNT, d_provider_fee, time)
    lease.refunded += refund
    lease.buyer_fee = buyer_fee
    lease.earned = earned
    lease.provider_fee = provider_fee


def settle_earnings(lease: Lease, ref: int, cause: int, time: int, out: list) -> None:
    """`settle` for a ready metered lease at a metering point or at its end (``lease.status``
    already terminal): only its earnings move, and at the end the provider's fee.  Its cap was
    settled at its last change (trade, ready, preemption, release), so nothing is refunded;
    checked here, and the general `settle` runs if that ever does not hold."""
    start, end = lease.start, lease.end
    rate = lease.gpus * lease.price
    rf = lease.ready_at if lease.ready_at > start else start
    if lease.cost - lease.refunded != (rate * (end - rf) // HOUR if end > rf else 0) or not lease.ready_at:
        settle(lease, ref, cause, time, out)
        return
    m = lease.metered_to if lease.metered_to < end else end
    earned = rate * (m - rf) // HOUR if m > rf else 0
    bps = lease.provider_fee_bps
    if bps:
        fee_now = -(-earned * bps // BPS) if earned > 0 else 0
        net = earned - fee_now - lease.earned + (-(-lease.earned * bps // BPS) if lease.earned > 0 else 0)
        provider_fee = fee_now if lease.status in TERMINAL else 0
    else:
        net = earned - lease.earned
        provider_fee = 0
    prepaid = lease.buyer << 3 | PREPAID
    if net > 0:
        out.append((ref, cause | EARN, prepaid, lease.provider << 3 | RECEIVABLE, net, time))
    elif net:
        out.append((ref, cause | EARN, lease.provider << 3 | RECEIVABLE, prepaid, -net, time))
    if provider_fee != lease.provider_fee:
        _move(out, ref, cause | PROVIDER_FEE, prepaid, FEES_ACCOUNT, provider_fee - lease.provider_fee, time)
        lease.provider_fee = provider_fee
    lease.earned = earned


def _move(out: list, ref: int, sub: int, debit: int, credit: int, amount: int, time: int) -> None:
    if amount > 0:
        out.append((ref, sub, debit, credit, amount, time))
    else:
        out.append((ref, sub, credit, debit, -amount, time))


def check_lease(lease: Lease) -> None:
    """The invariants of one lease's money (raise AssertionError)."""
    cap, earned = targets(lease)
    assert lease.refunded == lease.cost - cap, (lease.ref, "refunded", lease.refunded, lease.cost - cap)
    assert lease.earned == earned, (lease.ref, "earned", lease.earned, earned)
    assert lease.prepaid >= 0, (lease.ref, "prepaid", lease.prepaid)
    assert lease.buyer_fee == fee(cap, lease.buyer_fee_bps), (lease.ref, "buyer fee")
    assert lease.provider_fee == (fee(earned, lease.provider_fee_bps) if lease.status in TERMINAL else 0), \
        (lease.ref, "provider fee")
    if lease.status in TERMINAL:
        assert lease.prepaid == 0, (lease.ref, lease.status, "prepaid left", lease.prepaid)
