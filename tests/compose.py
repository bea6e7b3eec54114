"""Compose the real Hydra configs in tests (no command line, no Hydra run dir)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_cfg(name: str, overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``; ``paths.output_dir`` pointed at ``output_dir``."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=[*overrides, *extra])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))
