"""Accumulated classification metrics (torchmetrics): accuracy, MCC (CoLA), F1 (MRPC).

Predictions and targets are class indices ``0..num_classes-1`` (for option tasks,
the option's position). A prediction of ``None`` (a malformed answer) always counts
as wrong: it is replaced by a class different from the target, ``(target + 1) %
num_classes`` (for binary tasks: the other class), so it lowers accuracy and also
enters the MCC/F1 confusion matrix as a mistake.

- ``accuracy``: ``MulticlassAccuracy(average="micro")``, the fraction correct.
- ``mcc``: ``BinaryMatthewsCorrCoef`` (0 when undefined, e.g. one class only).
- ``f1``: ``BinaryF1Score`` of the ``positive`` class (default index 1; 0 when
  there are no positive predictions and targets).

:class:`NllMeter` accumulates the held-out loss (gold-answer negative log-likelihood per
token) the same way. MCC and F1 need ``num_classes == 2``. Values are floats in ``[0, 1]`` (MCC in
``[-1, 1]``); ``compute`` before any update gives NaN.

Data-parallel evaluation: when ``torch.distributed`` is initialised (e.g. after a
Lightning DDP fit), every process updates with its own shard of the examples and
``compute`` / ``totals`` return the values over all shards (torchmetrics syncs its
states, the example and invalid counts included). Every process must then call them,
in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import SumMetric
from torchmetrics.classification import BinaryF1Score, BinaryMatthewsCorrCoef, MulticlassAccuracy

METRICS = ("accuracy", "mcc", "f1")


class Metrics:
    """Streaming metrics over batches of ``(predictions, targets)``."""

    def __init__(
        self, names: Sequence[str] = ("accuracy",), num_classes: int = 2, positive: int = 1
    ):
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; available: {list(METRICS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        binary = [n for n in names if n in ("mcc", "f1")]
        if binary and num_classes != 2:
            raise ValueError(f"{binary} need a binary task (2 classes), this one has {num_classes}")
        if positive not in range(num_classes):
            raise ValueError(f"positive class {positive} is not in 0..{num_classes - 1}")
        self.names = names
        self.num_classes = int(num_classes)
        self.positive = int(positive)
        self._metrics = {}
        for n in names:
            if n == "accuracy":
                self._metrics[n] = MulticlassAccuracy(num_classes=self.num_classes, average="micro")
            elif n == "mcc":
                self._metrics[n] = BinaryMatthewsCorrCoef()
            else:
                self._metrics[n] = BinaryF1Score()
        self.count = 0  # this process's examples (``totals`` for all processes)
        self.invalid = 0
        self._totals = {"n": SumMetric(), "invalid": SumMetric()}

    def update(self, preds: Sequence[int | None], targets: Sequence[int]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
        if not targets:
            return
        c = self.num_classes
        t = [int(x) for x in targets]
        if any(not 0 <= x < c for x in t):
            raise ValueError(f"targets must be in 0..{c - 1}, got {sorted(set(t))}")
        p = []
        for pred, tgt in zip(preds, t, strict=True):
            if pred is None:
                self.invalid += 1
                p.append((tgt + 1) % c)
            elif not 0 <= int(pred) < c:
                raise ValueError(f"prediction {pred} is not in 0..{c - 1}")
            else:
                p.append(int(pred))
        pt, tt = torch.tensor(p), torch.tensor(t)
        for n, m in self._metrics.items():
            if n == "accuracy":
                m.update(pt, tt)
            else:
                m.update((pt == self.positive).long(), (tt == self.positive).long())
        self.count += len(t)
        self._totals["n"].update(torch.tensor(float(len(t))))
        self._totals["invalid"].update(torch.tensor(float(sum(x is None for x in preds))))

    def totals(self) -> dict[str, int]:
        """``{"n": examples, "invalid": unreadable predictions}`` over all processes."""
        return {k: int(m.compute()) for k, m in self._totals.items()}

    def compute(self) -> dict[str, float]:
        if self.totals()["n"] == 0:
            return {n: math.nan for n in self.names}
        return {n: float(m.compute()) for n, m in self._metrics.items()}

    def reset(self) -> None:
        for m in (*self._metrics.values(), *self._totals.values()):
            m.reset()
        self.count = 0
        self.invalid = 0


def compute_metrics(
    preds: Sequence[int | None],
    targets: Sequence[int],
    names: Sequence[str] = ("accuracy",),
    num_classes: int = 2,
    positive: int = 1,
) -> dict[str, float]:
    """One-shot :class:`Metrics`."""
    m = Metrics(names, num_classes, positive)
    m.update(preds, targets)
    return m.compute()


class NllMeter:
    """Summed negative log-likelihood of gold-answer tokens over summed token counts.

    ``update(nlls, tokens, hits)`` takes each example's summed NLL (nats), its token count
    and, optionally, how many of its tokens were the model's greedy choice; ``compute``
    is ``sum(nlls) / sum(tokens)`` over all updates (and all processes of a data-parallel
    run): the token-weighted mean, NaN before any token. ``token_accuracy`` is
    ``sum(hits) / sum(tokens)`` (teacher-forced token accuracy), ``None`` unless every
    update had hits.
    """

    def __init__(self):
        self._nll, self._tokens, self._examples = SumMetric(), SumMetric(), SumMetric()
        self._hits = SumMetric()
        self._all_hits = True

    def update(
        self, nlls: Sequence[float], tokens: Sequence[int], hits: Sequence[int] | None = None
    ) -> None:
        if len(nlls) != len(tokens):
            raise ValueError(f"{len(nlls)} losses but {len(tokens)} token counts")
        if any(int(t) < 1 for t in tokens):
            raise ValueError("every scored answer must have at least one token")
        if hits is None:
            self._all_hits = False
        elif len(hits) != len(tokens) or any(
            not 0 <= h <= t for h, t in zip(hits, tokens, strict=True)
        ):
            raise ValueError("hits must be one count per answer, between 0 and its tokens")
        else:
            self._hits.update(torch.tensor(float(sum(hits)), dtype=torch.float64))
        self._nll.update(torch.tensor(float(sum(nlls)), dtype=torch.float64))
        self._tokens.update(torch.tensor(float(sum(int(t) for t in tokens)), dtype=torch.float64))
        self._examples.update(torch.tensor(float(len(tokens)), dtype=torch.float64))

    def token_accuracy(self) -> float | None:
        """Greedy hits over gold tokens, or ``None`` if some update came without hits."""
        if not self._all_hits:
            return None
        tokens = float(self._tokens.compute())
        return float(self._hits.compute()) / tokens if tokens > 0 else None

    def examples(self) -> int:
        """Examples scored (over all processes)."""
        return int(self._examples.compute())

    def compute(self) -> float:
        tokens = float(self._tokens.compute())
        return float(self._nll.compute()) / tokens if tokens > 0 else math.nan
