"""``gradient_checkpointing=true`` (both stages) gives the loss and gradients of the run
without it, on the tiny backbone with adapter dropout on: the fine-tune's loss and
adapter gradients, and the search's second-order hypergradient (virtual step, val
gradients, finite differences) and inner gradients. The decoder layers really are
recomputed (their forward runs twice)."""

import torch
from compose import compose_cfg
from helpers import fast, randomize_adapter

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.moe import LoraMoEConfig, aux_loss, find_targets, inject_adapter
from guilomo.objective import sparse_lm_loss
from guilomo.pipeline import build_backbone
from guilomo.search.architect import Architect
from guilomo.search.config import SearchSettings
from guilomo.search.layer import gsv_parameters, inject_search_adapter, inner_parameters
from guilomo.search.module import SearchModule

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batch(seed: int, vocab: int = 1000):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0  # one right-padded row
    labels = ids.clone()
    labels[:, :8] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _backbone(stage: str, checkpointing: bool):
    cfg = compose_cfg(stage, ["backbone=tiny_llama", f"gradient_checkpointing={checkpointing}"])
    model, _ = build_backbone(cfg)
    calls = []
    # the layer's own forward is what is recomputed (its hooks run once), up to the last
    # tensor the backward needs: count calls of its attention block
    model.model.layers[0].self_attn.register_forward_pre_hook(lambda *a: calls.append(1))
    return model.train(), calls


def _finetune(checkpointing: bool):
    model, calls = _backbone("train", checkpointing)
    names = list(find_targets(model, TARGETS))
    alloc = Allocation({n: ModuleAllocation((3, 2, 1)) for n in names}, top_k=2)
    torch.manual_seed(0)
    inject_adapter(model, alloc, LoraMoEConfig(dropout=0.1))
    randomize_adapter(model, seed=1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(5)  # the dropout masks
    loss = sparse_lm_loss(model, _batch(0)) + 0.001 * aux_loss(model)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads, len(calls)


def test_finetune_same_loss_and_gradients_with_checkpointing():
    loss0, grads0, calls0 = _finetune(False)
    loss1, grads1, calls1 = _finetune(True)
    assert (calls0, calls1) == (1, 2)  # recomputed in the backward
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for a, b in zip(grads1, grads0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert all(g.abs().sum() > 0 for g in grads0)


def _search(checkpointing: bool):
    model, calls = _backbone("search", checkpointing)
    names = list(find_targets(model, TARGETS))
    torch.manual_seed(0)
    inject_search_adapter(
        model, names, SearchSettings(n_max=4, r_max=4), config=LoraMoEConfig(dropout=0.1)
    )
    randomize_adapter(model, seed=2)
    module = SearchModule(model, aux_coef=0.001)
    model.train()
    theta, gsv = inner_parameters(model), gsv_parameters(model)
    inner = torch.optim.AdamW(theta, lr=1e-2)
    outer = torch.optim.Adam(gsv, lr=3e-3)
    arch = Architect(
        theta, gsv, inner, outer, module.outer_train_loss, module.val_loss, order="second"
    )
    torch.manual_seed(7)
    hyper, val_loss = arch.hypergradient(_batch(1), _batch(2), xi=1e-2)
    loss = module.train_loss(_batch(1))
    inner_grads = torch.autograd.grad(loss, theta)
    return val_loss, hyper, loss.detach(), inner_grads, len(calls)


def test_search_same_hypergradient_and_gradients_with_checkpointing():
    v0, h0, l0, g0, calls0 = _search(False)
    v1, h1, l1, g1, calls1 = _search(True)
    assert calls1 > calls0  # recomputed in the backward passes
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for a, b in zip(h1, h0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert any(h.abs().sum() > 0 for h in h0)


def test_search_run_with_checkpointing_equals_without(tmp_path, monkeypatch):
    """The switch end to end: 2 second-order search steps, the same GSVs either way."""
    import guilomo.search.loop as search_loop
    import guilomo.search.run as search_run

    overrides = [
        *fast(steps=2, examples=8),
        "trainer.enable_checkpointing=false",
        "task.datamodule.val_size=4",
        "search.n_max=4",
        "search.r_max=4",
        "search.order=second",
        "search.outer.lr=0.05",
        "search.heatmap=false",
    ]
    final = {}
    real = search_loop.collect_gsvs
    for on in (False, True):
        monkeypatch.setattr(
            search_loop, "collect_gsvs", lambda m, on=on: final.setdefault(on, real(m))
        )
        search_run.run_search(
            compose_cfg("search", [*overrides, f"gradient_checkpointing={on}"], tmp_path / str(on))
        )
    assert final[False].keys() == final[True].keys()
    for name, a in final[False].items():
        b = final[True][name]
        torch.testing.assert_close(a.expert, b.expert, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.rank, b.rank, rtol=1e-6, atol=1e-7)
