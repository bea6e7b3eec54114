"""The LoRA-MoE adapter: config, layer, injection into a backbone, save / load."""

from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import (
    adapter_modules,
    aux_loss,
    find_targets,
    inject_adapter,
    module_shapes,
    trainable_parameters,
)
from guilomo.moe.io import load_adapter, save_adapter
from guilomo.moe.layer import LoraMoELinear, RoutingContext

__all__ = [
    "LoraMoEConfig",
    "LoraMoELinear",
    "RoutingContext",
    "adapter_modules",
    "aux_loss",
    "find_targets",
    "inject_adapter",
    "load_adapter",
    "module_shapes",
    "save_adapter",
    "trainable_parameters",
]
