"""Put LoRA-MoE layers into any Hugging Face causal LM, without touching its modelling file.

- :func:`find_targets` selects ``nn.Linear`` modules by name suffix or regex, and
  optionally by decoder-layer index.
- :func:`inject_adapter` freezes the model and replaces every module named by an
  :class:`~guilomo.allocation.Allocation` with a :class:`LoraMoELinear` (or any
  subclass, e.g. the search layer, through ``layer_factory``). A forward pre-hook
  on the model records the attention mask so the layers can leave padding out of
  the load-balancing loss.
- :func:`aux_loss` combines the layers' load-balancing losses of the last forward.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from guilomo.allocation import Allocation, AllocationError, layer_of
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.layer import LoraMoELinear, RoutingContext

CONTEXT_ATTR = "_guilomo_context"


def find_targets(
    model: nn.Module, target_modules: Sequence[str] | str, layers: Sequence[int] | None = None
) -> dict[str, nn.Linear]:
    """Linear modules whose name ends with one of ``target_modules`` (a list of suffixes)
    or fully matches ``target_modules`` (a regex string), in ``layers`` if given."""
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        wanted = pattern.fullmatch
    else:
        suffixes = tuple(target_modules)
        wanted = lambda n: n.split(".")[-1] in suffixes or n in suffixes  # noqa: E731
    layer_set = None if layers is None else set(layers)
    # the frozen linear inside an adapted layer is not a target (matched by identity: a
    # path like "encoder.base_block.q_proj" must still be found)
    inner = {id(m.base) for m in model.modules() if isinstance(m, LoraMoELinear)}
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and id(mod) not in inner
        and wanted(name)
        and (layer_set is None or layer_of(name) in layer_set)
    }
    if not found:
        linear = sorted(
            {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise AllocationError(
            f"no linear module matches target_modules={target_modules!r} (layers={layers}); "
            f"this model's linear layer names are {linear}"
        )
    return found


def inject_adapter(
    model: nn.Module,
    allocation: Allocation,
    config: LoraMoEConfig | None = None,
    layer_factory: Callable[..., LoraMoELinear] | None = None,
) -> nn.Module:
    """Freeze ``model`` and wrap every module of ``allocation`` in place; returns ``model``."""
    config = config or LoraMoEConfig()
    if hasattr(model, CONTEXT_ATTR):
        raise ValueError("this model already has a guilomo adapter; load a fresh backbone")
    modules = dict(model.named_modules())
    allocation.check_modules(n for n, m in modules.items() if isinstance(m, nn.Linear))
    for p in model.parameters():
        p.requires_grad_(False)
    context = RoutingContext()
    factory = layer_factory or LoraMoELinear
    for name, spec in allocation.modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        layer = factory(
            modules[name], spec.ranks, allocation.top_k_of(name), config=config, context=context
        )
        layer.train(modules[name].training)  # an eval-mode backbone stays in eval mode
        setattr(parent, child, layer)
    object.__setattr__(model, CONTEXT_ATTR, context)  # not a submodule, not in state_dict
    model.register_forward_pre_hook(_record_mask(model), with_kwargs=True)
    return model


def _record_mask(model: nn.Module):
    """Pre-hook storing the forward's 2-D ``attention_mask`` (keyword or positional)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        signature = None

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and args and signature is not None:  # e.g. model(ids, mask)
            try:
                mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:
                mask = None
        set_token_mask(module, mask)

    return hook


def set_token_mask(model: nn.Module, mask) -> None:
    """Tell the adapted layers of ``model`` which tokens of the next forward are real
    (a 2-D ``attention_mask``; anything else: all of them), so padding stays out of the
    load-balancing loss. The model's pre-hook does this; a caller that runs only part
    of the model (e.g. the decoder without the LM head) calls it itself."""
    context = getattr(model, CONTEXT_ATTR, None)
    if context is not None:
        context.token_mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def adapter_modules(model: nn.Module) -> dict[str, LoraMoELinear]:
    """The LoRA-MoE layers of a model, by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraMoELinear)}


def aux_loss(model: nn.Module, reduction: str = "mean") -> Tensor:
    """Load-balancing loss of the last training forward, over modules with a router."""
    losses = [m.aux for m in adapter_modules(model).values() if m.aux is not None]
    if not losses:
        return torch.zeros(())
    total = torch.stack(losses).sum()
    return total / len(losses) if reduction == "mean" else total


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
