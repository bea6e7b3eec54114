"""guilomo: GSV-guided search of LoRA-MoE expert counts and ranks, and fine-tuning with them.

Public API::

    from guilomo import Allocation, LoraMoEConfig, inject_adapter, save_adapter, load_adapter
    model, tokenizer = guilomo.from_pretrained("<run>/adapter")   # ready for model.generate

Commands for a trained adapter: ``python -m guilomo.generate``, ``python -m
guilomo.export_peft``, ``python -m guilomo.merge``, ``python -m guilomo.push``.
"""

from guilomo.allocation import Allocation, AllocationError, ModuleAllocation
from guilomo.moe import (
    LoraMoEConfig,
    adapter_modules,
    aux_loss,
    find_targets,
    inject_adapter,
    load_adapter,
    save_adapter,
)
from guilomo.pretrained import from_pretrained

__all__ = [
    "Allocation",
    "AllocationError",
    "ModuleAllocation",
    "LoraMoEConfig",
    "adapter_modules",
    "aux_loss",
    "find_targets",
    "from_pretrained",
    "inject_adapter",
    "load_adapter",
    "save_adapter",
]
