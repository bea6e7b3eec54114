"""A full model with the adapter's one-expert modules merged into the base weights.

A one-expert module computes ``W x + s B A x``: :func:`fold_single` folds it into its
base weight exactly, ``W' = W + s B A`` (in fp32). An N-expert module's router makes
its delta depend on the input, so it has no exact merge: :func:`merge_model` keeps it
as a LoRA-MoE, saved as a guilomo adapter in ``<out>/adapter`` whose backbone is the
merged model in ``<out>`` (``guilomo.from_pretrained("<out>/adapter")``). Collapse
those modules first (:func:`guilomo.eval.collapse.collapse_measured`) to merge them
too. ``<out>`` is a plain transformers folder with the tokenizer and a model card.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from guilomo.allocation import Allocation
from guilomo.moe.card import CARD_FILE, merged_card
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import adapter_modules
from guilomo.moe.io import save_adapter
from guilomo.moe.provenance import describe
from guilomo.utils.io import atomic_write_text


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


def merge_model(
    model: nn.Module,
    tokenizer,
    allocation: Allocation,
    meta: Mapping,
    out: str | Path,
    collapsed: Mapping | None = None,
) -> dict:
    """Write the merged model (and the N-expert modules left, as an adapter) to ``out``;
    ``collapsed``: the report of ``collapse_measured``, for the model card."""
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
