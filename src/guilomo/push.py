"""``python -m guilomo.push``: kept for the current command; the tool is :mod:`guilomo.tools.push`."""

from guilomo.tools.push import main
from guilomo.utils.cli import run

__all__ = ["main"]

if __name__ == "__main__":
    run(main)
