"""Print the planted-direction results of tests/search/test_search_signal.py per credit variant.

python scripts/planted_signal.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "search"))
from test_search_signal import SEEDS, search  # noqa: E402

VARIANTS = {
    "default (output, neighbour, neighbour; outer lr 2e-2 linear)": {},
    "reference credit (logits, reference, reference; lr 2e-2 linear)": dict(
        expert_signal="logits", expert_credit="reference", rank_credit="reference"
    ),
    "reference credit, reference lr 3e-3 constant": dict(
        expert_signal="logits",
        expert_credit="reference",
        rank_credit="reference",
        outer={"lr": 3e-3, "schedule": "constant"},
    ),
}
PROBLEMS = [("rank", 4, 2), ("experts", 2, 4), ("noise", 4, 4)]

if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| variant | problem (start) | " + " | ".join(f"seed {s}" for s in SEEDS) + " |")
    print("|---|---|" + "---|" * len(SEEDS))
    for label, kw in VARIANTS.items():
        for kind, e, r in PROBLEMS:
            steps = 500 if kind == "experts" else 300  # as the tests run them
            cells = [search(kind, s, experts=e, rank=r, steps=steps, **kw) for s in SEEDS]
            row = " | ".join(f"{a} x {b:.1f}" for a, b in cells)
            print(f"| {label} | {kind} ({e} x {r}) | {row} |", flush=True)
