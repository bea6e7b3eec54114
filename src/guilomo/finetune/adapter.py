"""The adapter a fine-tune trains, behind one interface: :class:`TrainedAdapter`.

Two implementations: :class:`LoraMoEAdapter` (the LoRA-MoE of :mod:`guilomo.moe`) and
:class:`~guilomo.finetune.adalora.AdaLora` (peft's AdaLoRA, ``allocation=adalora``).
:func:`build_adapter` puts the one the allocation names into the backbone, drawing its
initial weights from the global generator as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
from torch import Tensor, nn

from guilomo.allocation import Allocation
from guilomo.finetune.adalora import AdaLora, is_adalora
from guilomo.moe import LoraMoEConfig, inject_adapter, save_adapter, trainable_parameters
from guilomo.moe.io import save_model_card
from guilomo.moe.provenance import backbone_record


@runtime_checkable
class TrainedAdapter(Protocol):
    """What ``run_train`` asks of the adapter it trains (already in the backbone)."""

    # a loss term of the adapter's own, added to the training loss (None: no term)
    regularizer: Callable[[], Tensor] | None

    def trainable_params(self, shapes: Mapping[str, tuple[int, int]]) -> int:
        """The trainable parameters the run reports (``metrics.json``)."""
        ...

    def callbacks(self) -> list[L.Callback]:
        """The adapter's training hooks."""
        ...

    def save(self, path: str | Path) -> Path:
        """The adapter folder; returns its path."""
        ...

    def save_card(self, path: str | Path, metrics: Mapping) -> Path | None:
        """guilomo's model card with the test ``metrics`` into the saved folder (its path),
        or ``None`` where the folder keeps its own."""
        ...

    def record(self, shapes: Mapping[str, tuple[int, int]]) -> dict | None:
        """What ``metrics.json["adalora"]`` holds of it (``None``: nothing)."""
        ...


class LoraMoEAdapter:
    """A LoRA-MoE put into ``model`` (in place) on the modules of ``allocation``.

    Its folder (:func:`guilomo.moe.save_adapter`) records the backbone ``loader`` and
    ``backbone_id`` (with the weights' checksum), the ``tokenizer`` and the ``task``, and
    gets a model card with the test metrics.
    """

    regularizer = None

    def __init__(
        self,
        model: nn.Module,
        allocation: Allocation,
        config: LoraMoEConfig,
        *,
        loader: Mapping | None = None,
        backbone_id: str | None = None,
        tokenizer: Any = None,
        task: Mapping | None = None,
    ):
        self.model, self.allocation, self.config = model, allocation, config
        self.loader, self.backbone_id = dict(loader or {}), backbone_id
        self.tokenizer, self.task = tokenizer, task
        inject_adapter(model, allocation, config)

    def trainable_params(self, shapes: Mapping[str, tuple[int, int]]) -> int:
        """The tensors the optimiser trains (the allocation's count: every expert and router)."""
        return trainable_parameters(self.model)

    def callbacks(self) -> list[L.Callback]:
        return []

    def save(self, path: str | Path) -> Path:
        backbone = backbone_record(self.loader, self.backbone_id, self.model)
        return save_adapter(
            self.model,
            path,
            self.allocation,
            self.config,
            backbone=backbone,
            tokenizer=self.tokenizer,
            task=self.task,
        )

    def save_card(self, path: str | Path, metrics: Mapping) -> Path:
        return save_model_card(path, metrics)

    def record(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        return None


def build_adapter(
    model: nn.Module, allocation: Allocation, config: LoraMoEConfig, **folder
) -> TrainedAdapter:
    """The adapter ``allocation`` names, put into ``model``: peft's AdaLoRA for an
    ``allocation=adalora`` run (:func:`~guilomo.finetune.adalora.is_adalora`; it takes
    ``config``'s alpha and dropout), else a LoRA-MoE (:class:`LoraMoEAdapter`, whose
    folder records ``folder``'s keywords)."""
    if is_adalora(allocation):
        return AdaLora(model, allocation, config.alpha, config.dropout)
    return LoraMoEAdapter(model, allocation, config, **folder)
