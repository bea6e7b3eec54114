"""BIG-bench multiple-choice tasks, read from the ``bigbench==1.0.0`` source archive.

The 358 MB sdist is fetched once with pip into the cache
(``$GUILOMO_CACHE/bigbench``, default ``~/.cache/guilomo/bigbench``), never into
the repository: the task files ask that benchmark data stay out of training
corpora and version control. Only the ``task.json`` of the requested subtask is
read out of the archive and cached as ``tasks/<subtask>/task.json``.

Each example's ``target_scores`` gives the options (its keys, in file order) and
the gold one (argmax). The instruction is the task's ``task_prefix`` (or its
description); the input is the example text, followed by the options unless the
task sets ``append_choices_to_input: false``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from guilomo.data.example import Example
from guilomo.data.tasks.base import TaskSpec, only_train
from guilomo.utils.cache import cache_root

REQUIREMENT = "bigbench==1.0.0"
ARCHIVE = "bigbench-1.0.0.tar.gz"
MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/{}/task.json"


def default_cache() -> Path:
    return cache_root() / "bigbench"


def fetch_hint(cache: Path) -> str:
    return (
        f"python -m pip download --no-deps {REQUIREMENT} -d {cache}\n"
        "(pip >= 26 refuses this sdist because it declares a direct-URL dependency; with it use "
        f"`python -m pip install --target /tmp/pip25 'pip<26' && PYTHONPATH=/tmp/pip25 "
        f"python -m pip download --no-deps {REQUIREMENT} -d {cache}`)"
    )


def _pip(args: list[str], env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _download(cache: Path) -> str:
    """pip-download the archive into ``cache``; returns pip's error output (empty on success).

    pip >= 26 refuses this sdist (its metadata declares a direct-URL dependency), so
    with such a pip an older one is first installed into ``cache/_pip25`` and run.
    """
    get = ["download", "--no-deps", REQUIREMENT, "-d", str(cache)]
    env = None
    if int(version("pip").split(".")[0]) >= 26:
        legacy = cache / "_pip25"
        boot = _pip(["install", "--target", str(legacy), "pip<26"])
        if boot.returncode:
            return boot.stderr
        env = {**os.environ, "PYTHONPATH": str(legacy)}
    run = _pip(get, env=env)
    shutil.rmtree(cache / "_pip25", ignore_errors=True)
    return run.stderr if run.returncode else ""


def task_json(subtask: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the cached ``task.json`` of ``subtask`` (e.g. ``multiemo/reviews_sentence_en``)."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache()
    subtask = subtask.strip("/")
    if ".." in Path(subtask).parts:
        raise ValueError(f"invalid BIG-bench subtask {subtask!r}")
    out = cache / "tasks" / subtask / "task.json"
    if out.exists():
        return out
    archive = cache / ARCHIVE
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        err = _download(cache)
        if not archive.exists():
            raise FileNotFoundError(
                f"BIG-bench archive {archive} is missing and could not be downloaded"
                f"{': ' + err.strip()[-500:] if err else ''}\nFetch it with:\n{fetch_hint(cache)}"
            )
    with tarfile.open(archive) as tar:
        for info in tar:  # stream the archive, stop at the member
            if info.name == MEMBER.format(subtask):
                data = tar.extractfile(info).read()
                break
        else:
            raise FileNotFoundError(
                f"no BIG-bench task {subtask!r} in {archive} (names look like 'social_iqa' "
                "or 'multiemo/reviews_sentence_en')"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def load(split="train", subtask="multiemo/reviews_sentence_en", cache_dir=None) -> list[Example]:
    only_train("bigbench", split)
    task = json.loads(task_json(subtask, cache_dir).read_text(encoding="utf-8"))
    rows = task.get("examples", [])
    if not rows or any("target_scores" not in r for r in rows):
        raise ValueError(
            f"BIG-bench task {subtask!r} has no multiple-choice examples (target_scores); if it is a "
            f"parent task name one of its subtasks ('{subtask}/<name>'), else pick a multiple-choice "
            "task, e.g. multiemo/reviews_sentence_en, social_iqa, strategyqa"
        )
    instruction = (task.get("task_prefix") or task.get("description", "")).strip()
    append = task.get("append_choices_to_input", True)
    examples = []
    for r in rows:
        options = tuple(str(k) for k in r["target_scores"])
        scores = list(r["target_scores"].values())
        gold = scores.index(max(scores))
        text = str(r["input"]).strip()
        if append:
            text += "\nOptions:\n" + "\n".join(f"- {o}" for o in options)
        examples.append(Example(instruction, text, options[gold], options, gold, options[gold]))
    return examples


SPEC = TaskSpec("bigbench", load, r"(?s)^\s*(.*?)\s*$", multiple_choice=True)
