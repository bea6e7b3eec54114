"""On constructed problems the GSV steps move the allocation the way the val loss wants.

One search layer with a zero base and hand-set (frozen) experts: some rank rows /
experts bring the output towards the target, the others away from it. Only the outer
step runs (the Architect, first order, Adam on the GSVs), so the test isolates the
straight-through rule and the outer optimiser.
"""

import torch
from torch import nn

from guilomo.moe import LoraMoEConfig
from guilomo.search.architect import Architect
from guilomo.search.layer import SearchLoraMoELinear

D = 8


def layer_with(n_max, r_max, a_rows, b_cols, gsv_expert=None, gsv_rank=None):
    """A search layer with zero base, zero router (uniform routing), A/B set per rank row."""
    base = nn.Linear(D, D)
    nn.init.zeros_(base.weight)
    nn.init.zeros_(base.bias)
    cfg = LoraMoEConfig(dropout=0.0, alpha=float(r_max))  # scaling alpha / r_max = 1
    layer = SearchLoraMoELinear(base, [r_max] * n_max, n_max, cfg)
    with torch.no_grad():
        layer.router.zero_()
        layer.lora_A.copy_(torch.stack(a_rows))
        layer.lora_B.copy_(torch.stack(b_cols, dim=1))
        if gsv_expert is not None:
            layer.gsv_expert.copy_(torch.tensor(gsv_expert))
        if gsv_rank is not None:
            layer.gsv_rank.copy_(torch.tensor(gsv_rank))
    return layer


def e(i):
    return torch.eye(D)[i]


def run_outer(layer, target, steps, lr=0.01):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, D, generator=g)
    batch = {"x": x, "y": target(x)}

    def loss(b):
        return (layer(b["x"]) - b["y"]).pow(2).sum(-1).mean()

    gsv = [layer.gsv_expert, layer.gsv_rank]
    outer = torch.optim.Adam(gsv, lr=lr, betas=(0.5, 0.999))
    dummy = torch.optim.SGD([layer.lora_A], lr=0.0)
    arch = Architect([], gsv, dummy, outer, loss, loss, order="first")
    with torch.no_grad():
        start = float(loss(batch))
    for _ in range(steps):
        arch.step(batch, batch, xi=0.0)
    with torch.no_grad():
        end = float(loss(batch))
    return start, end


def test_lower_rank_chosen_when_the_extra_rank_rows_hurt():
    # rank row 0 points at the target (under-shooting it); rows 1-3 add unwanted output
    rows = [e(j) for j in range(4)] * 2
    layer = layer_with(2, 4, rows, rows, gsv_rank=[[0.0, 0.1, 0.2, 0.3]] * 2)
    assert layer.current_ranks().tolist() == [4, 4]
    start, end = run_outer(layer, lambda x: 2 * x[:, :1] * e(0), steps=40)
    assert layer.current_ranks().tolist() == [1, 1]
    assert end < 0.5 * start


def test_higher_rank_chosen_when_the_extra_rank_rows_help():
    # rows 0-1 add unwanted output, rows 2-3 point at the target: rank 2 -> rank >= 3
    rows = [e(j) for j in range(4)] * 2
    layer = layer_with(2, 4, rows, rows, gsv_rank=[[0.2, 0.3, 0.1, 0.0]] * 2)
    assert layer.current_ranks().tolist() == [2, 2]
    start, end = run_outer(layer, lambda x: 2 * (x[:, 2:3] * e(2) + x[:, 3:4] * e(3)), steps=60)
    assert min(layer.current_ranks().tolist()) >= 3
    assert end < 0.6 * start


def test_fewer_experts_chosen_when_the_last_kept_expert_hurts():
    # every expert reads x_0; experts 0 and 1 write +x_0 (the target), 2 and 3 write -x_0
    a = [e(0)] * 4
    b = [e(0), e(0), -e(0), -e(0)]
    layer = layer_with(4, 1, a, b, gsv_expert=[0.3, 0.4, 0.6, 0.0])
    assert int(layer.current_experts()) == 3
    start, end = run_outer(layer, lambda x: x[:, :1] * e(0), steps=40)
    assert int(layer.current_experts()) == 2
    assert end < 0.1 * start
