"""`make bench` (bench/figures.py) prints the figures of the README's table, by the same names and
units, so that a user can compare; and it runs: a short run gives every figure with its spread and
the load it was measured at."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from bench import figures

ROOT = Path(__file__).resolve().parent.parent


def readme_bench_rows() -> list[tuple[str, str]]:
    """(name, unit) of each row of the README's `make bench` table (after `<!-- figures -->`)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- figures -->", 1)[1].strip().split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.findall(r"\(`(\w+)`\)", cells[0])
        assert name, f"a README figure without the name make bench prints: {line}"
        rows.append((name[-1], cells[-1]))
    return rows


def test_make_bench_prints_the_readmes_figures_by_name_and_unit() -> None:
    printed = [(n, u) for n, _, u in figures.BOOK_FIGURES] + [("scenario_" + n, u) for n, _, u in
                                                               figures.SCENARIO_FIGURES]
    assert readme_bench_rows() == printed
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^bench:.*\n\t\$\(BIN\)/python -m bench\.figures", makefile, re.M)


def test_a_short_run_reports_median_spread_and_load() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = figures.main(["--runs", "2", "--scenario-runs", "0", "--commands", "20000", "--prefix", "2000",
                           "--json"])
    m = json.loads(out.getvalue())
    assert rc == 0 and all(m["checks"].values()) and set(m["checks"]) == set(figures.CHECKS)
    assert set(m["figures"]) == {n for n, _, _ in figures.BOOK_FIGURES}
    for f in m["figures"].values():
        assert len(f["runs"]) == 2 and f["min"] <= f["median"] <= f["max"] and f["min"] > 0
        assert f["min"] == min(f["runs"]) and f["max"] == max(f["runs"])
    assert len(m["load_1min"]["runs"]) == 3 and m["cpus"] >= 1
    text = figures.table(m)
    for name in m["figures"]:
        assert f"(`{name}`)" in text
