"""Collapse an N-expert LoRA-MoE module to one LoRA by fixing its gates (on request only).

With gates ``g`` that do not depend on the input, a module's delta
``sum_i g_i s_i B_i A_i x`` is one LoRA of rank ``R = sum r_i``:
``A' = [A_1; ...; A_N]``, ``B' = [g_1 s_1 B_1, ..., g_N s_N B_N] / s'`` with ``s'`` the
scale of a one-expert module of rank R (``alpha / R``). It is what peft's
``add_weighted_adapter(combination_type="cat")`` builds. The router's gates depend on
the input, so this is exact only where they happen to be constant; elsewhere it is an
approximation, and :func:`logit_difference` measures it on held-out tokens.

- ``constant``: every expert gets ``1 / N`` (no data needed).
- ``mean``: expert i gets its mean top-k routing weight (0 on tokens that did not pick
  it) over calibration tokens, padding excluded; the gates sum to 1.

The collapsed module is a one-expert :class:`LoraMoELinear`, so the peft export and
the exact merge treat it like any other one-expert module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.moe.inject import adapter_modules
from guilomo.moe.layer import LoraMoELinear

GATES = ("constant", "mean")


def multi_expert(model: nn.Module) -> dict[str, LoraMoELinear]:
    return {n: m for n, m in adapter_modules(model).items() if m.num_experts > 1}


def constant_gates(model: nn.Module) -> dict[str, Tensor]:
    return {
        n: torch.full((m.num_experts,), 1.0 / m.num_experts) for n, m in multi_expert(model).items()
    }


@torch.no_grad()
def mean_gates(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Mean top-k routing weight of every expert of every N-expert module over the
    non-padding tokens of ``batches`` (model inputs with an ``attention_mask``)."""
    layers = multi_expert(model)
    sums = {n: torch.zeros(m.num_experts, dtype=torch.float64) for n, m in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def record(m: LoraMoELinear, args, _out):
            x2 = args[0].reshape(-1, args[0].shape[-1])
            _, top_i, top_w = m.route(x2, None)
            gate = top_w.new_zeros(x2.shape[0], m.num_experts).scatter(1, top_i, top_w)
            keep = m.context.flat_mask(x2.shape[0], x2.device)
            gate = gate if keep is None else gate[keep]
            sums[name] += gate.sum(0).double().cpu()
            counts[name] += gate.shape[0]

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if any(c == 0 for c in counts.values()):
        raise ValueError("mean gates need at least one non-padding calibration token")
    return {n: (sums[n] / counts[n]).float() for n in layers}


@torch.no_grad()
def collapse(model: nn.Module, allocation: Allocation, gates: Mapping[str, Tensor]) -> Allocation:
    """Replace every module named in ``gates`` by its one-expert collapse (in place);
    returns the allocation of the collapsed model (``meta.collapsed``: the gates)."""
    layers = adapter_modules(model)
    modules = dict(allocation.modules)
    for name, g in gates.items():
        m = layers[name]
        if g.shape != (m.num_experts,):
            raise ValueError(f"{name}: {m.num_experts} experts, got {tuple(g.shape)} gates")
        R = sum(m.ranks)
        one = LoraMoELinear(m.base, [R], 1, config=m.config, context=m.context)
        gate_r = g.to(m.rank_scale.device)[m.expert_of_rank] * m.rank_scale / one.rank_scale
        one.lora_A.copy_(m.lora_A)
        one.lora_B.copy_((m.lora_B.float() * gate_r).to(one.lora_B.dtype))
        one.train(m.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, one)
        modules[name] = ModuleAllocation((R,))
    meta = {**allocation.meta, "collapsed": {n: [float(v) for v in g] for n, g in gates.items()}}
    return Allocation(modules, top_k=allocation.top_k, meta=meta)


@torch.no_grad()
def logit_difference(before: Tensor, after: Tensor, mask: Tensor | None = None) -> dict:
    """How far two models' logits (batch x seq x vocab) are on the real tokens:
    max and mean absolute difference, and how often their top-1 token agrees."""
    keep = torch.ones(before.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    a, b = before[keep].float(), after[keep].float()
    diff = (a - b).abs()
    return {
        "tokens": int(keep.sum()),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "top1_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }
