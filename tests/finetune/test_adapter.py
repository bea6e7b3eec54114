"""The fine-tune's two adapters, LoRA-MoE and AdaLoRA, through the one interface
train.py uses (guilomo.finetune.adapter): counts, loss term, hooks, folder, card, record;
and build_adapter draws the same initial weights as putting either in directly."""

import json

import pytest
import torch
from helpers import TARGETS, TASK, TINY, base, input_ids, tiny_llama
from peft import PeftModel

from guilomo.allocation import uniform
from guilomo.finetune.adalora import AdaLora, AdaLoraSchedule, adalora
from guilomo.finetune.adapter import LoraMoEAdapter, TrainedAdapter, build_adapter
from guilomo.moe import LoraMoEConfig, find_targets, inject_adapter, load_adapter, module_shapes

CONFIG = LoraMoEConfig(alpha=16.0, dropout=0.0)
METRICS = {"accuracy": 0.625, "n": 8, "invalid": 0}


def _allocation(kind: str, targets: dict):
    shapes = module_shapes(targets)
    if kind == "adalora":  # rank 2 everywhere fits 5000 parameters (init_r 3)
        return adalora(targets, {"kind": "params", "value": 5000})
    return uniform(shapes, 2, 3, top_k=1, backbone="tiny_llama")


def _build(kind: str, model, seed: int = 0):
    """(allocation, module shapes, adapter) on ``model``."""
    targets = find_targets(model, TARGETS)
    alloc = _allocation(kind, targets)
    torch.manual_seed(seed)  # both draw their initial A (and routers) from the global generator
    folder = {"loader": TINY, "backbone_id": "tiny_llama", "task": TASK}
    return alloc, module_shapes(targets), build_adapter(model, alloc, CONFIG, **folder)


@pytest.mark.parametrize("kind", ["lora_moe", "adalora"])
def test_both_adapters_train_save_and_report_through_one_interface(kind, tmp_path):
    model, _ = base()
    alloc, shapes, adapter = _build(kind, model)
    assert isinstance(adapter, TrainedAdapter)
    assert isinstance(adapter, AdaLora if kind == "adalora" else LoraMoEAdapter)

    # the count the run reports is the allocation's (AdaLoRA: the ranks it keeps)
    n = adapter.trainable_params(shapes)
    assert n == alloc.trainable_params(shapes) > 0
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record = adapter.record(shapes)
    if kind == "adalora":
        assert record["nominal_params"] == n and record["trained_params"] == trained > n
    else:
        assert record is None and trained == n

    # one optimiser step as FinetuneModule takes it: the model's loss plus the adapter's term
    hooks = adapter.callbacks()
    assert [type(c) for c in hooks] == ([AdaLoraSchedule] if kind == "adalora" else [])
    assert (adapter.regularizer is None) == (kind == "lora_moe")
    model.train()
    x = input_ids(4, 9)
    loss = model(input_ids=x, labels=x).loss
    if adapter.regularizer is not None:
        reg = adapter.regularizer()
        assert reg.ndim == 0 and float(reg) >= 0
        loss = loss + reg
    loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all(model.get_parameter(name).requires_grad for name in grads)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()

    # the folder, then the card with the test metrics (LoRA-MoE only: peft's stays)
    folder = adapter.save(tmp_path / "adapter")
    assert folder == tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    card = folder / "README.md"
    before = card.read_text() if card.exists() else None
    written = adapter.save_card(folder, METRICS)
    if kind == "adalora":
        assert written is None and (card.read_text() if card.exists() else None) == before
    else:
        assert written == card and "0.625" in card.read_text() and card.read_text() != before
        meta = json.loads((folder / "adapter_config.json").read_text())
        assert meta["task"] == TASK and meta["backbone"]["id"] == "tiny_llama"

    # the folder reloads onto a fresh backbone and computes what the trained model does
    model.eval()
    fresh, _ = base()
    if kind == "adalora":
        fresh = PeftModel.from_pretrained(fresh, str(folder))
    else:
        load_adapter(fresh, folder)
    fresh.eval()
    plain, _ = base()
    with torch.no_grad():
        logits = model(input_ids=x).logits
        torch.testing.assert_close(fresh(input_ids=x).logits, logits)
        assert not torch.allclose(plain(input_ids=x).logits, logits)  # the step moved it


@pytest.mark.parametrize("kind", ["lora_moe", "adalora"])
def test_build_adapter_draws_the_initial_weights_of_the_adapter_it_builds(kind):
    """The factory consumes the global generator as the direct calls do: a run's init
    is the one it had before the adapters shared an interface."""
    built = tiny_llama()
    _build(kind, built, seed=3)
    after_built = torch.get_rng_state()
    direct = tiny_llama()
    alloc = _allocation(kind, find_targets(direct, TARGETS))
    torch.manual_seed(3)
    if kind == "adalora":
        AdaLora(direct, alloc, CONFIG.alpha, CONFIG.dropout)
    else:
        inject_adapter(direct, alloc, CONFIG)
    assert torch.equal(torch.get_rng_state(), after_built)  # and leaves the same stream
    a, b = built.state_dict(), direct.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
