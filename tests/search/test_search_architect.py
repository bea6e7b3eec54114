"""The outer step: first order = autograd, second order ~ the exact unrolled hypergradient,
and the virtual step leaves weights and optimiser state bit-identical."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from guilomo.moe import LoraMoEConfig
from guilomo.search.architect import Architect, restore_optimizer, snapshot_optimizer
from guilomo.search.layer import SearchLoraMoELinear

D = 6


class Net(nn.Module):
    """Two search layers with a tanh between: y = L2(tanh(L1(x)))."""

    def __init__(self, dtype=torch.float64, dropout=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        cfg = LoraMoEConfig(dropout=dropout, alpha=4.0)
        self.l1 = SearchLoraMoELinear(nn.Linear(D, D).to(dtype), [3] * 4, 4, cfg)
        self.l2 = SearchLoraMoELinear(nn.Linear(D, D).to(dtype), [3] * 4, 4, cfg)
        with torch.no_grad():
            for m in (self.l1, self.l2):
                m.lora_B.normal_(std=0.4)
                m.rank_lambda.uniform_(0.7, 1.3)
                m.gsv_expert.copy_(torch.tensor([0.2, 0.1, 0.8, 0.3]))  # k* = 2
                m.gsv_rank.normal_()

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))

    def gsv(self):
        return [m.gsv_expert for m in (self.l1, self.l2)] + [m.gsv_rank for m in (self.l1, self.l2)]

    def theta_names(self):
        gsv = {id(p) for p in self.gsv()}
        return [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in gsv]


def batches(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: {  # noqa: E731
        "x": torch.randn(n, D, generator=g, dtype=dtype),
        "y": torch.randn(n, D, generator=g, dtype=dtype),
    }
    return make(16), make(12)


def mse(net, batch, params=None):
    out = net(batch["x"]) if params is None else functional_call(net, params, (batch["x"],))
    return (out - batch["y"]).pow(2).mean()


def architect(net, order="second", virtual_step="sgd", inner=None):
    params = dict(net.named_parameters())
    theta = [params[n] for n in net.theta_names()]
    inner = inner or torch.optim.AdamW(theta, lr=0.3)
    outer = torch.optim.Adam(net.gsv(), lr=3e-3, betas=(0.5, 0.999))
    loss = lambda b: mse(net, b)  # noqa: E731
    return Architect(theta, net.gsv(), inner, outer, loss, loss, order, virtual_step), theta, inner


def exact_unrolled(net, train, val, xi):
    """d/dG L_val(Theta - xi * grad_Theta L_train(Theta, G), G) by autograd through the step."""
    params = dict(net.named_parameters())
    names = net.theta_names()
    g = torch.autograd.grad(mse(net, train), [params[n] for n in names], create_graph=True)
    moved = {n: params[n] - xi * gi for n, gi in zip(names, g, strict=True)}
    return torch.autograd.grad(mse(net, val, moved), net.gsv())


def flat(ts):
    return torch.cat([t.reshape(-1).double() for t in ts])


def test_first_order_is_plain_autograd_of_the_val_loss():
    net = Net()
    train, val = batches()
    arch, _, _ = architect(net, order="first")
    got, loss = arch.hypergradient(train, val, xi=0.3)
    want = torch.autograd.grad(mse(net, val), net.gsv())
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert loss == mse(net, val).detach()


def test_finite_difference_hypergradient_matches_the_exact_unrolled_one():
    net = Net()
    train, val = batches()
    xi = 0.5
    arch, _, _ = architect(net, order="second")
    approx = flat(arch.hypergradient(train, val, xi)[0])
    exact = flat(exact_unrolled(net, train, val, xi))
    # the d_G term alone (gradient at Theta' without the Hessian term) is clearly different,
    # so the comparison below does test the finite-difference Hessian-vector product
    params = dict(net.named_parameters())
    names = net.theta_names()
    g = torch.autograd.grad(mse(net, train), [params[n] for n in names])
    moved = {n: (params[n] - xi * gi).detach() for n, gi in zip(names, g, strict=True)}
    d_g = flat(torch.autograd.grad(mse(net, val, moved), net.gsv()))
    assert (d_g - exact).norm() > 0.05 * exact.norm()
    # stated tolerance: 1e-4 of the hypergradient's norm (measured: ~3e-6; the central
    # difference is O(eps^2) and the router runs in fp32)
    assert (approx - exact).norm() <= 1e-4 * exact.norm()


def state_of(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


@pytest.mark.parametrize("virtual_step", ["sgd", "adamw"])
@pytest.mark.parametrize("warm", [False, True])
def test_virtual_step_restores_weights_and_optimizer_state_bit_identically(virtual_step, warm):
    net = Net(dtype=torch.float32, dropout=0.1)
    train, val = batches(torch.float32)
    arch, theta, inner = architect(net, virtual_step=virtual_step)
    if warm:  # real inner steps first, so AdamW has moments and a step count
        for _ in range(3):
            inner.zero_grad()
            mse(net, train).backward()
            inner.step()
    weights = [p.detach().clone() for p in theta]
    state = state_of(inner)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]

    grads, _ = arch.hypergradient(train, val, xi=0.3)
    assert any(g.abs().sum() > 0 for g in grads)
    for p, w in zip(theta, weights, strict=True):
        assert torch.equal(p, w)
    after = state_of(inner)
    assert after.keys() == state.keys()
    for pid, s in state.items():
        assert after[pid].keys() == s.keys()
        for k, v in s.items():
            assert torch.equal(after[pid][k], v), (k, virtual_step)
    assert [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups] == groups
    if warm:
        assert all(float(s["step"]) == 3 for s in inner.state.values())


def test_adamw_virtual_step_really_moves_the_weights():
    """The adamw form differs from sgd (it is a real AdamW step, then undone)."""
    train, val = batches()
    got = {}
    for form in ("sgd", "adamw"):
        net = Net()
        arch, _, _ = architect(net, virtual_step=form)
        got[form] = flat(arch.hypergradient(train, val, xi=0.3)[0])
    assert not torch.allclose(got["sgd"], got["adamw"])


def test_step_updates_only_the_gsvs_and_uses_one_rng_state_for_train_passes():
    net = Net(dtype=torch.float32, dropout=0.2)
    train, val = batches(torch.float32)
    arch, theta, _ = architect(net, order="second")
    before_g = [p.detach().clone() for p in net.gsv()]
    before_t = [p.detach().clone() for p in theta]
    torch.manual_seed(5)
    arch.step(train, val, xi=0.3)
    assert all(not torch.equal(a, b) for a, b in zip(before_g, net.gsv(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_t, theta, strict=True))
    assert all(p.grad is None for p in net.gsv())
    # with dropout, the two finite-difference passes reuse the virtual step's dropout masks,
    # so the hypergradient is reproducible from the same RNG state
    torch.manual_seed(5)
    g1 = flat(arch.hypergradient(train, val, 0.3)[0])
    torch.manual_seed(5)
    g2 = flat(arch.hypergradient(train, val, 0.3)[0])
    assert torch.equal(g1, g2)


def test_snapshot_restore_of_a_fresh_optimizer_empties_new_state():
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    snap = snapshot_optimizer(opt)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]
    restore_optimizer(opt, snap)
    assert len(opt.state) == 0
