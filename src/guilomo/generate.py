"""``python -m guilomo.generate``: kept for the current command; the tool is :mod:`guilomo.tools.generate`."""

from guilomo.tools.generate import main
from guilomo.utils.cli import run

__all__ = ["main"]

if __name__ == "__main__":
    run(main)
