"""VADER sentiment lexicon (PyPI ``vaderSentiment``, MIT): 7,520 English words, emoticons
and slang, each rated by 10 people from -4 (extremely negative) to +4 (extremely positive).

A real, human-annotated, offline classification pool large enough for test sets of
thousands. The lexicon file ``vader_lexicon.txt`` (token, mean rating, std, the ten
ratings) is read from the package folder without importing the package.

* ``vader_intensity``: token -> the class of its mean rating, 4-way:
  ``very negative`` (<= -2), ``negative`` (-2, 0), ``positive`` [0, 2), ``very positive``
  (>= 2). The majority class (``negative``) is 39 % of the lexicon.
* ``vader_polarity``: token -> ``negative`` (< 0) or ``positive`` (>= 0).

``min_agreement`` keeps only tokens whose raters' std is at most the given value.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from guilomo.data.example import Example
from guilomo.data.tasks.base import TaskSpec, only_train

LEXICON = "vader_lexicon.txt"
INTENSITY = ("very negative", "negative", "positive", "very positive")
POLARITY = ("negative", "positive")


def lexicon_path(data_dir: str | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser() / LEXICON
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package vaderSentiment not found; run: pip install --no-deps vaderSentiment==3.3.2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / LEXICON


@functools.lru_cache(maxsize=4)
def read_lexicon(data_dir: str | None = None) -> tuple[tuple[str, float, float], ...]:
    """((token, mean rating, std), ...) in file order (cached); malformed lines are an error."""
    path = lexicon_path(data_dir)
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{path}:{i}: expected 'token<TAB>mean<TAB>std...', got {line!r}")
        rows.append((parts[0], float(parts[1]), float(parts[2])))
    if not rows:
        raise ValueError(f"{path} holds no ratings")
    return tuple(rows)


def intensity_class(rating: float) -> int:
    """Index into :data:`INTENSITY` of a mean rating."""
    return 0 if rating <= -2 else 1 if rating < 0 else 2 if rating < 2 else 3


def _load(labels, classify, task: str, split, min_agreement, data_dir) -> list[Example]:
    only_train(task, split)
    instruction = (
        "How positive or negative is this English word or expression? Answer with one of: "
        + ", ".join(labels)
        + "."
    )
    out = []
    for token, rating, std in read_lexicon(data_dir):
        if min_agreement is not None and std > min_agreement:
            continue
        gold = classify(rating)
        out.append(Example(instruction, token, labels[gold], labels, gold, labels[gold]))
    return out


def load_intensity(split="train", min_agreement=None, data_dir=None) -> list[Example]:
    return _load(INTENSITY, intensity_class, "vader_intensity", split, min_agreement, data_dir)


def load_polarity(split="train", min_agreement=None, data_dir=None) -> list[Example]:
    return _load(POLARITY, lambda r: int(r >= 0), "vader_polarity", split, min_agreement, data_dir)


SPECS = [
    TaskSpec("vader_intensity", load_intensity, r"(?s)^\s*(.*?)\s*$", multiple_choice=True),
    TaskSpec("vader_polarity", load_polarity, r"(?s)^\s*(.*?)\s*$", multiple_choice=True),
]
