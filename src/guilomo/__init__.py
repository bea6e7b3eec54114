"""guilomo: GSV-guided search of LoRA-MoE expert counts and ranks, and fine-tuning with them.

Public API::

    from guilomo import Allocation, LoraMoEConfig, inject_adapter, save_adapter, load_adapter
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

__all__ = [
    "Allocation",
    "AllocationError",
    "ModuleAllocation",
    "LoraMoEConfig",
    "adapter_modules",
    "aux_loss",
    "find_targets",
    "inject_adapter",
    "load_adapter",
    "save_adapter",
]
