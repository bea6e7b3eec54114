"""The search LightningModule on a tiny LLaMA: manual optimisation, real-step schedule,
val sources, outer-step cadence, sparse-logit loss, adapter-only checkpoints."""

import lightning as L
import pytest
import torch
from helpers import linear_names, tiny_llama
from torch.utils.data import DataLoader

from guilomo.objective import sparse_lm_loss
from guilomo.search import (
    Architect,
    SearchModule,
    SearchSettings,
    gsv_parameters,
    inject_search_adapter,
)
from guilomo.search.layer import inner_parameters


def make_batch(seed, n=4, t=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loader(n, offset=0):
    return DataLoader([make_batch(offset + i) for i in range(n)], batch_size=None)


def search_model(**kw):
    model = tiny_llama()
    return inject_search_adapter(model, linear_names(model), SearchSettings(n_max=4, r_max=4, **kw))


def fit(module, train, **trainer_kw):
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    trainer.fit(module, train_dataloaders=train)
    return trainer


def test_sparse_logit_loss_equals_the_model_loss():
    model = search_model()
    model.eval()
    batch = make_batch(0)
    with torch.no_grad():
        full = model(**batch, use_cache=False).loss
        assert torch.allclose(sparse_lm_loss(model, batch), full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order", ["first", "second"])
def test_heldout_search_steps_and_schedule(order, monkeypatch):
    L.seed_everything(0)
    model = search_model()
    gsv0 = [p.detach().clone() for p in gsv_parameters(model)]
    theta0 = [p.detach().clone() for p in inner_parameters(model)]
    settings = SearchSettings(n_max=4, r_max=4, order=order, log_modules_every=2)
    module = SearchModule(model, settings, val_dataloader=loader(3, offset=100))
    calls = []
    step = Architect.step

    def counting(self, train_batch, val_batch, xi):
        calls.append(xi)
        return step(self, train_batch, val_batch, xi)

    monkeypatch.setattr(Architect, "step", counting)
    trainer = fit(module, loader(20), max_steps=6)
    assert trainer.global_step == 6 and module.total_steps == 6
    assert len(calls) == 6 and calls[0] > 0  # warm-up capped at 10% of 6 steps: none
    inner, _ = module.optimizers()
    assert inner.optimizer.param_groups[0]["lr"] == 0.0  # linear decay reached 0
    assert any(not torch.equal(a, b) for a, b in zip(gsv0, gsv_parameters(model), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(theta0, inner_parameters(model), strict=True))
    metrics = trainer.callback_metrics
    for key in (
        "train/loss",
        "train/aux_loss",
        "val/loss",
        "alloc/experts_mean",
        "alloc/rank_mean",
        "gsv/expert_margin",
        "gsv/rank_margin",
        "usage/max_share",
        "modules/L0.q_proj/experts",
        "modules/L1.down_proj/rank",
    ):
        assert key in metrics, key
    assert 2 <= float(metrics["alloc/experts_mean"]) <= 4


def test_alternate_val_source_counts_real_steps():
    model = search_model()
    settings = SearchSettings(n_max=4, r_max=4, val_source="alternate")
    module = SearchModule(model, settings)  # no held-out loader needed
    trainer = fit(module, loader(12), max_epochs=1)
    assert module.total_steps == 6 and trainer.global_step == 6
    assert module.optimizers()[0].optimizer.param_groups[0]["lr"] == 0.0


def test_outer_cadence_and_outer_warmup():
    settings = SearchSettings(warmup_outer_steps=2, outer_every=2)
    assert [s for s in range(8) if settings.outer_due(s)] == [2, 4, 6]
    model = search_model()
    module = SearchModule(
        model, SearchSettings(n_max=4, r_max=4, warmup_outer_steps=4), val_dataloader=loader(2)
    )
    gsv0 = [p.detach().clone() for p in gsv_parameters(model)]
    fit(module, loader(8), max_steps=4)
    assert all(torch.equal(a, b) for a, b in zip(gsv0, gsv_parameters(model), strict=True))


def test_empty_heldout_split_is_a_clear_error():
    module = SearchModule(search_model(), SearchSettings(n_max=4, r_max=4), val_dataloader=[])
    with pytest.raises(ValueError, match="val split is empty"):
        fit(module, loader(4), max_steps=2)


def test_checkpoint_holds_adapter_and_gsvs_only(tmp_path):
    model = search_model(granularity="layer")
    module = SearchModule(model, SearchSettings(n_max=4, r_max=4), val_dataloader=loader(2))
    trainer = fit(module, loader(4), max_steps=2)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=False)["state_dict"]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert sum(".gsv_expert" in k for k in state) == 2  # shared per layer: stored once
    assert not any(k.endswith("base.weight") or "embed" in k for k in state)


def test_outer_passes_skip_val_aux_and_by_default_dropout():
    batch = make_batch(0)
    for outer_dropout in (False, True):
        model = search_model()
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "gsv_rank"):
                    m.lora_B.normal_(std=0.5)
        module = SearchModule(model, SearchSettings(n_max=4, r_max=4, outer_dropout=outer_dropout))
        model.train()
        with torch.no_grad():
            a, b = module.val_loss(batch), module.val_loss(batch)
            assert all(float(m.aux) == 0.0 for m in module._layers.values())  # L_val: no aux
            assert (a == b) is not outer_dropout  # deterministic unless dropout is on
            c, d = module.outer_train_loss(batch), module.outer_train_loss(batch)
            assert (c == d) is not outer_dropout
            assert all(float(m.aux) > 0.0 for m in module._layers.values())  # L_train: aux
            e, f = module.train_loss(batch), module.train_loss(batch)
            assert e != f  # the inner step always uses dropout
        assert all(m.dropout.training for m in module._layers.values())


def test_outer_schedule_linear_decays_to_zero_and_constant_is_the_reference():
    from guilomo.search.config import OuterOptim

    linear, constant = OuterOptim(lr=0.1), OuterOptim(lr=0.1, schedule="constant")
    assert [linear.lr_at(s, 10) for s in (0, 5, 9, 10)] == pytest.approx([0.1, 0.05, 0.01, 0.0])
    assert [constant.lr_at(s, 10) for s in (0, 9)] == [0.1, 0.1]
    with pytest.raises(ValueError, match="search.outer.schedule='cosine'"):
        OuterOptim(schedule="cosine")
