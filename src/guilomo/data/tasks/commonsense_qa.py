"""CommonsenseQA (hub ``tau/commonsense_qa``): 5-way lettered multiple choice.

Hub columns: question, choices {label, text}, answerKey. The hub test split has
no answers (empty answerKey): such rows are skipped, so evaluate on 'validation'.
"""

from __future__ import annotations

from guilomo.data.tasks.base import LETTER_PATTERN, TaskSpec, letter_example
from guilomo.data.tasks.hub import load_rows


def load(split="train", path="tau/commonsense_qa", name=None, data_files=None):
    rows = load_rows(path, split, name, data_files)
    return [
        letter_example(
            r["question"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"])
        )
        for r in rows
        if r.get("answerKey")
    ]


SPEC = TaskSpec("commonsense_qa", load, LETTER_PATTERN, multiple_choice=True)
