"""The budget inside the search on constructed problems: one table row per problem and
seed, with the shipped search settings (tests/search/planted.py, as the tests drive it).

    python scripts/planted_budget.py [--seeds 0 1 2 3 4 5]

Each cell is ``experts x ranks`` per module, for the search's read-out, the final
allocation with ``budget_fill=needed`` (the budget as an upper bound) and with the
default ``budget_fill=spend``, and what the final allocation spends. "ordered" says
whether the module with the larger planted need got strictly more (total rank for rank
problems, experts for expert problems) in the read-out, in that order for every module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "search"))
from planted import search  # noqa: E402

from guilomo.budget import Budget  # noqa: E402
from guilomo.search.config import SearchSettings  # noqa: E402

# (name, planted kinds in decreasing need, budget kind, budget value, what is ranked)
PROBLEMS = [
    ("rank 6 vs 1", ["rank:6", "rank:1"], "rank", 12, "rank"),
    ("rank 6 / 3 / 1", ["rank:6", "rank:3", "rank:1"], "rank", 18, "rank"),
    ("4 clusters vs one rank-2 map", ["experts:4", "rank:2"], "experts", 6, "experts"),
    ("4 / 3 / 2 clusters", ["experts:4", "experts:3", "experts:2"], "experts", 9, "experts"),
    ("noise, noise (start 4 x 4)", ["noise", "noise"], "rank", 40, None),
]


def cells(alloc) -> str:
    return ", ".join(f"{m.experts}x{list(m.ranks)}" for m in alloc.modules.values())


def measure(alloc, what: str) -> list[int]:
    if what == "rank":
        return [sum(m.ranks) for m in alloc.modules.values()]
    return [m.experts for m in alloc.modules.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        "| problem | budget | seed | read-out | final (needed) | final (spend), spent | ordered |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, kinds, kind, value, what in PROBLEMS:
        start = (4, 4) if what is None else (2, 4)
        wins = 0
        for seed in args.seeds:
            budget = Budget(kind, value)
            needed = SearchSettings(start="uniform", budget_fill="needed")
            read, final = search(kinds, seed, budget, start=start, settings=needed)
            _, spent = search(kinds, seed, budget, start=start)
            if what is None:  # nothing to learn: did everything stay at the minimum?
                ok = all(m.ranks == (1, 1) for m in read.modules.values())
            else:
                v = measure(read, what)
                ok = all(a > b for a, b in zip(v, v[1:], strict=False))
            wins += ok
            print(
                f"| {name} | {kind} {value} | {seed} | {cells(read)} | {cells(final)} "
                f"| {cells(spent)}, {budget.measure(spent, {})} | {'yes' if ok else 'no'} |"
            )
        print(f"| {name} | | all | | | | {wins}/{len(args.seeds)} |")


if __name__ == "__main__":
    main()
