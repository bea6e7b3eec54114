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
   and lost. The numbers are :func:`guilomo.results.paired`'s (several runs of one
   method at one seed are averaged first); ``python -m guilomo.results --paired
   guilomo <chain>/train`` prints them with 95 % intervals and draw counts.

Fine-tune runs are read with :func:`guilomo.results.collect` (the same runs, checks
and warnings as the results table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guilomo.results import collect, paired

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
    """GuiLoMo minus each method, one row per method, one column per task: the numbers of
    :func:`guilomo.results.paired` (``python -m guilomo.results --paired guilomo`` prints
    them with intervals and draws)."""
    rows = paired(runs, SEARCHED, metric)
    several = len({r["budget"] for r in rows}) > 1
    col = lambda r: f"{r['task']} ({r['budget']})" if several else r["task"]  # noqa: E731
    cols = sorted({col(r) for r in rows})
    by = {(r["method"], col(r)): r for r in rows}
    methods = sorted({r["method"] for r in rows})
    out = [
        f"| GuiLoMo - method ({metric}) | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method in methods:
        cells = []
        for c in cols:
            r = by.get((method, c))
            if r is None:
                cells.append("-")
                continue
            spread = f" ± {r['std']:.3f}" if r["std"] is not None else ""
            cells.append(f"{r['mean']:+.3f}{spread} ({r['wins']}/{r['losses']})")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out


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
