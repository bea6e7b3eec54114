"""LoRA-MoE layer: masked == loop, an independent per-token reference, peft LoRA as an
oracle for one expert, the load-balancing loss by hand, bf16, and initialisation."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from helpers import (
    TARGETS,
    input_ids,
    linear_names,
    random_allocation,
    randomize_adapter,
    tiny_llama,
)
from torch import nn

from guilomo.allocation import Allocation, ModuleAllocation, uniform
from guilomo.moe import LoraMoEConfig, LoraMoELinear, adapter_modules, aux_loss, inject_adapter


def make_layer(ranks, top_k, d_in=24, d_out=16, seed=0, cls=LoraMoELinear, **cfg) -> LoraMoELinear:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=True)
    layer = cls(base, ranks, top_k, LoraMoEConfig(**cfg))
    randomize_adapter(layer, seed=seed + 100)
    return layer


def twin(layer: LoraMoELinear, impl: str) -> LoraMoELinear:
    """A copy with the same weights that runs the other implementation."""
    other = copy.deepcopy(layer)
    other.config = LoraMoEConfig(**{**layer.config.to_dict(), "impl": impl})
    return other


def close(actual, expected, rtol=1e-5):
    atol = rtol * max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def run(layer, x, gy, seed=0, extra=()):
    """Forward + backward (output and aux loss), returns output, aux and all gradients."""
    x = x.detach().clone().requires_grad_(True)
    for p in [*layer.parameters(), *extra]:
        p.grad = None
    torch.manual_seed(seed)  # same dropout mask in both implementations
    y = layer(x)
    loss = (y * gy).sum()
    if layer.aux is not None:
        loss = loss + 3.0 * layer.aux
    loss.backward()
    grads = {"x": x.grad}
    for name in ("lora_A", "lora_B", "router"):
        p = getattr(layer, name)
        if p is not None:
            grads[name] = p.grad
    for i, t in enumerate(extra):
        grads[f"extra{i}"] = t.grad
    return y.detach(), layer.aux, grads


def assert_same(masked, loop, x, gy, extra=()):
    ym, am, gm = run(masked, x, gy, extra=extra)
    yl, al, gl = run(loop, x, gy, extra=extra)
    close(ym, yl)
    assert (am is None) == (al is None)
    if am is not None:
        close(am, al)
    assert gm.keys() == gl.keys()
    for k in gm:
        assert gm[k] is not None, k
        close(gm[k], gl[k])
    return gm


# -- 2. masked == loop ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(16))
def test_masked_equals_loop_random_allocations(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    ranks = [rng.randint(1, 8) for _ in range(n)]
    top_k = rng.randint(1, min(2, n))
    layer = make_layer(ranks, top_k, seed=seed, dropout=0.1).train()
    loop = twin(layer, "loop")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 24, generator=g)
    gy = torch.randn(3, 5, 16, generator=g)
    assert_same(layer, loop, x, gy)
    # and in eval mode (no dropout, no aux)
    assert_same(layer.eval(), loop.eval(), x, gy)


def test_masked_equals_loop_with_an_idle_expert():
    ranks, dead = [3, 5, 2, 4], 2
    layer = make_layer(ranks, 2, seed=1).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 24, generator=g)
    x[:, 0] = 3.0  # a constant feature ...
    with torch.no_grad():
        layer.router[dead].zero_()
        layer.router[dead, 0] = -50.0  # ... that pushes expert 2's logit to -150
    _, top_i, _ = layer.route(x, None)
    counts = torch.bincount(top_i.reshape(-1), minlength=4)
    assert counts[dead] == 0 and (counts[[0, 1, 3]] > 0).all()
    gy = torch.randn(40, 16, generator=g)
    grads = assert_same(layer, twin(layer, "loop"), x, gy)
    s = slice(sum(ranks[:dead]), sum(ranks[: dead + 1]))
    assert torch.count_nonzero(grads["lora_A"][s]) == 0
    assert torch.count_nonzero(grads["lora_B"][:, s]) == 0
    assert torch.count_nonzero(grads["lora_A"]) > 0


class SearchLike(LoraMoELinear):
    """What the search does: a router-logit bias (expert mask) and a per-rank gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n, R = self.num_experts, sum(self.ranks)
        bias = torch.full((n,), 0.5)
        bias[n - 2 :] = -1e4  # the last two experts are masked out
        gate = torch.ones(R)
        gate[1::3] = 1e-4  # soft rank mask
        self.bias = bias
        self.gate = (gate * torch.linspace(0.5, 1.5, R)).requires_grad_(True)

    def search_terms(self):
        return self.bias, self.gate


def test_masked_equals_loop_with_search_terms():
    ranks = [8, 3, 5, 1, 6, 2]
    layer = make_layer(ranks, 2, seed=2, cls=SearchLike, dropout=0.05).train()
    loop = twin(layer, "loop")
    loop.gate = layer.gate  # share the gate tensor: same values, one .grad
    g = torch.Generator().manual_seed(2)
    x, gy = torch.randn(4, 6, 24, generator=g), torch.randn(4, 6, 16, generator=g)
    _, top_i, _ = layer.route(x.reshape(-1, 24), layer.bias)
    assert top_i.max() < 4  # the bias really masks experts 4 and 5
    grads = assert_same(layer, loop, x, gy, extra=(layer.gate,))
    assert torch.count_nonzero(grads["extra0"]) > 0
    # the bias and the gate change the output (the hook is really used)
    plain = make_layer(ranks, 2, seed=2, dropout=0.05).eval()
    assert not torch.allclose(plain(x), layer.eval()(x))


# -- 3. independent per-token reference -----------------------------------------------------
def reference(layer: LoraMoELinear, x: torch.Tensor, alpha: float, scaling: str) -> torch.Tensor:
    """h = W0 x + sum_{i in top-k} w_i (alpha / r_i) B_i A_i x, one token at a time (fp64)."""
    ranks, k = layer.ranks, layer.top_k
    W0, b0 = layer.base.weight.detach().double(), layer.base.bias.detach().double()
    A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    A_i, B_i, start = [], [], 0
    for r in ranks:
        A_i.append(A[start : start + r])
        B_i.append(B[:, start : start + r])
        start += r
    out = []
    for xt in x.reshape(-1, x.shape[-1]).double():
        h = W0 @ xt + b0
        if len(ranks) == 1:
            chosen = [(0, 1.0)]
        else:
            z = [float(w @ xt) for w in layer.router.detach().double()]
            zmax = max(z)
            e = [math.exp(v - zmax) for v in z]
            p = [v / sum(e) for v in e]
            top = sorted(range(len(p)), key=lambda i: -p[i])[:k]
            total = sum(p[i] for i in top)
            chosen = [(i, p[i] / total) for i in top]
        for i, w in chosen:
            r = ranks[-1] if scaling == "last_expert" else ranks[i]
            h = h + w * (alpha / r) * (B_i[i] @ (A_i[i] @ xt))
        out.append(h)
    return torch.stack(out).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("impl", ["masked", "loop"])
@pytest.mark.parametrize("scaling", ["per_expert", "last_expert"])
@pytest.mark.parametrize(
    "ranks, top_k", [([4, 1, 7, 2, 8], 2), ([3, 6, 2], 1), ([5], 1), ([2, 8], 2)]
)
def test_layer_matches_per_token_reference(impl, scaling, ranks, top_k):
    alpha = 12.0
    layer = make_layer(ranks, top_k, seed=3, alpha=alpha, scaling=scaling, impl=impl).eval()
    x = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = layer(x)
    close(y.double(), reference(layer, x, alpha, scaling))


def test_last_expert_scaling_differs_from_per_expert():
    ranks = [4, 1, 7, 2]
    x = torch.randn(10, 24, generator=torch.Generator().manual_seed(0))
    per = make_layer(ranks, 2, seed=4, scaling="per_expert").eval()
    last = make_layer(ranks, 2, seed=4, scaling="last_expert").eval()
    torch.testing.assert_close(last.rank_scale, torch.full((14,), 16.0 / 2))
    assert not torch.allclose(per(x), last(x))


# -- 4. one expert, top-1 == peft LoRA ------------------------------------------------------
def test_single_expert_equals_peft_lora():
    from peft import LoraConfig, get_peft_model

    r, alpha = 4, 8
    ours = tiny_llama(seed=0)
    theirs = get_peft_model(
        copy.deepcopy(ours),
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS),
    )
    names = linear_names(ours)
    inject_adapter(
        ours, uniform(names, experts=1, rank=r, top_k=2), LoraMoEConfig(alpha=alpha, dropout=0.0)
    )
    randomize_adapter(ours, seed=7)
    adapters = adapter_modules(ours)
    assert len(adapters) == 14 and all(m.router is None and m.top_k == 1 for m in adapters.values())
    with torch.no_grad():
        for name, m in adapters.items():
            p = theirs.base_model.model.get_submodule(name)
            p.lora_A["default"].weight.copy_(m.lora_A)
            p.lora_B["default"].weight.copy_(m.lora_B)
    ids = input_ids(2, 7)
    ours.train(), theirs.train()  # dropout is 0 in both: train mode is deterministic
    lo = ours(input_ids=ids).logits
    lt = theirs(input_ids=ids).logits
    close(lo, lt)
    gy = torch.randn(lo.shape, generator=torch.Generator().manual_seed(0))
    (lo * gy).sum().backward()
    (lt * gy).sum().backward()
    for name, m in adapters.items():
        p = theirs.base_model.model.get_submodule(name)
        close(m.lora_A.grad, p.lora_A["default"].weight.grad)
        close(m.lora_B.grad, p.lora_B["default"].weight.grad)
        assert m.lora_A.grad.abs().max() > 0


def test_adapter_changes_the_logits():
    """Guard for the peft test: with a nonzero B the adapted logits differ from the base's."""
    model, base = tiny_llama(), tiny_llama()
    inject_adapter(model, random_allocation(linear_names(model), seed=1), LoraMoEConfig())
    randomize_adapter(model, seed=1)
    ids = input_ids()
    with torch.no_grad():
        assert (model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-2


# -- 5. load-balancing loss -----------------------------------------------------------------
class Toy(nn.Module):
    """A 'model' with one linear layer, called like a HF model (attention_mask kwarg)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)

    def forward(self, hidden, attention_mask=None):
        return self.proj(hidden)


# router = identity and x = log(p): the router probabilities are exactly p
P = [
    [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],  # batch 0: two real tokens
    [[0.3, 0.6, 0.1], [0.05, 0.15, 0.8]],  # batch 1: a real token, then padding
]
MASK = torch.tensor([[1, 1], [1, 0]])
# By hand, top-2 of the three real tokens: {0,1}, {1,2}, {1,0} -> 6 assignments,
# f = (2, 3, 1) / 6; P_e = mean p over the real tokens = (0.3, 0.5, 0.2);
# L = 3 * (2/6 * 0.3 + 3/6 * 0.5 + 1/6 * 0.2) = 1.15
EXPECTED = 1.15
# With the padding token counted: {2,1} as well -> f = (2, 4, 2) / 8,
# P = (0.2375, 0.4125, 0.35), L = 3 * (0.25*0.2375 + 0.5*0.4125 + 0.25*0.35) = 1.059375
EXPECTED_WITH_PAD = 1.059375


def toy_model():
    model = Toy()
    alloc = Allocation({"proj": ModuleAllocation((1, 2, 1))}, top_k=2)
    inject_adapter(model, alloc, LoraMoEConfig(dropout=0.0))
    with torch.no_grad():
        model.proj.router.copy_(torch.eye(3))
    return model.train()


def test_balance_loss_by_hand():
    model = toy_model()
    hidden = torch.tensor(P).log()
    model(hidden, attention_mask=MASK)
    assert model.proj.aux.dtype == torch.float32
    assert abs(model.proj.aux.item() - EXPECTED) < 1e-6
    assert abs(aux_loss(model).item() - EXPECTED) < 1e-6
    assert abs(aux_loss(model, "sum").item() - EXPECTED) < 1e-6
    model(hidden)  # no mask: every token counts
    assert abs(model.proj.aux.item() - EXPECTED_WITH_PAD) < 1e-6
    model(hidden, MASK)  # the mask passed positionally is recorded as well
    assert abs(model.proj.aux.item() - EXPECTED) < 1e-6


def test_balance_loss_gradient_only_through_probs():
    # d L / d P_e = N f_e / T_real on each real token; padding gets no gradient
    model = toy_model()
    hidden = torch.tensor(P).log().requires_grad_(True)
    model(hidden, attention_mask=MASK)
    model.proj.aux.backward()
    assert torch.count_nonzero(hidden.grad[1, 1]) == 0
    assert torch.count_nonzero(hidden.grad[0, 0]) > 0
    f = torch.tensor([2, 3, 1]) / 6
    p = torch.tensor(P[0][0])
    g_p = 3 * f / 3  # dL/dp for token (0, 0)
    expected = p * (g_p - (g_p * p).sum())  # through the softmax (logits = hidden)
    torch.testing.assert_close(hidden.grad[0, 0], expected)


def test_padding_token_does_not_change_the_loss():
    model = toy_model()
    hidden = torch.tensor(P).log()
    model(hidden, attention_mask=MASK)
    before = model.proj.aux.clone()
    changed = hidden.clone()
    changed[1, 1] = torch.tensor([4.0, -2.0, 0.0])
    model(changed, attention_mask=MASK)
    assert torch.equal(model.proj.aux, before)
    model(changed, attention_mask=torch.ones_like(MASK))  # the check can fail
    assert abs(model.proj.aux.item() - before.item()) > 1e-3


def test_padding_excluded_in_llama():
    model = tiny_llama()
    inject_adapter(
        model, random_allocation(linear_names(model), seed=2), LoraMoEConfig(dropout=0.0)
    )
    randomize_adapter(model, seed=2)
    model.train()
    ids = input_ids(2, 6, seed=3)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding in the second sequence
    other = ids.clone()
    other[1, -2:] = (ids[1, -2:] + 5) % 97

    def loss(i, m):
        model(input_ids=i, attention_mask=m)
        return aux_loss(model)

    a = loss(ids, mask)
    assert a > 0
    close(loss(other, mask), a, rtol=1e-6)
    assert abs(loss(other, torch.ones_like(ids)) - loss(ids, torch.ones_like(ids))) > 1e-5
    model(ids, mask)  # positional attention_mask: padding still excluded
    close(aux_loss(model), a, rtol=1e-6)


# -- 6. bf16 --------------------------------------------------------------------------------
def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("impl", ["masked", "loop"])
def test_bf16_close_to_fp32(impl):
    ranks = [3, 8, 5, 2, 7]
    ref = make_layer(ranks, 2, d_in=64, d_out=48, seed=5, dropout=0.0, impl=impl).train()
    with torch.no_grad():  # same (bf16-representable) weights: only the arithmetic differs
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
    low = copy.deepcopy(ref).to(torch.bfloat16)
    assert low.lora_A.dtype == low.lora_B.dtype == low.base.weight.dtype == torch.bfloat16
    assert low.rank_scale.dtype == torch.float32  # 16/3 etc. must not be rounded to bf16
    torch.testing.assert_close(low.rank_scale, ref.rank_scale, rtol=0, atol=0)
    x = torch.randn(6, 20, 64, generator=torch.Generator().manual_seed(5)).bfloat16()
    probs, _, top_w = low.route(x.reshape(-1, 64), None)
    assert probs.dtype == torch.float32 and top_w.dtype == torch.float32
    # the router logits are computed in fp32 (a bf16 GEMM would be off by ~1e-2)
    fp32 = torch.softmax(x.reshape(-1, 64).double() @ low.router.double().t(), -1).float()
    torch.testing.assert_close(probs, fp32, rtol=1e-5, atol=1e-6)
    xl = x.clone().requires_grad_(True)
    xr = x.float().requires_grad_(True)
    yl, yr = low(xl), ref(xr)
    assert yl.dtype == torch.bfloat16
    assert rel(yl, yr) < 1e-2
    with torch.no_grad():  # the adapter's part alone
        assert rel(yl - low.base(x), yr - ref.base(x.float())) < 1e-2
    gy = torch.randn(yr.shape, generator=torch.Generator().manual_seed(6))
    (yl.float() * gy).sum().backward()
    (yr * gy).sum().backward()
    assert low.lora_A.grad.dtype == torch.bfloat16
    for a, b in [
        (xl.grad, xr.grad),
        (low.lora_A.grad, ref.lora_A.grad),
        (low.lora_B.grad, ref.lora_B.grad),
    ]:
        assert rel(a, b) < 1.5e-2
    assert rel(low.router.grad, ref.router.grad) < 1.5e-2


def test_bf16_base_gives_fp32_router():
    base = nn.Linear(32, 16).to(torch.bfloat16)
    layer = LoraMoELinear(base, [4, 4, 2], 2)
    assert layer.lora_A.dtype == torch.bfloat16 and layer.router.dtype == torch.float32
    assert layer.rank_scale.dtype == torch.float32
    y = layer(torch.randn(5, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# -- 7. init --------------------------------------------------------------------------------
def test_zero_b_gives_the_base_model_exactly():
    model, base = tiny_llama(), tiny_llama()
    inject_adapter(model, random_allocation(linear_names(model), seed=4), LoraMoEConfig())
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in adapter_modules(model).values())
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
        model.train()
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_kaiming_uniform_bounds():
    torch.manual_seed(0)
    ranks = [4, 2, 8, 1]
    layer = LoraMoELinear(nn.Linear(256, 96), ranks, 2)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3), fan_in = d_in
    A = layer.lora_A.detach()
    assert A.abs().max() <= bound and A.abs().max() > 0.97 * bound
    assert abs(A.std().item() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    assert abs(A.mean().item()) < 0.05 * bound
    for s in layer.expert_slices():  # every expert block has the same bound
        assert A[s].abs().max() <= bound
    assert A[:4].std() > 0.8 * bound / math.sqrt(3) and A[4:6].std() > 0.7 * bound / math.sqrt(3)
    R = layer.router.detach()
    assert R.abs().max() <= bound and R.abs().max() > 0.9 * bound
    assert torch.count_nonzero(layer.lora_B) == 0


def test_normal_init():
    torch.manual_seed(0)
    layer = LoraMoELinear(nn.Linear(256, 128), [8] * 8, 2, LoraMoEConfig(init="normal"))
    for p in (layer.lora_A, layer.lora_B):
        assert abs(p.std().item() - 0.02) < 0.001 and abs(p.mean().item()) < 0.001


def test_reset_parameters_is_seeded():
    a = make_layer([3, 2], 1, seed=9)
    b = make_layer([3, 2], 1, seed=9)
    assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.router, b.router)


def test_layer_rejects_top_k_above_experts():
    with pytest.raises(ValueError, match="top_k=3 > 2 experts"):
        LoraMoELinear(nn.Linear(4, 4), [2, 2], 3)


def test_injected_layers_follow_the_model_mode():
    model = tiny_llama()  # eval mode, as load_backbone returns it
    inject_adapter(model, random_allocation(linear_names(model), seed=0))
    randomize_adapter(model, seed=0)
    assert not any(m.training for m in adapter_modules(model).values())
    ids = input_ids()
    with torch.no_grad():  # no dropout at inference right after injection
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    model.train()
    assert all(m.training for m in adapter_modules(model).values())


def test_inject_twice_is_refused():
    model = tiny_llama()
    alloc = random_allocation(linear_names(model), seed=0)
    inject_adapter(model, alloc)
    with pytest.raises(ValueError, match="already has a guilomo adapter"):
        inject_adapter(model, alloc)


def test_base_is_frozen_and_only_adapter_trains():
    model = tiny_llama()
    inject_adapter(model, random_allocation(linear_names(model), seed=0))
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B", "router"}
    model.train()
    out = model(input_ids=input_ids(), labels=input_ids())
    (out.loss + 0.001 * aux_loss(model)).backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(m.lora_A.grad is not None for m in adapter_modules(model).values())


def test_find_targets_by_suffix_regex_and_layer():
    from guilomo.allocation import AllocationError
    from guilomo.moe import find_targets

    model = tiny_llama()
    assert sorted(find_targets(model, TARGETS)) == sorted(linear_names(model))
    assert list(find_targets(model, ["q_proj"], layers=[1])) == ["model.layers.1.self_attn.q_proj"]
    assert len(find_targets(model, r"model\.layers\.0\.mlp\..*")) == 3
    with pytest.raises(AllocationError, match="linear layer names are .*'q_proj'"):
        find_targets(model, ["query"])
    inject_adapter(model, random_allocation(linear_names(model), seed=0))
    with pytest.raises(AllocationError):  # the frozen base inside an adapted layer is no target
        find_targets(model, ["base"])


def test_find_targets_under_a_path_containing_base():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(8, 8)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_block = Block()

    from guilomo.moe import find_targets

    assert list(find_targets(Net(), ["q_proj"])) == ["base_block.q_proj"]
