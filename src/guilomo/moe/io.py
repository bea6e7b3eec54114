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
from safetensors.torch import load_file, save_file
from torch import nn

from guilomo.allocation import Allocation, AllocationError
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import adapter_modules, inject_adapter
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
    path.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(model)
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "base_model": base_model or allocation.meta.get("backbone"),
        "lora": config.to_dict(),
        "allocation": allocation.to_dict(),
    }
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=1) + "\n")
    return path


def read_adapter_config(path: str | Path) -> tuple[Allocation, LoraMoEConfig, dict]:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: pass the folder written by save_adapter / train.py")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise AllocationError(f"{cfg_file} is corrupt ({e}); re-save the adapter") from e
    if meta.get("format") != FORMAT:
        raise AllocationError(f"{cfg_file}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}")
    return Allocation.from_dict(meta["allocation"]), LoraMoEConfig(**meta["lora"]), meta


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Inject the saved adapter into a freshly loaded backbone and load its weights."""
    path = Path(path)
    allocation, config, _ = read_adapter_config(path)
    inject_adapter(model, allocation, config)
    load_adapter_weights(model, load_file(str(path / WEIGHTS_FILE)))
    return model


@torch.no_grad()
def load_adapter_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy per-expert tensors into the model's adapter, with strict key and shape checks."""
    expected = {k: v.shape for k, v in adapter_state_dict(model).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad))
            if keys
        )
        raise AllocationError(
            f"adapter weights do not match the model's adapter ({detail}): the weights were "
            "saved for another allocation or backbone; load them with the adapter_config.json "
            "saved beside them onto the same backbone"
        )
    for name, m in adapter_modules(model).items():
        for i, s in enumerate(m.expert_slices()):
            m.lora_A[s].copy_(tensors[f"{name}.experts.{i}.lora_A"])
            m.lora_B[:, s].copy_(tensors[f"{name}.experts.{i}.lora_B"])
        if m.router is not None:
            m.router.copy_(tensors[f"{name}.router"])
