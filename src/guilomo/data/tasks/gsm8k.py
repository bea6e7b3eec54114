"""GSM8K (hub ``openai/gsm8k``, config ``main``): grade-school maths, free-form.

Hub columns: question, answer (reasoning, then ``#### 42``). Target: the
reasoning (calculator annotations ``<<48/2=24>>`` removed unless
``keep_calculator``) followed by ``The answer is 42.``; the regex takes the
number after "The answer is" (commas dropped).
"""

from __future__ import annotations

import re

from guilomo.data.example import Example
from guilomo.data.tasks.base import TaskSpec
from guilomo.data.tasks.hub import load_rows

PATTERN = r"[Tt]he answer is:?\s*\$?\s*(-?[\d,]*\.?\d+)"


def number(text: str) -> str:
    return text.strip().replace(",", "")


def load(split="train", path="openai/gsm8k", name="main", data_files=None, keep_calculator=False):
    examples = []
    for r in load_rows(path, split, name, data_files):
        reasoning, _, final = r["answer"].rpartition("####")
        if not keep_calculator:
            reasoning = re.sub(r"<<[^>]*>>", "", reasoning)
        answer = number(final)
        output = f"{reasoning.strip()}\nThe answer is {answer}.".lstrip()
        examples.append(Example(r["question"].strip(), output=output, answer=answer))
    return examples


SPEC = TaskSpec("gsm8k", load, PATTERN)
