"""How an allocation is shown: the heatmap grid and PNG."""

import numpy as np

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.allocation_view import allocation_grid, save_heatmap


def alloc():
    return Allocation(
        {
            "model.layers.0.self_attn.q_proj": ModuleAllocation((8, 4)),
            "model.layers.0.mlp.up_proj": ModuleAllocation((2, 2, 2)),
            "model.layers.1.self_attn.q_proj": ModuleAllocation((1, 3)),
        }
    )


def test_grid_has_layers_by_module_kind():
    layers, kinds, experts, ranks = allocation_grid(alloc())
    assert layers == [0, 1] and kinds == ["q_proj", "up_proj"]
    assert experts[0].tolist() == [2, 3] and experts[1, 0] == 2 and np.isnan(experts[1, 1])
    assert ranks[0].tolist() == [6.0, 2.0] and ranks[1, 0] == 2.0


def test_heatmap_png(tmp_path):
    path = save_heatmap(alloc(), tmp_path / "h.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
