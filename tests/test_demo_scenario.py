"""`python -m bench.scenario` (docs/scenario.md): the market simulation runs through the real book,
prints both comparisons, writes the plot, and its figures hang together — costs are sums of fills
(the fixed contract one fill of peak × year at the contract rate), the startup is never short,
its resale sells to others, pooling raises fleet utilisation — and the same seed gives the same
figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from bench import scenario as sc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result() -> dict:
    return sc.run("numba", seed=1)


def test_startup_figures_come_from_fills(result: dict) -> None:
    a = result["startup"]
    ex, fc = a["exchange"], a["fixed_contract"]
    need = sc.need_curve()
    assert a["need_gpu_hours"] == int(need.sum()) and a["peak_gpus"] == 11_000 + sc.A_EVAL_GPUS
    # the exchange: what it bought (reserved + on demand) less what its resale asks sold
    assert ex["cost_usd"] == pytest.approx(ex["bought_usd"]["reserved"] + ex["bought_usd"]["on_demand"]
                                           - ex["resale_income_usd"])
    assert ex["shortfall_gpu_hours"] == 0, "the startup always had the GPUs it needed"
    assert ex["fills"] > 50 and ex["bought_usd"]["on_demand"] > 0
    # resale: up to 500 GPUs for months 6-12, bought by other traders at the resale price
    assert 0 < ex["resold_gpu_hours"] <= 500 * 6 * sc.MONTH_H and ex["resale_fills"] > 0
    assert ex["resale_income_usd"] == pytest.approx(ex["resold_gpu_hours"] * sc.A_RESALE_PRICE / sc.USD)
    assert ex["unused_gpu_hours"] == 500 * 6 * sc.MONTH_H - ex["resold_gpu_hours"]
    # the contract: one fill of the peak for a year at the contract rate
    assert fc["fills"] == 1 and fc["shortfall_gpu_hours"] == 0
    assert fc["cost_usd"] == pytest.approx(a["peak_gpus"] * sc.YEAR_H * sc.A_CONTRACT_PRICE / sc.USD)
    assert fc["unused_gpu_hours"] == a["peak_gpus"] * sc.YEAR_H - a["need_gpu_hours"]
    assert a["saving_usd"] == pytest.approx(fc["cost_usd"] - ex["cost_usd"]) and a["saving_usd"] > 0
    # reserved GPU-hours bought are priced between the cheapest and dearest asks of the market
    rate = ex["bought_usd"]["reserved"] / ex["bought_gpu_hours"]["reserved"]
    assert sc.A_LONG_PRICE[0] / sc.USD <= rate <= sc.A_SHORT_PRICE[1] / sc.USD
    m = a["market"]
    assert m["rejected"] == 0 and m["background_trades"] > 1000 and m["preempted"] > 0


def test_pooling_raises_fleet_utilisation(result: dict) -> None:
    b = result["fleets"]
    own, ex = b["own_customers_only"], b["exchange"]
    for r in (own, ex):
        assert sum(p["gpu_hours"] for p in r["providers"]) == r["gpu_hours"]
        assert 0 < r["utilisation"] <= 1 and 0 < r["served_share"] <= 1
        assert len(r["weekly_utilisation"]) == -(-b["days"] // 7)
        assert all(0 <= p["utilisation"] <= 1 for p in r["providers"])
    assert ex["utilisation"] > own["utilisation"] and ex["served_share"] > own["served_share"]
    assert b["utilisation_gain_points"] == pytest.approx(100 * (ex["utilisation"] - own["utilisation"]), abs=0.01)


def _figures(d: object) -> object:
    """The result without wall-clock timings."""
    if isinstance(d, dict):
        return {k: _figures(v) for k, v in d.items() if k not in ("seconds", "book_seconds")}
    return d


def test_same_seed_same_figures(result: dict) -> None:
    again = sc.run("numba", seed=1)
    assert _figures(sc.public(again)) == _figures(sc.public(result))


def test_cli_prints_json_and_writes_the_plot(tmp_path: Path) -> None:
    png = tmp_path / "scenario.png"
    proc = subprocess.run([sys.executable, "-m", "bench.scenario", "--json", "--plot", str(png)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"startup", "fleets", "assumptions", "plot"} <= set(out)
    assert out["startup"]["exchange"]["cost_usd"] < out["startup"]["fixed_contract"]["cost_usd"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = subprocess.run([sys.executable, "-m", "bench.scenario"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300).stdout
    assert "(a) startup" in text and "fixed contract" in text and "(b) fleets" in text


def test_builtin_png_writer(tmp_path: Path, result: dict) -> None:
    """The fallback without matplotlib writes a valid PNG of the two comparisons."""
    path = tmp_path / "plain.png"
    sc._plot_plain(path, result["startup"], result["fleets"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    idat = data.index(b"IDAT")
    size = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + size])
    assert len(raw) == h * (1 + 3 * w)
    assert len(set(raw)) > 3  # more than a blank canvas
