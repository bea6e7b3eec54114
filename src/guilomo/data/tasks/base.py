"""What every task shares: the ``TaskSpec`` record and small formatting helpers.

A task's ``answer_pattern`` is a regex with one capture group, searched in a
model generation by the one answer reader, :func:`guilomo.eval.answer.extract_answer`,
and compared with the normalised ``Example.answer``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from guilomo.data.example import Example

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_PATTERN = r"[Tt]he answer is:?\s*\(?((?-i:[A-Z]))\b"  # capital letter even under re.I


@dataclass(frozen=True)
class TaskSpec:
    name: str
    loader: Callable[..., list[Example]]  # loader(split="train", **task_kwargs)
    answer_pattern: str
    metrics: tuple[str, ...] = ("accuracy",)
    multiple_choice: bool = False

    def load(self, split: str = "train", **kwargs) -> list[Example]:
        options = [p for p in inspect.signature(self.loader).parameters if p != "split"]
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise TypeError(
                f"task {self.name!r} has no option(s) {unknown}; its task_kwargs: {options}"
            )
        return self.loader(split=split, **kwargs)


def only_train(task: str, split: str) -> None:
    """Sources without splits accept only split='train' (the datamodule carves val/test)."""
    if split != "train":
        raise ValueError(
            f"task {task!r} has no {split!r} split (its source is a single pool); "
            "set test_split/val_split to null so the datamodule carves held-out splits"
        )


def letter_example(question: str, choices: Sequence[str], gold: int, context: str | None = None):
    """A lettered multiple-choice example: 'Question: ...\\nOptions: (A) x (B) y', target 'The answer is A.'."""
    head = "" if context is None else f"Context: {context or 'N/A'}\n"
    opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return Example(
        instruction=f"{head}Question: {question}\nOptions: {opts}",
        output=f"The answer is {LETTERS[gold]}.",
        options=tuple(f"The answer is {LETTERS[i]}." for i in range(len(choices))),
        label=gold,
        answer=LETTERS[gold],
    )
