"""Collect ``metrics.json`` files of runs and multiruns into a method x task table.

    python -m guilomo.results multirun/train/2026-12-01_10-00-00 outputs/train/runs ...
    python -m guilomo.results DIR... --metric accuracy --csv results.csv

Every folder under the given ones that holds a ``metrics.json`` (written by
``train.py``) is a run. A fine-tune run folder (its ``.hydra/config.yaml`` has an
``allocation``) without ``metrics.json``, and a ``metrics.json`` that is not valid
JSON or lacks the fields below, are skipped with a warning naming the file. Search
run folders (their ``metrics.json`` says ``"stage": "search"``) are not runs of the table (their time is carried by the fine-tune runs
that used their allocation).

The table has one row per method (named exactly: ``guilomo``, ``lora``, ``adalora``,
``uniform``, ``mola_2468``, ``alphalora``, ``random``, ... and ``zero_shot``, the untouched
backbone, once per task and seed) and one column per task (``backbone/task`` when
there are several backbones). A cell is ``mean ± std (n)`` over the runs, the std
being the sample standard deviation (``n - 1``), absent for a single run. The last
columns give the method's trainable parameters and mean search time. The CSV is long:
one line per (backbone, task, method).
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

METRICS_FILE = "metrics.json"
ZERO_SHOT = "zero_shot"
METHOD_ORDER = (
    "zero_shot",
    "lora",
    "adalora",
    "uniform",
    "mola",
    "alphalora",
    "random",
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

    @property
    def allocation_path(self) -> Path | None:
        p = self.path / "allocation.json"
        return p if p.is_file() else None


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m guilomo.results",
        description="Method x task table (mean ± std over seeds) of train.py runs.",
    )
    p.add_argument("dirs", nargs="+", help="run or multirun folders (searched recursively)")
    p.add_argument("--metric", default="accuracy", help="metric key (default: accuracy)")
    p.add_argument("--stage", default="finetuned", help="finetuned (default) or zero_shot")
    p.add_argument("--csv", default="results.csv", help="CSV output ('' for none)")
    args = p.parse_args(argv)
    runs = collect(args.dirs)
    rows = summarise(runs, args.metric, args.stage)
    print(f"{len(runs)} runs")
    print(markdown(rows))
    if args.csv and rows:
        print(f"csv: {write_csv(rows, args.csv)}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
