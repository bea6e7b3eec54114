"""ScienceQA (hub ``derek-thomas/ScienceQA``), text-only questions.

Hub columns: image, question, choices (list), answer (int), hint, ... Rows with
an image are skipped. Prompt ``Context: <hint or N/A>\\nQuestion: ...\\nOptions:
(A) ... (B) ...``, target ``The answer is X.``.
"""

from __future__ import annotations

from guilomo.data.tasks.base import LETTER_PATTERN, TaskSpec, letter_example
from guilomo.data.tasks.hub import load_rows


def load(split="train", path="derek-thomas/ScienceQA", name=None, data_files=None):
    rows = load_rows(path, split, name, data_files)
    return [
        letter_example(r["question"], r["choices"], int(r["answer"]), context=r.get("hint") or "")
        for r in rows
        if r.get("image") is None
    ]


SPEC = TaskSpec("scienceqa", load, LETTER_PATTERN, multiple_choice=True)
