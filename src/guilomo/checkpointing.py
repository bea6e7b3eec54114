"""Gradient checkpointing for both stages: each decoder layer's activations are
recomputed in the backward instead of kept (``gradient_checkpointing=true``).

It is the model's own Hugging Face switch with non-reentrant ``torch.utils.checkpoint``:
that works with a frozen backbone (no input needs a gradient), with
``torch.autograd.grad`` (the search's outer step; its finite differences need no
``create_graph``), and it restores the RNG state for the recomputation, so dropout
masks are the same. One more thing must match: the adapters' pass state. The search
runs its outer passes with the aux loss off and (by default) no adapter dropout, and
takes their gradients after leaving that mode; a recomputation in the current mode
would compute another function (torch detects it by the saved tensors' shapes, or not
at all). So every checkpointed forward records the adapter layers' modes (train/eval,
dropout, aux switch) and the routing context's attention mask, and the recomputation
replays them. Loss and gradients then equal those without checkpointing.
"""

from __future__ import annotations

import contextlib

from torch import nn

from guilomo.moe.inject import CONTEXT_ATTR, adapter_modules


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on checkpointing of every decoder layer (active in train mode)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing=true: {type(model).__name__} does not support it; "
            "set gradient_checkpointing=false"
        )
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": _replay_fn(model)}
    )


def _replay_fn(model: nn.Module):
    layers: list[nn.Module] = []  # found at the first forward (adapters are injected later)

    def context_fn():
        if not layers:
            layers.extend(adapter_modules(model).values())
        routing = getattr(model, CONTEXT_ATTR, None)
        saved = _state(layers, routing)
        return contextlib.nullcontext(), _replaying(layers, routing, saved)

    return context_fn


def _state(layers, routing):
    modes = [(m.training, m.dropout.training, getattr(m, "aux_enabled", None)) for m in layers]
    return modes, None if routing is None else routing.token_mask


def _set(layers, routing, state) -> None:
    modes, mask = state
    for m, (training, dropout, aux) in zip(layers, modes, strict=True):
        m.training = training  # the layer itself only: its submodules are set below
        m.dropout.train(dropout)
        if aux is not None:
            m.aux_enabled = aux
    if routing is not None:
        routing.token_mask = mask


@contextlib.contextmanager
def _replaying(layers, routing, saved):
    current = _state(layers, routing)
    _set(layers, routing, saved)
    try:
        yield
    finally:
        _set(layers, routing, current)
