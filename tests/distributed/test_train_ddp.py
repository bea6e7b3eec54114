"""The fine-tune under DDP with 2 CPU processes (gloo), launched as a user launches it:
files written once, metrics gathered over the processes, the adapter loads on one
process and scores the same there, and a resumed DDP run ends where an uninterrupted
one does."""

import json

import pytest
import torch
from compose import compose_cfg
from ddp_helpers import DDP_CPU, launch
from helpers import fast
from safetensors.torch import load_file

from guilomo.finetune.evaluation import evaluate_datamodule
from guilomo.moe import load_adapter
from guilomo.pipeline import build_backbone, build_datamodule

# true integration runs (two DDP processes, then a resumed pair): make test-slow, run by CI
pytestmark = pytest.mark.slow

COMMON = [
    *DDP_CPU,
    # 16 examples: 8 per process, batch 2: 4 steps per epoch
    *fast(steps=8, examples=16, batch=2, callbacks="checkpoints"),
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "allocation=uniform",
    "allocation.experts=3",
    "allocation.rank=2",
    "task.datamodule.test_size=9",  # shards of 5 and 4 examples
    "eval.zero_shot=false",
    "eval.batch_size=4",
]


def test_train_ddp_writes_once_gathers_metrics_and_resumes(tmp_path):
    full = tmp_path / "full"
    launch("train.py", COMMON, full)
    # rank zero alone wrote the outputs
    assert sorted(p.name for p in full.iterdir() if p.suffix == ".json") == [
        "allocation.json",
        "metrics.json",
    ]
    saved = json.loads((full / "metrics.json").read_text())
    assert saved["steps"] == 8
    got = saved["metrics"]["finetuned"]
    assert got["n"] == 9  # the two shards together, each example once

    # the adapter loads on one process and scores the whole test set the same way
    cfg = compose_cfg("train", [c for c in COMMON if c not in DDP_CPU], tmp_path / "one")
    model, tok = build_backbone(cfg)
    load_adapter(model, full / "adapter")
    dm = build_datamodule(cfg, tok)
    dm.setup("fit")
    one = evaluate_datamodule(model, tok, dm, cfg.eval)
    assert one["n"] == 9
    # the held-out loss is a float sum whose order differs between one and two shards
    assert one["nll"] == pytest.approx(got["nll"], rel=1e-6)
    assert {k: v for k, v in one.items() if k != "nll"} == {
        k: v for k, v in got.items() if k != "nll"
    }

    # interrupted after the first epoch (4 steps), resumed under DDP: same end
    part = tmp_path / "part"
    stop = ["+callbacks.stop._target_=ddp_helpers.StopAt", "+callbacks.stop.step=4"]
    launch("train.py", [*COMMON, *stop], part)
    ckpt = part / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    launch("train.py", [*COMMON, f"ckpt_path={ckpt}"], part)
    resumed = json.loads((part / "metrics.json").read_text())
    assert resumed["steps"] == 8
    assert resumed["metrics"] == saved["metrics"]
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(part / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
