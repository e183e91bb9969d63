"""Every REST answer's shape and every field's meaning, once: the OpenAPI document's response
schemas (gateway/openapi.py) are built from these tables, docs/api.md describes the same
fields, and tests/test_api_shapes.py holds real answers to them (every field listed here is in
the answer and every field of the answer is listed here).

Money is integer µ$ (1 USD = 1,000,000 µ$), prices µ$ per GPU-hour, times integer UTC seconds.
"""

from __future__ import annotations

from typing import Any

INT, STR, BOOL, OBJ = "integer", "string", "boolean", "object"

# name -> {field: (type or $ref name or [item type], description)}
SHAPES: dict[str, dict[str, tuple[Any, str]]] = {
    "Order": {
        "oid": (INT, "the order id, unique across the exchange"),
        "class": (STR, "GPU class (the book)"),
        "account": (INT, "the owner's account id"),
        "side": (STR, "bid or ask"),
        "gpus": (INT, "size in GPUs, after amends"),
        "price": (INT, "bid: the limit; ask: the firm price; µ$ per GPU-hour"),
        "time": (INT, "engine time it was accepted"),
        "status": (STR, "open, filled, cancelled or expired"),
        "remaining": (INT, "bid: GPUs still wanted; ask: its capacity in GPUs"),
        "filled": (INT, "GPUs traded (bid: bought; ask: sold, summed over its leases)"),
        "start": (INT, "bid: a reserved bid's start (0 for spot and on_demand); ask: when its window opens"),
        "end": (INT, "bid: a reserved bid's start + hours (0 for spot and on_demand); ask: when its window closes"),
        "expire_at": (INT, "bid: when a GTD bid expires (0: not GTD); ask: its window's end"),
        "reason": (STR, "why it ended: user, ioc, fok, gtd, gate, window_end; empty while open"),
        "client_order_id": (STR, "the id the client gave it, or empty"),
        "kind": (STR, "bids only: spot, on_demand or reserved"),
        "tif": (STR, "bids only: GTC, IOC, FOK or GTD"),
        "hours": (INT, "bids only: hours wanted"),
        "block": (INT, "bids only: GPUs are filled in blocks of this many"),
        "hold": (INT, "bids only: µ$ of escrow held for it now (R17)"),
        "spot_price": (INT, "asks only: spot price, µ$ per GPU-hour (0: no spot)"),
        "min_hours": (INT, "asks only: the shortest lease sold from it, hours"),
        "lease_id": (INT, "asks only: the lease resold (its trade id; 0: not a resale)"),
    },
    "Trade": {
        "lease": (STR, "the lease it made: CLASS-TRADE_ID"),
        "trade_id": (INT, "the trade's id, counted per class"),
        "bid_oid": (INT, "the bid's order id"),
        "ask_oid": (INT, "the ask's order id"),
        "buyer": (INT, "the bidder's account"),
        "provider": (INT, "the ask's owner (a reseller for a resale)"),
        "kind": (STR, "spot, on_demand or reserved"),
        "gpus": (INT, "GPUs traded"),
        "price": (INT, "the trade price (R11), µ$ per GPU-hour"),
        "start": (INT, "the lease's start"),
        "end": (INT, "the lease's end"),
        "maker": (STR, "which side rested first: bid or ask"),
        "seq": (INT, "the trade event's sequence number"),
        "time": (INT, "engine time of the trade"),
    },
    "Lease": {
        "lease": (STR, "the lease's name: CLASS-TRADE_ID"),
        "class": (STR, "GPU class"),
        "trade_id": (INT, "the trade that made it, counted per class"),
        "bid_oid": (INT, "the bid's order id"),
        "ask_oid": (INT, "the ask's order id"),
        "buyer": (INT, "the renter's account"),
        "provider": (INT, "the ask's owner: the provider, or the reseller of a resold lease"),
        "kind": (STR, "spot, on_demand or reserved"),
        "gpus": (INT, "GPUs leased"),
        "price": (INT, "the trade price, µ$ per GPU-hour"),
        "start": (INT, "when it starts"),
        "end": (INT, "when it ends: moved earlier by a preemption (R12) or a release (R16)"),
        "time": (INT, "engine time of the trade"),
        "resale_of": (INT, "for a lease bought from a reseller: the trade id of the lease it was cut from "
                           "(same class); 0 otherwise"),
        "ended_by": (STR, "empty, preempted or released: what moved its end"),
        "cost": (INT, "the book's value of the lease at its trade price: gpus x price x (end - start) / 3600, "
                      "rounded down to the µ$, before fees; the buyer's actual payment is settlement.paid"),
        "status": (STR, "in the book: scheduled, running, ended, preempted, released, or preempted_pending / "
                        "released_pending while an earlier end is decided but not reached"),
    },
    "LeaseSettlement": {
        "status": (STR, "pending, provisioning, ready, ended, released, preempted or failed (unknown: not in "
                        "the ledger yet)"),
        "ready_at": (INT, "when the provider's agent reported it ready (0: not yet)"),
        "failed_reason": (STR, "why provisioning failed, or empty"),
        "connection": (OBJ, "how to log in once ready: host, port, user... (null before)"),
        "paid": (INT, "what the buyer paid for it, µ$: its cost from the moment it could be used to its end, "
                      "plus the buyer's fee; see docs/api.md, Leases, for the rule"),
        "fee": (INT, "the buyer's fee in paid, µ$ (R19)"),
        "refunded": (INT, "µ$ of the prepayment given back: unused time, a failure, an earlier end"),
        "earned": (INT, "µ$ the provider has earned from it so far (gross, before its fee)"),
    },
    "OrderAnswer": {
        "ok": (BOOL, "true"),
        "oid": (INT, "the order id"),
        "class": (STR, "GPU class"),
        "seq": (INT, "the journal sequence number of the command's first event"),
        "order": ("Order", "the order as it stands after the batch it was in"),
        "trades": (["Trade"], "the trades it made (bids and asks only)"),
    },
    "ReleaseAnswer": {
        "ok": (BOOL, "true"),
        "class": (STR, "GPU class"),
        "seq": (INT, "the journal sequence number of the release's first event"),
        "lease": ("Lease", "the lease with its new end"),
    },
    "OrderList": {"orders": (["Order"], "own open orders, bids and asks")},
    "AskList": {"asks": (["Order"], "own open asks")},
    "LeaseList": {"leases": (["LeaseWithSettlement"], "own leases, as buyer or provider")},
    "InstrumentList": {"instruments": (["Instrument"], "the GPU classes")},
    "TaskList": {"tasks": ([OBJ], "provisioning tasks waiting for this account's agent (docs/api.md, R18)")},
    "Instrument": {
        "name": (STR, "the GPU class"),
        "tick": (INT, "prices are multiples of it, µ$ per GPU-hour"),
        "min_price": (INT, "the lowest price, µ$ per GPU-hour"),
        "max_price": (INT, "the highest price, µ$ per GPU-hour"),
        "max_gpus": (INT, "the most GPUs per order"),
        "max_hours": (INT, "the most hours per bid, and the longest min_hours"),
        "max_window_hours": (INT, "the longest ask window, hours"),
        "gate_s": (INT, "a reserved bid starts at least this many seconds after now"),
        "notice_s": (INT, "spot preemption notice, seconds (R12)"),
        "maker_fee_bps": (INT, "fee of the side that rested, basis points of the lease's value (R19)"),
        "taker_fee_bps": (INT, "fee of the side that arrived, basis points"),
        "halted": (BOOL, "trading is halted"),
        "time": (INT, "the book's engine time"),
    },
    "Account": {
        "account": (INT, "the account id"),
        "name": (STR, "the account's name"),
        "role": (STR, "trader, provider, analyst or admin"),
        "deposited": (INT, "µ$: the total of the account's deposit requests"),
        "available": (INT, "µ$ free to bid with or withdraw"),
        "escrow": (INT, "µ$ held for open bids (R17)"),
        "lease_prepaid": (INT, "µ$ paid for leases, not yet earned by their providers"),
        "receivable": (INT, "µ$ earned as provider or reseller"),
        "open_orders": (INT, "how many orders are open"),
        "ssh_public_key": (STR, "the key leases are provisioned with, or null"),
    },
    "Quote": {
        "class": (STR, "GPU class"),
        "kind": (STR, "spot, on_demand or reserved"),
        "gpus": (INT, "GPUs asked for"),
        "hours": (INT, "hours asked for"),
        "time": (INT, "the book's engine time"),
        "window": ([INT], "[start, end) of the lease it would make"),
        "filled": (INT, "GPUs an IOC bid would get now"),
        "cost": (INT, "µ$ those GPUs would cost for the hours, before fees"),
        "complete": (BOOL, "all GPUs asked for would fill"),
        "average_price": (INT, "cost / (filled x hours), rounded down; null when nothing fills"),
        "reason": (STR, "why not complete: NO_LIQUIDITY, PARTIAL_LIQUIDITY or a validation code; null"),
        "message": (STR, "the reason's sentence, or null"),
        "fills": ([OBJ], "the fills: ask_oid, provider, gpus, price"),
    },
    "CreatedAccount": {
        "account_id": (INT, "the new account's id"),
        "name": (STR, "its name"),
        "role": (STR, "its role"),
        "key_id": (STR, "its first API key id"),
        "secret": (STR, "the key's secret, shown once"),
    },
    "DepositAnswer": {
        "ok": (BOOL, "true"),
        "account": (INT, "the account"),
        "deposited": (INT, "µ$: the account's deposit requests in total"),
        "available": (INT, "µ$: its available balance now"),
    },
    "WithdrawAnswer": {
        "ok": (BOOL, "true"),
        "account": (INT, "the account"),
        "withdrawn": (INT, "µ$ taken out"),
        "available": (INT, "µ$: its available balance now"),
    },
    "PublicTrade": {
        "seq": (INT, "the trade event's sequence number in its class: the order of the history and its cursor"),
        "time": (INT, "engine time of the trade"),
        "trade_id": (INT, "the trade's id, counted per class"),
        "kind": (STR, "spot, on_demand or reserved"),
        "gpus": (INT, "GPUs traded"),
        "hours": (INT, "hours traded"),
        "price": (INT, "the trade price (R11), µ$ per GPU-hour"),
        "start": (INT, "the lease's start"),
        "end": (INT, "the lease's end as traded"),
        "maker": (STR, "which side rested first: bid or ask"),
        "resale_of": (INT, "present for a resold lease (R16): the trade id of the lease it was cut from"),
    },
    "TradePage": {
        "class": (STR, "GPU class"),
        "kind": (STR, "the kind asked for, or null: every kind"),
        "trades": (["PublicTrade"], "the page's trades, oldest first (by seq); no accounts, no order ids"),
        "next": (STR, "the cursor of the next page: the last trade's seq (the request's cursor if the page is "
                      "empty)"),
        "more": (BOOL, "more matching trades exist now: ask for the next page"),
    },
    "Candle": {
        "start": (INT, "the interval's start, engine time"),
        "open": (INT, "the first trade's price, µ$ per GPU-hour"),
        "high": (INT, "the highest trade price"),
        "low": (INT, "the lowest trade price"),
        "close": (INT, "the last trade's price"),
        "volume": (INT, "GPU-hours traded (gpus x hours)"),
        "notional": (INT, "µ$ traded: price x GPU-hours, summed"),
        "trades": (INT, "how many trades"),
    },
    "CandlePage": {
        "class": (STR, "GPU class"),
        "kind": (STR, "the kind asked for, or null: every kind"),
        "interval": (STR, "1m or 1h"),
        "from": (INT, "the first candle start covered (from, aligned down to the interval)"),
        "to": (INT, "the last candle start covered (to, or the class's engine time, aligned down)"),
        "candles": (["Candle"], "the candles with trades, oldest first; intervals without trades have none"),
        "next": (INT, "when more candles lie in the range: the start of the first one left out; else null"),
    },
    "ProductBook": {
        "product": (STR, "its name: KIND:HOURSh:xBLOCK, and @START for reserved (docs/feeds.md, Products)"),
        "kind": (STR, "spot, on_demand or reserved"),
        "hours": (INT, "the lease's duration"),
        "block": (INT, "GPUs per block"),
        "start": (INT, "reserved: the lease's start; else null"),
        "best_bid": (INT, "the highest limit of the product's resting bids, µ$ per GPU-hour; null: none"),
        "best_ask": (INT, "the lowest price a bid of the product could fill at now; null: none"),
        "bids": ([[INT]], "[limit, gpus] of the product's resting bids, highest first"),
        "asks": ([[INT]], "[price, gpus] a bid of the product could get now, cheapest first"),
        "quotes": (["SizeQuote"], "what filling the standard sizes (1, 8 and 64 blocks) would cost now"),
    },
    "SizeQuote": {
        "gpus": (INT, "the size: GPUs"),
        "limit": (INT, "the limit a bid of the product for that many GPUs needs to fill in full now (the price of "
                       "the last GPU it takes); null: the book cannot fill it"),
        "average": (INT, "µ$ per GPU-hour it would pay on average, rounded down (GET /v1/quote's average_price); "
                         "null likewise"),
    },
    "ProductBooks": {
        "class": (STR, "GPU class"),
        "time": (INT, "the book's engine time"),
        "seq": (INT, "the book's last event seq"),
        "products": (["ProductBook"], "every product of the class, or the one asked for"),
    },
    "ForwardDay": {
        "start": (INT, "the start day: a UTC midnight, engine time"),
        "best": (INT, "µ$ per GPU-hour: the limit at which a reserved bid for gpus x hours from start fills in "
                      "full now (the highest price of its fills, GET /v1/quote); null when it would not"),
        "average": (INT, "µ$ per GPU-hour: what those GPU-hours cost on average, rounded down; null likewise"),
        "reason": (STR, "why best is null (NO_LIQUIDITY, PARTIAL_LIQUIDITY, or a bid rule's code); else null"),
        "traded_vwap": (INT, "µ$ per GPU-hour: the reserved trades of the last week starting that day, "
                             "notional // GPU-hours; null without any"),
        "traded_gpu_hours": (INT, "GPU-hours of those trades"),
        "trades": (INT, "how many"),
    },
    "ForwardCurve": {
        "class": (STR, "GPU class"),
        "time": (INT, "the book's engine time"),
        "gpus": (INT, "GPUs of the quoted bid"),
        "hours": (INT, "hours of the quoted bid"),
        "lookback_s": (INT, "how far back the traded side looks"),
        "days": (["ForwardDay"], "one per start day, from the first UTC midnight after time"),
    },
    "Health": {
        "ok": (BOOL, "true while every part runs (then 200; else 503)"),
        "seq": (INT, "the journal's last sequence number"),
        "classes": ([STR], "the GPU classes"),
        "halted": ([STR], "the classes whose trading is halted"),
        "checks": (("map", STR), "per part (settlement, bus, feeds, sequencer...): ok, or what is wrong with it"),
    },
    "Book": {
        "class": (STR, "GPU class"),
        "time": (INT, "the book's engine time"),
        "resting_orders": (INT, "orders resting in the book"),
        "seq": (INT, "the event seq the level 2 below stands at"),
        "asks": ([[INT]], "[price, gpus]: free GPUs now per firm ask price, lowest first"),
        "spot_asks": ([[INT]], "[price, gpus]: free GPUs now per spot price, lowest first"),
        "bids": ([[INT]], "[price, gpus]: remaining GPUs per limit of firm bids, highest first"),
        "spot_bids": ([[INT]], "[price, gpus]: remaining GPUs per limit of spot bids, highest first"),
    },
    "Dashboard": {
        "class": (STR, "GPU class"),
        "time": (INT, "the book's engine time"),
        "calendar": (OBJ, "start, step, hours, and per hour: free, spot_free, capacity, used (docs/demo.md)"),
        "utilisation": (OBJ, "now: capacity, used, free, spot_free, ratio"),
        "leases": (OBJ, "open, running, scheduled, by_kind"),
        "providers": ([OBJ], "per provider account: capacity, used"),
    },
    "Statement": {
        "account": (INT, "the account"),
        "balances": (("map", INT), "µ$ per kind: available, escrow, lease_prepaid, receivable (zeros left out)"),
        "transfers": (["StatementLine"], "every ledger transfer that touched the account, in the order applied"),
        "leases": (["SettledLease"], "its leases as buyer or provider, as settlement keeps them"),
    },
    "StatementLine": {
        "id": (STR, "the transfer's id: what caused it (docs/settlement.md)"),
        "time": (INT, "engine time of its cause"),
        "account": (STR, "the kind of the account's balance it moved: available, escrow, lease_prepaid, receivable"),
        "amount": (INT, "µ$ it added to that balance (negative: taken from it)"),
        "balance": (INT, "µ$: that balance right after this transfer, as the account had it"),
        "from": (STR, "OWNER/KIND it was taken from"),
        "to": (STR, "OWNER/KIND it went to"),
    },
    "SshKeyAnswer": {
        "ok": (BOOL, "true"),
        "account": (INT, "the account"),
        "ssh_public_key": (STR, "the key now set"),
    },
    "ProvisionResult": {
        "ok": (BOOL, "true"),
        "lease": (STR, "the lease answered"),
        "settlement": ("LeaseSettlement", "settlement's side of the lease after the answer"),
    },
    "HaltAnswer": {
        "ok": (BOOL, "true"),
        "class": (STR, "GPU class"),
        "halted": (BOOL, "trading in it is halted now"),
    },
    "KillAnswer": {
        "ok": (BOOL, "true"),
        "account": (INT, "the account"),
        "cancelled": (INT, "how many of its orders were cancelled"),
    },
    "AdminState": {
        "seq": (INT, "the journal's last sequence number"),
        "last_oid": (INT, "the last order id given"),
        "state_hashes": (("map", STR), "per class: the book's state hash (a decimal string)"),
        "money_hash": (STR, "the hash of the core's money (a decimal string)"),
        "times": (("map", INT), "per class: the book's engine time"),
        "digest": (("map", INT), "aggregates of the state: orders_open, leases, held, cost"),
        "halted": ([STR], "the halted classes"),
    },
    "SnapshotAnswer": {"ok": (BOOL, "true: a snapshot is taken now")},
}
# a lease as GET /v1/leases lists it: the book's lease and settlement's side of it
SHAPES["LeaseWithSettlement"] = {**SHAPES["Lease"], "settlement": ("LeaseSettlement", "settlement's side of it")}
NULLABLE = {("Order", "*"), ("OrderAnswer", "order"), ("ReleaseAnswer", "lease"), ("LeaseSettlement", "connection"),
            ("Account", "ssh_public_key"), ("Quote", "average_price"), ("Quote", "reason"), ("Quote", "message"),
            ("TradePage", "kind"), ("CandlePage", "kind"), ("CandlePage", "next"), ("ForwardDay", "best"),
            ("ForwardDay", "average"), ("ForwardDay", "reason"), ("ForwardDay", "traded_vwap"),
            ("ProductBook", "start"), ("ProductBook", "best_bid"), ("ProductBook", "best_ask"), ("SizeQuote", "limit"),
            ("SizeQuote", "average")}
OPTIONAL = {("OrderAnswer", "trades"), ("PublicTrade", "resale_of")} \
    | {("Order", f) for f in ("kind", "tif", "hours", "block", "hold", "spot_price", "min_hours", "lease_id")} \
    | {("Book", f) for f in ("seq", "asks", "spot_asks", "bids", "spot_bids")} \
    | {("LeaseSettlement", f) for f in SHAPES["LeaseSettlement"] if f != "status"}  # only status while unknown

def _type(t: Any) -> dict[str, Any]:
    if isinstance(t, list):
        return {"type": "array", "items": _type(t[0])}
    if isinstance(t, tuple):  # ("map", value type): an object of any keys
        return {"type": "object", "additionalProperties": _type(t[1])}
    if t in (INT, STR, BOOL, OBJ):
        return {"type": t}
    return {"$ref": f"#/components/schemas/{t}"}


def schemas() -> dict[str, Any]:
    """The OpenAPI component schemas of every answer."""
    out = {}
    for name, fields in SHAPES.items():
        props = {}
        for field, (t, desc) in fields.items():
            s = {**_type(t), "description": desc}
            if (name, field) in NULLABLE and "type" in s:
                s["type"] = [s["type"], "null"]
            elif (name, field) in NULLABLE:
                s = {"anyOf": [{"$ref": s["$ref"]}, {"type": "null"}], "description": desc}
            props[field] = s
        out[name] = {"type": "object", "properties": props, "additionalProperties": False,
                     "required": [f for f in fields if (name, f) not in OPTIONAL]}
    return out
