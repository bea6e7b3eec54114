"""What a comparison needs, sent to every configured Lightning logger.

Scalars and hyper-parameters go through Lightning's common logger API. Tables and
images have none, so each goes where its logger keeps such things:

=============  ========================  =========================  ====================
logger         hyper-parameters          tables                     images
=============  ========================  =========================  ====================
W&B            run config                ``wandb.Table``            ``wandb.Image``
TensorBoard    HParams tab, with the     text (a markdown table)    image
               final scalars as metrics
CSV            ``hparams.yaml``          ``<log dir>/<key>.csv``    (the PNG in the run dir)
=============  ========================  =========================  ====================

A run's identity (W&B name, group, tags) comes from stage, method, backbone, task,
budget and seed (:func:`run_identity`); the logger config's own values win. An
allocation's table and heatmap go out through :mod:`guilomo.allocation_view`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from guilomo.utils.io import atomic_write_text


# -- identity -------------------------------------------------------------------------
def budget_label(budget: Mapping | None) -> str:
    """``none`` or ``<kind>=<value>`` (``params=2000000``)."""
    kind = (budget or {}).get("kind", "none")
    return "none" if kind == "none" else f"{kind}={(budget or {}).get('value')}"


@dataclass(frozen=True)
class RunIdentity:
    name: str
    group: str
    tags: list[str] = field(default_factory=list)


def run_identity(
    stage: str,
    method: str,
    backbone: str,
    task: str,
    budget: Mapping | None,
    seed,
    variant: str | None = None,
) -> RunIdentity:
    """Name (every field), group (every field but the seed: W&B aggregates seeds) and tags.

    ``variant`` refines the method (the search order of a GuiLoMo allocation).
    """
    b = budget_label(budget)
    what = [method, variant] if variant else [method]
    group = "-".join([stage, *what, backbone, task, b])
    return RunIdentity(
        name=f"{group}-s{seed}",
        group=group,
        tags=[stage, *what, backbone, task, f"budget:{b}", f"seed:{seed}"],
    )


def with_identity(logger_cfg: DictConfig | None, identity: RunIdentity | None):
    """``logger_cfg`` with W&B's ``name``/``group``/``tags`` filled where they are null."""
    if not logger_cfg or identity is None:
        return logger_cfg
    out = logger_cfg.copy()
    for c in out.values():
        if c and str(c.get("_target_", "")).endswith("WandbLogger"):
            for key in ("name", "group", "tags"):
                if c.get(key) is None:
                    c[key] = getattr(identity, key)
    return out


# -- hyper-parameters and scalars -----------------------------------------------------
def config_params(cfg: DictConfig, **extra) -> dict:
    """The resolved config as a plain dict, plus ``extra`` top-level entries."""
    params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    params.update(extra)
    return params


def log_params(loggers: Iterable[Logger], params: Mapping) -> None:
    for lg in loggers or []:
        lg.log_hyperparams(dict(params))
        lg.save()


def log_final(
    loggers: Iterable[Logger], params: Mapping, scalars: Mapping[str, float], step: int
) -> None:
    """The run's results: TensorBoard ties them to the hyper-parameters (HParams tab)."""
    for lg in loggers or []:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(_flat(params), metrics=dict(scalars), step=step)
        else:
            lg.log_metrics(dict(scalars), step=step)
        lg.save()


def _flat(d: Mapping, prefix: str = "") -> dict:
    """``{"a/b": v}`` with values TensorBoard's HParams accepts (lists/None as text)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{key}/"))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


# -- tables and images ----------------------------------------------------------------
def _file_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _markdown(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log_table(
    loggers: Iterable[Logger], key: str, columns: Sequence[str], rows: Sequence[Sequence], step: int
) -> None:
    for lg in loggers or []:
        if isinstance(lg, WandbLogger):
            lg.log_table(key=key, columns=list(columns), data=[list(r) for r in rows], step=step)
        elif isinstance(lg, TensorBoardLogger):
            lg.experiment.add_text(key, _markdown(columns, rows), global_step=step)
        elif isinstance(lg, CSVLogger):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(columns)
            writer.writerows(rows)
            folder = Path(lg.experiment.log_dir)  # the writer first: it warns on a non-empty dir
            atomic_write_text(folder / f"{_file_key(key)}.csv", buf.getvalue())


def log_image(loggers: Iterable[Logger], key: str, path: str | Path, step: int) -> None:
    for lg in loggers or []:
        if isinstance(lg, WandbLogger):
            lg.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(lg, TensorBoardLogger):
            import matplotlib.image

            rgb = matplotlib.image.imread(str(path))[..., :3]
            lg.experiment.add_image(key, rgb, global_step=step, dataformats="HWC")
