"""Check a run's config before any model loads; every error names the key and the fix.

``validate_train(cfg)`` and ``validate_search(cfg)`` are the first thing the run
functions do. They check the type and range of every value the stage reads, options
that contradict each other, the output folder and the resume checkpoint; then, on a
weight-less copy of the backbone (``backbone_skeleton``: the module tree on the
``meta`` device, built from the model config alone), the layers, the allocation, the
budget and the memory the adapter will need. A typo costs seconds, not a model load
plus a zero-shot evaluation. Config errors are :class:`ConfigError`; allocation and
budget errors keep their own types, prefixed with the key they came from.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from guilomo.allocation import AllocationError
from guilomo.budget import KINDS as BUDGET_KINDS
from guilomo.budget import Budget
from guilomo.rundir import claim

BYTES_PER_TRAINABLE = 16  # fp32 weight + gradient + two Adam moments
MEMORY_SHARE = 0.9  # the adapter's state may use at most this share of the device memory
RESULT_FILES = {"train": "metrics.json", "search": "allocation.json"}
FINGERPRINT = "guilomo"
# allocation options (conf/allocation/*.yaml) that are counts
ALLOCATION_INTS = (
    "experts",
    "rank",
    "top_k",
    "total",
    "n_min",
    "n_max",
    "r_min",
    "r_max",
    "num_layers",
    "k",
    "seed",
)  # checkpoint key holding what the run that wrote it was


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and how to fix it."""


_MISSING = object()


def get(cfg: DictConfig, key: str, default: Any = _MISSING) -> Any:
    """``cfg[key]`` (dotted), resolved to plain Python; a missing mandatory value raises."""
    try:
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception as e:  # an interpolation that does not resolve, a '???' value
        raise ConfigError(f"{key}: {e}; set {key}=<value>") from e
    if node is _MISSING:
        if default is _MISSING:
            raise ConfigError(f"{key} is not set; set {key}=<value>")
        return default
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


# -- value checks ---------------------------------------------------------------------------
def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(key: str, v, lo: int | None = None, hi: int | None = None, none_ok=False) -> None:
    if v is None and none_ok:
        return
    rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        null = " (or null)" if none_ok else ""
        raise ConfigError(f"{key}={v!r} must be an integer{rng}{null}; set {key}=<integer>")


def check_real(key: str, v, lo: float | None = None, positive=False, none_ok=False) -> None:
    if v is None and none_ok:
        return
    ok = is_real(v) and (lo is None or v >= lo) and (not positive or v > 0)
    if not ok:
        what = "> 0" if positive else (f">= {lo}" if lo is not None else "")
        raise ConfigError(f"{key}={v!r} must be a finite number {what}; set {key}=<number>")


def check_bool(key: str, v) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false")


def check_choice(key: str, v, allowed) -> None:
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not one of {list(allowed)}")


def check_target(key: str, target) -> object:
    """The function a config's ``_target_`` names (importable), else a ConfigError."""
    from hydra.utils import get_method

    try:
        return get_method(str(target))
    except Exception as e:  # hydra raises ImportError / ValueError variants
        raise ConfigError(
            f"{key}={target!r} is not a function guilomo can import ({e}); pick a file of "
            "conf/allocation/ (e.g. allocation=uniform) or name an importable function"
        ) from e


def check_fields(prefix: str, cls, data: dict) -> None:
    """Every value of ``data`` has the type the settings dataclass ``cls`` annotates (an int
    is not a float, a bool is neither, numbers are finite), recursing into nested ones.
    Run before constructing ``cls``, whose own checks then see well-typed values."""
    hints = typing.get_type_hints(cls)
    for name, v in data.items():
        if name not in hints:
            continue  # unknown keys: the dataclass's own error lists the known ones
        key, hint = f"{prefix}.{name}", hints[name]
        args = typing.get_args(hint)
        none_ok = type(None) in args
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            base = next(a for a in args if a is not type(None))
        if is_dataclass(base):
            if isinstance(v, dict):
                check_fields(key, base, v)
        elif base is int:
            check_int(key, v, none_ok=none_ok)
        elif base is float:
            check_real(key, v, none_ok=none_ok)
        elif base is bool:
            check_bool(key, v)
        elif base is str:
            if not (isinstance(v, str) or (v is None and none_ok)):
                raise ConfigError(f"{key}={v!r} must be a string")
        elif typing.get_origin(base) is tuple:
            if not (isinstance(v, (list, tuple)) and all(is_real(x) for x in v)):
                raise ConfigError(f"{key}={v!r} must be a list of finite numbers")


# -- groups shared by both stages --------------------------------------------------------
def check_common(cfg: DictConfig) -> None:
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
    check_adapter(cfg)
    check_budget(cfg)


def check_trainer(cfg: DictConfig) -> None:
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


def check_adapter(cfg: DictConfig):
    from guilomo.moe import LoraMoEConfig

    spec = get(cfg, "adapter")
    check_fields("adapter", LoraMoEConfig, spec)
    try:
        return LoraMoEConfig(**spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"adapter: {e}; fix the adapter.* value") from e


def check_budget(cfg: DictConfig) -> None:
    """The budget's kind and value (the full :meth:`Budget.from_config`, which may read a
    file to match, runs once the module shapes are known)."""
    spec = get(cfg, "budget", None) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"budget={spec!r} must be a config group (budget=params budget.value=N)")
    kind = spec.get("kind", "none")
    check_choice("budget.kind", kind, (*BUDGET_KINDS, "match"))
    if kind != "none" and spec.get("path") is None:
        check_int("budget.value", spec.get("value"), 1)


# -- output folder ------------------------------------------------------------------------
def check_output_dir(
    cfg: DictConfig, stage: str, dirs: tuple[str, ...], files: tuple[str, ...]
) -> Path:
    """The run folder can be written and is claimed for this run (:func:`guilomo.rundir.claim`),
    its outputs are not blocked by a file or folder of the wrong kind, and it does not
    hold another run's finished result."""
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
    result = out / RESULT_FILES[stage]
    if result.is_file() and get(cfg, "ckpt_path", None) is None:
        raise ConfigError(
            f"{out} already holds a finished run ({result.name}); this run would overwrite it: "
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
    from guilomo.backbone import backbone_skeleton

    spec = {k: v for k, v in get(cfg, "backbone.loader").items() if not k.startswith("_")}
    name = spec.pop("name", None)
    try:
        return backbone_skeleton(name, **spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"backbone.loader: {e}") from e


def check_targets(cfg: DictConfig, model) -> dict:
    from guilomo.moe import find_targets

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


# -- the fine-tune ------------------------------------------------------------------------------
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


def validate_train(cfg: DictConfig) -> None:
    """Every check of ``train.py`` that needs no weights; raises before the backbone loads."""
    from guilomo.baselines import alphalora
    from guilomo.eval.evaluator import MODES
    from guilomo.finetune.run import resolve_allocation
    from guilomo.moe import module_shapes

    check_common(cfg)
    build = check_target("allocation._target_", get(cfg, "allocation._target_"))
    spec = get(cfg, "allocation")
    for key in ALLOCATION_INTS:
        if key in spec:
            check_int(f"allocation.{key}", spec[key], 0 if key == "seed" else 1, none_ok=True)
    if "pattern" in spec and not (
        isinstance(spec["pattern"], list) and all(is_int(x) and x >= 1 for x in spec["pattern"])
    ):
        raise ConfigError(
            f"allocation.pattern={spec['pattern']!r} must be a list of expert counts >= 1"
        )
    if "beta" in spec:
        check_real("allocation.beta", spec["beta"], positive=True)
    if "path" in spec and (not isinstance(spec.get("path"), str) or spec["path"] == "???"):
        raise ConfigError(
            "allocation=file needs allocation.path=<allocation.json written by search.py>"
        )
    check_choice("eval.mode", get(cfg, "eval.mode"), MODES)
    check_int("eval.batch_size", get(cfg, "eval.batch_size"), 1)
    check_int("eval.max_new_tokens", get(cfg, "eval.max_new_tokens"), 1)
    check_int("eval.limit", get(cfg, "eval.limit", None), 1, none_ok=True)
    for key in ("eval.zero_shot", "eval.option_eos", "save_adapter", "sparse_logits"):
        check_bool(key, get(cfg, key, True))
    check_real("optim.lr", get(cfg, "optim.lr"), positive=True)
    check_real("optim.weight_decay", get(cfg, "optim.weight_decay"), lo=0)
    check_int("optim.warmup_steps", get(cfg, "optim.warmup_steps"), 0)
    check_output_dir(cfg, "train", ("adapter", "checkpoints"), ("metrics.json", "allocation.json"))
    meta = load_checkpoint_meta(cfg, "train")

    model = skeleton(cfg)
    if model is None:  # the weights are needed even for the shapes: the run checks after loading
        check_fingerprint(cfg, meta, {"backbone": get(cfg, "backbone.id")})
        return
    targets = check_targets(cfg, model)
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
    check_fingerprint(cfg, meta, train_fingerprint(cfg, n, allocation))


# -- the search -----------------------------------------------------------------------------------
def search_fingerprint(cfg: DictConfig, num_layers: int, names, settings) -> dict:
    """What a search checkpoint must match to be resumed (stored in it by the module)."""
    return {
        "stage": "search",
        "backbone": get(cfg, "backbone.id"),
        "num_layers": int(num_layers),
        "modules": list(names),
        **{
            k: getattr(settings, k) for k in ("n_max", "r_max", "top_k", "granularity", "rank_mask")
        },
        "adapter": get(cfg, "adapter"),
    }


def validate_search(cfg: DictConfig):
    """Every check of ``search.py`` that needs no weights; raises before the backbone loads.
    Returns the validated :class:`SearchSettings`."""
    from guilomo.search.config import SearchSettings
    from guilomo.search.readout import minimum_allocation

    check_common(cfg)
    raw = get(cfg, "search")
    check_fields("search", SearchSettings, raw)
    settings = prefixed("search", SearchSettings.from_dict, raw)
    check_real("search.inner.lr", settings.inner.lr, positive=True)
    check_real("search.outer.lr", settings.outer.lr, positive=True)
    check_real("search.inner.weight_decay", settings.inner.weight_decay, lo=0)
    check_real("search.outer.weight_decay", settings.outer.weight_decay, lo=0)
    check_int("search.inner.warmup_steps", settings.inner.warmup_steps, 0)
    check_real("search.inner.grad_clip", settings.inner.grad_clip, positive=True, none_ok=True)
    for part in ("inner", "outer"):
        betas = getattr(settings, part).betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"search.{part}.betas={list(betas)} must be two numbers in [0, 1)")
    if not 0 <= settings.inner.max_warmup_fraction <= 1:
        raise ConfigError("search.inner.max_warmup_fraction must be in [0, 1]")
    dm = "task.datamodule"
    if (
        settings.val_source == "heldout"
        and not get(cfg, f"{dm}.val_split", None)
        and not get(cfg, f"{dm}.val_size", 0)
    ):
        raise ConfigError(
            f"search.val_source=heldout needs a val split but {dm}.val_size=0 and "
            f"{dm}.val_split=null: set {dm}.val_size (e.g. 0.1) or search.val_source=alternate"
        )
    check_budget(cfg)
    check_output_dir(cfg, "search", ("checkpoints",), ("allocation.json", "allocation_heatmap.png"))
    meta = load_checkpoint_meta(cfg, "search")

    model = skeleton(cfg)
    if model is None:
        check_fingerprint(cfg, meta, {"backbone": get(cfg, "backbone.id")})
        return settings
    targets = check_targets(cfg, model)
    names = list(targets)
    shapes = {n: (m.in_features, m.out_features) for n, m in targets.items()}
    budget = prefixed("budget", Budget.from_config, get(cfg, "budget", None), shapes)
    minimum = minimum_allocation(names, settings.min_experts, settings.top_k)
    prefixed("budget.value", budget.check_minimum, minimum, shapes)
    n, r = settings.n_max, settings.r_max
    params = sum(n * r * (d_in + d_out) + n * d_in for d_in, d_out in shapes.values())
    check_memory(
        params,
        f"the search adapter ({len(names)} modules x {n} experts of rank {r})",
        "lower search.n_max / search.r_max, or adapt fewer layers (layers=[...])",
    )
    layers = int(model.config.num_hidden_layers)
    check_fingerprint(cfg, meta, search_fingerprint(cfg, layers, names, settings))
    return settings
