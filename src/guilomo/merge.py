"""``python -m guilomo.merge``: a full model with the adapter's one-expert modules merged.

    python -m guilomo.merge adapter=<run>/adapter out=<dir>
    python -m guilomo.merge adapter=<run>/adapter out=<dir> collapse=mean prompts_file=<file>

A one-expert module computes ``W x + s B A x``: it is folded into its base weight
exactly, ``W' = W + s B A`` (in fp32). An N-expert module's router makes its delta
depend on the input, so it has no exact merge: it stays a LoRA-MoE, saved as a guilomo
adapter in ``<out>/adapter`` whose backbone is the merged model in ``<out>``
(``guilomo.from_pretrained("<out>/adapter")``), and is listed. On explicit request
(``collapse=constant|mean``, :mod:`guilomo.moe.collapse`) those modules are first
collapsed to one LoRA and merged too; the change this makes to the logits is measured
on held-out prompts and printed: ``prompts_file`` (rendered with the task's template,
as ``guilomo.generate`` does) is split in two, the first half calibrates the mean
gates, the second half is the held-out batch.

``<out>`` is a plain transformers folder (``AutoModelForCausalLM.from_pretrained``)
with the tokenizer and a model card. :func:`collapse_measured` is shared with
``guilomo.export_peft``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from guilomo.allocation import Allocation
from guilomo.eval.generate import left_pad, pad_id_of, prompt_ids
from guilomo.generate import read_prompts, render_prompts
from guilomo.hub import resolve_folder
from guilomo.moe.card import CARD_FILE, merged_card
from guilomo.moe.collapse import GATES, collapse, constant_gates, logit_difference, mean_gates
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import adapter_modules
from guilomo.moe.io import read_adapter_config, save_adapter
from guilomo.moe.provenance import describe
from guilomo.pretrained import from_pretrained
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import atomic_write_text

USAGE = (
    "usage: python -m guilomo.merge adapter=<dir> out=<dir> [collapse=none|constant|mean "
    "prompts_file=<file>] [batch_size=8] [allow_base_mismatch=false]"
)
DEFAULTS = {
    "adapter": None,
    "out": None,
    "collapse": "none",
    "prompts_file": None,
    "batch_size": 8,
    "allow_base_mismatch": False,
}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def fold_single(model: nn.Module) -> list[str]:
    """Merge every one-expert module into its base weight and put the base back (in place)."""
    merged = []
    for name, m in adapter_modules(model).items():
        if m.num_experts != 1:
            continue
        w = m.base.weight
        delta = float(m.rank_scale[0]) * (m.lora_B.float() @ m.lora_A.float())
        w.copy_((w.float() + delta).to(w.dtype))
        _replace(model, name, m.base)
        merged.append(name)
    return merged


def unwrap(model: nn.Module) -> None:
    """Put every remaining adapted module's base layer back (drops their adapters)."""
    for name, m in adapter_modules(model).items():
        _replace(model, name, m.base)


def prompt_batches(tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[dict]:
    """Left-padded model inputs (``input_ids``, ``attention_mask``) of the prompts."""
    pad = pad_id_of(tokenizer)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    out = []
    for i in range(0, len(ids), batch_size):
        x, mask = left_pad(ids[i : i + batch_size], pad)
        out.append({"input_ids": x, "attention_mask": mask})
    return out


@torch.no_grad()
def _logits(model: nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    return [model(**b).logits for b in batches]


def collapse_measured(
    model: nn.Module, allocation: Allocation, mode: str, tokenizer, prompts: Sequence[str]
) -> tuple[Allocation, dict]:
    """Collapse every N-expert module (``constant`` or ``mean`` gates); returns the new
    allocation and the logit difference on the held-out half of ``prompts``."""
    if mode not in GATES:
        raise ValueError(f"collapse={mode!r} is not one of {list(GATES)}")
    if len(prompts) < 2:
        raise ValueError(
            "collapse needs prompts_file with at least 2 prompts (a calibration and a "
            "held-out half): the logit difference it makes must be measured"
        )
    half = len(prompts) // 2
    calibration = prompt_batches(tokenizer, prompts[:half])
    held_out = prompt_batches(tokenizer, prompts[half:])
    model.eval()
    before = _logits(model, held_out)
    gates = constant_gates(model) if mode == "constant" else mean_gates(model, calibration)
    allocation = collapse(model, allocation, gates)
    after = _logits(model, held_out)
    masks = [b["attention_mask"] for b in held_out]
    diffs = [logit_difference(a, b, m) for a, b, m in zip(before, after, masks, strict=True)]
    n = sum(d["tokens"] for d in diffs)
    report = {
        "collapse": mode,
        "modules": len(gates),
        "held_out_prompts": len(prompts) - half,
        "tokens": n,
        "max_abs": max(d["max_abs"] for d in diffs),
        "mean_abs": sum(d["mean_abs"] * d["tokens"] for d in diffs) / n,
        "top1_agree": sum(d["top1_agree"] * d["tokens"] for d in diffs) / n,
    }
    print(
        f"collapsed {len(gates)} N-expert modules ({mode} gates); logits on {n} held-out tokens "
        f"({report['held_out_prompts']} prompts): max |diff| {report['max_abs']:.4g}, mean "
        f"|diff| {report['mean_abs']:.4g}, top-1 token agreement {report['top1_agree']:.4f}"
    )
    return allocation, report


def merge_model(
    model: nn.Module,
    tokenizer,
    allocation: Allocation,
    meta: Mapping,
    out: str | Path,
    collapsed: Mapping | None = None,
) -> dict:
    """Write the merged model (and the N-expert modules left, as an adapter) to ``out``;
    ``collapsed``: the report of :func:`collapse_measured`, for the model card."""
    out = Path(out)
    config = LoraMoEConfig(**meta["lora"])
    merged = fold_single(model)
    kept = sorted(adapter_modules(model))
    out.mkdir(parents=True, exist_ok=True)
    if kept:
        rest = Allocation(
            {n: allocation.modules[n] for n in kept}, allocation.top_k, allocation.meta
        )
        loader = (meta.get("backbone") or {}).get("loader") or {}
        backbone = {
            "id": (meta.get("backbone") or {}).get("id"),
            "hub_id": None,
            "loader": {"name": "..", "source": "hub", "dtype": loader.get("dtype", "float32")},
            "weights": {"merged_from": describe(meta.get("backbone") or {})},
        }
        save_adapter(
            model,
            out / "adapter",
            rest,
            config,
            backbone=backbone,
            tokenizer=tokenizer,
            task=meta.get("task"),
        )
    unwrap(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report = {
        "merged": len(merged),
        "collapsed": len(allocation.meta.get("collapsed") or {}),
        "kept": len(kept),
        "kept_modules": kept,
        "collapse": dict(collapsed) if collapsed else None,
    }
    atomic_write_text(out / CARD_FILE, merged_card(meta, report))
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["adapter"] or not args["out"]:
        raise SystemExit(f"{USAGE}\nerror: adapter= and out= are required")
    folder = resolve_folder(args["adapter"])
    allocation, _, meta = read_adapter_config(folder)
    model, tokenizer = from_pretrained(folder, allow_base_mismatch=args["allow_base_mismatch"])
    collapsed = None
    if args["collapse"] != "none":
        if not args["prompts_file"]:
            raise SystemExit(f"{USAGE}\nerror: collapse= needs prompts_file= (see --help)")
        texts = render_prompts(
            read_prompts(args["prompts_file"]), meta.get("task"), tokenizer=tokenizer
        )
        allocation, collapsed = collapse_measured(
            model, allocation, args["collapse"], tokenizer, texts
        )
    report = merge_model(model, tokenizer, allocation, meta, args["out"], collapsed)
    print(
        f"merged {report['merged']} one-expert modules into {args['out']}; "
        f"{report['kept']} N-expert modules kept as LoRA-MoE"
        + (
            f" in {Path(args['out']) / 'adapter'} (e.g. {report['kept_modules'][:2]})"
            if report["kept"]
            else ""
        )
    )
    print(json.dumps({k: v for k, v in report.items() if k != "kept_modules"}))
    return report


if __name__ == "__main__":
    run(main)
