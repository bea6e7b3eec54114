"""The capacity curve: held-out loss against budget, per method, from train.py runs.

    python scripts/capacity_plot.py chains/capacity --out docs/capacity_curve.png

Reads every fine-tune run under the folders (guilomo.results), groups them by method
and explicit budget value, and prints two markdown tables and a two-panel plot:

- the scores: mean ± sample std of the metric over seeds (each seed has its own test
  split, so this spread is mostly the split's, not the method's);
- paired by seed, which is what can see effects of a few thousandths:
  ``gain``: the reference method (uniform) at each budget minus itself at the smallest
  budget, seed by seed (below 0: the extra parameters lowered the loss), and
  ``placement``: every other method minus the reference at the same budget and seed
  (above 0: the placement lost), each with its 95 % t-interval
  (:func:`guilomo.results.mean_interval`).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from guilomo.results import collect, mean_interval  # noqa: E402


def curve(dirs, metric: str = "nll", methods=None) -> dict[str, dict[int, dict[int, float]]]:
    """``{method: {budget value: {seed: metric}}}`` of the runs under ``dirs``."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for run in collect(dirs):
        v, b = run.value(metric), (run.budget or {}).get("value")
        if v is None or b is None or (methods and run.method not in methods):
            continue
        out.setdefault(run.method, {}).setdefault(int(b), {})[run.seed] = v
    return out


def interval(diffs: list[float]) -> dict:
    """Mean, 95 % t-interval half-width (None for one value) and count of ``diffs``."""
    mean, _, half = mean_interval(diffs)
    return {"mean": mean, "half": half, "n": len(diffs)}


def paired_curves(data, reference: str = "uniform") -> dict[str, dict[int, dict]]:
    """``{"gain": {budget: interval}, method: {budget: interval}, ...}`` (see the module
    docstring): differences over the seeds both sides of a pair have."""
    ref = data.get(reference, {})
    out: dict[str, dict[int, dict]] = {}
    if ref:
        lowest, *higher = sorted(ref)
        for b in higher:
            diffs = [ref[b][s] - ref[lowest][s] for s in sorted(ref[b]) if s in ref[lowest]]
            if diffs:
                out.setdefault("gain", {})[b] = interval(diffs)
    for method, by_budget in sorted(data.items()):
        if method == reference:
            continue
        for b, per in sorted(by_budget.items()):
            diffs = [per[s] - ref[b][s] for s in sorted(per) if s in ref.get(b, {})]
            if diffs:
                out.setdefault(method, {})[b] = interval(diffs)
    return out


def _cell(iv: dict) -> str:
    half = (
        ""
        if iv["half"] is None
        else f" [{iv['mean'] - iv['half']:+.4f}, {iv['mean'] + iv['half']:+.4f}]"
    )
    return f"{iv['mean']:+.4f}{half} ({iv['n']})"


def budgets_of(data) -> list[int]:
    return sorted({b for per in data.values() for b in per})


def table(data, pairs, metric: str, reference: str = "uniform") -> str:
    """The scores and the paired differences (``pairs``: :func:`paired_curves`) as markdown."""
    budgets = budgets_of(data)
    head = "| | " + " | ".join(f"{b:,}" for b in budgets) + " |"
    rule = "|---|" + "---|" * len(budgets)
    lines = [f"{metric}: mean ± sample std over seeds (seeds)", "", head, rule]
    for method, per in sorted(data.items()):
        cells = []
        for b in budgets:
            vals = list(per.get(b, {}).values())
            sd = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.4f}{sd} ({len(vals)})" if vals else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"paired by seed: mean [95 % CI] (pairs); {metric}, lower is better",
        "",
        head,
        rule,
    ]
    for name, per in pairs.items():
        label = (
            f"{reference} minus {reference} at {min(data[reference]):,}"
            if name == "gain"
            else f"{name} minus {reference}"
        )
        cells = [_cell(per[b]) if b in per else "-" for b in budgets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(b: int) -> str:
    return f"{b / 1e6:.3g}M" if b >= 1_000_000 else f"{b / 1e3:.3g}k"


def plot(data, pairs, metric: str, path: str, reference: str = "uniform") -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {m: f"C{i}" for i, m in enumerate(sorted(data))}  # one colour per method
    for method, per in sorted(data.items()):
        bs = sorted(per)
        means = [statistics.fmean(per[b].values()) for b in bs]
        sds = [statistics.stdev(per[b].values()) if len(per[b]) > 1 else 0.0 for b in bs]
        left.errorbar(bs, means, yerr=sds, marker="o", capsize=3, label=method, c=colours[method])
    left.set_ylabel(f"held-out {metric} (lower is better)")
    left.set_title("scores (bars: std over seeds, mostly the test split's)", fontsize=9)
    for name, per in pairs.items():
        bs = sorted(per)
        if name == "gain":
            label, colour = f"{reference} minus itself at the smallest budget", colours[reference]
        else:
            label, colour = f"{name} minus {reference}", colours[name]
        halves = [per[b]["half"] or 0.0 for b in bs]
        means = [per[b]["mean"] for b in bs]
        right.errorbar(bs, means, yerr=halves, marker="o", capsize=3, label=label, c=colour)
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_ylabel(f"paired difference in {metric}")
    right.set_title("paired by seed (bars: 95 % CI)", fontsize=9)
    budgets = budgets_of(data)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(budgets, [_short(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("trainable parameters (budget)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/capacity_plot.py", description=__doc__)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--metric", default="nll")
    p.add_argument("--methods", default="uniform,concentrated")
    p.add_argument("--reference", default="uniform")
    p.add_argument("--out", default="capacity_curve.png")
    args = p.parse_args(argv)
    data = curve(args.dirs, args.metric, set(args.methods.split(",")))
    if not data:
        print("no runs with a budget value and the metric", file=sys.stderr)
        return 1
    pairs = paired_curves(data, args.reference)
    print(table(data, pairs, args.metric, args.reference))
    plot(data, pairs, args.metric, args.out, args.reference)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
