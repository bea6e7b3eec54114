"""ChatterBot English corpus (PyPI ``chatterbot-corpus``): 21 topic YAML files of Q/A pairs.

Each file has ``categories`` and ``conversations`` (lists whose first element is
the question and second the answer). The topic of a file is its stem (``ai``,
``tech_support``...), one word so the answer regex can take the first word.

* ``chatterbot_topic``: question -> topic. By default the 8 topics with the most
  distinct questions (ties by name), or ``topics``; questions are de-duplicated
  (``max_per_topic`` keeps the first N of each topic), and a question found
  under two chosen topics is dropped (its label would be ambiguous).
* ``chatterbot_qa``: question -> answer (first answer of each distinct question).

The package folder is found without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import yaml

from guilomo.data.example import Example
from guilomo.data.tasks.base import TaskSpec, only_train


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package chatterbot-corpus not found; run: pip install --no-deps chatterbot-corpus==1.3.3"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


@functools.lru_cache(maxsize=4)
def read_corpus(data_dir: str | None = None) -> dict[str, tuple[tuple[str, str], ...]]:
    """{topic: ((question, answer), ...)} in file order, topics sorted by name (cached)."""
    root = Path(data_dir).expanduser() if data_dir else corpus_dir()
    files = sorted(root.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no ChatterBot *.yml files in {root} (check task_kwargs.data_dir)")
    corpus = {}
    for f in files:
        convs = yaml.safe_load(f.read_text(encoding="utf-8"))["conversations"]
        corpus[f.stem] = tuple((str(c[0]).strip(), str(c[1]).strip()) for c in convs if len(c) >= 2)
    return corpus


def load_topic(
    split="train", topics=None, num_topics=8, max_per_topic=None, data_dir=None
) -> list[Example]:
    only_train("chatterbot_topic", split)
    corpus = read_corpus(data_dir)
    questions = {t: list(dict.fromkeys(q for q, _ in pairs)) for t, pairs in corpus.items()}
    if topics is None:
        topics = sorted(sorted(questions), key=lambda t: -len(questions[t]))[:num_topics]
        topics = sorted(topics)
    unknown = [t for t in topics if t not in questions]
    if unknown:
        raise ValueError(f"unknown ChatterBot topics {unknown}; available: {sorted(questions)}")
    owners: dict[str, list[str]] = {}
    for t in topics:
        for q in questions[t][:max_per_topic]:
            owners.setdefault(q, []).append(t)
    instruction = "Which topic is this question about? Topics: " + ", ".join(topics) + "."
    return [
        Example(
            instruction,
            input=q,
            output=ts[0],
            options=tuple(topics),
            label=topics.index(ts[0]),
            answer=ts[0],
        )
        for q, ts in owners.items()
        if len(ts) == 1
    ]


def load_qa(split="train", topics=None, data_dir=None) -> list[Example]:
    only_train("chatterbot_qa", split)
    corpus = read_corpus(data_dir)
    unknown = [t for t in topics or [] if t not in corpus]
    if unknown:
        raise ValueError(f"unknown ChatterBot topics {unknown}; available: {sorted(corpus)}")
    first: dict[str, str] = {}
    for t in topics or corpus:
        for q, a in corpus[t]:
            first.setdefault(q, a)
    return [Example(q, output=a, answer=a) for q, a in first.items()]


SPECS = [
    TaskSpec("chatterbot_topic", load_topic, r"^\s*(\w+)", multiple_choice=True),
    TaskSpec("chatterbot_qa", load_qa, r"(?s)^\s*(.*?)\s*$"),
]
