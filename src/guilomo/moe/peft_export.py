"""A LoRA-MoE adapter's one-expert modules as a genuine peft LoRA folder.

A one-expert module computes ``s B A x`` with ``s = alpha / r`` (top-1 of one expert:
gate 1): a LoRA. peft scales a module by ``lora_alpha / r`` of its
``rank_pattern`` / ``alpha_pattern`` entry, so :func:`export_peft` writes
``LoraConfig(r=max r_i, lora_alpha=alpha, target_modules=[exact module paths],
rank_pattern={module: r_i}, alpha_pattern={module: s_i * r_i where it is not alpha})``
and the weights as ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``.
``uniform_rank=True`` is for servers that apply one ``lora_alpha / r`` to every module
(vLLM): every module is zero-padded to the largest rank and its scale folded into B
(``B * s_i / (alpha / r_max)``), so no pattern is needed; the zero rows add nothing.

N-expert modules have a router peft cannot express: :func:`peft_lora` stops and names
them unless ``only_single`` (they are left out, and listed); collapse them first
(:func:`guilomo.eval.collapse.collapse_measured`) to export them. peft is an optional
dependency, imported only when a folder is written (``pip install peft``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from guilomo.moe.card import CARD_FILE, peft_card
from guilomo.moe.inject import adapter_modules
from guilomo.moe.io import WEIGHTS_FILE
from guilomo.moe.layer import expert_scales
from guilomo.utils.io import atomic_write, atomic_write_text

PREFIX = "base_model.model."


@torch.no_grad()
def peft_lora(
    model: nn.Module, only_single: bool = False, uniform_rank: bool = False
) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """``(LoraConfig keyword arguments, peft-named tensors, modules left out)``."""
    layers = adapter_modules(model)
    multi = sorted(n for n, m in layers.items() if m.num_experts > 1)
    if multi and not only_single:
        raise ValueError(
            f"{len(multi)} of {len(layers)} modules have more than one expert (e.g. {multi[:2]}); "
            "a router has no peft LoRA form: pass only_single=true to export the one-expert "
            "modules alone, or collapse=constant|mean (an approximation, measured)"
        )
    single = {n: m for n, m in layers.items() if m.num_experts == 1}
    if not single:
        raise ValueError("no module has one expert: nothing to export as a peft LoRA")
    config = next(iter(single.values())).config
    alpha, r_max = float(config.alpha), max(m.ranks[0] for m in single.values())
    tensors, ranks, alphas = {}, {}, {}
    for name, m in single.items():
        r, (s,) = m.ranks[0], expert_scales(m.config, m.ranks)
        A, B = m.lora_A.detach(), m.lora_B.detach()
        if uniform_rank:  # zero-pad to r_max, fold s / (alpha / r_max) into B
            A = torch.cat([A, A.new_zeros(r_max - r, A.shape[1])])
            B = torch.cat([B.float() * (s * r_max / alpha), B.new_zeros(B.shape[0], r_max - r)], 1)
            B = B.to(m.lora_B.dtype)
        else:
            if r != r_max:
                ranks[name] = r
            if not math.isclose(s * r, alpha, rel_tol=1e-12):
                alphas[name] = s * r
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A.contiguous().clone()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B.contiguous().clone()
    kwargs = {
        "task_type": "CAUSAL_LM",
        "r": r_max,
        "lora_alpha": alpha,
        "lora_dropout": float(config.dropout),
        "target_modules": sorted(single),
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "bias": "none",
    }
    return kwargs, tensors, multi


def export_peft(
    model: nn.Module,
    meta: Mapping,
    out: str | Path,
    tokenizer=None,
    only_single: bool = False,
    uniform_rank: bool = False,
) -> dict:
    """Write a peft LoRA folder for ``model``'s one-expert modules; returns a report."""
    from peft import LoraConfig  # optional dependency, needed only by this export

    kwargs, tensors, left_out = peft_lora(model, only_single, uniform_rank)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = meta.get("base_model")
    config = LoraConfig(**kwargs, base_model_name_or_path=base if base and "/" in base else None)
    config.save_pretrained(str(out))
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    report = {
        "exported": len(kwargs["target_modules"]),
        "left_out": len(left_out),
        "left_out_modules": left_out,
        "r": kwargs["r"],
        "rank_pattern": bool(kwargs["rank_pattern"]),
        "alpha_pattern": bool(kwargs["alpha_pattern"]),
        "uniform_rank": uniform_rank,
    }
    atomic_write_text(out / CARD_FILE, peft_card(meta, report))
    return report
