"""Hydra multiruns end to end, as a user launches them (subprocesses, tiny backbone, W&B offline).

Each W&B run is read back from its offline ``.wandb`` file (:mod:`wandb_records`):
one run per job, finished, holding config, test metrics, trainable parameters and
the allocation table; a failing job leaves the other job's run a success and its
error in its own log; an Optuna sweep returns the named metric and writes its best
parameters.
"""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ROOT, SUBPROCESS_ENV, fast
from wandb_records import find_runs

# true integration runs (each case is a Hydra multirun of train.py / search.py processes):
# make test-slow, run by CI
pytestmark = pytest.mark.slow

FAST = [
    *fast(steps=2, logger=True),  # 2 steps, below log_every_n_steps=10: logs must still be sent
    "task.datamodule.val_size=8",
    "eval.limit=8",
    "save_adapter=false",
]


def launch(script: str, args: list[str], tmp_path: Path, ok: bool = True):
    env = {**SUBPROCESS_ENV, "WANDB_SILENT": "true", "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if ok and proc.returncode != 0:
        pytest.fail(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def run_of(job: Path):
    runs = find_runs(job / "wandb")
    assert len(runs) == 1, f"{job}: {len(runs)} W&B runs"
    return runs[0]


def test_joblib_multirun_one_finished_wandb_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    launch(
        "train.py",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
            "logger=wandb",
            "allocation=mola_2468",
            *FAST,
            "seed=1,2",
        ],
        tmp_path,
    )
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    runs = [run_of(j) for j in jobs]
    assert runs[0].run_id != runs[1].run_id
    for job, run, seed in zip(jobs, runs, (1, 2), strict=True):
        saved = json.loads((job / "metrics.json").read_text())
        assert run.exit_code == 0
        # identity from method (exact MoLA pattern), backbone, task, budget, seed
        assert run.name == f"train-mola_2468-tiny_llama-chatterbot_topic-none-s{seed}"
        assert run.group == "train-mola_2468-tiny_llama-chatterbot_topic-none"
        assert {"mola_2468", "tiny_llama", f"seed:{seed}", "budget:none"} <= set(run.tags)
        # the resolved config, with the method and budget
        assert (
            run.config["seed"] == seed
            and run.config["allocation"]["_target_"] == "guilomo.baselines.mola"
        )
        assert run.config["trainer"]["max_steps"] == 2
        assert run.config["method"] == "mola_2468"
        assert run.config["budget"]["kind"] == "none"
        # zero-shot and fine-tuned metrics under test/, the numbers of metrics.json
        for stage in ("zero_shot", "finetuned"):
            assert run.summary[f"test/{stage}/accuracy"] == pytest.approx(
                saved["metrics"][stage]["accuracy"]
            )
        assert run.summary["model/trainable_params"] == saved["trainable_params"] > 0
        assert run.summary["budget/spent"] == saved["trainable_params"]
        assert "val/lm_loss" in run.summary
        # one run per job: the step never restarts inside a run; training was logged
        steps = [row["trainer/global_step"] for row in run.history if "trainer/global_step" in row]
        assert steps == sorted(steps) and steps[-1] == 2
        assert any("train/lm_loss" in row for row in run.history)
        # the allocation table: one row per module, MoLA 2-4-6-8 on 2 layers
        table = run.table("allocation/table")
        assert table["columns"] == ["module", "layer", "kind", "experts", "ranks", "total_rank"]
        rows = {r[0]: r for r in table["data"]}
        assert len(rows) == 14
        assert rows["model.layers.0.self_attn.q_proj"][1:5] == [0, "q_proj", 2, "8 8"]
        assert rows["model.layers.1.mlp.down_proj"][3] == 6  # layer 1 of 2: block 2
        assert "allocation/heatmap" in run.summary
        usage = run.table("router/usage")
        assert usage["columns"] == ["module", "layer", "kind", "expert", "rank", "share"]
        assert len(usage["data"]) == sum(r[3] for r in rows.values())


def test_failed_job_leaves_the_other_run_a_success(tmp_path):
    """Both jobs in one process (joblib, n_jobs=1: the case of a reused worker); job 1 fails."""
    sweep = tmp_path / "sweep"
    proc = launch(
        "train.py",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=1",
            f"hydra.sweep.dir={sweep}",
            "logger=wandb",
            "allocation=lora",
            *FAST,
            "eval.zero_shot=false",
            "+callbacks.crash._target_=crash.CrashAt",
            "+callbacks.crash.step=99,1",  # job 0: never; job 1: at step 1
        ],
        tmp_path,
        ok=False,
    )
    assert proc.returncode != 0
    good, bad = job_dirs(sweep)
    good_run, bad_run = run_of(good), run_of(bad)
    assert good_run.run_id != bad_run.run_id
    assert good_run.exit_code == 0 and "error/type" not in good_run.summary
    assert "test/finetuned/accuracy" in good_run.summary
    assert bad_run.exit_code == 1
    assert bad_run.summary["error/type"] == "RuntimeError"
    assert "simulated crash at step 1" in bad_run.summary["error/message"]
    assert "Traceback" in bad_run.summary["error/traceback"]
    bad_log = (bad / "train.log").read_text()
    assert "simulated crash at step 1" in bad_log and "Traceback" in bad_log
    assert "simulated crash" not in (good / "train.log").read_text()
    assert (good / "metrics.json").is_file()


def test_optuna_sweep_returns_the_metric_and_writes_best_params(tmp_path):
    sweep = tmp_path / "sweep"
    db = tmp_path / "optuna.db"
    launch(
        "train.py",
        [
            "hparams_search=train_lr",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            f"hydra.sweeper.storage=sqlite:///{db}",
            f"hydra.sweep.dir={sweep}",
            "logger=csv",
            "allocation=lora",
            *FAST,
            "eval.zero_shot=false",
        ],
        tmp_path,
    )
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = {}
    for job in job_dirs(sweep):
        saved = json.loads((job / "metrics.json").read_text())
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lr = float(next(o for o in overrides if o.startswith("optim.lr=")).split("=")[1])
        losses[lr] = saved["scalars"]["val/lm_loss"]
    assert len(losses) == 2 and all(1e-5 <= lr <= 1e-2 for lr in losses)
    # the best trial is the one with the lowest held-out loss, as main() returned it
    best_lr = min(losses, key=losses.get)
    assert best["best_params"]["optim.lr"] == pytest.approx(best_lr)
    assert best["best_value"] == pytest.approx(losses[best_lr])
    study = optuna.load_study(study_name="train_lr", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(losses.values()))
