"""GLUE CoLA, MRPC and RTE (hub ``nyu-mll/glue``, one config each) as word-answer tasks.

Targets are label words; ``options`` follow GLUE's label ints, so ``label`` is
the GLUE label and 1 is the positive class for F1 / MCC. GLUE test splits have
no labels (-1; skipped): evaluate on 'validation'.
"""

from __future__ import annotations

from guilomo.data.example import Example
from guilomo.data.tasks.base import TaskSpec
from guilomo.data.tasks.hub import load_rows

GLUE = {  # config: (instruction, input fields with their prompt names, label words, metrics)
    "cola": (
        "Is the following sentence grammatically acceptable? Answer acceptable or unacceptable.",
        {"sentence": ""},
        ("unacceptable", "acceptable"),
        ("accuracy", "mcc"),
    ),
    "mrpc": (
        "Do the two sentences mean the same thing? Answer equivalent or not_equivalent.",
        {"sentence1": "Sentence 1: ", "sentence2": "Sentence 2: "},
        ("not_equivalent", "equivalent"),
        ("accuracy", "f1"),
    ),
    "rte": (
        "Does the premise entail the hypothesis? Answer entailment or not_entailment.",
        {"sentence1": "Premise: ", "sentence2": "Hypothesis: "},
        ("entailment", "not_entailment"),
        ("accuracy",),
    ),
}


def _loader(config: str):
    instruction, fields, words, _ = GLUE[config]

    def load(split="train", path="nyu-mll/glue", name=config, data_files=None) -> list[Example]:
        examples = []
        for r in load_rows(path, split, name, data_files):
            if int(r["label"]) < 0:
                continue
            text = "\n".join(f"{prefix}{r[col]}" for col, prefix in fields.items())
            label = int(r["label"])
            examples.append(Example(instruction, text, words[label], words, label, words[label]))
        return examples

    load.__name__ = f"load_{config}"
    return load


def _spec(config: str) -> TaskSpec:
    words, metrics = GLUE[config][2], GLUE[config][3]
    alternatives = "|".join(sorted(words, key=len, reverse=True))  # longest first: not_x before x
    return TaskSpec(f"glue_{config}", _loader(config), rf"(?i)\b({alternatives})\b", metrics, True)


SPECS = [_spec(c) for c in GLUE]
