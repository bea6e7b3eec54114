"""Experiment files: the paper's grid composes cell by cell (no hub weights loaded), and
the CPU twin's chain (scripts/chain.sh) runs end to end on the tiny backbone."""

import json
import os
import subprocess
import sys

import pytest
from compose import compose_cfg, options
from helpers import ROOT, base, fast

from guilomo.allocation import Allocation
from guilomo.moe import LoraMoEConfig
from guilomo.pipeline import build_datamodule, build_lora_config

PAPER_BACKBONES = ["llama2_7b", "mistral_7b", "llama3_8b"]
PAPER_TASKS = [
    "scienceqa",
    "commonsense_qa",
    "openbookqa",
    "glue_cola",
    "glue_mrpc",
    "glue_rte",
    "gsm8k",
]
METHODS = ["file", "lora", "uniform", "mola_2468", "alphalora", "random"]
# scripts/chain.sh runs AdaLoRA besides the LoRA-MoE methods (its own budget rule, below)
CHAIN_METHODS = [*METHODS, "adalora"]


@pytest.fixture(scope="module")
def tokenizer():
    return base()[1]


def test_every_experiment_file_composes_for_its_stage(tmp_path):
    for exp in options("experiment"):
        entry = "search" if exp.endswith("_search") else "train"
        cfg = compose_cfg(entry, [f"experiment={exp}"], tmp_path)
        assert cfg.backbone.id and cfg.task.id, exp


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_paper_grid_composes(backbone, tokenizer, tmp_path):
    for task in PAPER_TASKS:
        cell = [f"backbone={backbone}", f"task={task}"]
        s = compose_cfg("search", ["experiment=paper_search", *cell], tmp_path)
        assert (s.backbone.id, s.task.id, s.backbone.loader.source) == (backbone, task, "hub")
        assert (s.search.n_max, s.search.r_max, s.search.top_k) == (8, 8, 2)
        assert s.trainer.max_epochs == 4 and s.trainer.accelerator == "gpu"
        assert s.task.datamodule.batch_size * s.trainer.accumulate_grad_batches == 64
        assert s.task.datamodule.template == "alpaca"
        assert s.task.datamodule.cutoff_len == (512 if task == "gsm8k" else 256)
        searched = f"chains/paper/search/{backbone}/{task}/seed{s.seed}/allocation.json"
        # every method on the first task, GuiLoMo's file and one baseline on the others
        for method in METHODS if task == PAPER_TASKS[0] else ["file", "mola_2468"]:
            t = compose_cfg(
                "train", ["experiment=paper_train", *cell, f"allocation={method}"], tmp_path
            )
            assert t.trainer.max_epochs == 20 and t.optim.warmup_steps == 100
            assert t.task.datamodule.batch_size * t.trainer.accumulate_grad_batches == 64
            assert t.eval.mode == "generate"
            assert t.eval.max_new_tokens == (256 if task == "gsm8k" else 32)
            # every method is sized by the search of the same cell and seed
            assert t.budget.kind == "params" and t.budget.path.endswith(searched)
            if method == "file":
                assert t.allocation.path == t.budget.path
            assert isinstance(build_lora_config(t), LoraMoEConfig)
        build_datamodule(t, tokenizer)  # instantiates; the data is read only at setup


def test_cpu_twin_is_small_and_offline(tmp_path):
    sizes = []
    for stage in ("search", "train"):
        cfg = compose_cfg(stage, [f"experiment=cpu_twin_{stage}"], tmp_path)
        assert cfg.backbone.id == "smollm2_135m" and cfg.backbone.loader.num_layers is None
        assert list(cfg.layers) == [26, 27, 28, 29] and cfg.trainer.accelerator == "cpu"
        assert cfg.task.id == "chatterbot_topic" and cfg.trainer.max_steps <= 60
        dm = cfg.task.datamodule
        sizes.append((dm.cutoff_len, dm.truncate, dm.max_train_examples, dm.max_test_examples))
    assert sizes[0] == sizes[1]  # the fine-tunes see the data the search saw


@pytest.mark.slow  # the chain script: a search and its fine-tunes, as processes
def test_cpu_twin_chain_end_to_end_on_tiny(tmp_path):
    env = {
        **os.environ,
        "PROJECT_ROOT": str(tmp_path),
        "PYTHON": sys.executable,
        "TASKS": "chatterbot_topic",
        "SEEDS": "1",
        "SEARCH_ARGS": "search.log_modules_every=1 budget.value=60000",  # tiny: 139,264 at most
        "TRAIN_ARGS": "eval.limit=8 eval.zero_shot=false save_adapter=false",
        "OMP_NUM_THREADS": "1",
    }
    overrides = [
        *fast(steps=2, examples=16),
        "backbone.loader.num_layers=null",
        "layers=null",
        "task.datamodule.val_size=4",
    ]
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "chain.sh"), "cpu_twin", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chain = tmp_path / "chains" / "cpu_twin"
    searched = chain / "search" / "tiny_llama" / "chatterbot_topic" / "seed1" / "allocation.json"
    search = Allocation.load(searched)
    target = search.meta["trainable_params"]
    runs = sorted(chain.glob("train/*/tiny_llama/chatterbot_topic/*/seed1/metrics.json"))
    got = {p.parent.parent.name: json.loads(p.read_text()) for p in runs}
    assert sorted(got) == sorted(CHAIN_METHODS)
    for folder, m in got.items():
        assert m["method"] == ("guilomo" if folder == "file" else folder)
        assert m["budget"]["kind"] == "params" and m["budget"]["value"] == target
        assert m["budget"]["matched"] == str(searched.resolve())
        if folder == "adalora":
            # AdaLoRA's nominal size (target_r on every module) fits under the budget;
            # it can fall short by more than one rank, so it is bounded, not matched
            assert 0 < m["trainable_params"] == m["budget"]["spent"] <= target
            continue
        # equal size: within one rank (or one rank-1 expert with its router) of the search
        assert 0 <= target - m["trainable_params"] < 2 * 64 + 128
        assert m["trainable_params"] == m["budget"]["spent"]
    assert got["file"]["search"]["seconds"] == search.meta["search_seconds"] > 0
    assert got["file"]["trainable_params"] == target
    table = next(chain.glob("train/*/results.md")).read_text()
    for folder in CHAIN_METHODS:
        assert f"| {got[folder]['method']} | " in table, table
    assert next(chain.glob("train/*/results.csv")).read_text().count("\n") == 1 + len(CHAIN_METHODS)
