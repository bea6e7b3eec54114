"""Bad inputs fail before the backbone loads, each with an error naming the key and the fix.

Every case runs the real ``run_train`` / ``run_search`` with a backbone loader that
fails the test if it is ever called, so an error raised late (after the load, the
zero-shot evaluation or training) cannot pass.
"""

import json

import pytest
import torch
from compose import compose_cfg

from guilomo.allocation import AllocationError
from guilomo.budget import BudgetError
from guilomo.finetune.run import run_train
from guilomo.search.run import run_search
from guilomo.utils.checks import ConfigError

NO_LOAD = ["backbone=tiny_llama", "backbone.loader._target_=helpers.loader_must_not_run"]
TRAIN = [*NO_LOAD, "logger=none", "callbacks=none", "trainer.max_steps=2"]
SEARCH = [*NO_LOAD, "logger=none", "callbacks=none", "trainer.max_steps=2"]


def _alloc_file(tmp_path, text: str) -> str:
    path = tmp_path / "alloc.json"
    path.write_text(text)
    return f"allocation.path={path}"


GOOD_MODULE = '{"experts": 2, "ranks": [2, 2]}'
Q0 = "model.layers.0.self_attn.q_proj"


def _fake_ckpt(tmp_path, stage="train", **fingerprint) -> str:
    path = tmp_path / "fake.ckpt"
    meta = {"stage": stage, "backbone": "tiny_llama", **fingerprint}
    torch.save({"state_dict": {}, "global_step": 3, "guilomo": meta}, path)
    return f"ckpt_path={path}"


def _truncated_ckpt(tmp_path) -> str:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1000)}, "global_step": 1}, path)
    path.write_bytes(path.read_bytes()[:300])
    return f"ckpt_path={path}"


def _under_a_file(tmp_path) -> str:
    (tmp_path / "plainfile").write_text("")
    return [f"paths.output_dir={tmp_path / 'plainfile' / 'run'}"]


# (id, overrides (str or a function of tmp_path), error type, message pattern)
TRAIN_CASES = [
    ("budget value text", ["budget=rank", "budget.value=abc"], ConfigError, "budget.value='abc'"),
    ("batch size 0", ["task.datamodule.batch_size=0"], ConfigError, "task.datamodule.batch_size=0"),
    ("eval batch 0", ["eval.batch_size=0"], ConfigError, "eval.batch_size"),
    ("layer out of range", ["layers=[0,99]"], ConfigError, r"layers=\[0, 99\]: \[99\] not in"),
    ("layer twice", ["layers=[0,0]"], ConfigError, "lists a layer twice"),
    ("max_steps 0", ["trainer.max_steps=0"], ConfigError, "trainer.max_steps=0 trains nothing"),
    (
        "no bound",
        ["trainer.max_steps=-1", "trainer.max_epochs=null"],
        ConfigError,
        "both unbounded",
    ),
    ("eval mode", ["eval.mode=bogus"], ConfigError, "eval.mode='bogus' is not one of"),
    ("eval limit", ["eval.limit=0"], ConfigError, "eval.limit=0"),
    ("lr nan", ["optim.lr=nan"], ConfigError, "optim.lr=nan must be a finite number"),
    ("lr text", ["optim.lr=fast"], ConfigError, "optim.lr='fast'"),
    ("warmup float", ["optim.warmup_steps=2.5"], ConfigError, "optim.warmup_steps=2.5"),
    ("alpha inf", ["adapter.alpha=inf"], ConfigError, "adapter.alpha=inf"),
    ("dropout 1", ["adapter.dropout=1.0"], ConfigError, "dropout must be in"),
    ("impl", ["adapter.impl=fused"], ConfigError, "impl='fused'"),
    ("num_layers text", ["backbone.loader.num_layers=two"], ConfigError, "num_layers='two'"),
    (
        "allocation target",
        ["allocation=uniform", "allocation._target_=guilomo.baselines.magic"],
        ConfigError,
        "allocation._target_",
    ),
    (
        "rank 1e12",
        ["allocation=uniform", "allocation.rank=1000000000000"],
        AllocationError,
        "no rank above 64 adds capacity",
    ),
    (
        "rank 64 x 1e5 experts",
        ["allocation=uniform", "allocation.experts=200000", "allocation.rank=32"],
        ConfigError,
        "GiB",
    ),
    ("rank above width", ["allocation=uniform", "allocation.rank=65"], AllocationError, "rank 65"),
    (
        "experts float",
        ["allocation=uniform", "allocation.experts=2.5"],
        ConfigError,
        "allocation.experts=2.5",
    ),
    ("file without path", ["allocation=file"], ConfigError, "allocation.path"),
    (
        "file missing",
        ["allocation=file", "allocation.path=/nonexistent/a.json"],
        AllocationError,
        "not found",
    ),
    (
        "duplicate module",
        lambda t: [
            "allocation=file",
            _alloc_file(t, f'{{"modules": {{"{Q0}": {GOOD_MODULE}, "{Q0}": {GOOD_MODULE}}}}}'),
        ],
        AllocationError,
        f"'{Q0}' appears twice",
    ),
    (
        "meta num_layers text",
        lambda t: [
            "allocation=file",
            _alloc_file(
                t, f'{{"modules": {{"{Q0}": {GOOD_MODULE}}}, "meta": {{"num_layers": "two"}}}}'
            ),
        ],
        AllocationError,
        "meta.num_layers must be a positive integer",
    ),
    (
        "unknown module",
        lambda t: [
            "allocation=file",
            _alloc_file(t, '{"modules": {"model.layers.7.mlp.up_proj": ' + GOOD_MODULE + "}}"),
        ],
        AllocationError,
        "not in this model",
    ),
    (
        "file over budget",
        lambda t: [
            "allocation=file",
            "budget=experts",
            "budget.value=1",
            _alloc_file(t, f'{{"modules": {{"{Q0}": {GOOD_MODULE}}}}}'),
        ],
        BudgetError,
        "allocation: allocation spends 2 experts but the budget is 1",
    ),
    ("truncated checkpoint", lambda t: [_truncated_ckpt(t)], ConfigError, "cannot be read"),
    ("missing checkpoint", ["ckpt_path=/nonexistent/last.ckpt"], ConfigError, "is not a file"),
    (
        "search checkpoint",
        lambda t: [_fake_ckpt(t, stage="search")],
        ConfigError,
        "comes from a search run",
    ),
    (
        "other run's checkpoint",
        lambda t: [
            "allocation=lora",
            _fake_ckpt(t, num_layers=2, allocation={Q0: {"experts": 1, "ranks": [4]}}),
        ],
        ConfigError,
        "does not belong to this run: its allocation differs",
    ),
    ("unwritable output", _under_a_file, ConfigError, "cannot be written"),
]

SEARCH_CASES = [
    ("n_max float", ["search.n_max=2.5"], ConfigError, "search.n_max=2.5"),
    ("inner lr text", ["search.inner.lr=abc"], ConfigError, "search.inner.lr='abc'"),
    ("outer lr 0", ["search.outer.lr=0"], ConfigError, "search.outer.lr=0"),
    ("betas", ["search.outer.betas=[0.5,1.5]"], ConfigError, "search.outer.betas"),
    ("order", ["search.order=third"], ConfigError, "search.order='third'"),
    ("unknown key", ["+search.nmax=3"], ConfigError, "unknown search settings"),
    (
        "budget too small",
        ["budget=rank", "budget.value=3"],
        BudgetError,
        "budget.value: budget rank=3 is smaller",
    ),
    ("no val split", ["task.datamodule.val_size=0"], ConfigError, "needs a val split"),
    ("r_max huge", ["search.r_max=100000000000"], ConfigError, "lower search.n_max / search.r_max"),
    (
        "layer out of range",
        ["layers=[5]"],
        ConfigError,
        r"\[5\] not in the backbone's decoder layers 0..1",
    ),
    ("max_steps 0", ["trainer.max_steps=0"], ConfigError, "trains nothing"),
    (
        "train checkpoint",
        lambda t: [_fake_ckpt(t, stage="train")],
        ConfigError,
        "comes from a train run",
    ),
    (
        "other search's checkpoint",
        lambda t: [_fake_ckpt(t, stage="search", num_layers=2, n_max=3)],
        ConfigError,
        "its n_max differs",
    ),
    ("unwritable output", _under_a_file, ConfigError, "cannot be written"),
]


def _run(stage, base, case, tmp_path):
    _, overrides, error, pattern = case
    if callable(overrides):
        overrides = overrides(tmp_path)
    out = [] if any(o.startswith("paths.output_dir") for o in overrides) else None
    cfg = compose_cfg(stage, [*base, *overrides], None if out is not None else tmp_path / "run")
    run = run_train if stage == "train" else run_search
    with pytest.raises(error, match=pattern) as info:
        run(cfg)
    assert "loaded before" not in str(info.value)


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input_fails_before_the_backbone_loads(case, tmp_path):
    _run("train", TRAIN, case, tmp_path)


@pytest.mark.parametrize("case", SEARCH_CASES, ids=[c[0] for c in SEARCH_CASES])
def test_search_bad_input_fails_before_the_backbone_loads(case, tmp_path):
    _run("search", SEARCH, case, tmp_path)


def test_output_blocked_or_finished(tmp_path):
    """A file where the adapter folder goes, or a finished run's metrics.json, fail early."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter").write_text("not a folder")
    with pytest.raises(ConfigError, match="adapter is a file"):
        run_train(compose_cfg("train", TRAIN, tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({"done": True}))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_train(compose_cfg("train", TRAIN, tmp_path / "b"))


def test_a_good_config_reaches_the_loader(tmp_path):
    """The cases above fail for their own reason: the same config without the bad value
    passes validation and gets as far as the (failing) loader."""
    for stage, base in (("train", TRAIN), ("search", SEARCH)):
        cfg = compose_cfg(stage, base, tmp_path / stage)
        with pytest.raises(Exception, match="loaded before"):  # (wrapped by hydra.utils.call)
            (run_train if stage == "train" else run_search)(cfg)
