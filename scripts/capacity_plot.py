"""The capacity curve: held-out loss against budget, per method, from train.py runs.

    python scripts/capacity_plot.py chains/capacity chains/positive --out docs/capacity_curve.png

Reads every fine-tune run under the folders (guilomo.results), groups them by method
and explicit budget value, and prints a markdown table (mean ± sample std of the held-out
loss over seeds, and the seeds) and writes the plot (log budget axis, error bars = std).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from guilomo.results import collect  # noqa: E402


def curve(dirs, metric: str = "nll", methods=None) -> dict[str, dict[int, dict[int, float]]]:
    """``{method: {budget value: {seed: metric}}}`` of the runs under ``dirs``."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for run in collect(dirs):
        v, b = run.value(metric), (run.budget or {}).get("value")
        if v is None or b is None or (methods and run.method not in methods):
            continue
        out.setdefault(run.method, {}).setdefault(int(b), {})[run.seed] = v
    return out


def table(data, metric: str) -> str:
    budgets = sorted({b for per in data.values() for b in per})
    lines = [
        f"{metric}: mean ± sample std over seeds (seeds)",
        "",
        "| method | " + " | ".join(f"{b:,}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method, per in sorted(data.items()):
        cells = []
        for b in budgets:
            vals = list(per.get(b, {}).values())
            if not vals:
                cells.append("-")
                continue
            sd = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.4f}{sd} ({len(vals)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data, metric: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per in sorted(data.items()):
        bs = sorted(per)
        means = [statistics.fmean(per[b].values()) for b in bs]
        sds = [statistics.stdev(per[b].values()) if len(per[b]) > 1 else 0.0 for b in bs]
        ax.errorbar(bs, means, yerr=sds, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (budget)")
    ax.set_ylabel(f"held-out {metric} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/capacity_plot.py", description=__doc__)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--metric", default="nll")
    p.add_argument("--methods", default="uniform,concentrated")
    p.add_argument("--out", default="capacity_curve.png")
    args = p.parse_args(argv)
    data = curve(args.dirs, args.metric, set(args.methods.split(",")))
    if not data:
        print("no runs with a budget value and the metric", file=sys.stderr)
        return 1
    print(table(data, args.metric))
    plot(data, args.metric, args.out)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
