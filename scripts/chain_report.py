"""What a chain's numbers say beyond the mean table of ``python -m guilomo.results``.

    python scripts/chain_report.py chains/cpu_twin            # after scripts/chain.sh
    python scripts/chain_report.py chains/cpu_twin --metric accuracy

Prints two markdown tables:

1. **The searches**: for every searched allocation under ``<chain>/search``, its
   steps, experts and total rank at the start and at the end of the search (the
   read-out before budget fitting), the share of modules whose expert count changed,
   whether the read-out converged, and the trainable parameters it spends.
2. **Paired differences**: GuiLoMo's score minus each baseline's, seed by seed. Runs of
   one task and seed share the test split and the budget (``budget=match``), so the
   difference of a pair removes the split's difficulty; the cell is the mean and the
   sample std of the per-seed differences, and ``w/l`` counts the seeds GuiLoMo won
   and lost.

Fine-tune runs are read with :func:`guilomo.results.collect` (the same runs, checks
and warnings as the results table).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from guilomo.results import collect

SEARCHED = "guilomo"


def search_rows(chain: Path) -> list[str]:
    rows = [
        "| task | seed | steps | experts start -> end | total rank start -> end "
        "| modules changed | converged | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted((chain / "search").glob("*/*/seed*/allocation.json")):
        meta = json.loads(path.read_text())["meta"]
        diag = meta.get("diagnostics") or {}
        start = (diag.get("initial_readout") or {}).values()  # {module: [ranks]} at step 0
        last = meta.get("read_out") or {}
        rows.append(
            f"| {meta['task']} | {meta['seed']} | {diag.get('steps')} "
            f"| {sum(map(len, start))} -> {last.get('experts')} "
            f"| {sum(map(sum, start))} -> {last.get('total_rank')} "
            f"| {100 * diag.get('experts_changed', 0):.1f}% "
            f"| {'yes' if diag.get('converged') else 'no'} | {meta['trainable_params']:,} |"
        )
    return rows


def paired_rows(runs, metric: str) -> list[str]:
    scores: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        value = run.metrics.get("finetuned", {}).get(metric)
        if value is not None:
            scores[(run.task, run.method)][run.seed] = float(value)
    tasks = sorted({t for t, _ in scores})
    methods = sorted({m for _, m in scores if m != SEARCHED})
    rows = [
        f"| GuiLoMo - method ({metric}) | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for method in methods:
        cells = []
        for task in tasks:
            ours, theirs = scores.get((task, SEARCHED), {}), scores.get((task, method), {})
            diffs = [ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))]
            if not diffs:
                cells.append("-")
                continue
            spread = f" ± {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else ""
            wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            cells.append(f"{statistics.mean(diffs):+.3f}{spread} ({wins}/{losses})")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chain", type=Path, help="the chain's root, e.g. chains/cpu_twin")
    ap.add_argument("--metric", default="accuracy")
    a = ap.parse_args()
    print("\n".join(search_rows(a.chain)))
    print()
    print("\n".join(paired_rows(collect([a.chain / "train"]), a.metric)))


if __name__ == "__main__":
    main()
