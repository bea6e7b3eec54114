"""``python -m guilomo.merge``: kept for the current command; the tool is :mod:`guilomo.tools.merge`."""

from guilomo.tools.merge import main
from guilomo.utils.cli import run

__all__ = ["main"]

if __name__ == "__main__":
    run(main)
