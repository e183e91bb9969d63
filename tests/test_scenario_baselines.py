"""bench.scenario's baselines and owned fleets (docs/scenario.md), on short horizons: the careful
buyer's contract is the cheapest by brute force over every size and lies below the peak; the three
ways of buying outside the exchange cost, through a book, what the planner computed; fleets that
offer their idle hours are used more and earn from trades in the book, their own jobs preempting
outsiders' spot leases; the --json output carries every baseline and the fleets before and after."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from bench import scenario as sc
from orderbook.types import EV_TRADE, HOUR, ON_DEMAND, RESERVED, SPOT


def short_need(weeks: int = 3) -> np.ndarray:
    """The start of the startup's own need curve: 1,000 GPUs, +200 for a day every week."""
    return sc.need_curve()[:weeks * 7 * 24]


def bumpy_need(seed: int, hours: int = 400) -> np.ndarray:
    """A seeded curve with many levels: a base, random bursts, idle stretches."""
    rng = np.random.default_rng(seed)
    need = np.full(hours, int(rng.integers(0, 300)), np.int64)
    for _ in range(12):
        a = int(rng.integers(0, hours))
        need[a:a + int(rng.integers(1, 120))] += int(rng.integers(1, 600))
    need[int(rng.integers(0, hours)):][:int(rng.integers(0, 50))] = 0
    return need


@pytest.mark.parametrize("need", [short_need(), bumpy_need(1), bumpy_need(2), bumpy_need(3)],
                         ids=["startup-3-weeks", "bumpy-1", "bumpy-2", "bumpy-3"])
def test_cheapest_contract_is_minimal_by_brute_force(need: np.ndarray) -> None:
    best = sc.cheapest_contract(need)
    every = [sc.mix_cost(need, c) for c in range(int(need.max()) + 1)]
    assert sc.mix_cost(need, best) == min(every)
    assert best == every.index(min(every)), "the smallest of the cheapest sizes"
    # each GPU of contract costs the contract rate for every hour: the brute force agrees with
    # the sum of the hourly bills
    hourly = [best * sc.A_CONTRACT_PRICE + max(int(n) - best, 0) * sc.A_LIST_PRICE for n in need]
    assert sc.mix_cost(need, best) == sum(hourly)


def test_the_careful_buyer_contracts_below_peak_and_pays_least() -> None:
    need = short_need()
    peak = int(need.max())
    best = sc.cheapest_contract(need)
    # the evaluation burst is needed 1 day in 7 (14 % of the hours), less than contract/list
    # (15 %): its 200 GPUs are cheaper on demand at list price than under contract
    assert best == 1_000 < peak == 1_200
    runs = {c: sc.run_outside("numba", need, c) for c in (best, peak, 0)}
    costs = {}
    for c, m in runs.items():
        tr = m.all_trades()
        f = sc.outside_figures(m, need, c, exch_cost=0)
        assert m.rejected == 0 and f["shortfall_gpu_hours"] == 0
        # the book charged what the planner computed, fill by fill
        assert sc.cost(tr) == sc.mix_cost(need, c)
        assert f["cost_usd"] == sc.mix_cost(need, c) / sc.USD
        contract = tr[tr["account2"] == sc.CONTRACTOR]
        assert len(contract) == (1 if c else 0) and (contract["kind"] == RESERVED).all()
        top = tr[tr["account2"] == sc.CLOUD]
        assert (top["kind"] == ON_DEMAND).all() and (top["price"] == sc.A_LIST_PRICE).all()
        assert f["on_demand_gpu_hours"] == int(np.maximum(need - c, 0).sum())
        assert f["unused_gpu_hours"] == int(np.maximum(c - need, 0).sum())
        costs[c] = f["cost_usd"]
    assert costs[best] <= costs[peak] and costs[best] <= costs[0]
    assert costs[best] < costs[peak] < costs[0]


def test_owned_fleets_earn_from_their_idle_hours() -> None:
    days = 12
    r = sc.run_owned("numba", seed=1, days=days)
    assert r["utilisation_after"] > r["utilisation_before"] and r["income_before_usd"] == 0
    assert r["income_after_usd"] > 0
    preempted = 0
    for k in range(sc.C_COMPANIES):
        row = r["per_company"][k]
        before, after = row["before"], row["after"]
        assert after["utilisation"] > before["utilisation"] and after["income_usd"] > 0
        assert before["outside_fills"] == 0 and after["outside_fills"] > 0
        # alone, the fleet is used only by its own teams, about C_OWN_USE of the time
        assert before["own_use"] == before["utilisation"] and 0.05 < before["own_use"] < 0.5
        # the income is the outsiders' trades in the book: price x GPUs x hours of each fill,
        # less the part after the cut of each preempted spot lease (paid pro rata, R12)
        m, _ = sc.run_owned_fleet("numba", 1, k, days, outside=True)
        tr = m.all_trades()
        owner, team = sc.C_OWNER_BASE + k, sc.C_TEAM_BASE + k
        outsiders = tr[(tr["account2"] == owner) & (tr["account"] != team)]
        assert (outsiders["type"] == EV_TRADE).all() and set(outsiders["kind"].tolist()) == {ON_DEMAND, SPOT}
        gross = sum(int(t["price"]) * int(t["gpus"]) * int(t["hours"]) for t in outsiders)
        cut = m.all_preemptions()
        by_id = {int(t["trade_id"]): t for t in outsiders}
        refund = 0
        for c in cut:
            t = by_id.get(int(c["trade_id"]))
            if t is not None:
                assert t["kind"] == SPOT
                refund += int(t["price"]) * int(t["gpus"]) * (int(t["end"]) - int(c["end"])) // HOUR
        assert after["income_usd"] == pytest.approx((gross - refund) / sc.USD, abs=1e-3)
        # every outsider's spot lease cut short was cut by a firm trade on the company's asks: of
        # its own team, or of an outsider buying firm on the ask that also sells spot
        team_trades = {int(t["trade_id"]) for t in tr[tr["account"] == team]}
        firm_out = {int(t["trade_id"]) for t in outsiders if t["kind"] == ON_DEMAND}
        mine = [c for c in cut if int(c["trade_id"]) in by_id]
        by_team = sum(int(c["lease_id"]) in team_trades for c in mine)
        by_out = sum(int(c["lease_id"]) in firm_out for c in mine)
        assert by_team + by_out == len(mine)
        assert (after["spot_preempted_by_own_jobs"], after["spot_preempted_by_outsiders"]) == (by_team, by_out)
        preempted += by_team
        # outsiders never got the spot-only ask's GPUs firm: its firm price is the book's maximum
        firm_out = outsiders[outsiders["kind"] == ON_DEMAND]
        assert (firm_out["price"] == sc.C_FIRM_PRICE).all()
    assert preempted > 0, "own jobs preempted outsiders' spot leases"


@pytest.fixture(scope="module")
def cli_json() -> dict:
    """`python -m bench.scenario --json`, in process, with (b) and (c) on short horizons."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sc, "B_DAYS", 14)
        mp.setattr(sc, "C_DAYS", 10)
        with contextlib.redirect_stdout(out):
            assert sc.main(["--json"]) == 0
    return json.loads(out.getvalue())


def test_json_reports_every_baseline_and_the_owned_fleets(cli_json: dict) -> None:
    a = cli_json["startup"]
    ex = a["exchange"]["cost_usd"]
    bl = a["baselines"]
    assert set(bl) == {"peak_contract", "contract_plus_on_demand", "all_on_demand"}
    for b in bl.values():
        assert b["saving_usd"] == pytest.approx(b["cost_usd"] - ex)
        assert b["saving_pct"] == round(100 * (b["cost_usd"] - ex) / b["cost_usd"], 1)
        assert b["shortfall_gpu_hours"] == 0
        assert b["cost_usd"] == pytest.approx(b["contract_usd"] + b["on_demand_usd"])
    mix = bl["contract_plus_on_demand"]
    assert mix["cost_usd"] <= bl["peak_contract"]["cost_usd"] and mix["cost_usd"] <= bl["all_on_demand"]["cost_usd"]
    assert mix["contract_gpus"] < a["peak_gpus"] == bl["peak_contract"]["contract_gpus"]
    # every size from 0 to the peak, over the whole year: the chosen one is the cheapest
    need = np.sort(sc.need_curve())
    sizes = np.arange(a["peak_gpus"] + 1)
    above = len(need) - np.searchsorted(need, sizes, side="right")  # hours with need > size
    tail = np.concatenate((np.cumsum(need[::-1])[::-1], [0]))  # sum of need[i:]
    top_up = tail[len(need) - above] - sizes * above  # GPU-hours above each size
    costs = sizes * len(need) * sc.A_CONTRACT_PRICE + top_up * sc.A_LIST_PRICE
    assert mix["contract_gpus"] == int(np.argmin(costs))
    assert mix["cost_usd"] == int(costs.min()) / sc.USD
    assert bl["all_on_demand"]["contract_gpus"] == 0
    assert bl["all_on_demand"]["on_demand_gpu_hours"] == a["need_gpu_hours"]
    assert bl["peak_contract"]["cost_usd"] == a["fixed_contract"]["cost_usd"]
    c = cli_json["owned_fleets"]
    assert c["days"] == 10 and len(c["per_company"]) == sc.C_COMPANIES
    assert c["utilisation_after"] > c["utilisation_before"] > 0
    assert c["income_after_usd"] > c["income_before_usd"] == 0
    assert cli_json["assumptions"]["startup"]["list_price_usd"] == sc.A_LIST_PRICE / sc.USD
    assert cli_json["assumptions"]["owned_fleets"]["own_use"] == sc.C_OWN_USE
