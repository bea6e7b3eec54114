"""``validate_train(cfg)``: every check of ``train.py`` that needs no weights.

The fine-tune's own values are checked here (the allocation options in
:mod:`guilomo.finetune.allocation`, the ``eval`` settings in :mod:`guilomo.eval`, the
optimiser and the flags); :func:`guilomo.validate.validate_stage` runs them after the
checks both stages share, then, on the weight-less backbone, builds the allocation
(unless it reads the weights, as AlphaLoRA does) and checks its memory and a resume
checkpoint's fingerprint.
"""

from __future__ import annotations

from omegaconf import DictConfig

from guilomo.allocation import module_shapes
from guilomo.baselines import alphalora
from guilomo.eval.evaluator import check_eval_config
from guilomo.finetune.allocation import check_allocation_config, resolve_allocation
from guilomo.utils.checks import check_bool, check_int, check_real, get
from guilomo.utils.runfiles import ALLOCATION_FILE, METRICS_FILE
from guilomo.validate import StageChecks, check_memory, prefixed, validate_stage


def train_fingerprint(cfg: DictConfig, num_layers: int, allocation) -> dict:
    """What a fine-tune checkpoint must match to be resumed (stored in it by the module)."""
    return {
        "stage": "train",
        "backbone": get(cfg, "backbone.id"),
        "num_layers": int(num_layers),
        "allocation": None if allocation is None else allocation.to_dict()["modules"],
        "top_k": None if allocation is None else allocation.top_k,
        "adapter": get(cfg, "adapter"),
    }


def check_values(cfg: DictConfig):
    """The fine-tune's own values; returns the allocation builder."""
    build = check_allocation_config(cfg)
    check_eval_config(cfg)
    for key in ("save_adapter", "sparse_logits"):
        check_bool(key, get(cfg, key, True))
    check_real("optim.lr", get(cfg, "optim.lr"), positive=True)
    check_real("optim.weight_decay", get(cfg, "optim.weight_decay"), lo=0)
    check_int("optim.warmup_steps", get(cfg, "optim.warmup_steps"), 0)
    return build


def check_model(cfg: DictConfig, build, model, targets: dict) -> dict:
    """The allocation on the weight-less backbone and its memory; returns the fingerprint."""
    n = int(model.config.num_hidden_layers)
    allocation = None
    if build is not alphalora:  # AlphaLoRA reads the weights' spectra: checked after loading
        allocation = prefixed("allocation", resolve_allocation, cfg, targets, n)
        params = allocation.trainable_params(module_shapes(targets))
        check_memory(
            params,
            f"the allocation ({allocation.summary()})",
            "lower allocation.rank / allocation.experts, or set a budget (budget=params budget.value=N)",
        )
    return train_fingerprint(cfg, n, allocation)


TRAIN = StageChecks(
    name="train",
    result=METRICS_FILE,
    dirs=("adapter", "checkpoints"),
    files=(METRICS_FILE, ALLOCATION_FILE),
    values=check_values,
    model=check_model,
    scalars=("test/zero_shot/*", "test/finetuned/*", "val/*", "model/*", "budget/*", "alloc/*"),
)


def validate_train(cfg: DictConfig) -> None:
    """Every check of ``train.py`` that needs no weights; raises before the backbone loads."""
    validate_stage(cfg, TRAIN)
