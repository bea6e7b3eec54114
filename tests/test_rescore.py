"""scripts/rescore.py: a finished run re-scored from its saved adapter gives back the
metric it recorded (a LoRA-MoE and a peft AdaLoRA run on tiny_llama), adds only what
is missing, and refuses a run whose stored held-out loss does not reproduce."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, fast

SCRIPT = ROOT / "scripts" / "rescore.py"
spec = importlib.util.spec_from_file_location("rescore", SCRIPT)
rescore = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rescore)


def _train(out, allocation: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *fast(steps=3, examples=16),
            "task=chatterbot_qa",
            f"allocation={allocation}",
            "budget=params",
            "budget.value=40000",
            "eval.mode=loss",
            "eval.zero_shot=false",
            "task.datamodule.test_size=12",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("allocation", ["uniform", "adalora"])
def test_rescore_restores_a_missing_metric(tmp_path, allocation, capsys):
    run = tmp_path / "runs" / allocation
    original = _train(run, allocation)
    fin = original["metrics"]["finetuned"]
    assert 0 <= fin["token_accuracy"] <= 1

    # a run from before token_accuracy existed
    old = json.loads(json.dumps(original))
    del old["metrics"]["finetuned"]["token_accuracy"]
    del old["scalars"]["test/finetuned/token_accuracy"]
    path = run / "metrics.json"
    path.write_text(json.dumps(old))

    assert rescore.main([str(tmp_path / "runs"), "--dry-run"]) == 0
    assert json.loads(path.read_text()) == old  # a dry run writes nothing

    assert rescore.main([str(tmp_path / "runs")]) == 0
    new = json.loads(path.read_text())
    got = new["metrics"]["finetuned"]
    assert got["token_accuracy"] == pytest.approx(fin["token_accuracy"], abs=1e-9)
    assert new["scalars"]["test/finetuned/token_accuracy"] == got["token_accuracy"]
    assert {k: v for k, v in new["scalars"].items() if k != "test/finetuned/token_accuracy"} == (
        old["scalars"]
    )
    assert new["rescored"] == {"finetuned": ["token_accuracy"]}
    assert got["nll"] == fin["nll"]  # stored values are never rewritten
    assert "added token_accuracy=" in capsys.readouterr().out

    # nothing left to add: skipped without loading anything, the file unchanged
    before = path.read_text()
    assert rescore.main([str(run)]) == 0
    assert path.read_text() == before and "skipped" in capsys.readouterr().out
    # a metric this run's evaluation does not give (a loss-mode run has no accuracy)
    assert rescore.main([str(run), "--metrics", "accuracy"]) == 1
    assert path.read_text() == before and "gives no ['accuracy']" in capsys.readouterr().err

    # a stored loss that does not reproduce: refused, nothing written
    wrong = json.loads(before)
    wrong["metrics"]["finetuned"]["nll"] += 0.01
    del wrong["metrics"]["finetuned"]["token_accuracy"]
    path.write_text(json.dumps(wrong))
    assert rescore.main([str(run)]) == 1
    assert json.loads(path.read_text()) == wrong
    assert "not the same model or test split" in capsys.readouterr().err


def test_rescore_without_runs(tmp_path, capsys):
    assert rescore.main([str(tmp_path)]) == 1
    assert "no run folder" in capsys.readouterr().err
