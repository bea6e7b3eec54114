"""One supervised example, the unit every task loader produces.

``output`` is the exact target string the model is trained to produce. For
multiple-choice tasks ``options`` holds every candidate target in the same form
as ``output`` (so they can be scored by log-likelihood) and ``label`` indexes
the gold one. ``answer`` is the gold answer as the task's regex extracts it from
a generation (e.g. ``"B"`` out of ``"The answer is B."``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str = ""
    output: str = ""
    options: tuple[str, ...] = ()
    label: int | None = None
    answer: str = ""

    def __post_init__(self):
        if self.options and (self.label is None or not 0 <= self.label < len(self.options)):
            raise ValueError(f"label {self.label} is not an index into {len(self.options)} options")
