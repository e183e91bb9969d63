"""The forward curve and the spot–firm spread, from a recording (docs/feeds.md "A worked example").

A notebook-style script: each ``# %%`` cell runs on its own in Jupyter or VS Code, and the whole
file runs as a script (headless: matplotlib's Agg backend):

    python docs/examples/forward_curve.py gpux-data --out figures/          # a data directory of a run
    python docs/examples/forward_curve.py gpux-data --out figures/ --by hour

It writes ``forward_curve.png`` (two panels) and ``forward_curve.json`` (the plotted series) to
``--out``.  Prices are integer µ$ per GPU-hour throughout; they become dollars only on the axes.

* **Forward curve**: for each class and each start day (UTC) of the reserved trades, the best
  (lowest) traded price and the volume-weighted price, ``Σ price × gpus × hours // Σ gpus × hours``,
  with the GPU-hours traded.  ``--by hour`` groups by start hour instead.
* **Spot–firm spread**: for each class and each minute (engine time of the trade) with both spot
  and on-demand trades, the on-demand VWAP minus the spot VWAP: what a buyer pays for GPUs that
  cannot be preempted (R12).  Reserved trades are left out: they price a later start.
"""

# %% Parameters
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing: `cli` is the repository's
from cli.main import main as gpux  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a data directory (or its market-data directory)")
    p.add_argument("--out", default=".", help="where to write forward_curve.png and .json (default .)")
    p.add_argument("--by", choices=["day", "hour"], default="day", help="forward curve by start day or hour")
    return p.parse_args(argv)


def vwap(df: pd.DataFrame) -> pd.Series:
    """Σ price × GPU-hours // Σ GPU-hours per group (integer µ$ per GPU-hour, rounded down)."""
    gpu_h = df["gpus"] * df["hours"]
    return (df["price"] * gpu_h).sum() // gpu_h.sum()


def forward_curve(trades: pd.DataFrame, by: str = "day") -> pd.DataFrame:
    """Per class and start day (or hour) of reserved trades: best price, VWAP, GPU-hours."""
    width = 86_400 if by == "day" else 3_600
    r = trades[trades["kind"] == "reserved"].assign(bucket=lambda d: d["start"] - d["start"] % width,
                                                    gpu_h=lambda d: d["gpus"] * d["hours"])
    g = r.groupby(["class", "bucket"], sort=True)
    return pd.DataFrame({"best": g["price"].min(), "vwap": g[["price", "gpus", "hours"]].apply(vwap),
                         "gpu_h": g["gpu_h"].sum()}).reset_index()


def spot_firm_spread(trades: pd.DataFrame) -> pd.DataFrame:
    """Per class and minute with both spot and on-demand trades: their VWAPs and the spread."""
    t = trades[trades["kind"].isin(["spot", "on_demand"])].assign(minute=lambda d: d["trade_time"] // 60 * 60)
    v = t.groupby(["class", "minute", "kind"])[["price", "gpus", "hours"]].apply(vwap).unstack("kind")
    v = v.dropna().astype("int64").reset_index()
    v["spread"] = v["on_demand"] - v["spot"]
    return v[["class", "minute", "on_demand", "spot", "spread"]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # %% Export the trades of the recording and load them (docs/feeds.md "For analysts")
    trades_file = out / "trades.parquet"
    if gpux(["replay", args.data, "--channel", "trades", "--format", "parquet", "-o", str(trades_file),
             "--no-progress"]) != 0:
        return 1
    trades = pd.read_parquet(trades_file)

    # %% The forward curve and the spread
    curve = forward_curve(trades, args.by)
    spread = spot_firm_spread(trades)
    print(f"{len(trades)} trades; forward curve: {len(curve)} points; spread: {len(spread)} minutes")

    # %% Plot
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8))
    for cls, c in curve.groupby("class"):
        when = pd.to_datetime(c["bucket"], unit="s", utc=True)
        line = top.plot(when, c["vwap"] / 1e6, marker="o", label=f"{cls} VWAP")[0]
        top.plot(when, c["best"] / 1e6, marker="v", linestyle=":", color=line.get_color(), label=f"{cls} best")
    top.set_title(f"Forward curve: reserved trades by start {args.by} (UTC)")
    top.set_ylabel("$ per GPU-hour")
    top.legend(fontsize="small")
    for cls, s in spread.groupby("class"):
        bottom.plot(pd.to_datetime(s["minute"], unit="s", utc=True), s["spread"] / 1e6, marker=".", label=cls)
    bottom.axhline(0, color="grey", linewidth=0.5)
    bottom.set_title("Spot–firm spread: on-demand VWAP − spot VWAP per minute")
    bottom.set_ylabel("$ per GPU-hour")
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "forward_curve.png", dpi=100)
    plt.close(fig)

    # %% The series, for whoever wants the numbers (integers: µ$ per GPU-hour, UTC seconds)
    series = {
        "by": args.by,
        "forward": {cls: c[["bucket", "best", "vwap", "gpu_h"]].values.tolist() for cls, c in curve.groupby("class")},
        "spread": {cls: s[["minute", "on_demand", "spot", "spread"]].values.tolist()
                   for cls, s in spread.groupby("class")},
    }
    (out / "forward_curve.json").write_text(json.dumps(series, indent=1))
    print(f"wrote {out / 'forward_curve.png'} and {out / 'forward_curve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
