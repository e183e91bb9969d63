"""The agent's inventory file: exact USD to µ$, the errors it names, and the asks it posts to a
running exchange — once, across restarts."""

from __future__ import annotations

import asyncio
import calendar
import time
from decimal import Decimal
from pathlib import Path

import pytest

from agent.inventory import InventoryError, InventoryPoster, load_inventory, usd_to_micro
from tests.exchange_helpers import running_exchange

pytestmark = pytest.mark.timeout(120)

YEAR = time.gmtime().tm_year + 1  # a fixed window ahead, within the two years the exchange takes (issue 17, item 5)
INVENTORY = f"""
[[asks]]
class = "H100"
gpus = 8
price_usd = 2.10
spot_price_usd = 1.20
hours = 720

[[asks]]
name = "a100-june"
class = "A100"
gpus = 4
price = 1500000
start = {YEAR}-06-01T00:00:00Z
end = {YEAR}-07-01T00:00:00Z
min_hours = 4
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inventory.toml"
    p.write_text(text)
    return p


def test_usd_is_converted_exactly() -> None:
    assert usd_to_micro(Decimal("2.10"), "x") == 2_100_000
    assert usd_to_micro("0.000001", "x") == 1
    assert usd_to_micro(3, "x") == 3_000_000
    assert usd_to_micro(Decimal("0.1") + Decimal("0.2"), "x") == 300_000  # no float rounding anywhere
    for bad in ("0.0000001", "-1", "0", "NaN", "abc", True, 2.1):
        with pytest.raises(InventoryError):
            usd_to_micro(bad, "x")


def test_entries_are_read(tmp_path: Path) -> None:
    rel, fixed = load_inventory(_write(tmp_path, INVENTORY))
    assert (rel.gpu_class, rel.gpus, rel.price, rel.spot_price, rel.hours) == ("H100", 8, 2_100_000, 1_200_000, 720)
    assert rel.window(1000) == (0, 1000 + 720 * 3600)
    assert rel.body(1000) == {"class": "H100", "gpus": 8, "price": 2_100_000, "end": 1000 + 720 * 3600,
                              "spot_price": 1_200_000, "client_order_id": f"inv:{rel.id}:{1000 + 720 * 3600}"}
    assert fixed.id == "a100-june" and fixed.price == 1_500_000 and fixed.min_hours == 4
    assert fixed.window(0) == (calendar.timegm((YEAR, 6, 1, 0, 0, 0)), calendar.timegm((YEAR, 7, 1, 0, 0, 0)))
    assert load_inventory(_write(tmp_path, INVENTORY))[0].id == rel.id  # the same entry, the same id


@pytest.mark.parametrize("text, match", [
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2.1\n', "either hours"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2.1\nhours=5\nend=9\n', "either hours"),
    ('[[asks]]\nclass="H100"\ngpus=8\nhours=5\n', "price_usd"),
    ('[[asks]]\nclass="H100"\ngpus=0\nprice_usd=2\nhours=5\n', "gpus must be an integer"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2.1234567\nhours=5\n', "at most 6 decimals"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2\nprice=2000000\nhours=5\n', "not both"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2\nhours=5\ncolour="red"\n', "unknown field 'colour'"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2\nstart=2026-01-01T00:00:00\nend=2026-02-01T00:00:00Z\n',
     "time zone"),
    ('[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2\nhours=5\n[[asks]]\nclass="H100"\ngpus=8\nprice_usd=2\nhours=5\n',
     "different names"),
    ('[ask]\nclass="H100"\n', "unknown table"),
    ('[[asks]\n', "inventory.toml"),
])
def test_errors_name_the_entry_and_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InventoryError, match=match):
        load_inventory(_write(tmp_path, text))


def test_asks_are_posted_once_across_restarts(tmp_path: Path) -> None:
    entries = load_inventory(_write(tmp_path, INVENTORY))

    async def go() -> None:
        async with running_exchange(tmp_path / "data") as ex:
            prov = ex.client("acme", "provider")
            state = tmp_path / "inventory.json"
            posted = await InventoryPoster(entries, state).sync(prov, ex.now)
            assert len(posted) == 2
            asks = {a["class"]: a for a in await prov.asks()}
            assert asks["H100"]["price"] == 2_100_000 and asks["H100"]["spot_price"] == 1_200_000
            assert asks["H100"]["gpus"] == 8 and asks["A100"]["min_hours"] == 4
            assert asks["A100"]["client_order_id"] == f"inv:a100-june:{entries[1].end}"
            # a restart (a new poster over the same state) posts nothing again
            assert await InventoryPoster(entries, state).sync(prov, ex.now + 5) == []
            # nor does a poster that lost its state: the open asks are found by client order id
            assert await InventoryPoster(entries, None).sync(prov, ex.now + 5) == []
            # an ask cancelled before its end is not put back
            await prov.cancel(asks["H100"]["oid"])
            assert await InventoryPoster(entries, state).sync(prov, ex.now + 10) == []
            # once its window is over, an hours entry is posted again, with a new window
            later = ex.now + 721 * 3600
            again = await InventoryPoster(entries[:1], state).sync(prov, later)
            assert len(again) == 1 and again[0]["order"]["end"] == later + 720 * 3600
            assert len(await prov.asks()) == 2

    asyncio.run(go())
