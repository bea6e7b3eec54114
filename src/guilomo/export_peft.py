"""``python -m guilomo.export_peft``: kept for the current command; the tool is :mod:`guilomo.tools.export_peft`."""

from guilomo.tools.export_peft import main
from guilomo.utils.cli import run

__all__ = ["main"]

if __name__ == "__main__":
    run(main)
