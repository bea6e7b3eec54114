"""kill -9 mid-epoch, resume from the last checkpoint: the same result as an uninterrupted
run, bit for bit (CPU), for the fine-tune and for the search (with dropout and a budget).

Each run is its own ``train.py`` / ``search.py`` process, as a user would run it; the
killed one dies by SIGKILL at a step after a mid-epoch checkpoint, with no chance to
clean up. The resumed run must reproduce the uninterrupted run's ``metrics.json`` /
``allocation.json``, adapter file and every tensor of the final checkpoint (adapter
weights, GSVs, both optimisers' states).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, fast
from helpers import SUBPROCESS_ENV as ENV
from safetensors.torch import load_file

# true integration runs (each case runs search.py / train.py three times as processes):
# make test-slow, run by CI
pytestmark = pytest.mark.slow

COMMON = [
    # 9 steps: the last checkpoint (every 3 steps) is the end; 24 examples in batches of
    # 4: 6 batches per epoch, step 3 is mid-epoch
    *fast(steps=9, examples=24, callbacks="checkpoints"),
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "adapter.dropout=0.1",  # the RNG state must be restored too
]
KILL = ["+callbacks.kill._target_=helpers.KillAt", "+callbacks.kill.at_step=5"]


def _cmd(stage, overrides, run_dir):
    return [sys.executable, str(ROOT / f"{stage}.py"), *overrides, f"hydra.run.dir={run_dir}"]


def _kill_and_resume(stage, overrides, tmp_path):
    """(uninterrupted run dir, killed-then-resumed run dir); the first two run in parallel."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    procs = [
        subprocess.Popen(
            _cmd(stage, overrides, full), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True
        ),
        subprocess.Popen(
            _cmd(stage, [*overrides, *KILL], cut),
            cwd=ROOT,
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert procs[0].returncode == 0, errs[0][-3000:]
    assert procs[1].returncode == -9, errs[1][-3000:]  # SIGKILL
    ckpt = cut / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 3  # mid-epoch: 3 of 6 batches
    fit = state["loops"]["fit_loop"]
    assert fit["epoch_loop.batch_progress"]["current"]["processed"] == 3
    assert fit["state_dict"]["combined_loader"] == [{"batches": 3}]  # the loader's position
    resumed = subprocess.run(
        _cmd(stage, [*overrides, f"ckpt_path={ckpt}"], cut),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return full, cut


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
    else:  # every other leaf (step counts, learning rates, Python's RNG state) too
        assert type(a) is type(b) and a == b, (where, a, b)


def _assert_same_checkpoints(full, cut):
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 9
    assert len(a["state_dict"]) > 0 and len(a["optimizer_states"]) == len(b["optimizer_states"])
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "rng"):
        _assert_same_tensors(a[key], b[key], key)
    return a


def test_finetune_kill_and_resume_mid_epoch(tmp_path):
    overrides = [
        *COMMON,
        "allocation=uniform",
        "allocation.experts=3",
        "allocation.rank=2",
        "eval.limit=8",
    ]
    full, cut = _kill_and_resume("train", overrides, tmp_path)
    assert json.loads((full / "metrics.json").read_text()) == json.loads(
        (cut / "metrics.json").read_text()
    )
    _assert_same_checkpoints(full, cut)
    a, b = (
        load_file(full / "adapter" / "adapter_model.safetensors"),
        load_file(cut / "adapter" / "adapter_model.safetensors"),
    )
    _assert_same_tensors(a, b, "adapter")


def test_search_kill_and_resume_mid_epoch(tmp_path):
    overrides = [
        *COMMON,
        "search.outer_dropout=true",
        "search.n_max=3",
        "search.r_max=2",
        "task.datamodule.val_size=8",
        "task.datamodule.eval_batch_size=3",  # 3 val batches per pass: resume mid-pass
        "budget=rank",
        "budget.value=40",  # between the minimum (28) and the full search adapter (84)
    ]
    full, cut = _kill_and_resume("search", overrides, tmp_path)
    a, b = (json.loads((d / "allocation.json").read_text()) for d in (full, cut))
    for alloc in (a, b):
        alloc["meta"].pop("search_seconds")  # wall time
    assert a == b
    assert a["meta"]["budget_spent"] <= 40
    ckpt = _assert_same_checkpoints(full, cut)
    assert any("gsv" in k for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2  # inner AdamW and outer Adam
