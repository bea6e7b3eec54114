"""A diverging run stops: NaN/Inf in the loss, a gradient, a weight or a GSV raises, naming
the step and the quantity; the last checkpoint stays good and no result file is written.
load_adapter refuses non-finite or non-float tensors and non-finite settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    CHECKPOINTS,
    ROOT,
    fast,
    linear_names,
    random_allocation,
    randomize_adapter,
    tiny_llama,
)
from helpers import SUBPROCESS_ENV as ENV

from guilomo.allocation import AllocationError
from guilomo.guards import FiniteGuard, NonFiniteError, first_non_finite
from guilomo.moe import LoraMoEConfig, inject_adapter, load_adapter, save_adapter
from guilomo.moe.io import CONFIG_FILE, WEIGHTS_FILE

CKPT = [*CHECKPOINTS, "callbacks.model_checkpoint.every_n_train_steps=2"]
TINY = fast(steps=6, examples=24, callbacks=None)  # each test says which callbacks
STAGES = {
    "train": [
        *TINY,
        "allocation=uniform",
        "allocation.experts=2",
        "allocation.rank=2",
        "eval.limit=4",
    ],
    "search": [*TINY, "task.datamodule.val_size=8", "search.n_max=3", "search.r_max=2"],
}
RESULT = {"train": "metrics.json", "search": "allocation.json"}


def run_stage(stage: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / f"{stage}.py"), *STAGES[stage], *CKPT, *overrides]
    cmd.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("stage", ["train", "search"])
def test_injected_nan_stops_the_run_and_keeps_the_last_checkpoint(stage, tmp_path):
    run = tmp_path / "run"
    proc = run_stage(
        stage, run, "+callbacks.poison._target_=helpers.PoisonAt", "+callbacks.poison.at_step=3"
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "NonFiniteError: the run diverged: the loss of step 4 (nan) is NaN or Inf" in proc.stderr
    assert "last.ckpt" in proc.stderr  # the error names the checkpoint that is still good
    assert not (run / RESULT[stage]).exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["guilomo"]["stage"] == stage
    assert ckpt["state_dict"] and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_exploding_learning_rates_stop_both_stages(tmp_path):
    """The issue's reproductions (in-process): lr=1e30 with no warm-up, and outer.lr=1e30."""
    from compose import compose_cfg

    from guilomo.finetune.run import run_train
    from guilomo.search.run import run_search

    short = ["callbacks=none", "trainer.max_steps=4"]
    cases = [
        ("train", ["optim.lr=1e30", "optim.warmup_steps=0", "eval.zero_shot=false"], "optim.lr"),
        ("search", ["search.inner.lr=1e30", "search.inner.warmup_steps=0"], "search.inner.lr"),
        ("search", ["search.outer.lr=1e30"], "exploded"),
    ]
    for i, (stage, overrides, message) in enumerate(cases):
        cfg = compose_cfg(stage, [*STAGES[stage], *short, *overrides], tmp_path / str(i))
        with pytest.raises(NonFiniteError, match=message):
            (run_train if stage == "train" else run_search)(cfg)
        assert not (tmp_path / str(i) / RESULT[stage]).exists()


def test_first_non_finite_names_the_tensor():
    ok = [("a", torch.ones(3)), ("b", torch.zeros(2, 2))]
    assert first_non_finite(ok) is None
    assert first_non_finite([*ok, ("c", torch.tensor([1.0, float("inf")]))]) == "c"
    assert first_non_finite([("n", torch.tensor(float("nan"))), *ok]) == "n"


def test_guard_checks_gradients_before_the_step():
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.full_like(layer.weight, float("nan"))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)

    class T:  # the two trainer attributes the guard reads
        global_step = 7
        checkpoint_callback = None

    with pytest.raises(NonFiniteError, match="gradient of weight at step 8"):
        FiniteGuard().on_before_optimizer_step(T(), layer, opt)


# -- load_adapter ---------------------------------------------------------------------------
@pytest.fixture
def saved_adapter(tmp_path):
    model = tiny_llama()
    alloc = random_allocation(linear_names(model)[:4], seed=1, max_experts=3, max_rank=3)
    inject_adapter(model, alloc, LoraMoEConfig())
    randomize_adapter(model)
    return save_adapter(model, tmp_path / "adapter", alloc, LoraMoEConfig())


def _rewrite_weights(path, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / WEIGHTS_FILE))
    key = sorted(tensors)[0]
    tensors[key] = change(tensors[key])
    save_file(tensors, str(path / WEIGHTS_FILE))
    return key


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or Inf"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or Inf"),
        (lambda t: t.round().to(torch.int32), "must be floating point"),
    ],
)
def test_load_adapter_refuses_bad_tensors(saved_adapter, change, message):
    key = _rewrite_weights(saved_adapter, change)
    fresh = tiny_llama()
    with pytest.raises(AllocationError, match=message) as err:
        load_adapter(fresh, saved_adapter)
    assert key in str(err.value)
    assert not any("lora" in n for n, _ in fresh.named_parameters())  # untouched


@pytest.mark.parametrize(
    "field, value",
    [("alpha", "Infinity"), ("alpha", "NaN"), ("aux_coef", "Infinity"), ("alpha", '"16"')],
)
def test_load_adapter_refuses_non_finite_settings(saved_adapter, field, value):
    path = saved_adapter / CONFIG_FILE
    meta = json.loads(path.read_text())
    text = json.dumps(meta).replace(
        f'"{field}": {json.dumps(meta["lora"][field])}', f'"{field}": {value}'
    )
    assert text != json.dumps(meta)
    path.write_text(text)
    with pytest.raises(AllocationError, match=f"{field} must be a finite number"):
        load_adapter(tiny_llama(), saved_adapter)
