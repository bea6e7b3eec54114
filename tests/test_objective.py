"""The objective both stages minimise (guilomo.objective) against independent references."""

import pytest
import torch
from helpers import linear_names, tiny_llama

from guilomo.allocation import uniform
from guilomo.moe import LoraMoEConfig, adapter_modules, inject_adapter
from guilomo.objective import Objective, warmup_linear


def batch(seed=0, n=3, t=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("sparse", [True, False])
def test_objective_is_lm_plus_weighted_mean_aux(sparse):
    model = tiny_llama()
    inject_adapter(model, uniform(linear_names(model), 4, 2, 2), LoraMoEConfig(dropout=0.0))
    model.train()
    b = batch()
    total, lm, aux = Objective(model, aux_coef=0.25, sparse_logits=sparse)(b)
    # references: the model's own loss, and the mean of the layers' aux losses of that forward
    aux_ref = torch.stack([m.aux for m in adapter_modules(model).values()]).mean()
    lm_ref = model(**b).loss
    assert torch.allclose(lm, lm_ref, atol=1e-6) and torch.allclose(aux, aux_ref, atol=1e-6)
    assert torch.allclose(total, lm_ref + 0.25 * aux_ref, atol=1e-6)
    assert torch.equal(*Objective(model, aux_coef=0.0, sparse_logits=sparse)(b)[:2])


def test_warmup_linear_schedule():
    fn = warmup_linear(2, 6)
    assert [fn(s) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert warmup_linear(0, 4)(0) == 1.0 and warmup_linear(0, 4)(8) == 0.0
