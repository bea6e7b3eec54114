"""Tables of the search study (docs/search_study.md) from search run folders.

    python scripts/search_study.py DIR [--budget-rank N]

DIR holds search runs (``allocation.json`` and ``checkpoints/last.ckpt``) anywhere below
it; the first folder under DIR names the variant (``scripts/search_study.sh`` writes
``<variant>/<task>/<seed>/``, ``scripts/seeds_vs_tasks.sh`` ``<variant>/<task>/d<data>_i<init>/``).
Task, data seed and init seed are read from each run's ``meta`` (a run from the
seed-free ``search.start=uniform`` has no init seed). For each run: how far the
allocation moved from the initial read-out (``meta.diagnostics``); for each pair of runs
of one variant that differ in exactly one of task, data seed and init seed: the share of
modules with the same expert count and of experts with the same rank, beside what two
independent allocations with the same value frequencies would share by chance, and what
the two *initial* read-outs share. With
``--budget-rank N`` the searched GSVs (from the checkpoint) and the initial GSVs are
both fitted to a total-rank budget of N by the search's own budget fitting, and
compared the same way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from guilomo.allocation_view import short_name
from guilomo.budget import Budget
from guilomo.search.config import SearchSettings
from guilomo.search.layer import expert_groups, inject_search_adapter
from guilomo.search.readout import ModuleGSVs, collect_gsvs, read_allocation
from guilomo.search.trim import fit_budget

Ranks = dict[str, tuple[int, ...]]


def initial_gsvs(names: list[str], seed: int, n_max: int, r_max: int) -> dict[str, ModuleGSVs]:
    """The seeded initial GSVs of ``names`` (the init does not depend on the layer shapes)."""
    root = nn.Module()
    for name in names:
        parent = root
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(name.split(".")[-1], nn.Linear(2, 2))
    inject_search_adapter(root, names, SearchSettings(n_max=n_max, r_max=r_max), seed=seed)
    return collect_gsvs(root)


def checkpoint_gsvs(path: Path) -> dict[str, ModuleGSVs]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    out = {}
    for key, value in state.items():
        if key.endswith(".gsv_expert"):
            stem = key.removesuffix("gsv_expert")
            out[stem.removeprefix("model.").rstrip(".")] = ModuleGSVs.from_logits(
                value, state[stem + "gsv_rank"]
            )
    return out


def ranks_of(allocation) -> Ranks:
    return {n: tuple(m.ranks) for n, m in allocation.modules.items()}


def fitted(gsvs: dict[str, ModuleGSVs], total_rank: int) -> Ranks:
    names = list(gsvs)
    shapes = {n: (1, 1) for n in names}  # a rank budget does not look at shapes
    alloc, _ = fit_budget(
        read_allocation(gsvs),
        gsvs,
        Budget("rank", total_rank),
        shapes,
        expert_groups(names, "module"),
    )
    return ranks_of(alloc)


def agreement(a: Ranks, b: Ranks) -> tuple[float, float]:
    names = sorted(a)
    experts = sum(len(a[n]) == len(b[n]) for n in names) / len(names)
    pairs = [(x, y) for n in names for x, y in zip(a[n], b[n], strict=False)]
    return experts, sum(x == y for x, y in pairs) / max(1, len(pairs))


def chance(a: Ranks, b: Ranks) -> tuple[float, float]:
    """Agreement of independent draws from each allocation's own value frequencies."""
    ea, eb = Counter(len(v) for v in a.values()), Counter(len(v) for v in b.values())
    ra, rb = Counter(r for v in a.values() for r in v), Counter(r for v in b.values() for r in v)
    n_e, n_ra, n_rb = len(a) ** 2, sum(ra.values()), sum(rb.values())
    return sum(ea[k] * eb[k] for k in ea) / n_e, sum(ra[k] * rb[k] for k in ra) / (n_ra * n_rb)


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def mean_sd(xs: list[float]) -> str:
    return (
        f"{100 * statistics.mean(xs):.0f} ± {100 * statistics.stdev(xs):.0f}%"
        if len(xs) > 1
        else pct(xs[0])
    )


def run_key(path: Path, root: Path, meta: dict) -> tuple[str, str, int, int | None]:
    """(variant, task, data seed, init seed or None for the seed-free uniform start)."""
    rel = path.relative_to(root).parts
    variant = rel[0] if len(rel) > 2 else "-"
    search = meta.get("search", {})
    init = None if search.get("start") == "uniform" else meta.get("init_seed", meta["seed"])
    return variant, str(meta["task"]), int(meta["seed"]), None if init is None else int(init)


def initial_readout(meta: dict, names: list[str], seed: int) -> tuple[Ranks, dict | None]:
    """The initial read-out the run logged (older runs: recomputed from the seeded init)."""
    logged = meta.get("diagnostics", {}).get("initial_readout")
    if logged:
        return {n: tuple(v) for n, v in logged.items()}, None
    init_g = initial_gsvs(names, seed, meta["n_max"], meta["r_max"])
    return ranks_of(read_allocation(init_g)), init_g


# which pairs of runs each row compares: what differs, what is held
PAIRS = {
    "data seed only": lambda a, b: a[1] == b[1] and a[2] != b[2] and a[3] == b[3],
    "init seed only": lambda a, b: a[1] == b[1] and a[2] == b[2] and a[3] != b[3],
    "task only": lambda a, b: a[1] != b[1] and a[2] == b[2] and a[3] == b[3],
}


def study(root: Path, budget_rank: int | None) -> None:
    runs = {}
    for path in sorted(root.rglob("allocation.json")):
        data = json.loads(path.read_text())
        meta = data["meta"]
        if meta.get("method") != "guilomo":
            continue
        key = run_key(path.parent, root, meta)
        final = {n: tuple(m["ranks"]) for n, m in data["modules"].items()}
        init, init_g = initial_readout(meta, list(final), key[3] if key[3] is not None else key[2])
        runs[key] = dict(
            final=final,
            init=init,
            meta=meta,
            init_g=init_g,
            ckpt=path.parent / "checkpoints" / "last.ckpt",
        )
    print(
        "| variant | task | data seed | init seed | steps | read-out experts init -> end "
        "| read-out total rank init -> end | modules with a new expert count "
        "| kept experts with a new rank | converged | written: experts, total rank |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (variant, task, seed, init_seed), r in runs.items():
        d = r["meta"].get("diagnostics", {})
        print(
            f"| {variant} | {task} | {seed} | {'-' if init_seed is None else init_seed} "
            f"| {r['meta']['steps']} "
            f"| {d['initial']['experts']} -> {d['final']['experts']} "
            f"| {d['initial']['total_rank']} -> {d['final']['total_rank']} "
            f"| {pct(d['experts_changed'])} | {pct(d['ranks_changed'])} "
            f"| {'yes' if d['converged'] else 'no'} "
            f"| {sum(len(v) for v in r['final'].values())}, "
            f"{sum(sum(v) for v in r['final'].values())} |"
        )
    tables = [("the written allocations (after any budget fit)", "final", "init")]
    if budget_rank:
        for r in runs.values():
            if r["init_g"] is None:
                raise SystemExit("--budget-rank needs runs from before the logged initial read-out")
            r["fit"] = fitted(checkpoint_gsvs(r["ckpt"]), budget_rank)
            r["fit_init"] = fitted(r["init_g"], budget_rank)
        tables.append((f"fitted to a total rank of {budget_rank}", "fit", "fit_init"))
    for title, key, init_key in tables:
        print(
            f"\n**Agreement, {title}** (experts: share of modules with the same count; "
            "ranks: share of experts, compared index by index, with the same rank)\n"
        )
        print(
            "| variant | pair | n | experts | ranks | chance (experts / ranks) | their initial read-outs |"
        )
        print("|---|---|---|---|---|---|---|")
        for variant in sorted({k[0] for k in runs}):
            keys = [k for k in runs if k[0] == variant]
            for kind, differs_in in PAIRS.items():
                rows = []
                for k1, k2 in itertools.combinations(keys, 2):
                    if differs_in(k1, k2):
                        a, b = runs[k1][key], runs[k2][key]
                        rows.append(
                            (
                                *agreement(a, b),
                                *chance(a, b),
                                *agreement(runs[k1][init_key], runs[k2][init_key]),
                            )
                        )
                if rows:
                    cols = list(zip(*rows, strict=True))
                    print(
                        f"| {variant} | {kind} | {len(rows)} | {mean_sd(cols[0])} | {mean_sd(cols[1])} "
                        f"| {mean_sd(cols[2])} / {mean_sd(cols[3])} | {mean_sd(cols[4])} / {mean_sd(cols[5])} |"
                    )
    print("\n**Experts x mean rank by module** (written allocations, over seeds and tasks)\n")
    for variant in sorted({k[0] for k in runs}):
        acc: dict[str, list[float]] = {}
        for k, r in runs.items():
            if k[0] == variant:
                for name, ranks in r["final"].items():
                    acc.setdefault(short_name(name), []).append(
                        (len(ranks), sum(ranks) / len(ranks))
                    )
        cells = ", ".join(
            f"{m} {statistics.mean(e for e, _ in v):.1f}x{statistics.mean(r for _, r in v):.1f}"
            for m, v in sorted(acc.items())
        )
        print(f"- {variant} (experts x mean rank): {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("root", type=Path)
    ap.add_argument("--budget-rank", type=int, default=None)
    args = ap.parse_args()
    study(args.root, args.budget_rank)


if __name__ == "__main__":
    main()
