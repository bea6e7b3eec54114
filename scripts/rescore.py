"""Re-score finished fine-tunes on their own test split, to add a metric they lack.

    python scripts/rescore.py chains/compare          # every run under the folders
    python scripts/rescore.py <run> --dry-run         # print, write nothing
    python scripts/rescore.py <runs> --metrics token_accuracy,nll

For runs made before a metric existed (``token_accuracy`` arrived after Run 4's first
fine-tunes). For each run folder (one with ``metrics.json``, ``adapter/`` and
``.hydra/config.yaml``), with the product's own code paths: the saved adapter on the
run's backbone (:func:`guilomo.from_pretrained`; a peft AdaLoRA adapter through
``peft.PeftModel``), the run's datamodule from its config (the same test split), and its
eval settings (:func:`guilomo.finetune.evaluation.evaluate_datamodule`). The fine-tuned
held-out loss must come out as stored (``--tol``), else the run is refused: it is not
the same model or split. Then the asked metrics (``--metrics``, default
``token_accuracy``) that the run lacks are added to ``metrics.json`` (and its
``scalars``), written atomically; no stored value changes, and ``rescored`` records
which keys were added. A run that already has every asked metric is skipped unloaded.
Exits 1 if any run was refused or could not give an asked metric.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf
from peft import PeftModel

from guilomo import from_pretrained
from guilomo.allocation import AllocationError
from guilomo.finetune.evaluation import evaluate_datamodule
from guilomo.finetune.run import result_scalars
from guilomo.pipeline import build_backbone, build_datamodule
from guilomo.utils.io import atomic_write_text

STAGE = "finetuned"
DEFAULT_METRICS = ("token_accuracy",)


def run_folders(paths) -> list[Path]:
    """Every folder under ``paths`` with a ``metrics.json`` and an ``adapter/``."""
    found = set()
    for p in map(Path, paths):
        for m in [p / "metrics.json", *p.rglob("metrics.json")]:
            if m.is_file() and (m.parent / "adapter").is_dir():
                found.add(m.parent)
    return sorted(found)


def load_model(run: Path, cfg):
    """The run's saved adapter on its backbone, in eval mode, and the tokenizer."""
    try:
        return from_pretrained(run / "adapter")
    except AllocationError:  # a peft adapter (AdaLoRA), not a LoRA-MoE
        base, tokenizer = build_backbone(cfg)
        return PeftModel.from_pretrained(base, run / "adapter").eval(), tokenizer


def rescore(run: Path, tol: float = 1e-4, dry_run: bool = False, metrics=DEFAULT_METRICS) -> dict:
    """``{"added": {key: value}, "nll": (stored, again)}`` of one run, or ``{"added": {},
    "nll": None}`` without loading anything if it has every asked metric; raises
    ``ValueError`` if the fine-tuned held-out loss does not reproduce or an asked metric
    does not come out of the run's evaluation."""
    path = run / "metrics.json"
    record = json.loads(path.read_text())
    stored = record["metrics"][STAGE]
    wanted = [m for m in metrics if m not in stored]
    if not wanted:
        return {"added": {}, "nll": None}
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    model, tokenizer = load_model(run, cfg)
    again = evaluate_datamodule(model, tokenizer, build_datamodule(cfg, tokenizer), cfg.eval)
    if "nll" not in stored or abs(again["nll"] - stored["nll"]) > tol:
        raise ValueError(
            f"{run}: held-out loss {again['nll']:.6f} again, {stored.get('nll')} stored: not "
            f"the same model or test split (or raise --tol); nothing written"
        )
    absent = [m for m in wanted if m not in again]
    if absent:
        raise ValueError(
            f"{run}: its evaluation (eval.mode={cfg.eval.mode}) gives no {absent}; it gives "
            f"{sorted(again)}"
        )
    added = {m: again[m] for m in wanted}
    if not dry_run:
        stored.update(added)
        # the loggers' names for the new numbers, by the fine-tune's own rule
        record["scalars"] = {**record.get("scalars", {}), **result_scalars(record)}
        record.setdefault("rescored", {})[STAGE] = sorted(added)
        atomic_write_text(path, json.dumps(record, indent=1))
    return {"added": added, "nll": (stored["nll"], again["nll"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python scripts/rescore.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("dirs", nargs="+", help="run folders, or folders to search for runs")
    p.add_argument("--tol", type=float, default=1e-4, help="held-out loss tolerance (nats)")
    p.add_argument("--dry-run", action="store_true", help="score and print, write nothing")
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma list of the metrics to add where missing (default: %(default)s)",
    )
    args = p.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    runs = run_folders(args.dirs)
    if not runs:
        print(
            f"rescore: no run folder (metrics.json + adapter/) under {args.dirs}", file=sys.stderr
        )
        return 1
    refused = 0
    for run in runs:
        try:
            out = rescore(run, args.tol, args.dry_run, metrics)
        except ValueError as e:
            print(f"rescore: {e}", file=sys.stderr)
            refused += 1
            continue
        if out["nll"] is None:
            print(f"{run}: has {', '.join(metrics)}; skipped")
            continue
        added = ", ".join(f"{k}={v:.4f}" for k, v in out["added"].items())
        print(f"{run}: nll {out['nll'][1]:.4f} (stored {out['nll'][0]:.4f}); added {added}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
