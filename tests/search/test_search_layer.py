"""The search layer: masks in the forward, GSV gradients, injection, parameter groups."""

import pytest
import torch
from helpers import linear_names, tiny_llama
from torch import nn

from guilomo.moe import LoraMoEConfig, LoraMoELinear
from guilomo.search.config import SearchSettings
from guilomo.search.gsv import expert_mask, rank_mask
from guilomo.search.layer import (
    SearchLoraMoELinear,
    expert_groups,
    gsv_parameters,
    inject_search_adapter,
    inner_parameters,
    search_layers,
)

NO_DROP = LoraMoEConfig(dropout=0.0)


def make_layer(n=4, r=3, top_k=2, d_in=10, d_out=6, mode="soft", seed=0):
    torch.manual_seed(seed)
    layer = SearchLoraMoELinear(
        nn.Linear(d_in, d_out), [r] * n, top_k, NO_DROP, rank_mask_mode=mode
    )
    with torch.no_grad():
        layer.lora_B.normal_(std=0.3)
        layer.rank_lambda.uniform_(0.5, 1.5)
        layer.gsv_expert.copy_(torch.tensor([0.1, 0.3, 0.9, 0.2])[:n])
        layer.gsv_rank.normal_()
    return layer


def test_gsv_gradients_are_the_ste_of_the_token_summed_mask_gradient():
    layer = make_layer()
    masks = {}

    def terms():  # the layer's own search_terms, keeping the mask tensors for inspection
        s_e, s_r = torch.sigmoid(layer.gsv_expert), torch.sigmoid(layer.gsv_rank)
        masks["e"], masks["r"] = expert_mask(s_e), rank_mask(s_r, layer.rank_floor)
        masks["e"].retain_grad()
        masks["r"].retain_grad()
        return masks["e"], (layer.rank_lambda * masks["r"]).reshape(-1)

    layer.search_terms = terms
    x = torch.randn(3, 5, 10)
    layer(x).pow(2).sum().backward()

    def ste(s, delta, k, off):
        idx = torch.arange(s.shape[-1])
        return torch.where(idx == k, (delta * s).cumsum(-1), off * delta)

    s_e = torch.sigmoid(layer.gsv_expert.detach())
    k_e = s_e.argmax().clamp(min=1)
    want_e = ste(s_e, masks["e"].grad, k_e, 0.0) * s_e * (1 - s_e)
    torch.testing.assert_close(layer.gsv_expert.grad, want_e)
    assert layer.gsv_expert.grad[k_e] != 0 and layer.gsv_expert.grad.count_nonzero() == 1

    s_r = torch.sigmoid(layer.gsv_rank.detach())
    k_r = s_r.argmax(-1, keepdim=True)
    want_r = ste(s_r, masks["r"].grad, k_r, 1e-4) * s_r * (1 - s_r)
    torch.testing.assert_close(layer.gsv_rank.grad, want_r)


def test_hard_masked_search_layer_equals_the_read_out_lora_moe():
    """Masked experts get no routing weight, masked ranks contribute 0: the search layer is
    the plain LoRA-MoE of the selected allocation (its scaling alpha / r_max folded into B)."""
    search = make_layer(mode="hard")
    experts = int(search.current_experts())
    ranks = search.current_ranks()[:experts].tolist()
    assert experts == 3
    plain = LoraMoELinear(search.base, ranks, 2, NO_DROP)
    with torch.no_grad():
        lam = search.rank_lambda.detach()
        for i, s in enumerate(plain.expert_slices()):
            rows = slice(i * search.r_max, i * search.r_max + ranks[i])
            plain.lora_A[s] = search.lora_A[rows] * lam[i, : ranks[i], None]
            plain.lora_B[:, s] = search.lora_B[:, rows] * ranks[i] / search.r_max
        plain.router.copy_(search.router[:experts])
    x = torch.randn(4, 7, 10)
    torch.testing.assert_close(search(x), plain(x), rtol=1e-5, atol=1e-6)


def test_soft_mask_leaves_masked_ranks_a_little():
    hard, soft = make_layer(mode="hard"), make_layer(mode="soft")
    x = torch.randn(2, 3, 10)
    diff = (soft(x) - hard(x)).abs().max()
    assert 0 < diff < 1e-2


def test_injection_parameter_groups_and_seeded_init():
    model = inject_search_adapter(
        tiny_llama(), linear_names(tiny_llama()), SearchSettings(n_max=4, r_max=2), seed=7
    )
    layers = search_layers(model)
    assert len(layers) == 14 and all(m.ranks == [2] * 4 for m in layers.values())
    gsv, inner = gsv_parameters(model), inner_parameters(model)
    assert len(gsv) == 28 and len(inner) == 14 * 4  # A, B, router, lambda
    assert not {id(p) for p in gsv} & {id(p) for p in inner}
    assert all(p.requires_grad for p in gsv + inner)
    assert sum(p.requires_grad for p in model.parameters()) == len(gsv) + len(inner)

    torch.manual_seed(123)  # the GSV init does not depend on the global RNG
    again = inject_search_adapter(
        tiny_llama(), linear_names(tiny_llama()), SearchSettings(n_max=4, r_max=2), seed=7
    )
    for a, b in zip(gsv_parameters(again), gsv, strict=True):
        assert torch.equal(a, b)
    other = inject_search_adapter(
        tiny_llama(), linear_names(tiny_llama()), SearchSettings(n_max=4, r_max=2), seed=8
    )
    assert not torch.equal(gsv_parameters(other)[0], gsv[0])


# the reference's credit: the expert GSV's gradient sits on its boundary entry alone
REFERENCE = dict(expert_signal="logits", expert_credit="reference", rank_credit="reference")


def test_layer_granularity_shares_one_expert_gsv_per_layer():
    names = linear_names(tiny_llama())
    model = inject_search_adapter(
        tiny_llama(), names, SearchSettings(n_max=4, r_max=2, granularity="layer", **REFERENCE)
    )
    layers = search_layers(model)
    by_layer = {}
    for n, m in layers.items():
        by_layer.setdefault(n.split(".")[2], set()).add(id(m.gsv_expert))
    assert all(len(ids) == 1 for ids in by_layer.values()) and len(by_layer) == 2
    assert len(gsv_parameters(model)) == 2 + 14
    assert len(expert_groups(names, "layer")) == 2 and len(expert_groups(names, "module")) == 14

    with torch.no_grad():
        for m in layers.values():
            m.lora_B.normal_(std=0.5)  # B = 0 at init: no routing signal yet
    model.train()
    out = model(input_ids=torch.randint(0, 97, (2, 6)))
    out.logits.pow(2).mean().backward()
    shared = next(iter(layers.values())).gsv_expert
    assert shared.grad is not None and shared.grad.count_nonzero() == 1


def test_bad_settings_are_rejected():
    base = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="n_max >= 2"):
        SearchLoraMoELinear(base, [8], 1)
    with pytest.raises(ValueError, match="r_max"):
        SearchLoraMoELinear(base, [8, 4], 2)
    with pytest.raises(ValueError, match="rank_mask"):
        SearchLoraMoELinear(base, [8, 8], 2, rank_mask_mode="medium")
    with pytest.raises(ValueError, match="granularity"):
        inject_search_adapter(
            tiny_llama(), ["model.layers.0.mlp.up_proj"], SearchSettings(granularity="block")
        )


def test_search_init_normal_reproduces_the_reference():
    model = tiny_llama()
    inject_search_adapter(
        model,
        linear_names(model),
        SearchSettings(n_max=2, r_max=2),
        config=LoraMoEConfig(init="normal"),
    )
    b = torch.cat([m.lora_B.detach().reshape(-1) for m in search_layers(model).values()])
    assert 0.015 < b.std() < 0.025  # N(0, 0.02) for B as well, not zero
    model = tiny_llama()
    inject_search_adapter(model, linear_names(model), SearchSettings(n_max=2, r_max=2))
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in search_layers(model).values())


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_output_signal_forward_is_the_logit_signal_forward_plus_the_floor_probe(mode):
    """expert_signal=output routes exactly as the reference; a dropped expert adds
    floor x its LoRA output on every token (soft), nothing (hard)."""
    ref = make_layer(mode=mode)
    out = make_layer(mode=mode)
    out.expert_signal, out.expert_credit = "output", "neighbour"
    x = torch.randn(3, 5, 10)
    kept = int(ref.current_experts())
    assert kept < ref.n_max
    extra = torch.zeros(3, 5, 6)
    with torch.no_grad():
        gate = ref.rank_lambda * rank_mask(torch.sigmoid(ref.gsv_rank), ref.rank_floor)
        for e, sl in enumerate(ref.expert_slices()):
            if e >= kept:  # probe weight 1 x gate floor x alpha / r_max
                scale = ref.rank_scale[sl] * gate[e] * ref.rank_floor
                extra += ((x @ ref.lora_A[sl].t()) * scale) @ ref.lora_B[:, sl].t()
        torch.testing.assert_close(out(x), ref(x) + extra)


def test_output_signal_gives_every_expert_gsv_entry_a_gradient_on_soft_masks():
    layer = make_layer()
    layer.expert_signal, layer.expert_credit = "output", "neighbour"
    layer(torch.randn(3, 5, 10)).pow(2).sum().backward()
    grad = layer.gsv_expert.grad
    k = int(layer.current_experts()) - 1
    assert grad[k] == 0  # the boundary itself: moving there changes nothing
    assert torch.count_nonzero(grad) == grad.numel() - 1
