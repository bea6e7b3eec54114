"""Task registry: ``TASKS[name]`` is a ``TaskSpec``; ``load_task(name, split, **kwargs)`` loads it.

Every loader takes ``split`` ("train", "validation", "test", ...) plus its own
keyword arguments (``path``/``name``/``data_files`` for hub datasets,
``subtask``/``cache_dir`` for BIG-bench, ``topics``... for ChatterBot) and
returns a list of ``Example``.
"""

from __future__ import annotations

from guilomo.data.example import Example
from guilomo.data.tasks import (
    bigbench,
    chatterbot,
    commonsense_qa,
    glue,
    gsm8k,
    openbookqa,
    scienceqa,
    vader,
)
from guilomo.data.tasks.base import TaskSpec

TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        *chatterbot.SPECS,
        bigbench.SPEC,
        scienceqa.SPEC,
        commonsense_qa.SPEC,
        openbookqa.SPEC,
        *glue.SPECS,
        gsm8k.SPEC,
        *vader.SPECS,
    )
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]


def load_task(name: str, split: str = "train", **kwargs) -> list[Example]:
    return get_task(name).load(split, **kwargs)


__all__ = ["TASKS", "TaskSpec", "get_task", "load_task"]
