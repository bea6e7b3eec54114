"""User errors of train.py and search.py: one line naming the key, no traceback, exit 1,
and nothing of an existing run folder changed (every byte hashed before and after).

Each case runs the real command line (Hydra included) on tiny_llama; the validation
runs in the run-folder callback, before Hydra writes its ``.hydra/`` record or job log.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from helpers import tree as helpers_tree
from omegaconf import OmegaConf

from guilomo.utils.task import _resume_hint

TINY = ["backbone=tiny_llama", "debug=fast"]
LOCK = ".guilomo.lock"  # the run lock: rewritten with the pid of whoever claims the folder


def tree(folder: Path) -> dict[str, str]:
    """:func:`helpers.tree` of ``folder`` without the lock (rewritten by every claim)."""
    return {k: v for k, v in helpers_tree(folder).items() if Path(k).name != LOCK}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished fine-tune run folder."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = run("train.py", *TINY, "eval.limit=4", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").is_file() and (out / ".hydra" / "config.yaml").is_file()
    return out


# (name, script, overrides, the key or words the one line must name)
CASES = [
    ("finished run", "train.py", [], "already holds a finished run"),
    ("finished run, search", "search.py", [], "already holds a finished run"),
    ("typo at the top", "train.py", ["+seeed=3"], "unknown key 'seeed': did you mean 'seed'"),
    ("typo under eval", "train.py", ["+eval.limt=3"], "unknown key 'eval.limt'"),
    ("typo under trainer", "train.py", ["+trainer.max_stepz=3"], "'trainer.max_stepz'"),
    ("gpu on a cpu machine", "train.py", ["trainer=gpu"], "trainer.accelerator=gpu"),
    ("unknown metric", "train.py", ["optimized_metric=test/acc"], "optimized_metric='test/acc'"),
    ("match without a file", "train.py", ["budget=match"], "budget=match reads the size"),
    ("match, missing file", "train.py", ["budget=match", "searched=/no/a.json"], "budget.path="),
    ("rank above width", "train.py", ["allocation.rank=65", "new"], "no rank above 64"),
    (
        "adalora with nothing to prune",
        "train.py",
        ["allocation=adalora", "allocation.init_ratio=1.0", "new"],
        "allocation.init_ratio=1.0 must be > 1",
    ),
    ("bad batch size", "search.py", ["task.datamodule.batch_size=0"], "batch_size=0"),
    (
        "missing data file",
        "train.py",
        ["task=commonsense_qa", "task.datamodule.task_kwargs.path=/no/such.jsonl"],
        "task.datamodule.task_kwargs.path=/no/such.jsonl",
    ),
]


@pytest.mark.parametrize("name,script,overrides,words", CASES, ids=[c[0] for c in CASES])
def test_one_line_and_nothing_changed(finished, tmp_path, name, script, overrides, words):
    # every case is pointed at the finished run (those refused for another reason must
    # leave it byte for byte as well), but those checked after the folder ("new"), which
    # go to a new folder that must not be left behind
    folder = finished
    if "new" in overrides:
        overrides, folder = [o for o in overrides if o != "new"], tmp_path / "new"
    before = tree(finished)
    done = run(script, *TINY, *overrides, f"hydra.run.dir={folder}")
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("Error: ") and words in lines[0], lines[0]
    assert tree(finished) == before
    assert folder == finished or not folder.exists()


def test_a_refused_new_folder_is_not_left_behind(tmp_path):
    out = tmp_path / "new"
    done = run("train.py", *TINY, "+seeed=3", f"hydra.run.dir={out}")
    assert done.returncode == 1 and "seeed" in done.stderr
    assert not out.exists()


def test_a_bad_data_file_names_its_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "q"}\n{"question": \n')
    done = run(
        "train.py",
        *TINY,
        "task=commonsense_qa",
        f"task.datamodule.task_kwargs.path={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"task.datamodule.task_kwargs.path={data}: line 2" in done.stderr


def test_full_error_shows_the_traceback(tmp_path):
    env_run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "+seeed=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"},
        timeout=300,
    )
    assert env_run.returncode == 1 and "seeed" in env_run.stderr
    assert "Traceback" in env_run.stderr


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "task_name": "train"})
    hint = _resume_hint(cfg)
    assert f"the last checkpoint is {ckpt}" in hint
    assert f"resume with: python train.py hydra.run.dir={tmp_path} ckpt_path={ckpt}" in hint
    empty = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "none")}})
    assert "no checkpoint was written yet" in _resume_hint(empty)
