"""Does where the parameters go matter at this setting? The verdict of a sensitivity check.

    python -m guilomo.sensitivity DIR...            # runs of scripts/sensitivity.sh
    python -m guilomo.sensitivity DIR... --reference uniform --poor concentrated,inverted

Reads the fine-tune runs under ``DIR`` (:mod:`guilomo.results`), pairs every method with
the reference placement (``uniform``) by task, budget and seed, and prints the paired
intervals on the held-out loss (``nll``, lower is better) and on accuracy (``accuracy``
and, where the runs have it, ``token_accuracy``: the teacher-forced share of gold tokens
that are the model's greedy choice, the accuracy of a ``loss``-mode run). The verdict,
per task and budget, comes from the *poor* placements (deliberately bad ones at exactly
the same size: ``concentrated``, ``concentrated_low``, ``inverted`` by default):

- **ranks allocations**: every poor placement present loses to the reference on held-out
  loss with a 95 % interval above 0 (at least 3 paired seeds). A method that beats random
  or shuffled placements here is telling you something.
- **does not rank allocations**: no poor placement loses with an interval above 0. No
  allocation method can be told apart from another here: raise the budget pressure
  (smaller budget, more adapted modules, longer training, a task with more to learn)
  before spending compute on a search.
- **partly**: some poor placements lose, others do not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from guilomo.results import collect, paired, paired_markdown

LOSS, ACCURACIES = "nll", ("accuracy", "token_accuracy")
POOR = ("concentrated", "concentrated_low", "inverted")
MIN_SEEDS = 3
RANKS, PARTLY, DOES_NOT = "ranks allocations", "partly", "does not rank allocations"


def verdicts(rows: Sequence[dict], poor: Sequence[str] = POOR) -> dict[tuple, dict]:
    """``{(backbone, task, budget): {"verdict", "lost", "held"}}`` from :func:`paired` rows
    on the loss (signed so that > 0 means the reference did better): ``lost`` lists the
    poor methods whose whole interval is above 0 over at least :data:`MIN_SEEDS` seeds,
    ``held`` the others."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["method"] not in poor:
            continue
        cell = out.setdefault((r["backbone"], r["task"], r["budget"]), {"lost": [], "held": []})
        lost = r["n"] >= MIN_SEEDS and r["ci_low"] is not None and r["ci_low"] > 0
        cell["lost" if lost else "held"].append(r["method"])
    for cell in out.values():
        cell["verdict"] = RANKS if not cell["held"] else DOES_NOT if not cell["lost"] else PARTLY
    return out


def report(dirs: Sequence[str], reference: str = "uniform", poor: Sequence[str] = POOR) -> str:
    """The paired tables (loss, then every accuracy the runs have; accuracy's empty
    table if they have none) and one verdict line per task and budget."""
    runs = collect(dirs)
    loss_rows = paired(runs, reference, LOSS)
    lines = [f"{len(runs)} runs", "", paired_markdown(loss_rows, reference), ""]
    tables = [rows for rows in (paired(runs, reference, m) for m in ACCURACIES) if rows]
    for rows in tables or [[]]:
        lines += [paired_markdown(rows, reference), ""]
    found = verdicts(loss_rows, poor)
    if not found:
        lines.append(
            f"verdict: none (no poor placement among {list(poor)} shares a task, seed and "
            f"budget with '{reference}')"
        )
    for (backbone, task, budget), cell in sorted(found.items()):
        why = ", ".join(
            [f"{m} loses" for m in cell["lost"]] + [f"{m} does not lose" for m in cell["held"]]
        )
        lines.append(
            f"verdict {backbone}/{task} at {budget}: this setting {cell['verdict']} ({why})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m guilomo.sensitivity",
        description="Does placement matter here? Paired intervals of each placement against "
        "the reference on held-out loss and accuracy, and a verdict.",
    )
    p.add_argument("dirs", nargs="+", help="run or multirun folders (searched recursively)")
    p.add_argument("--reference", default="uniform", help="the placement to pair against")
    p.add_argument(
        "--poor",
        default=",".join(POOR),
        help="comma list of deliberately poor placements (default: %(default)s)",
    )
    args = p.parse_args(argv)
    print(report(args.dirs, args.reference, [m for m in args.poor.split(",") if m]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
