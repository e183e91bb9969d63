"""Every REST answer has the shape the OpenAPI document says (gateway/shapes.py): each field the
schema lists is in the real answer (unless optional), with its type, and the answer has no field
the schema does not describe; docs/api.md names every field too."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from gateway.openapi import document
from tests.exchange_helpers import USD, running_exchange

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
TYPES = {"integer": int, "string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def check(value: Any, schema: dict[str, Any], schemas: dict[str, Any], where: str) -> None:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        check(value, schemas[name], schemas, f"{where}<{name}>")
        return
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                check(value, alt, schemas, where)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: {errors}")
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    ok = any(isinstance(value, TYPES[t]) and not (t == "integer" and isinstance(value, bool)) for t in types)
    assert ok, f"{where}: {value!r} is not {types}"
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        assert set(value) <= set(props), f"{where}: fields the schema does not describe: {set(value) - set(props)}"
        missing = set(schema.get("required", [])) - set(value)
        assert not missing, f"{where}: fields missing: {missing}"
        for k, v in value.items():
            check(v, props[k], schemas, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check(v, schema["items"], schemas, f"{where}[{i}]")


def test_real_answers_have_the_documented_shapes(tmp_path):
    doc = document()
    schemas = doc["components"]["schemas"]

    def answer_schema(path: str, method: str) -> dict[str, Any]:
        responses = doc["paths"][path][method]["responses"]
        ok = next(v for k, v in responses.items() if k != "default")
        return ok["content"]["application/json"]["schema"]

    async def scenario():
        async with running_exchange(tmp_path, fsync="off", provisioning="auto") as ex:
            prov = ex.client("prov", "provider")
            alice = ex.client("alice", "trader", 1000 * USD)
            admin = ex.client("root", "admin")
            seen: list[tuple[str, str, Any]] = []
            ask = await prov.ask("H100", gpus=8, price=2_000_000, end=ex.now + 86_400, spot_price=1_000_000)
            seen.append(("/v1/asks", "post", ask))
            async with await alice.trader() as t:
                await t.bid("H100", "spot", gpus=1, hours=1, limit=500_000)  # rests
                bought = await t.bid("H100", "on_demand", gpus=2, hours=2, limit=2_100_000)
            assert bought["trades"]
            seen.append(("/v1/asks", "post", {k: v for k, v in bought.items() if k not in ("type", "id")}))
            seen.append(("/v1/orders", "get", await alice.request("GET", "/v1/orders")))
            seen.append(("/v1/asks", "get", await prov.request("GET", "/v1/asks")))
            seen.append(("/v1/orders/{oid}", "get", await prov.order(ask["oid"])))
            seen.append(("/v1/instruments", "get", await alice.request("GET", "/v1/instruments", signed=False)))
            seen.append(("/v1/quote", "get", await alice.quote("H100", "on_demand", 2, 2)))
            seen.append(("/v1/quote", "get", await alice.quote("A100", "on_demand", 2, 2)))  # nothing fills
            seen.append(("/v1/account", "get", await alice.account()))
            trades = await alice.request("GET", "/v1/trades?class=H100", signed=False)
            assert trades["trades"] and trades["more"] is False
            seen.append(("/v1/trades", "get", trades))
            seen.append(("/v1/trades", "get", await alice.request("GET", "/v1/trades?class=H100&kind=spot&limit=1",
                                                                  signed=False)))
            candles = await alice.request("GET", "/v1/candles?class=H100&interval=1h", signed=False)
            assert candles["candles"] and candles["next"] is None
            seen.append(("/v1/candles", "get", candles))
            seen.append(("/v1/candles", "get", await alice.request("GET", "/v1/candles?class=H100&kind=on_demand",
                                                                   signed=False)))
            seen.append(("/v1/provisioning", "get", await prov.request("GET", "/v1/provisioning")))
            trade_id = bought["trades"][0]["trade_id"]
            seen.append(("/v1/leases/{cls}/{trade_id}/release", "post", await alice.release("H100", trade_id)))
            seen.append(("/v1/leases", "get", await alice.request("GET", "/v1/leases")))
            seen.append(("/v1/leases", "get", await prov.request("GET", "/v1/leases")))
            created = await admin.create_account("bob", "trader", deposit=5 * USD)
            seen.append(("/v1/admin/accounts", "post", created))
            seen.append(("/v1/admin/deposit", "post", await admin.deposit(created["account_id"], USD)))
            seen.append(("/v1/admin/withdraw", "post", await admin.withdraw(created["account_id"], USD)))
            seen.append(("/v1/orders/{oid}", "delete", await prov.cancel(ask["oid"])))
            for path, method, value in seen:
                check(value, answer_schema(path, method), schemas, f"{method.upper()} {path}")
            leases = (await alice.request("GET", "/v1/leases"))["leases"]
            (lease,) = leases
            s = lease["settlement"]
            assert s["paid"] == lease["cost"] and s["fee"] == 0  # ready at its start, no fee (docs/api.md)
            traded = bought["trades"][0]
            value_at_trade = traded["gpus"] * traded["price"] * (traded["end"] - traded["start"]) // 3600
            assert s["paid"] - s["fee"] + s["refunded"] == value_at_trade

    asyncio.run(scenario())


def test_docs_name_every_field():
    """docs/api.md mentions every field of every answer (as `field`, `settlement.field` or "field")."""
    from gateway.shapes import SHAPES

    text = DOC.read_text()
    named = {part for name in re.findall(r"[`\"]([a-z_.]+)[`\"]", text) for part in name.split(".")}
    missing = {f"{shape}.{field}" for shape, fields in SHAPES.items() for field in fields if field not in named}
    assert not missing, sorted(missing)
