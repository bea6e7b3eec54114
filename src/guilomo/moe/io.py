"""Save and load a trained LoRA-MoE adapter.

A saved adapter is a folder with:

- ``adapter_config.json``: ``{"format", "peft_type": "GUILOMO_LORA_MOE", "base_model"
  (a Hub id), "backbone" (how to rebuild the base, and its weights' checksum: see
  :mod:`guilomo.moe.provenance`), "lora": LoraMoEConfig, "allocation", "task"}``. Its
  own ``peft_type`` keeps peft from reading it as a plain LoRA (peft stops with
  ``KeyError: 'GUILOMO_LORA_MOE'``); a peft folder given to :func:`load_adapter` is
  refused, naming the peft call that loads it.
- ``adapter_model.safetensors``: per-expert tensors named by module path and expert index,
  ``<module>.experts.<i>.lora_A`` (r_i x d_in), ``<module>.experts.<i>.lora_B``
  (d_out x r_i) and ``<module>.router`` (N x d_in, only when N > 1). Its metadata
  holds the ``record`` of what the config said the weights compute (alpha, scaling,
  top-k, ranks, base checksum): a config edited after saving is refused.
- ``README.md``: the model card (:mod:`guilomo.moe.card`); the tokenizer's files when
  one was given.

Loading checks every key and shape strictly and says what does not match, then the
record, then the base weights' checksum. Folders of format ``guilomo.adapter/1``
(no record, no checksum, an alias as base model) still load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from guilomo.allocation import Allocation, AllocationError, no_duplicate_keys
from guilomo.moe.card import CARD_FILE, adapter_card
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import CONTEXT_ATTR, adapter_modules, inject_adapter
from guilomo.moe.provenance import CHECKSUM_RULE, base_checksum, check_base
from guilomo.utils.io import atomic_write, atomic_write_text

FORMAT = "guilomo.adapter/2"
READABLE = ("guilomo.adapter/1", FORMAT)
PEFT_TYPE = "GUILOMO_LORA_MOE"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_LOAD = "peft.PeftModel.from_pretrained(<its base model>, <folder>)"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-expert tensors of every adapted module (contiguous copies, ready to save)."""
    out = {}
    for name, m in adapter_modules(model).items():
        for i, s in enumerate(m.expert_slices()):
            out[f"{name}.experts.{i}.lora_A"] = m.lora_A[s].detach().contiguous().clone()
            out[f"{name}.experts.{i}.lora_B"] = m.lora_B[:, s].detach().contiguous().clone()
        if m.router is not None:
            out[f"{name}.router"] = m.router.detach().contiguous().clone()
    return out


def save_adapter(
    model: nn.Module,
    path: str | Path,
    allocation: Allocation,
    config: LoraMoEConfig,
    base_model: str | None = None,
    *,
    backbone: Mapping | None = None,
    tokenizer=None,
    task: Mapping | None = None,
) -> Path:
    """Write the adapter folder (config, weights, model card; the tokenizer if given).

    ``backbone``: :func:`guilomo.moe.provenance.backbone_record` of the loaded backbone
    (the checksum is computed here, from ``model``); ``base_model``: the base's name when
    there is no record (default: the allocation's ``meta.backbone``); ``task``: ``{id,
    template, instruction}`` of the task it was trained on (``guilomo.generate`` wraps
    prompts in it).
    """
    path = Path(path)
    _check_matches(model, allocation)
    path.mkdir(parents=True, exist_ok=True)
    checksum = base_checksum(model)
    backbone = {**(backbone or {}), "checksum": checksum, "checksum_rule": CHECKSUM_RULE}
    meta = {
        "format": FORMAT,
        "peft_type": PEFT_TYPE,
        "base_model": backbone.get("hub_id") or base_model or allocation.meta.get("backbone"),
        "backbone": backbone,
        "lora": config.to_dict(),
        "allocation": allocation.to_dict(),
        "task": dict(task) if task else None,
    }
    tensors = adapter_state_dict(model)
    record = json.dumps(weights_record(allocation, config, checksum), sort_keys=True)
    atomic_write(
        path / WEIGHTS_FILE,
        lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "record": record}),
    )
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=1) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    save_model_card(path)
    return path


def save_model_card(path: str | Path, metrics: Mapping | None = None) -> Path:
    """(Re)write the folder's ``README.md`` from its config and the test ``metrics``."""
    path = Path(path)
    _, _, meta = read_adapter_config(path)
    return atomic_write_text(path / CARD_FILE, adapter_card(meta, metrics))


def weights_record(allocation: Allocation, config: LoraMoEConfig, checksum: str | None) -> dict:
    """What the weights compute, as the config says it (stored beside the weights)."""
    return {
        "alpha": float(config.alpha),
        "scaling": config.scaling,
        "top_k": allocation.top_k,
        "modules": {
            n: [list(m.ranks), allocation.top_k_of(n)] for n, m in allocation.modules.items()
        },
        "base_checksum": checksum,
    }


def _check_matches(model: nn.Module, allocation: Allocation) -> None:
    """Raise unless the model's adapter has exactly the modules and ranks of ``allocation``
    (the saved config must describe the saved weights)."""
    layers = adapter_modules(model)
    if not layers:
        raise AllocationError("the model has no guilomo adapter to save; call inject_adapter first")
    diff = sorted(set(layers) ^ set(allocation.modules))
    diff += sorted(
        n
        for n in set(layers) & set(allocation.modules)
        if tuple(layers[n].ranks) != allocation.modules[n].ranks
        or layers[n].top_k != allocation.top_k_of(n)
    )
    if diff:
        raise AllocationError(
            f"the model's adapter does not match the allocation to save with it (e.g. {diff[:3]}): "
            "pass the allocation the adapter was injected with"
        )


def read_adapter_config(path: str | Path) -> tuple[Allocation, LoraMoEConfig, dict]:
    """``(allocation, lora config, the whole config)`` of an adapter folder, validated."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{cfg_file} not found: pass the folder written by save_adapter / train.py"
        )
    try:
        meta = json.loads(cfg_file.read_text(), object_pairs_hook=no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, AllocationError) as e:
        raise AllocationError(f"{cfg_file} is corrupt ({e}); re-save the adapter") from e
    if not isinstance(meta, dict):
        raise AllocationError(f"{cfg_file}: unsupported format {type(meta).__name__!r}")
    peft_type = meta.get("peft_type")
    if "format" not in meta and isinstance(peft_type, str):
        raise AllocationError(
            f"{cfg_file} is a peft {peft_type} adapter, not a guilomo LoRA-MoE: load it "
            f"with {PEFT_LOAD}"
        )
    if meta.get("format") not in READABLE:
        raise AllocationError(
            f"{cfg_file}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    if meta["format"] == FORMAT and peft_type != PEFT_TYPE:
        raise AllocationError(
            f"{cfg_file}: peft_type is {peft_type!r}, but a guilomo adapter's is {PEFT_TYPE!r} "
            "(the config was edited); restore it or re-save the adapter"
        )
    missing = [k for k in ("allocation", "lora") if k not in meta]
    if missing:
        raise AllocationError(f"{cfg_file} lacks {missing}; re-save the adapter")
    for key in ("backbone", "task"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise AllocationError(f"{cfg_file}: {key!r} must be an object, got {meta[key]!r}")
    checksum = (meta.get("backbone") or {}).get("checksum")
    if checksum is not None and not isinstance(checksum, str):
        raise AllocationError(f"{cfg_file}: backbone.checksum must be a string, got {checksum!r}")
    try:
        config = LoraMoEConfig(**meta["lora"])
    except (TypeError, ValueError) as e:
        raise AllocationError(f"{cfg_file}: invalid 'lora' settings ({e})") from e
    try:
        allocation = Allocation.from_dict(meta["allocation"])
    except AllocationError as e:
        raise AllocationError(f"{cfg_file}: {e}") from e
    return allocation, config, meta


def expected_shapes(model: nn.Module, allocation: Allocation) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the tensors an adapter of ``allocation`` on ``model`` must have
    (computed from the model's linear layers, before anything is injected)."""
    modules = dict(model.named_modules())
    allocation.check_modules(n for n, m in modules.items() if isinstance(m, nn.Linear))
    out: dict[str, tuple[int, ...]] = {}
    for name, spec in allocation.modules.items():
        d_in, d_out = modules[name].in_features, modules[name].out_features
        for i, r in enumerate(spec.ranks):
            out[f"{name}.experts.{i}.lora_A"] = (r, d_in)
            out[f"{name}.experts.{i}.lora_B"] = (d_out, r)
        if spec.experts > 1:
            out[f"{name}.router"] = (spec.experts, d_in)
    return out


def read_adapter_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of the folder's weights file."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: pass the folder written by save_adapter / train.py"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as e:
        raise AllocationError(
            f"{weights} is corrupt or truncated ({e}); re-save the adapter"
        ) from e


def check_record(
    path: Path, allocation: Allocation, config: LoraMoEConfig, meta: dict, stored: dict
) -> None:
    """Raise, naming the fields, if the config says something else than it did when the
    weights were saved (no record, as in a format-1 folder: nothing to compare)."""
    if "record" not in stored:
        return
    try:
        saved = json.loads(stored["record"])
    except json.JSONDecodeError as e:
        raise AllocationError(f"{path / WEIGHTS_FILE}: unreadable metadata ({e})") from e
    saved = saved if isinstance(saved, dict) else {}
    now = weights_record(allocation, config, (meta.get("backbone") or {}).get("checksum"))
    diff = [k for k in now if k != "modules" and saved.get(k) != now[k]]
    modules = saved.get("modules") if isinstance(saved.get("modules"), dict) else {}
    names = sorted(set(now["modules"]) | set(modules))
    diff += [n for n in names if modules.get(n) != now["modules"].get(n)][:3]
    if diff:
        raise AllocationError(
            f"{path / CONFIG_FILE} was edited after the weights were saved: {diff} differ "
            f"from the record in {WEIGHTS_FILE}; restore the config or re-save the adapter"
        )


def load_adapter(
    model: nn.Module, path: str | Path, allow_base_mismatch: bool = False
) -> nn.Module:
    """Inject the saved adapter into a freshly loaded backbone and load its weights.

    Every file, key and shape, the config against the weights' record, and the
    backbone's weights against the recorded checksum are checked before the model is
    touched: on any error the backbone is left as it was. ``allow_base_mismatch=True``
    turns the checksum error into a warning.
    """
    path = Path(path)
    if hasattr(model, CONTEXT_ATTR):
        raise ValueError("this model already has a guilomo adapter; load a fresh backbone")
    allocation, config, meta = read_adapter_config(path)
    tensors, stored = read_adapter_weights(path)
    check_tensors(expected_shapes(model, allocation), tensors)
    check_record(path, allocation, config, meta, stored)
    check_base(meta.get("backbone") or {}, model, allow_base_mismatch, str(path))
    inject_adapter(model, allocation, config)
    load_adapter_weights(model, tensors)
    return model


def check_tensors(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> None:
    """Raise, naming the keys, unless ``tensors`` has exactly the expected keys and shapes,
    a floating-point dtype and only finite values."""
    expected = {k: tuple(v) for k, v in expected.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k])
    if missing or unexpected or bad:
        bad = [f"{k} {tuple(tensors[k].shape)} (model needs {expected[k]})" for k in bad]
        detail = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", bad),
            )
            if keys
        )
        raise AllocationError(
            f"adapter weights do not match the model's adapter ({detail}): the weights were "
            "saved for another allocation or backbone; load them with the adapter_config.json "
            "saved beside them onto the same backbone"
        )
    not_float = sorted(k for k, t in tensors.items() if not t.is_floating_point())
    if not_float:
        dtypes = {str(tensors[k].dtype) for k in not_float}
        raise AllocationError(
            f"adapter weights must be floating point; {len(not_float)} tensor(s) are {sorted(dtypes)}, "
            f"e.g. {not_float[:3]}: re-save the adapter from a trained model"
        )
    bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise AllocationError(
            f"adapter weights hold NaN or Inf in {len(bad)} tensor(s), e.g. {bad[:3]}: the run "
            "that saved them diverged; retrain (e.g. with a lower optim.lr)"
        )


@torch.no_grad()
def load_adapter_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy per-expert tensors into the model's adapter, with strict key and shape checks."""
    check_tensors({k: v.shape for k, v in adapter_state_dict(model).items()}, tensors)
    for name, m in adapter_modules(model).items():
        for i, s in enumerate(m.expert_slices()):
            m.lora_A[s].copy_(tensors[f"{name}.experts.{i}.lora_A"])
            m.lora_B[:, s].copy_(tensors[f"{name}.experts.{i}.lora_B"])
        if m.router is not None:
            m.router.copy_(tensors[f"{name}.router"])
