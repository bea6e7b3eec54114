"""Save and load a trained LoRA-MoE adapter.

A saved adapter is a folder with two files:

- ``adapter_config.json``: ``{"format", "base_model", "lora": LoraMoEConfig, "allocation": ...}``
- ``adapter_model.safetensors``: per-expert tensors named by module path and expert index,
  ``<module>.experts.<i>.lora_A`` (r_i x d_in), ``<module>.experts.<i>.lora_B``
  (d_out x r_i) and ``<module>.router`` (N x d_in, only when N > 1).

Loading checks every key and shape strictly and says what does not match.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from guilomo.allocation import Allocation, AllocationError, no_duplicate_keys
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import CONTEXT_ATTR, adapter_modules, inject_adapter
from guilomo.utils.io import atomic_write, atomic_write_text

FORMAT = "guilomo.adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


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
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``path``."""
    path = Path(path)
    _check_matches(model, allocation)
    path.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(model)
    atomic_write(
        path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT})
    )
    meta = {
        "format": FORMAT,
        "base_model": base_model or allocation.meta.get("backbone"),
        "lora": config.to_dict(),
        "allocation": allocation.to_dict(),
    }
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=1) + "\n")
    return path


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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise AllocationError(f"{cfg_file}: unsupported format {found!r}, expected {FORMAT!r}")
    missing = [k for k in ("allocation", "lora") if k not in meta]
    if missing:
        raise AllocationError(f"{cfg_file} lacks {missing}; re-save the adapter")
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


def read_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: pass the folder written by save_adapter / train.py"
        )
    try:
        return load_file(str(weights))
    except SafetensorError as e:
        raise AllocationError(
            f"{weights} is corrupt or truncated ({e}); re-save the adapter"
        ) from e


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Inject the saved adapter into a freshly loaded backbone and load its weights.

    Every file, key and shape is checked before the model is touched: on any error the
    backbone is left as it was.
    """
    path = Path(path)
    if hasattr(model, CONTEXT_ATTR):
        raise ValueError("this model already has a guilomo adapter; load a fresh backbone")
    allocation, config, _ = read_adapter_config(path)
    tensors = read_adapter_weights(path)
    check_tensors(expected_shapes(model, allocation), tensors)
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
