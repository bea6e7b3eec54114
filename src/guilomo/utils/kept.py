"""Finished work is never thrown away: a failure after training names what is on disk.

The run functions write the trained result first (adapter, then ``metrics.json``; the
search's ``allocation.json`` before its heat map) and run everything after training
inside :func:`keep_finished_work`, so an error there (an evaluation bug, a full disk,
a plotting failure) is re-raised as :class:`AfterTrainingError` listing the files that
were kept, e.g. the checkpoint to resume or re-evaluate from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AfterTrainingError(RuntimeError):
    """A step after training failed; the message lists the finished work kept on disk."""


@contextmanager
def keep_finished_work(kept: list) -> Iterator[list]:
    """Run the post-training steps; ``kept`` is appended to as files are written."""
    try:
        yield kept
    except Exception as e:
        have = [str(p) for p in kept if p and Path(p).exists()]
        listed = ", ".join(have) if have else "nothing (no checkpoint was configured)"
        raise AfterTrainingError(
            f"training finished but a later step failed ({type(e).__name__}: {e}); the "
            f"finished work is kept on disk: {listed}"
        ) from e


def last_checkpoint(trainer) -> list[str]:
    """``[path of the last checkpoint]`` the trainer wrote, or ``[]``."""
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return [path] if path else []
