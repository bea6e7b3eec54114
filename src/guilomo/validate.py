"""Check a run's config before any model loads; every error names the key and the fix.

Each stage checks its own settings next to them: ``search/checks.py`` and
``finetune/checks.py`` (with ``finetune/allocation.py``), the evaluation settings in
``eval``, the budget in ``budget``, the adapter in ``moe.config``, all with the helpers
of :mod:`guilomo.utils.checks`. This module holds what both stages share and the order
the checks run in, :func:`validate_stage`:

1. the values both stages read (seed, layers, backbone targets, task datamodule,
   trainer, adapter, budget), then the stage's own values;
2. the output folder and the resume checkpoint;
3. on a weight-less copy of the backbone (``backbone_skeleton``: the module tree on
   the ``meta`` device, built from the model config alone), the layers, then the
   stage's own checks (allocation, budget, memory), then the checkpoint's fingerprint.

A typo costs seconds, not a model load plus a zero-shot evaluation. Config errors are
:class:`~guilomo.utils.checks.ConfigError`; allocation and budget errors keep their own
types, prefixed with the key they came from. This module imports no stage: a stage
hands its checks in as a :class:`StageChecks`.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig
from torch import nn

from guilomo.allocation import AllocationError
from guilomo.backbone import backbone_skeleton
from guilomo.budget import check_config as check_budget
from guilomo.data.checks import check_task_data
from guilomo.moe import LoraMoEConfig, find_targets
from guilomo.rundir import claim
from guilomo.utils.checks import (
    ConfigError,
    check_bool,
    check_int,
    check_known,
    check_real,
    get,
    is_int,
)

BYTES_PER_TRAINABLE = 16  # fp32 weight + gradient + two Adam moments
MEMORY_SHARE = 0.9  # the adapter's state may use at most this share of the device memory
FINGERPRINT = "guilomo"  # checkpoint key holding what the run that wrote it was


@dataclass(frozen=True)
class StageChecks:
    """What one stage checks, handed to :func:`validate_stage`.

    ``values(cfg)`` checks the stage's own settings and returns what the stage wants
    back (e.g. its validated settings); ``model(cfg, values, skeleton, targets)`` runs
    the checks that need the module tree and returns the fingerprint a resume
    checkpoint must match. ``result`` is the file a finished run leaves in its folder,
    ``dirs`` and ``files`` what else the run writes there.
    """

    name: str
    result: str
    dirs: tuple[str, ...]
    files: tuple[str, ...]
    values: Callable[[DictConfig], Any]
    model: Callable[[DictConfig, Any, nn.Module, dict], dict]
    scalars: tuple[str, ...] = ()  # the scalars it logs (fnmatch patterns): optimized_metric


def validate_stage(cfg: DictConfig, stage: StageChecks) -> Any:
    """Every check of ``stage`` that needs no weights; raises before the backbone loads.
    Returns what ``stage.values`` returned."""
    check_common(cfg)
    check_optimized_metric(get(cfg, "optimized_metric", None), stage.scalars)
    values = stage.values(cfg)
    check_output_dir(cfg, stage.result, stage.dirs, stage.files)
    meta = load_checkpoint_meta(cfg, stage.name)
    model = skeleton(cfg)
    if model is None:  # the weights are needed even for the shapes: the run checks after loading
        check_fingerprint(cfg, meta, {"backbone": get(cfg, "backbone.id")})
        return values
    targets = check_targets(cfg, model)
    check_fingerprint(cfg, meta, stage.model(cfg, values, model, targets))
    return values


# -- the values both stages read ------------------------------------------------------------
# the top-level keys of train.py and search.py configs (conf/train.yaml, conf/search.yaml
# and what their groups and experiment files add); anything else is a typo
TOP_KEYS = (
    "adapter", "allocation", "backbone", "budget", "callbacks", "chain", "ckpt_path",
    "eval", "gradient_checkpointing", "layers", "logger", "optim", "optimized_metric",
    "paths", "save_adapter", "search", "searched", "seed", "sparse_logits", "task",
    "task_name", "trainer",
)  # fmt: skip


def check_common(cfg: DictConfig) -> None:
    check_known("", list(cfg.keys()), TOP_KEYS)
    check_int("seed", get(cfg, "seed"))
    check_bool("gradient_checkpointing", get(cfg, "gradient_checkpointing", False))
    check_int(
        "backbone.loader.num_layers", get(cfg, "backbone.loader.num_layers", None), 1, none_ok=True
    )
    targets = get(cfg, "backbone.target_modules")
    if not (isinstance(targets, str) and targets) and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        raise ConfigError(
            f"backbone.target_modules={targets!r} must be a list of module-name suffixes "
            "(e.g. [q_proj, v_proj]) or a regex string"
        )
    layers = get(cfg, "layers", None)
    if layers is not None:
        if not isinstance(layers, list) or not layers or not all(is_int(i) for i in layers):
            raise ConfigError(f"layers={layers!r} must be a list of decoder-layer indices or null")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layers={layers} lists a layer twice; list each index once")
    dm = "task.datamodule"
    for key in ("batch_size", "eval_batch_size", "cutoff_len"):
        check_int(f"{dm}.{key}", get(cfg, f"{dm}.{key}"), 1)
    check_int(f"{dm}.num_workers", get(cfg, f"{dm}.num_workers", 0), 0)
    for key in ("max_train_examples", "max_test_examples"):
        check_int(f"{dm}.{key}", get(cfg, f"{dm}.{key}", None), 1, none_ok=True)
    for key in ("val_size", "test_size"):
        check_real(f"{dm}.{key}", get(cfg, f"{dm}.{key}", 0), lo=0)
    check_trainer(cfg)
    LoraMoEConfig.from_config(get(cfg, "adapter"))
    check_budget(get(cfg, "budget", None))
    splits = [get(cfg, f"{dm}.train_split", "train")]
    splits += [
        s for s in (get(cfg, f"{dm}.val_split", None), get(cfg, f"{dm}.test_split", None)) if s
    ]
    check_task_data(get(cfg, f"{dm}.task"), get(cfg, f"{dm}.task_kwargs", None), splits)


def check_optimized_metric(name, patterns: tuple[str, ...]) -> None:
    """``optimized_metric`` names a scalar the stage logs (checked before the run, not after)."""
    if name is None or not patterns:
        return
    if not isinstance(name, str) or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
        raise ConfigError(
            f"optimized_metric={name!r} is not a scalar this stage logs: choose one matching "
            f"{', '.join(patterns)}"
        )


def check_trainer(cfg: DictConfig) -> None:
    trainer = get(cfg, "trainer", {}) or {}
    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    check_known("trainer", [k for k in trainer if not str(k).startswith("_")], known)
    accelerator = str(get(cfg, "trainer.accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use "
            "trainer=cpu (or run on a GPU machine)"
        )
    steps, epochs = get(cfg, "trainer.max_steps", -1), get(cfg, "trainer.max_epochs", None)
    check_int("trainer.max_steps", steps, -1, none_ok=True)
    check_int("trainer.max_epochs", epochs, -1, none_ok=True)
    if steps == 0 or epochs == 0:
        key = "trainer.max_steps" if steps == 0 else "trainer.max_epochs"
        raise ConfigError(
            f"{key}=0 trains nothing (the result would be the untrained model); set it >= 1"
        )
    if steps in (None, -1) and epochs in (None, -1):
        raise ConfigError(
            "trainer.max_steps and trainer.max_epochs are both unbounded; set one of them"
        )
    check_int("trainer.accumulate_grad_batches", get(cfg, "trainer.accumulate_grad_batches", 1), 1)
    check_int("trainer.log_every_n_steps", get(cfg, "trainer.log_every_n_steps", 1), 1)
    for name in get(cfg, "callbacks", None) or {}:
        key = f"callbacks.{name}.every_n_train_steps"
        check_int(key, get(cfg, key, None), 1, none_ok=True)


# -- output folder ------------------------------------------------------------------------
def check_output_dir(
    cfg: DictConfig, result: str, dirs: tuple[str, ...], files: tuple[str, ...]
) -> Path:
    """The run folder can be written and is claimed for this run (:func:`guilomo.rundir.claim`),
    its outputs are not blocked by a file or folder of the wrong kind, and it does not
    hold another run's finished ``result`` file."""
    out = Path(get(cfg, "paths.output_dir"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"paths.output_dir={out} cannot be written ({e.strerror}): choose a writable "
            "hydra.run.dir (or paths.output_dir)"
        ) from e
    claim(out)  # no other live run may write here (a no-op when Hydra's callback claimed it)
    for name in dirs:
        if (out / name).exists() and not (out / name).is_dir():
            raise ConfigError(
                f"{out / name} is a file but the run writes a folder there: move it away"
            )
    for name in files:
        if (out / name).is_dir():
            raise ConfigError(
                f"{out / name} is a folder but the run writes a file there: move it away"
            )
    if (out / result).is_file() and get(cfg, "ckpt_path", None) is None:
        raise ConfigError(
            f"{out} already holds a finished run ({result}); this run would overwrite it: "
            "leave hydra.run.dir at its default (a new folder per run) or pick a new one"
        )
    return out


# -- resume checkpoint ----------------------------------------------------------------------
def load_checkpoint_meta(cfg: DictConfig, stage: str) -> dict | None:
    """The resume checkpoint's fingerprint (``None`` without ``ckpt_path``); the file must
    exist, load, and come from this stage."""
    path = get(cfg, "ckpt_path", None)
    if path is None:
        return None
    p = Path(str(path))
    if not p.is_file():
        raise ConfigError(
            f"ckpt_path={p} is not a file: pass <run>/checkpoints/last.ckpt of the run to resume"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(
            f"ckpt_path={p} cannot be read ({type(e).__name__}: {e}); it is truncated or not a "
            "Lightning checkpoint: resume from another checkpoint or start a new run"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(
            f"ckpt_path={p} is not a Lightning checkpoint (no state_dict/global_step)"
        )
    meta = ckpt.get(FINGERPRINT)
    if not isinstance(meta, dict):
        raise ConfigError(
            f"ckpt_path={p} was not written by a guilomo {stage} run (no '{FINGERPRINT}' entry): "
            f"resume from <run>/checkpoints/last.ckpt of a {stage} run"
        )
    if meta.get("stage") != stage:
        raise ConfigError(
            f"ckpt_path={p} comes from a {meta.get('stage')} run, not a {stage} run: resume "
            f"{meta.get('stage')}.py with it, or pass a {stage} checkpoint"
        )
    return meta


def check_fingerprint(cfg: DictConfig, meta: dict | None, expected: dict) -> None:
    """Raise unless the checkpoint was written for the same backbone, modules and sizes."""
    if meta is None:
        return
    for key, value in expected.items():
        if key in meta and value is not None and meta[key] != value:
            raise ConfigError(
                f"ckpt_path={get(cfg, 'ckpt_path')} does not belong to this run: its {key} "
                f"differs ({_short(meta.get(key))} vs {_short(value)}); resume with the same "
                "backbone, layers, allocation and adapter settings as the run that wrote it"
            )


def _short(v) -> str:
    s = repr(v)
    return s if len(s) < 80 else s[:77] + "..."


# -- the backbone, without weights -------------------------------------------------------------
def skeleton(cfg: DictConfig):
    """The backbone's module tree on the meta device (None when it needs the weights)."""
    spec = {k: v for k, v in get(cfg, "backbone.loader").items() if not k.startswith("_")}
    name = spec.pop("name", None)
    try:
        return backbone_skeleton(name, **spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"backbone.loader: {e}") from e


def check_targets(cfg: DictConfig, model) -> dict:
    n = int(model.config.num_hidden_layers)
    layers = get(cfg, "layers", None)
    bad = [i for i in layers or [] if not 0 <= i < n]
    if bad:
        raise ConfigError(
            f"layers={layers}: {bad} not in the backbone's decoder layers 0..{n - 1}; "
            f"list indices below {n} (or raise backbone.loader.num_layers)"
        )
    try:
        return find_targets(model, get(cfg, "backbone.target_modules"), layers)
    except AllocationError as e:
        raise ConfigError(f"backbone.target_modules / layers: {e}") from e


def check_memory(params: int, what: str, fix: str) -> None:
    """Raise when the trainable state of ``params`` parameters cannot fit in memory."""
    need = params * BYTES_PER_TRAINABLE
    have = device_memory()
    if need > MEMORY_SHARE * have:
        raise ConfigError(
            f"{what} has {params:,} trainable parameters, ~{need / 2**30:,.1f} GiB with gradients "
            f"and optimiser state, more than this machine's {have / 2**30:.1f} GiB: {fix}"
        )


def device_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def prefixed(key: str, fn: Callable, *args, **kwargs):
    """``fn(...)``, re-raising its allocation/budget error prefixed with the config key."""
    try:
        return fn(*args, **kwargs)
    except AllocationError as e:
        raise type(e)(f"{key}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from e
