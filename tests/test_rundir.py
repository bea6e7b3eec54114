"""Runs never share a folder: default run folders are unique even for runs started in
the same second, and a run refuses a folder another live run is using."""

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SUBPROCESS_ENV, fast
from hydra import compose, initialize_config_dir
from hydra.core import utils as hydra_utils
from omegaconf import OmegaConf

from guilomo.rundir import RunDirInUse, claim, release

FAST = [
    *fast(logger=True, callbacks="checkpoints"),
    "trainer.log_every_n_steps=1",
    "allocation=lora",
    "eval.limit=4",
    "eval.zero_shot=false",
]


def _env(root: Path) -> dict:
    env = dict(SUBPROCESS_ENV)
    env["PROJECT_ROOT"] = str(root)  # paths.root_dir: outputs/ goes under the test's folder
    env.pop("GUILOMO_RUN_DIR", None)
    return env


def test_two_runs_started_at_once_get_two_complete_folders(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *FAST, f"seed={seed}"],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    printed = [re.search(r"metrics: (.*metrics\.json)", out).group(1) for out, _ in outs]
    assert printed[0] != printed[1]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2 and {str(r / "metrics.json") for r in runs} == set(printed)
    seeds = set()
    for run in runs:
        for name in (
            "metrics.json",
            "allocation.json",
            "adapter/adapter_model.safetensors",
            "checkpoints/last.ckpt",
            ".hydra/config.yaml",
            "csv/metrics.csv",
        ):
            assert (run / name).is_file(), run / name
        seeds.add(json.loads((run / "metrics.json").read_text())["seed"])
        assert OmegaConf.load(run / ".hydra" / "config.yaml").seed in seeds  # its own config
        rows = (run / "csv" / "metrics.csv").read_text().strip().splitlines()
        # header, 2 steps, the final validation row and the results row: not both runs' rows
        assert len(rows) <= 1 + 2 + 2
    assert seeds == {1, 2}


def test_a_folder_in_use_is_refused(tmp_path):
    run = tmp_path / "run"
    claim(run)  # this test process is "the other run"
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *FAST, f"hydra.run.dir={run}"],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert f"hydra.run.dir={run} is in use by another run (pid {os.getpid()}" in proc.stderr
        assert not (run / ".hydra").exists() and not (run / "metrics.json").exists()
    finally:
        release(run)


def test_claim_is_exclusive_between_processes_and_dropped_on_exit(tmp_path):
    code = (
        "import sys, time; from guilomo.rundir import claim; claim(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse, match=f"in use by another run \\(pid {holder.pid}"):
            claim(tmp_path)
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock
        holder.wait()
    claim(tmp_path)  # free again, as for resuming a killed run in its own folder
    release(tmp_path)


class _HeldClock(datetime.datetime):
    """``datetime`` whose ``now()`` is always the same instant."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 12, 0, 0)


def test_default_folders_differ_for_runs_composed_in_the_same_second(monkeypatch):
    # the clock held: Hydra's ${now:...} answers the same second for both runs, so only
    # the run's token tells their default folders apart
    monkeypatch.setattr(hydra_utils, "datetime", _HeldClock)
    dirs = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for _ in range(2):
            cfg = compose(config_name="train", return_hydra_config=True)
            run, sweep = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
            assert str(cfg.hydra.run.dir) == run  # stable within one config (cached)
            dirs.append((run, sweep))
    assert dirs[0][0] != dirs[1][0] and dirs[0][1] != dirs[1][1]
    assert re.search(r"runs/2026-01-01_12-00-00_[0-9a-f]{6}$", dirs[0][0])
    assert dirs[1][0].rsplit("_", 1)[0] == dirs[0][0].rsplit("_", 1)[0]  # the same second
