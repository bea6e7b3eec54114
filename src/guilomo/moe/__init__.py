"""The LoRA-MoE adapter: config, layer, injection into a backbone, save / load.

(``module_shapes`` lives with the parameter counts in :mod:`guilomo.allocation`; it is
exported here too, beside :func:`find_targets` whose result it reads.)
"""

from guilomo.allocation import module_shapes
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import (
    adapter_modules,
    aux_loss,
    find_targets,
    inject_adapter,
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
