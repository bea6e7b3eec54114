"""The task's data, checked before any weights load: the files open, parse, and hold rows.

:func:`check_task_data` loads every split the run will read (``train_split`` and the
``val_split`` / ``test_split`` that are set) exactly as the datamodule will, and turns
whatever goes wrong into one :class:`~guilomo.utils.checks.ConfigError` naming the key
(``task.datamodule.task_kwargs.path`` when the task reads a file, else
``task.datamodule.task_kwargs``), the file, and for a JSON-lines file the line. A hub id
(not a local path) is not fetched here: the datamodule reads it when the run starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from guilomo.data.tasks import get_task
from guilomo.data.tasks.hub import looks_local
from guilomo.utils.checks import ConfigError

KEY = "task.datamodule.task_kwargs"


def _is_hub_id(path: str) -> bool:
    return not Path(path).expanduser().exists() and not looks_local(path)


def check_jsonl(path: Path, key: str) -> None:
    """Every non-empty line of a ``.jsonl`` file is a JSON object (naming the first bad line)."""
    with path.open(encoding="utf-8", errors="strict") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}={path}: line {i} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{key}={path}: line {i} is not a JSON object ({{...}})")


def check_task_data(task: str, task_kwargs: Mapping | None, splits: list[str]) -> None:
    """Load ``splits`` of ``task`` with ``task_kwargs`` (see the module docstring)."""
    kwargs = dict(task_kwargs or {})
    spec = get_task(task)
    path = kwargs.get("path")
    key = f"{KEY}.path" if path is not None else KEY
    shown = f"{key}={path}" if path is not None else f"{key}={kwargs}"
    if isinstance(path, str):
        if _is_hub_id(path):
            return
        local = Path(path).expanduser()
        if not local.exists():
            raise ConfigError(f"{shown}: no such file or folder; give the data file or folder")
        files = [local] if local.is_file() else sorted(local.glob("*"))
        for f in files:
            if f.is_file() and f.suffix == ".jsonl":
                check_jsonl(f, key)
            if f.is_file() and f.stat().st_size == 0:
                raise ConfigError(f"{key}={f}: the file is empty")
    for split in splits:
        try:
            rows = spec.load(split, **kwargs)
        except ConfigError:
            raise
        except Exception as e:  # the libraries' own errors name neither the key nor the file
            raise ConfigError(
                f"{shown}: cannot read task {task!r} split {split!r} "
                f"({type(e).__name__}: {str(e)[:300]}); check the file has this task's columns"
            ) from e
        if not rows:
            raise ConfigError(f"{shown}: task {task!r} split {split!r} has no examples")
