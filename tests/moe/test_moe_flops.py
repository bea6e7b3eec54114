"""Deterministic companions of the benchmark: FLOPs and saved activations of one layer.

Formulas (docs/performance.md), per token, forward + backward, input requiring
grad, frozen base (no weight gradient):

- base:   4 d_in d_out  (y = W0 x, and dx = W0^T dy);
- masked (dense) LoRA-MoE: + 6 (d_in + d_out) R + 6 N d_in  (R = sum r_i; A, B and the
  router each cost a forward GEMM, a grad-input GEMM and a grad-weight GEMM);
- loop (sparse top-k): + 6 (d_in + d_out) * (ranks of the k experts a token visits) + 6 N d_in.

``FlopCounterMode`` counts matrix products only; elementwise work (softmax, gates) is
outside both the formula and the count.

Saved activations: bytes of the tensors autograd keeps for backward, counted once per
storage, *excluding* the layer input x (which the frozen base saves anyway) and the
weights (parameters and buffers); dropout is 0 (with dropout, its d_in-wide output
would be saved too, like a second x). The dense form keeps about 3R + 2N floats per
token: x A^T, the T x R gate and their product (3R), the router probabilities (N)
and the top-k ids / weights (~N at k = 2).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from guilomo.moe import LoraMoEConfig, LoraMoELinear


def layer(ranks, top_k, d_in, d_out, impl="masked", seed=0):
    torch.manual_seed(seed)
    m = LoraMoELinear(
        nn.Linear(d_in, d_out, bias=False), ranks, top_k, LoraMoEConfig(dropout=0.0, impl=impl)
    )
    with torch.no_grad():
        nn.init.normal_(m.lora_B, std=0.1)
        if m.router is not None:
            nn.init.normal_(m.router)
    return m.train()


def count_flops(module, x, gy) -> int:
    x = x.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        module(x).backward(gy)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "ranks, top_k, d_in, d_out",
    [
        ([8] * 8, 2, 96, 80),
        ([8, 3, 5, 1, 7, 2], 2, 64, 112),
        ([6, 2, 4], 1, 48, 48),
        ([4], 1, 40, 56),
    ],
)
def test_masked_flops_match_the_dense_formula(ranks, top_k, d_in, d_out):
    T, N, R = 384, len(ranks), sum(ranks)
    g = torch.Generator().manual_seed(0)
    x, gy = torch.randn(T, d_in, generator=g), torch.randn(T, d_out, generator=g)
    base = nn.Linear(d_in, d_out, bias=False).requires_grad_(False)
    assert count_flops(base, x, gy) == T * 4 * d_in * d_out
    router = 6 * N * d_in if N > 1 else 0
    formula = T * (4 * d_in * d_out + 6 * (d_in + d_out) * R + router)
    counted = count_flops(layer(ranks, top_k, d_in, d_out), x, gy)
    assert abs(counted - formula) <= 0.01 * formula, (counted, formula)


def test_loop_flops_match_the_sparse_formula():
    ranks, top_k, d_in, d_out, T = [8, 3, 5, 1, 7, 2], 2, 64, 112, 384
    g = torch.Generator().manual_seed(1)
    x, gy = torch.randn(T, d_in, generator=g), torch.randn(T, d_out, generator=g)
    loop = layer(ranks, top_k, d_in, d_out, impl="loop")
    _, top_i, _ = loop.route(x, None)
    visited = int(torch.tensor(ranks)[top_i].sum())  # ranks of the experts each token visits
    formula = T * 4 * d_in * d_out + 6 * (d_in + d_out) * visited + T * 6 * len(ranks) * d_in
    counted = count_flops(loop, x, gy)
    assert abs(counted - formula) <= 0.01 * formula, (counted, formula)
    assert counted < count_flops(layer(ranks, top_k, d_in, d_out), x, gy)


def saved_floats_per_token(module, x) -> float:
    """Bytes saved for backward / (4 T), one count per storage, without x and weights."""
    x = x.detach().clone().requires_grad_(True)
    excluded = {x.untyped_storage().data_ptr()}
    excluded |= {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in excluded:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.sum().backward()  # the graph is usable
    return sum(storages.values()) / 4 / x.shape[0]


def test_saved_activations_of_the_masked_form():
    N, r, k, d, T = 8, 8, 2, 512, 256
    R = N * r
    x = torch.randn(T, d, generator=torch.Generator().manual_seed(2))
    masked = saved_floats_per_token(layer([r] * N, k, d, d), x)
    assert abs(masked - (3 * R + 2 * N)) <= 0.10 * (3 * R + 2 * N), masked
    loop = saved_floats_per_token(layer([r] * N, k, d, d, impl="loop"), x)
    assert loop > 2 * k * d  # gathers of x and per-expert outputs: ~k (d_in + d_out)
    assert masked * 8 < loop, (masked, loop)


def test_saved_activations_heterogeneous_ranks():
    ranks, k, d, T = [8, 1, 6, 3, 8, 2, 4, 8], 2, 128, 200
    R, N = sum(ranks), len(ranks)
    x = torch.randn(T, d, generator=torch.Generator().manual_seed(3))
    masked = saved_floats_per_token(layer(ranks, k, d, d), x)
    assert abs(masked - (3 * R + 2 * N)) <= 0.10 * (3 * R + 2 * N), masked


def test_saved_activations_bf16_keep_no_fp32_copy_of_x():
    # fp32 router logits from a bf16 x must not keep x.float() (d_in floats per token)
    N, r, k, d, T = 8, 8, 2, 512, 256
    x = torch.randn(T, d, generator=torch.Generator().manual_seed(4)).bfloat16()
    saved = saved_floats_per_token(layer([r] * N, k, d, d).to(torch.bfloat16), x)
    assert saved < 3 * N * r + 2 * N, saved  # T x R tensors are bf16: about half of fp32


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_fp32_router_logits_are_exact(w_dtype):
    from guilomo.moe.layer import _Fp32Linear

    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 32, generator=g).bfloat16().requires_grad_(True)
    w = torch.randn(6, 32, generator=g).to(w_dtype).requires_grad_(True)
    gz = torch.randn(64, 6, generator=g)
    z = _Fp32Linear.apply(x, w)
    assert z.dtype == torch.float32
    gx, gw = torch.autograd.grad(z, (x, w), gz)
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    z2 = torch.nn.functional.linear(x2.float(), w2.float())  # plain autograd
    gx2, gw2 = torch.autograd.grad(z2, (x2, w2), gz)
    assert torch.equal(z, z2) and torch.equal(gx, gx2) and torch.equal(gw, gw2)
    assert gx.dtype == torch.bfloat16 and gw.dtype == w_dtype
