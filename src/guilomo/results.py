"""Collect ``metrics.json`` files of runs and multiruns into a method x task table.

    python -m guilomo.results multirun/train/2026-12-01_10-00-00 outputs/train/runs ...
    python -m guilomo.results DIR... --metric accuracy --csv results.csv

Every folder under the given ones that holds a ``metrics.json`` (written by
``train.py``) is a run. A fine-tune run folder (its ``.hydra/config.yaml`` has an
``allocation``) without ``metrics.json``, and a ``metrics.json`` that is not valid
JSON or lacks the fields below, are skipped with a warning naming the file; runs that
lack the requested ``--stage``/``--metric`` are counted and named in the header line. A
``--stage``, ``--metric`` or ``--paired`` method that no run has is refused with the
list of those present (:func:`check_request`). Search
run folders (their ``metrics.json`` says ``"stage": "search"``) are not runs of the table (their time is carried by the fine-tune runs
that used their allocation).

The table has one row per method (named exactly: ``guilomo``, ``lora``, ``adalora``,
``uniform``, ``mola_2468``, ``alphalora``, ``random``, ``concentrated``, ... and
``zero_shot``, the untouched backbone, once per task and seed) and one column per task (``backbone/task`` when
there are several backbones). A cell is ``mean ± std (n)`` over the runs, the std
being the sample standard deviation (``n - 1``), absent for a single run. The last
columns give the method's trainable parameters and mean search time. The CSV is long:
one line per (backbone, task, method).

``--paired REF`` adds the paired report (:func:`paired`): per task, REF's score minus
each other method's, paired by seed and budget (runs of one task, seed and budget share
the test split and the size, so a pair's difference removes the split's difficulty).
Several runs of one method at one task, seed and budget (e.g. ``random`` with different
``allocation.seed``) are *draws*: averaged per seed before pairing, their count and
spread reported. A row gives the pairs' mean difference, its sample std, the 95 %
t-interval over seeds and the seeds won / lost.

``--per-seed`` adds every method's score at every seed (:func:`per_seed_markdown`): the
cells the paired report pairs, draws averaged, so a reader can redo any pair by hand.

Direction. ``nll`` (held-out loss) is lower-is-better (:data:`LOWER_IS_BETTER`): its
paired differences are signed as *method minus REF*, so for every metric a positive
difference, and a won seed, means REF did better.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from guilomo.allocation import method_name
from guilomo.utils.io import check_output
from guilomo.utils.runfiles import METRICS_FILE

ZERO_SHOT = "zero_shot"
METHOD_ORDER = (
    "zero_shot",
    "lora",
    "adalora",
    "uniform",
    "mola",
    "alphalora",
    "random",
    "shuffled",
    "inverted",
    "concentrated",
    "concentrated_low",
    "guilomo",
)
CSV_FIELDS = (
    "backbone",
    "task",
    "method",
    "metric",
    "mean",
    "std",
    "n",
    "seeds",
    "trainable_params",
    "search_seconds",
)


# metrics where a smaller value is better (the paired report flips their sign)
LOWER_IS_BETTER = frozenset({"nll"})


def better_sign(metric: str) -> int:
    """+1 where higher is better, -1 for :data:`LOWER_IS_BETTER` metrics."""
    return -1 if metric in LOWER_IS_BETTER else 1


class ResultsWarning(UserWarning):
    """A run folder that could not be read (missing or corrupt ``metrics.json``)."""


@dataclass
class Run:
    """One fine-tune run: where it is and what its ``metrics.json`` says."""

    path: Path
    method: str
    task: str
    backbone: str
    seed: int | None
    trainable_params: int | None
    metrics: dict
    budget: dict | None = None
    search_seconds: float | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def value(self, metric: str = "accuracy", stage: str = "finetuned") -> float | None:
        v = self.metrics.get(stage, {}).get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _warn(msg: str) -> None:
    warnings.warn(msg, ResultsWarning, stacklevel=3)


def _is_train_run(folder: Path) -> bool:
    """A Hydra run folder of ``train.py`` (its composed config has an ``allocation``)."""
    cfg = folder / ".hydra" / "config.yaml"
    if not cfg.is_file():
        return False
    try:
        data = yaml.safe_load(cfg.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "allocation" in data


def _method_of(data: dict, folder: Path) -> str:
    """``metrics.json``'s method; older files: from the run's allocation.json meta."""
    if data.get("method"):
        return str(data["method"])
    alloc = folder / "allocation.json"
    if alloc.is_file():
        try:
            return method_name(json.loads(alloc.read_text()).get("meta") or {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    a = data.get("allocation") or {}
    return method_name({"source": a.get("source") or f"baseline:{a.get('kind', 'unknown')}"})


def read_run(path: Path) -> Run | None:
    """The run of one ``metrics.json`` (None, with a warning, if it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        _warn(f"skipping {path}: not valid JSON ({e})")
        return None
    if isinstance(data, dict) and data.get("stage") == "search":
        return None  # a search run: not a row of the table
    missing = [
        k for k in ("task", "backbone", "metrics") if not isinstance(data, dict) or k not in data
    ]
    if missing or not isinstance(data.get("metrics"), dict):
        _warn(f"skipping {path}: no {missing or ['metrics']} field (not a train.py metrics.json?)")
        return None
    search = data.get("search") or {}
    return Run(
        path=path.parent,
        method=_method_of(data, path.parent),
        task=str(data["task"]),
        backbone=str(data["backbone"]),
        seed=data.get("seed"),
        trainable_params=data.get("trainable_params"),
        metrics=data["metrics"],
        budget=data.get("budget"),
        search_seconds=search.get("seconds") if isinstance(search, dict) else None,
        raw=data,
    )


def collect(dirs: Iterable[str | Path]) -> list[Run]:
    """Every run under ``dirs`` (run folders, multirun folders, or parents of either)."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            _warn(f"skipping {d}: no such folder")
            continue
        folders = [d] if d.is_file() else [d, *sorted(p for p in d.rglob("*") if p.is_dir())]
        for folder in folders:
            if folder.is_file():  # a metrics.json given directly
                folder = folder.parent
            folder = folder.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            metrics = folder / METRICS_FILE
            if metrics.is_file():
                run = read_run(metrics)
                if run is not None:
                    runs.append(run)
            elif _is_train_run(folder):
                _warn(
                    f"skipping {folder}: a train run without {METRICS_FILE} (unfinished or failed)"
                )
    return runs


def _method_key(method: str) -> tuple:
    base = method.split("_")[0] if method.startswith("mola_") else method
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, method)


def summarise(
    runs: Sequence[Run], metric: str = "accuracy", stage: str = "finetuned"
) -> list[dict]:
    """One row per (backbone, task, method): mean, std, n, seeds, params, search time.

    ``zero_shot`` rows come from the runs' zero-shot scores, one per (task, seed).
    """
    groups: dict[tuple, list[tuple[Run, float]]] = {}
    zero_seen: set[tuple] = set()
    for r in runs:
        v = r.value(metric, stage)
        if v is not None:
            groups.setdefault((r.backbone, r.task, r.method), []).append((r, v))
        z = r.value(metric, ZERO_SHOT)
        if z is not None and stage != ZERO_SHOT and (r.backbone, r.task, r.seed) not in zero_seen:
            zero_seen.add((r.backbone, r.task, r.seed))
            groups.setdefault((r.backbone, r.task, ZERO_SHOT), []).append((r, z))
    rows = []
    for (backbone, task, method), items in groups.items():
        vals = [v for _, v in items]
        params = sorted({r.trainable_params for r, _ in items if r.trainable_params is not None})
        zero = method == ZERO_SHOT
        secs = [] if zero else [r.search_seconds for r, _ in items if r.search_seconds is not None]
        rows.append(
            {
                "backbone": backbone,
                "task": task,
                "method": method,
                "metric": f"{ZERO_SHOT if zero else stage}/{metric}",
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "n": len(vals),
                "seeds": sorted({r.seed for r, _ in items if r.seed is not None}),
                "trainable_params": 0
                if zero
                else (params[0] if len(params) == 1 else (params or None)),
                "search_seconds": statistics.fmean(secs) if secs else None,
            }
        )
    rows.sort(key=lambda x: (x["backbone"], x["task"], _method_key(x["method"])))
    return rows


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    s = f"{row['mean']:.4f}"
    if row["std"] is not None:
        s += f" ± {row['std']:.4f}"
    return f"{s} ({row['n']})"


def _params(values: list) -> str:
    flat = sorted({p for v in values for p in (v if isinstance(v, list) else [v]) if p is not None})
    if not flat:
        return "-"
    return f"{flat[0]:,}" if len(flat) == 1 else f"{flat[0]:,}-{flat[-1]:,}"


def markdown(rows: Sequence[dict]) -> str:
    """The method x task table as markdown (see the module docstring)."""
    if not rows:
        return "(no runs found)"
    several = len({r["backbone"] for r in rows}) > 1
    col = lambda r: f"{r['backbone']}/{r['task']}" if several else r["task"]  # noqa: E731
    cols = list(dict.fromkeys(col(r) for r in rows))
    methods = sorted({r["method"] for r in rows}, key=_method_key)
    by = {(r["method"], col(r)): r for r in rows}
    head = ["method", *cols, "trainable params", "search s"]
    metric = next((r["metric"] for r in rows if r["method"] != ZERO_SHOT), rows[0]["metric"])
    caption = f"{metric}: mean ± std over runs (number of runs); zero_shot: the untouched backbone"
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        secs = [r["search_seconds"] for r in mine if r["search_seconds"] is not None]
        cells = [m, *(_cell(by.get((m, c))) for c in cols)]
        cells += [_params([r["trainable_params"] for r in mine])]
        cells += [f"{statistics.fmean(secs):.0f}" if secs else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """The long table: one line per (backbone, task, method)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            out = dict(r)
            out["seeds"] = " ".join(str(s) for s in r["seeds"])
            if isinstance(r["trainable_params"], list):
                out["trainable_params"] = " ".join(str(p) for p in r["trainable_params"])
            for k in ("std", "search_seconds", "trainable_params"):
                if out[k] is None or (isinstance(out[k], float) and math.isnan(out[k])):
                    out[k] = ""
            w.writerow(out)
    return path


# two-sided 95 % quantiles of Student's t, 1..30 degrees of freedom (scipy.stats.t.ppf)
T95 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z975 = 1.959963984540054


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom: the
    table to 30, beyond it the Cornish-Fisher expansion about the normal (error < 2e-6)."""
    if df < 1:
        raise ValueError(f"t needs df >= 1, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    z = Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean, sample std and half-width of the 95 % t-interval of ``values`` (std and
    half-width None for a single value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, t95(n - 1) * std / math.sqrt(n)


def _budget_of(run: Run) -> tuple[str, tuple]:
    """``(label, exact)``: the budget setting a row groups by (``params=match`` for
    ``budget=match``, whose value is each seed's searched size; else ``kind=value``) and
    the exact ``(kind, value)`` a pair must share."""
    b = run.budget if isinstance(run.budget, dict) else {}
    kind, value = b.get("kind", "none"), b.get("value")
    label = kind if value is None else f"{kind}={'match' if b.get('matched') else value}"
    return label, (kind, value)


def seed_cells(
    runs: Sequence[Run], metric: str = "accuracy", stage: str = "finetuned"
) -> dict[tuple, dict[str, list[float]]]:
    """``{(backbone, task, budget label, exact budget, seed): {method: [its runs' values]}}``:
    the cells the paired report pairs and the per-seed table shows (several runs of one
    method in a cell are draws)."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in runs:
        v = r.value(metric, stage)
        if v is not None and r.seed is not None:
            label, exact = _budget_of(r)
            key = (r.backbone, r.task, label, exact, r.seed)
            cells.setdefault(key, {}).setdefault(r.method, []).append(v)
    return cells


def per_seed_markdown(
    runs: Sequence[Run], metric: str = "accuracy", stage: str = "finetuned"
) -> str:
    """Every method's score at every seed (draws averaged, their count in brackets), one
    table per backbone, task and budget setting: the numbers the paired report pairs."""
    tables: dict[tuple, dict[str, dict[int, list[float]]]] = {}
    for (backbone, task, budget, _, seed), by_method in seed_cells(runs, metric, stage).items():
        table = tables.setdefault((backbone, task, budget), {})
        for method, values in by_method.items():
            table.setdefault(method, {}).setdefault(seed, []).extend(values)
    if not tables:
        return "(no runs with a seed)"
    out = []
    for (backbone, task, budget), table in sorted(tables.items()):
        seeds = sorted({s for by_seed in table.values() for s in by_seed})
        head = ["method", *(f"seed {s}" for s in seeds)]
        out += [f"{stage}/{metric}, {backbone}/{task}, budget {budget}: per seed (draws)", ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in sorted(table, key=_method_key):
            cells = [method]
            for s in seeds:
                v = table[method].get(s)
                n = "" if not v or len(v) == 1 else f" ({len(v)})"
                cells.append("-" if not v else f"{statistics.fmean(v):.4f}{n}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def paired(
    runs: Sequence[Run], reference: str, metric: str = "accuracy", stage: str = "finetuned"
) -> list[dict]:
    """One row per (backbone, task, budget, method != ``reference``): ``reference`` minus
    the method, seed by seed (see the module docstring).

    Runs meet in cells of (backbone, task, budget ``(kind, value)``, seed); in a cell every
    method's runs (draws) are averaged, and a cell with both methods is a pair. Rows group
    pairs by budget setting (``budget`` label: ``params=match`` pools the seeds of
    ``budget=match``, each at its own searched size). A row has
    the per-seed ``diffs``, their ``mean``, sample ``std`` and 95 % t-interval
    (``ci_low``, ``ci_high``; None for one pair), ``wins``/``losses`` (seeds with a
    positive / negative difference), ``n`` pairs, ``draws`` per seed of the method and of
    the reference, the method's ``score_mean`` ± ``score_std`` over its paired runs
    (``runs``), and ``draw_std``: the spread between draws within a seed (pooled: root of
    the mean within-seed variance over seeds with 2+ draws; None without such seeds).
    """
    sign = better_sign(metric)
    pairs: dict[tuple, list[tuple]] = {}
    for (backbone, task, budget, _, seed), by_method in seed_cells(runs, metric, stage).items():
        ours = by_method.get(reference)
        for method, theirs in by_method.items():
            if ours and method != reference:
                item = (seed, ours, theirs)
                pairs.setdefault((backbone, task, budget, method), []).append(item)
    rows = []
    for (backbone, task, budget, method), items in pairs.items():
        items.sort(key=lambda x: x[0])
        diffs = [
            sign * (statistics.fmean(ours) - statistics.fmean(theirs)) for _, ours, theirs in items
        ]
        n = len(diffs)
        mean, std, half = mean_interval(diffs)
        scores = [v for _, _, theirs in items for v in theirs]
        within = [statistics.variance(theirs) for _, _, theirs in items if len(theirs) > 1]
        rows.append(
            {
                "backbone": backbone,
                "task": task,
                "budget": budget,
                "method": method,
                "reference": reference,
                "metric": f"{stage}/{metric}",
                "seeds": [seed for seed, _, _ in items],
                "diffs": diffs,
                "n": n,
                "mean": mean,
                "std": std,
                "ci_low": None if half is None else mean - half,
                "ci_high": None if half is None else mean + half,
                "wins": sum(d > 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
                "draws": [len(theirs) for _, _, theirs in items],
                "reference_draws": [len(ours) for _, ours, _ in items],
                "runs": len(scores),
                "score_mean": statistics.fmean(scores),
                "score_std": statistics.stdev(scores) if len(scores) > 1 else None,
                "draw_std": math.sqrt(statistics.fmean(within)) if within else None,
            }
        )
    rows.sort(key=lambda x: (x["backbone"], x["task"], x["budget"], _method_key(x["method"])))
    return rows


def _spread(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def paired_markdown(rows: Sequence[dict], reference: str) -> str:
    """The paired report of :func:`paired` as markdown, one line per task and method."""
    if not rows:
        return f"(no pairs: no method shares a task, seed and budget with '{reference}')"
    several = len({r["backbone"] for r in rows}) > 1
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lower = better_sign(rows[0]["metric"].split("/")[-1]) < 0
    diff_name = f"method - {reference}" if lower else f"{reference} - method"
    said = f"each method minus {reference}" if lower else f"{reference} minus each method"
    caption = (
        f"{rows[0]['metric']}"
        + (" (lower is better)" if lower else "")
        + f": {said}, so > 0 means {reference} did better; paired by task, seed and budget "
        "(draws of one method at one seed averaged first): mean ± sample std of the per-seed "
        f"differences, 95 % t-interval over seeds, w/l: seeds {reference} won/lost; method "
        "score: mean ± std over its runs; draw std: spread between its draws within a seed"
    )
    head = [
        "task",
        "budget",
        "method",
        "seeds",
        "draws/seed",
        "method score (runs)",
        "draw std",
        diff_name,
        "95% CI",
        "w/l",
    ]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        task = f"{r['backbone']}/{r['task']}" if several else r["task"]
        score = f"{r['score_mean']:.4f}" + (
            "" if r["score_std"] is None else f" ± {r['score_std']:.4f}"
        )
        diff = f"{r['mean']:+.4f}" + ("" if r["std"] is None else f" ± {r['std']:.4f}")
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        cells = [
            task,
            r["budget"],
            r["method"],
            str(r["n"]),
            _spread(r["draws"]),
            f"{score} ({r['runs']})",
            f(r["draw_std"]),
            diff,
            ci,
            f"{r['wins']}/{r['losses']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def present(runs: Sequence[Run], stage: str | None = None) -> list[str]:
    """The stages the runs record (``stage=None``), or the metrics they record at ``stage``."""
    if stage is None:
        found = {k for r in runs for k, v in r.metrics.items() if isinstance(v, dict)}
    else:
        found = {
            m for r in runs for m in r.metrics.get(stage) or {} if r.value(m, stage) is not None
        }
    return sorted(found)


def check_request(
    runs: Sequence[Run], metric: str, stage: str, reference: str | None = None
) -> None:
    """A ``ValueError`` (one line, listing what the runs have) for a ``--stage``, ``--metric``
    or ``--paired`` method no run has; nothing to check without runs."""
    if not runs:
        return
    stages = present(runs)
    if stage not in stages:
        raise ValueError(f"--stage {stage}: no run has it; stages present: {', '.join(stages)}")
    metrics = present(runs, stage)
    if metric not in metrics:
        raise ValueError(
            f"--metric {metric}: no run records it at stage {stage}; metrics present: "
            + ", ".join(metrics)
        )
    methods = sorted({r.method for r in runs}, key=_method_key)
    if reference is not None and reference not in methods:
        raise ValueError(
            f"--paired {reference}: no run has this method; methods present: {', '.join(methods)}"
        )


def header(runs: Sequence[Run], metric: str, stage: str, show: int = 5) -> str:
    """``N runs``, and the runs left out for want of ``stage/metric`` (counted and named)."""
    left = [str(r.path) for r in runs if r.value(metric, stage) is None]
    if not left:
        return f"{len(runs)} runs"
    more = f" and {len(left) - show} more" if len(left) > show else ""
    return (
        f"{len(runs)} runs; {len(left)} left out of the table, no {stage}/{metric} in their "
        f"{METRICS_FILE}: {', '.join(left[:show])}{more}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m guilomo.results",
        description="Method x task table (mean ± std over seeds) of train.py runs.",
    )
    p.add_argument("dirs", nargs="+", help="run or multirun folders (searched recursively)")
    p.add_argument("--metric", default="accuracy", help="metric key (default: accuracy)")
    p.add_argument("--stage", default="finetuned", help="finetuned (default) or zero_shot")
    p.add_argument("--csv", default="results.csv", help="CSV output ('' for none)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --csv file (else refused)"
    )
    p.add_argument(
        "--paired",
        metavar="METHOD",
        default=None,
        help="also the paired report: METHOD (e.g. guilomo) minus every other method",
    )
    p.add_argument(
        "--per-seed",
        action="store_true",
        help="also every method's score at every seed (what the paired report pairs)",
    )
    args = p.parse_args(argv)
    try:  # before any work: an existing CSV is the user's, and the runs are inputs
        if args.csv:
            check_output(
                args.csv,
                {str(d): d for d in args.dirs if Path(d).is_file()},
                args.overwrite,
                kind="file",
                key="--csv",
                switch="--overwrite",
            )
        runs = collect(args.dirs)
        check_request(runs, args.metric, args.stage, args.paired)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    rows = summarise(runs, args.metric, args.stage)
    print(header(runs, args.metric, args.stage))
    print(markdown(rows))
    if args.per_seed:
        print()
        print(per_seed_markdown(runs, args.metric, args.stage))
    if args.paired:
        print()
        print(paired_markdown(paired(runs, args.paired, args.metric, args.stage), args.paired))
    if args.csv and rows:
        print(f"csv: {write_csv(rows, args.csv)}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
