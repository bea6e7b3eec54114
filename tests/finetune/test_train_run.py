"""train.py's pipeline end to end on the tiny backbone: outputs, reload, resume, bad input."""

import json

import lightning as L
import pytest
import torch
from compose import compose_cfg
from helpers import fast

from guilomo.allocation import Allocation, AllocationError
from guilomo.backbone import load_backbone
from guilomo.finetune.run import format_table, run_train
from guilomo.moe import load_adapter
from guilomo.pretrained import from_pretrained

FAST = [*fast(4, 32), "eval.limit=8"]


def test_train_writes_metrics_adapter_allocation(tmp_path):
    cfg = compose_cfg("train", [*FAST, "allocation=mola_2468"], tmp_path)
    result = run_train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["steps"] == 4 and saved["seed"] == cfg.seed
    assert set(saved["metrics"]) == {"zero_shot", "finetuned"}
    assert 0.0 <= saved["metrics"]["finetuned"]["accuracy"] <= 1.0
    assert saved["metrics"]["finetuned"]["n"] == 8

    alloc = Allocation.load(tmp_path / "allocation.json")
    assert alloc.meta["backbone"] == "tiny_llama" and alloc.meta["source"] == "baseline:mola"
    assert saved["trainable_params"] == alloc.meta["trainable_params"]
    assert saved["method"] == "mola_2468" and saved["search"] is None
    assert saved["budget"] == {"kind": "none", "value": None, "spent": saved["trainable_params"]}
    # MoLA 2-4-6-8 on 2 layers: blocks [0] and [1] of a 4-block pattern
    counts = {n: m.experts for n, m in alloc.modules.items()}
    assert {counts[n] for n in counts if ".0." in n} == {2}

    # the saved adapter reloads onto a fresh backbone and gives the same logits as
    # the trained model did (recomputed here from a second reload for symmetry)
    x = torch.randint(0, 1000, (2, 9))
    logits = []
    for _ in range(2):
        model, _tok = load_backbone("tiny-llama", source="tiny")
        load_adapter(model, tmp_path / "adapter")
        with torch.no_grad():
            logits.append(model(input_ids=x).logits)
    assert torch.equal(*logits)
    model, _ = load_backbone("tiny-llama", source="tiny")
    with torch.no_grad():
        base = model(input_ids=x).logits
    assert not torch.allclose(base, logits[0])  # training changed the adapter

    # the folder is self-describing: from_pretrained rebuilds the backbone it records and
    # gives the same logits; the card holds the test metric, the config the task's prompt
    model, tok = from_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, logits[0])
    assert not model.training and tok.padding_side == "left"
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["backbone"]["loader"]["source"] == "tiny" and meta["backbone"]["id"] == "tiny_llama"
    assert meta["task"]["id"] == "chatterbot_topic" and meta["task"]["template"] == "alpaca"
    assert meta["task"]["instruction"].startswith("Which topic is this question about?")
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"accuracy {saved['metrics']['finetuned']['accuracy']:.4f}" in card


class _Crash(L.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, monkeypatch):
    common = [
        *FAST,
        "allocation=uniform",
        "allocation.experts=3",
        "allocation.rank=2",
        "trainer.max_steps=8",
        "task.datamodule.max_train_examples=16",  # 4 steps per epoch
        "callbacks=default",
        "~callbacks.rich_progress_bar",
        "~callbacks.lr_monitor",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        "adapter.dropout=0.1",  # RNG must be restored too
        "eval.zero_shot=false",
        "eval.limit=4",
    ]
    full = run_train(compose_cfg("train", common, tmp_path / "full"))

    import guilomo.pipeline as pipeline

    real = pipeline._instantiate_all

    def with_crash(group):
        out = real(group)
        return out + [_Crash(6)] if group and "model_checkpoint" in group else out

    monkeypatch.setattr(pipeline, "_instantiate_all", with_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(compose_cfg("train", common, tmp_path / "crashed"))
    monkeypatch.setattr(pipeline, "_instantiate_all", real)
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4
    assert all("lora_" in k or "router" in k for k in state["state_dict"])  # adapter only

    resumed = run_train(compose_cfg("train", [*common, f"ckpt_path={ckpt}"], tmp_path / "crashed"))
    assert resumed["steps"] == full["steps"] == 8
    assert resumed["metrics"] == full["metrics"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_allocation_for_another_backbone_is_refused(tmp_path):
    cfg = compose_cfg("train", [*FAST, "allocation=uniform"], tmp_path / "a")
    run_train(cfg)
    alloc = Allocation.load(tmp_path / "a" / "allocation.json")
    alloc.meta["backbone"] = "smollm2_135m"
    alloc.save(tmp_path / "other.json")
    cfg = compose_cfg(
        "train",
        [*FAST, "allocation=file", f"allocation.path={tmp_path / 'other.json'}"],
        tmp_path / "b",
    )
    with pytest.raises(AllocationError, match="made for backbone 'smollm2_135m'"):
        run_train(cfg)
    (tmp_path / "corrupt.json").write_text('{"modules": {"model.layers.0')
    cfg = compose_cfg(
        "train",
        [*FAST, "allocation=file", f"allocation.path={tmp_path / 'corrupt.json'}"],
        tmp_path / "c",
    )
    with pytest.raises(AllocationError, match="not valid JSON"):
        run_train(cfg)


def test_budget_scales_baseline(tmp_path):
    cfg = compose_cfg(
        "train",
        [*FAST, "allocation=uniform", "budget=rank", "budget.value=300", "trainer.max_steps=1"],
        tmp_path,
    )
    result = run_train(cfg)
    alloc = Allocation.load(tmp_path / "allocation.json")
    assert 300 - 14 < alloc.total_rank <= 300  # within one rank per module of the target
    assert {m.experts for m in alloc.modules.values()} == {8}
    assert result["method"] == "uniform"
    assert result["budget"] == {"kind": "rank", "value": 300, "spent": alloc.total_rank}


def test_schedule_counts_epochs_when_max_steps_unset(tmp_path, monkeypatch):
    """max_steps=-1 + max_epochs: the LR decays to 0 exactly at the last real step."""
    import guilomo.objective as fm  # the schedule both stages use

    seen = []
    real = fm.warmup_linear
    monkeypatch.setattr(fm, "warmup_linear", lambda w, t: seen.append((w, t)) or real(w, t))
    cfg = compose_cfg(
        "train",
        [
            *FAST,
            "allocation=lora",
            "trainer.max_steps=-1",
            "trainer.max_epochs=2",
            "task.datamodule.max_train_examples=12",
            "optim.warmup_steps=1",
            "eval.zero_shot=false",
        ],
        tmp_path,
    )
    result = run_train(cfg)
    assert result["steps"] == 6  # 2 epochs x 3 batches of 4
    assert seen == [(1, 6)]
    fn = real(1, 6)
    assert fn(5) > 0 and fn(6) == 0.0


def test_results_table_keeps_long_metric_names_apart_and_aligned():
    """A name longer than the default column (token_accuracy) must not run into its
    neighbour, and every value must end where its column's name ends."""
    vals = {"accuracy": 0.5, "nll": 1.25, "token_accuracy": 0.875, "n": 10, "invalid": 0}
    result = {
        "metrics": {"zero_shot": dict(vals), "finetuned": dict(vals)},
        "trainable_params": 1234,
        "task": "t",
        "backbone": "b",
        "allocation": {"summary": "s"},
    }
    header, *rows = format_table(result).splitlines()[1:]
    assert header.split() == ["accuracy", "nll", "token_accuracy", "trainable"]
    for row in rows:
        for name, text in [("nll", "1.2500"), ("token_accuracy", "0.8750")]:
            assert row.index(text) + len(text) == header.index(name) + len(name), (name, row)
