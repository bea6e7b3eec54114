"""OpenBookQA (hub ``allenai/openbookqa``, config ``main``): 4-way lettered multiple choice.

Hub columns: question_stem, choices {text, label}, answerKey.
"""

from __future__ import annotations

from guilomo.data.tasks.base import LETTER_PATTERN, TaskSpec, letter_example
from guilomo.data.tasks.hub import load_rows


def load(split="train", path="allenai/openbookqa", name="main", data_files=None):
    rows = load_rows(path, split, name, data_files)
    return [
        letter_example(
            r["question_stem"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"])
        )
        for r in rows
        if r.get("answerKey")
    ]


SPEC = TaskSpec("openbookqa", load, LETTER_PATTERN, multiple_choice=True)
