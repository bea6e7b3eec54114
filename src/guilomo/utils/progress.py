"""Progress displays: Lightning's rich bar for training, a rich bar for evaluation.

:class:`StepProgressBar` is Lightning's ``RichProgressBar`` without the ``Epoch 0/-2``
it shows when only ``max_steps`` bounds the run (Lightning then sets
``max_epochs=-1``): the description reads ``Epoch 0``, with ``(max_steps=100)``
when steps bound the run (the bar itself counts the batches of the epoch).

:func:`eval_progress` wraps the batch loop of an evaluation (``progress=`` of
:func:`guilomo.eval.evaluate`) in a rich progress bar, or returns ``None`` (no
display) when progress bars are switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        if trainer.max_epochs not in (None, -1):
            text += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps not in (None, -1):
            text += f" (max_steps={trainer.max_steps})"
        if len(self.validation_description) > len(text):  # as Lightning: no flicker
            text = f"{text:{len(self.validation_description)}}"
        return text


def eval_progress(description: str, enabled: bool = True) -> Callable[[Iterable], Iterable] | None:
    """``progress(iterable)`` showing a bar named ``description``; ``None`` if not ``enabled``."""
    if not enabled:
        return None

    def progress(iterable: Iterable) -> Iterable:
        from rich.progress import track

        return track(iterable, description=description)

    return progress
