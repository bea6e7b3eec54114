"""AdaLoRA (Zhang et al. 2023; peft's own implementation) as a baseline of ``train.py``.

``allocation=adalora`` (``conf/allocation/adalora.yaml``) calls :func:`adalora`, which
sizes AdaLoRA's final rank budget ``target_r`` to the run's budget and returns the
*nominal* allocation: one expert of rank ``target_r`` in every targeted module, which is
what the budget counts. ``train.py`` then trains peft's AdaLoRA on those modules instead
of a LoRA-MoE (:class:`AdaLora`): every module starts at ``init_r`` ranks in SVD form
``B diag(E) A``; peft's ``RankAllocator`` prunes the (A row, E, B column) triplets of
lowest importance on its cubic schedule down to ``target_r * modules`` ranks in total,
reached at step ``total - tfinal`` and kept to the end. :class:`AdaLoraSchedule` calls
``update_and_allocate`` after every optimiser step, before the next ``zero_grad``, as peft
requires. AdaLoRA's orthogonality regulariser joins the training loss through
:meth:`AdaLora.regularizer` (peft adds it only in its own forward, which the
sparse-logits objective does not call).

What is counted. A kept rank of a module ``(d_in, d_out)`` holds one row of A (d_in),
one column of B (d_out) and one singular value in E. E folds into B after training
(``B diag(E)`` is an ordinary LoRA factor), so a final rank costs ``d_in + d_out``, as one
LoRA rank does; the kept E entries are reported (``final_singular_values``), not counted.
The budget fixes ``target_r`` as the largest integer with
``target_r * sum(d_in + d_out) <= budget`` (params) or ``target_r * modules <= budget``
(rank); that nominal count is ``trainable_params`` and ``budget.spent`` of the run.
AdaLoRA's own budget is a total *rank*, not parameters: it moves ranks between modules of
different widths, so the parameters of the ranks it really keeps (``final_params``, from
the nonzero E entries after the last allocation) may differ from the nominal count.
``metrics.json`` reports both under ``adalora``, with what the optimiser trains before the
pruning (``trained_params``: ``init_r`` ranks and their E in every module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.adalora import SVDLinear
from torch import Tensor, nn

from guilomo.allocation import Allocation, AllocationError, module_shapes, uniform
from guilomo.budget import Budget, BudgetError

SOURCE = "baseline:adalora"
KEY = "adalora"  # the settings in allocation.meta
ADAPTER = "default"  # peft's adapter name
PROVISIONAL_STEPS = 2  # peft's config needs a schedule; the run's own is set before training


def is_adalora(allocation: Allocation) -> bool:
    """Whether ``allocation`` is trained as AdaLoRA (made by :func:`adalora`)."""
    return allocation.meta.get("source") == SOURCE


def target_rank(budget: Budget, shapes: Mapping[str, tuple[int, int]], rank: int) -> int:
    """``target_r``: ``rank`` without a budget, else the largest that fits it everywhere."""
    if not budget.active:
        return rank
    if budget.kind == "experts":
        raise BudgetError(
            "adalora has no experts: give it a params or rank budget "
            "(budget=params budget.value=N, or budget=match, which matches parameters)"
        )
    per_rank = sum(budget.cost((1,), shape) for shape in shapes.values())
    target = budget.value // per_rank
    if target < 1:
        raise BudgetError(
            f"budget {budget.kind}={budget.value} is below one rank in every adapted module "
            f"({per_rank} {budget.kind}); raise the budget or target fewer modules/layers"
        )
    return target


def schedule(total_steps: int, tinit: float, tfinal: float) -> tuple[int, int]:
    """``(tinit, tfinal)`` in steps from fractions of ``total_steps``. At least one final
    step, so the step that sets the final ranks (``total - tfinal``) is taken."""
    steps_init, steps_final = round(tinit * total_steps), max(1, round(tfinal * total_steps))
    if steps_init >= total_steps - steps_final:
        raise AllocationError(
            f"adalora: {total_steps} training steps leave no rank-pruning phase between "
            f"tinit={steps_init} and the last tfinal={steps_final} steps; train longer "
            "(trainer.max_steps) or lower allocation.tinit / allocation.tfinal"
        )
    return steps_init, steps_final


def adalora(
    targets: Mapping,
    budget: Budget | Mapping | None = None,
    rank: int = 8,
    init_ratio: float = 1.5,
    tinit: float = 0.1,
    tfinal: float = 0.3,
    delta_t: int = 1,
    beta1: float = 0.85,
    beta2: float = 0.85,
    orth_reg_weight: float = 0.5,
    total_steps: int | None = None,
) -> Allocation:
    """The nominal allocation of AdaLoRA under ``budget``: rank ``target_r`` everywhere.

    ``init_r = ceil(init_ratio * target_r)``; ``tinit`` and ``tfinal`` are fractions of
    the run's optimiser steps (checked here when ``total_steps`` is known, resolved
    when training starts). The AdaLoRA settings go to ``meta["adalora"]``.
    """
    shapes = module_shapes(targets)
    budget = Budget.from_config(budget, shapes)
    if not (0 <= tinit < 1 and 0 <= tfinal < 1):
        raise AllocationError(f"tinit={tinit} and tfinal={tfinal} must be fractions in [0, 1)")
    if not init_ratio > 1:  # at 1 peft's allocator has nothing to prune and fails mid-run
        raise AllocationError(
            f"allocation.init_ratio={init_ratio} must be > 1: AdaLoRA starts above its final "
            "rank and prunes down to it (1.5 is the default; allocation=lora trains without "
            "pruning)"
        )
    if not (0 < beta1 < 1 and 0 < beta2 < 1) or orth_reg_weight < 0 or delta_t < 1:
        raise AllocationError(
            "need 0 < beta1, beta2 < 1, orth_reg_weight >= 0 and delta_t >= 1, got "
            f"{beta1}, {beta2}, {orth_reg_weight}, {delta_t}"
        )
    if total_steps is not None and total_steps > 0:
        schedule(total_steps, tinit, tfinal)
    target = target_rank(budget, shapes, rank)
    settings = {
        "target_r": target,
        "init_r": math.ceil(init_ratio * target),  # > target: init_ratio > 1
        "tinit": tinit,
        "tfinal": tfinal,
        "delta_t": delta_t,
        "beta1": beta1,
        "beta2": beta2,
        "orth_reg_weight": orth_reg_weight,
    }
    alloc = uniform(shapes, 1, target, top_k=1, source=SOURCE, **{KEY: settings})
    if budget.active:
        budget.check(alloc, shapes)
    return alloc


class AdaLora:
    """peft's AdaLoRA put into ``model`` (in place) on the modules of ``allocation``.

    ``alpha`` and ``dropout`` are the LoRA-MoE adapter's (``adapter.alpha``,
    ``adapter.dropout``): peft scales by ``alpha / init_r``. Call :meth:`set_total_steps`
    before training (:class:`AdaLoraSchedule` does), then :meth:`step` after every
    optimiser step. A :class:`~guilomo.finetune.adapter.TrainedAdapter`: its
    :meth:`callbacks` are that schedule, its :meth:`regularizer` joins the training loss.
    """

    def __init__(self, model: nn.Module, allocation: Allocation, alpha: float, dropout: float):
        s = allocation.meta[KEY]
        self.settings, self.model, self.allocation = dict(s), model, allocation
        config = AdaLoraConfig(
            target_modules=sorted(allocation.modules),
            init_r=s["init_r"],
            target_r=s["target_r"],
            deltaT=s["delta_t"],
            beta1=s["beta1"],
            beta2=s["beta2"],
            orth_reg_weight=s["orth_reg_weight"],
            lora_alpha=alpha,
            lora_dropout=dropout,
            total_step=PROVISIONAL_STEPS,
        )
        self.peft = get_peft_model(model, config)
        self.config = self.peft.peft_config[ADAPTER]
        self.tuner = self.peft.base_model  # peft's AdaLoraModel: update_and_allocate
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, SVDLinear)}
        if set(self.layers) != set(allocation.modules):
            raise AllocationError("peft adapted other modules than the allocation names")

    def trainable_params(self, shapes: Mapping[str, tuple[int, int]]) -> int:
        """The nominal count of the module docstring: AdaLoRA trains ``init_r`` ranks and
        keeps ``target_r``, the kept ones are counted."""
        return self.allocation.trainable_params(shapes)

    def callbacks(self) -> list[L.Callback]:
        """The rank schedule (:class:`AdaLoraSchedule`)."""
        return [AdaLoraSchedule(self)]

    def set_total_steps(self, total_steps: int) -> None:
        """The run's schedule: ``tinit``/``tfinal`` fractions of ``total_steps``."""
        tinit, tfinal = schedule(total_steps, self.settings["tinit"], self.settings["tfinal"])
        self.config.total_step, self.config.tinit, self.config.tfinal = total_steps, tinit, tfinal

    def step(self, global_step: int) -> None:
        """peft's budget update after the optimiser step ``global_step`` (0-based)."""
        self.tuner.update_and_allocate(global_step)

    def regularizer(self) -> Tensor:
        """``orth_reg_weight`` x the mean over every A and B of ``||A A^T - I||_F`` and
        ``||B^T B - I||_F``: peft's term, which its forward adds to the model's loss."""
        norms = []
        for layer in self.layers.values():
            a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
            for cov in (a @ a.T, b.T @ b):
                eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                norms.append(torch.linalg.matrix_norm(cov - eye))
        return self.config.orth_reg_weight * torch.stack(norms).mean()

    def ranks(self) -> dict[str, int]:
        """Ranks each module keeps now: its nonzero singular values (E)."""
        return {n: int((m.lora_E[ADAPTER] != 0).sum()) for n, m in self.layers.items()}

    def record(self, shapes: Mapping[str, tuple[int, int]]) -> dict:
        """The settings, schedule and counts of the module docstring, for ``metrics.json``."""
        ranks = self.ranks()
        width = {n: sum(shapes[n]) for n in self.layers}
        target, init = self.settings["target_r"], self.settings["init_r"]
        return {
            **self.settings,
            "steps": {
                "total": self.config.total_step,
                "tinit": self.config.tinit,
                "tfinal": self.config.tfinal,
            },
            "rank_budget": target * len(ranks),
            "final_rank": sum(ranks.values()),
            "final_ranks": ranks,
            "nominal_params": target * sum(width.values()),
            "final_params": sum(ranks[n] * width[n] for n in ranks),
            "final_singular_values": sum(ranks.values()),
            "trained_params": init * sum(w + 1 for w in width.values()),
        }

    def state_dict(self) -> dict:
        """The allocator's importance averages and rank pattern (to resume exactly)."""
        ra = self.tuner.rankallocator
        return {
            "ipt": ra.ipt,
            "exp_avg_ipt": ra.exp_avg_ipt,
            "exp_avg_unc": ra.exp_avg_unc,
            "rank_pattern": self.config.rank_pattern,
        }

    def load_state_dict(self, state: dict) -> None:
        ra = self.tuner.rankallocator
        ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc = (
            dict(state[k]) for k in ("ipt", "exp_avg_ipt", "exp_avg_unc")
        )
        self.config.rank_pattern = state["rank_pattern"]

    def save(self, path: str | Path) -> Path:
        """peft's adapter folder (only the kept ranks; reload with ``PeftModel.from_pretrained``)."""
        self.peft.save_pretrained(str(path))
        return Path(path)

    def save_card(self, path: str | Path, metrics: Mapping) -> None:
        """No LoRA-MoE model card: peft's folder keeps its own."""
        return None


class AdaLoraSchedule(L.Callback):
    """Sets the run's step count at the start, then calls :meth:`AdaLora.step` once after
    every optimiser step (the gradients are still there: Lightning zeroes them in the
    next step); a gradient-accumulation micro-batch is not a step."""

    def __init__(self, adalora: AdaLora):
        self.adalora = adalora
        self._seen: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.adalora.set_total_steps(int(trainer.estimated_stepping_batches))
        self._seen = trainer.global_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self._seen:
            self._seen = trainer.global_step
            self.adalora.step(trainer.global_step - 1)

    def state_dict(self) -> dict:
        return self.adalora.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.adalora.load_state_dict(state_dict)
