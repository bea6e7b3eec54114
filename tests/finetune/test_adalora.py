"""AdaLoRA as a train.py baseline: the rank budget it ends at, what is counted, and a
short train.py run (Hydra compose) read by guilomo.results."""

import copy
import json

import pytest
import torch
from compose import compose_cfg
from helpers import TARGETS, fast, input_ids, tiny_llama
from safetensors.torch import load_file

from guilomo.allocation import uniform
from guilomo.budget import BudgetError
from guilomo.finetune.adalora import AdaLora, adalora, schedule
from guilomo.finetune.run import run_train
from guilomo.moe import find_targets, module_shapes
from guilomo.results import collect, summarise

# the tiny LLaMA (hidden 64, kv 32, ffn 128), d_in + d_out per layer by hand:
# q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64
WIDTH_PER_LAYER = 128 + 96 + 96 + 128 + 192 + 192 + 192
MODULES = 14  # 7 per layer, 2 layers


def _tiny(budget, **kw):
    model = tiny_llama()
    targets = find_targets(model, TARGETS)
    alloc = adalora(targets, budget, **kw)
    torch.manual_seed(0)  # peft draws A and B from the global generator
    return model, module_shapes(targets), alloc, AdaLora(model, alloc, alpha=16.0, dropout=0.0)


def _train(model, ada, steps, start=0, opt=None):
    """The loop peft asks for: backward, optimiser step, update_and_allocate, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt or torch.optim.AdamW(params, lr=1e-2)
    x = input_ids(4, 9)
    for step in range(start, start + steps):
        loss = model(input_ids=x, labels=x).loss + ada.regularizer()
        loss.backward()
        opt.step()
        ada.step(step)
        opt.zero_grad()
    return opt


def test_accounting_against_a_hand_count():
    # params budget 5000: rank 2 everywhere costs 2 * 2048 = 4096 <= 5000 < 3 * 2048
    model, shapes, alloc, ada = _tiny({"kind": "params", "value": 5000})
    assert 2 * WIDTH_PER_LAYER == sum(d_in + d_out for d_in, d_out in shapes.values())
    s = alloc.meta["adalora"]
    assert (s["target_r"], s["init_r"]) == (2, 3) and alloc.method == "adalora"
    assert alloc.trainable_params(shapes) == 2 * 2 * WIDTH_PER_LAYER == 4096
    # what the optimiser trains: init_r rows of A, columns of B and entries of E everywhere
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == 3 * (2 * WIDTH_PER_LAYER + MODULES) == 6186
    record = ada.record(shapes)
    assert record["nominal_params"] == 4096 and record["trained_params"] == trained
    assert record["rank_budget"] == 2 * MODULES

    # rank budget: 30 // 14 = 2 per module; experts and too-small budgets are refused
    assert adalora(shapes, {"kind": "rank", "value": 30}).meta["adalora"]["target_r"] == 2
    with pytest.raises(BudgetError, match="no experts"):
        adalora(shapes, {"kind": "experts", "value": 30})
    with pytest.raises(BudgetError, match="below one rank"):
        adalora(shapes, {"kind": "params", "value": 2 * WIDTH_PER_LAYER - 1})
    assert adalora(shapes, None, rank=5).meta["adalora"]["target_r"] == 5  # no budget: rank


def test_rank_budget_ends_at_the_target():
    model, shapes, alloc, ada = _tiny({"kind": "params", "value": 5000})
    ada.set_total_steps(8)  # tinit 1, tfinal 2: final ranks set after step 6
    assert (ada.config.tinit, ada.config.tfinal) == (1, 2)
    _train(model, ada, 3)
    assert sum(ada.ranks().values()) == 35  # on the cubic schedule: 28 + 14 * 0.8^3
    _train(model, ada, 5, start=3)
    kept = {
        n: int((m.lora_E["default"] != 0).sum())
        for n, m in model.named_modules()
        if hasattr(m, "lora_E")
    }
    assert sum(kept.values()) == 2 * MODULES  # exactly the target: 2 per module on average
    assert len(set(kept.values())) > 1  # moved between modules, not 2 everywhere
    record = ada.record(shapes)
    assert record["final_ranks"] == kept and record["final_rank"] == 2 * MODULES
    by_hand = sum(kept[n] * (shapes[n][0] + shapes[n][1]) for n in kept)
    assert record["final_params"] == by_hand


def test_regularizer_is_peft_s_own_term():
    model, _, _, ada = _tiny(None, rank=2)
    ada.set_total_steps(8)
    _train(model, ada, 2)  # A and B no longer at their init
    x = input_ids(2, 7, seed=1)
    with torch.no_grad():
        with_reg = ada.tuner(input_ids=x, labels=x).loss  # peft's forward adds its term
        plain = model(input_ids=x, labels=x).loss
        assert torch.allclose(with_reg - plain, ada.regularizer(), atol=1e-5)
        assert ada.regularizer() > 0


def test_allocator_state_resumes_exactly():
    model, _, _, ada = _tiny(None, rank=2)
    ada.set_total_steps(8)
    _train(model, ada, 8)
    first = copy.deepcopy(ada.ranks())

    model, _, _, ada = _tiny(None, rank=2)
    ada.set_total_steps(8)
    opt = _train(model, ada, 4)
    saved = copy.deepcopy(
        (
            {n: p for n, p in model.state_dict().items() if "lora_" in n},
            opt.state_dict(),
            ada.state_dict(),
        )
    )
    model, _, _, ada = _tiny(None, rank=2)
    model.load_state_dict(saved[0], strict=False)
    ada.load_state_dict(saved[2])
    ada.set_total_steps(8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.load_state_dict(saved[1])
    _train(model, ada, 4, start=4, opt=opt)
    assert ada.ranks() == first


def test_schedule_leaves_a_pruning_phase():
    assert schedule(40, 0.1, 0.3) == (4, 12)
    assert schedule(4, 0.1, 0.3) == (0, 1)  # at least one step at the final ranks
    with pytest.raises(ValueError, match="no rank-pruning phase"):
        schedule(1, 0.1, 0.3)


def test_train_py_run_writes_adalora_metrics(tmp_path):
    # budget=match on an allocation file, as in the multirun next to file,lora,uniform
    model = tiny_llama()
    shapes = module_shapes(find_targets(model, TARGETS))
    searched = uniform(shapes, 2, 3, backbone="tiny_llama").save(tmp_path / "searched.json")
    value = sum(3 * 2 * (d_in + d_out) + 2 * d_in for d_in, d_out in shapes.values())
    out = tmp_path / "run"
    overrides = [
        *fast(4, 32),
        "eval.limit=8",
        "allocation=adalora",
        "budget=match",
        f"searched={searched}",
    ]
    result = run_train(compose_cfg("train", overrides, out))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["method"] == "adalora" and saved["steps"] == 4
    assert saved["budget"]["value"] == value and saved["budget"]["kind"] == "params"
    ada = saved["adalora"]
    width = 2 * WIDTH_PER_LAYER
    assert ada["target_r"] == value // width  # the largest rank that fits
    assert saved["trainable_params"] == saved["budget"]["spent"] == ada["target_r"] * width
    assert 0 <= value - saved["trainable_params"] < width
    assert ada["steps"] == {"total": 4, "tinit": 0, "tfinal": 1}
    assert ada["final_rank"] == ada["rank_budget"] == ada["target_r"] * MODULES
    assert 0.0 <= saved["metrics"]["finetuned"]["accuracy"] <= 1.0
    assert set(saved["metrics"]) == {"zero_shot", "finetuned"}
    # peft's adapter folder holds only the kept ranks
    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    rows = sum(t.shape[0] for n, t in tensors.items() if "lora_A" in n)
    assert rows == ada["final_rank"]
    # the results table reads it like any other method
    (row,) = [r for r in summarise(collect([tmp_path])) if r["method"] == "adalora"]
    assert row["trainable_params"] == saved["trainable_params"] and row["n"] == 1
