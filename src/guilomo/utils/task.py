"""The task wrapper of both entry points (lightning-hydra-template's ``task_wrapper``).

One job of a Hydra run or multirun is one call of a wrapped run function:

- the console shows each log line once: the ``lightning`` package puts its own stderr
  handler on its loggers; while Hydra's handlers are on the root logger they go;
- a W&B run started during the call is finished when the call returns or raises, so
  the next job in the same process (basic launcher, joblib's reused workers) gets a
  run of its own, and a later job's failure never closes an earlier job's good run;
- an exception is written to the job's log (Hydra's ``<job name>.log``) and into the
  W&B run (summary ``error/type``, ``error/message``, ``error/traceback``, exit code
  1), then re-raised;
- a user error (:data:`guilomo.utils.errors.USER_ERRORS`: bad input, whose message names
  the key and the fix) is one line, ``Error: <message>``, with no traceback: a single run
  exits with code 1, a multirun job logs the line and fails (Hydra goes on with the
  other jobs). ``HYDRA_FULL_ERROR=1`` shows the traceback as for any other error;
- Ctrl-C (SIGINT) ends with where the last checkpoint is and how to resume from it.

``metric_value`` is what ``main()`` returns to a sweeper: the scalar named by
``optimized_metric`` (see ``conf/hparams_search/``) among the run's ``scalars`` (the
numbers its loggers got, also in ``metrics.json``; :func:`read_scalars`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from guilomo.utils.errors import USER_ERRORS
from guilomo.utils.runfiles import METRICS_FILE

log = logging.getLogger(__name__)

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class _DropTip(logging.Filter):
    """Lightning advertises a hosted logger on every Trainer construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_TIP_FILTER = _DropTip()


def tidy_console_logging() -> None:
    """Leave one handler per log line: Hydra's, when Hydra has configured logging.

    Also drops two lines of noise that are not about the run: Lightning's hosted-logger
    tip and its own deprecation warning about torch's pytree API.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if not logging.getLogger().handlers:  # no Hydra: keep Lightning's own console output
        return
    for name in LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:  # Lightning's; Hydra's sit on the root
                lg.removeHandler(h)
        lg.propagate = True


def _current_wandb_run():
    wandb = sys.modules.get("wandb")  # never imported: no run can exist
    return getattr(wandb, "run", None) if wandb is not None else None


def _record_failure(run, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        run.summary["error/type"] = type(exc).__name__
        run.summary["error/message"] = str(exc)[:2000]
        run.summary["error/traceback"] = text[-8000:]
    except Exception:  # the run may itself be what failed; the job log has the error
        log.warning("could not record the error in the W&B run", exc_info=True)


def task_wrapper(fn: Callable) -> Callable:
    """Wrap a run function ``fn(cfg)`` (see the module docstring); returns what ``fn`` returns."""

    @functools.wraps(fn)
    def wrap(cfg, *args, **kwargs):
        tidy_console_logging()
        before = _current_wandb_run()  # a caller's own run (e.g. a W&B sweep agent) stays open
        failed = False
        try:
            return fn(cfg, *args, **kwargs)
        except USER_ERRORS as exc:
            failed = True
            _record(before, exc)
            mode = _hydra_mode(cfg)
            if mode is None or os.environ.get("HYDRA_FULL_ERROR") == "1":  # API call, or asked
                log.exception("%s failed: %s: %s", fn.__name__, type(exc).__name__, exc)
                raise
            if mode == RunMode.RUN:
                print(f"Error: {exc}", file=sys.stderr)
                raise SystemExit(1) from None
            log.error("Error: %s", exc)
            raise
        except KeyboardInterrupt:
            failed = True
            if _hydra_mode(cfg) is None:
                raise
            print(_resume_hint(cfg), file=sys.stderr)
            raise SystemExit(130) from None
        except BaseException as exc:
            failed = True
            log.exception("%s failed: %s: %s", fn.__name__, type(exc).__name__, exc)
            _record(before, exc)
            raise
        finally:
            run = _current_wandb_run()
            if run is not None and run is not before:
                run.finish(exit_code=1 if failed else 0)

    return wrap


def _record(before, exc: BaseException) -> None:
    """The error into the W&B run this job started (not a caller's own run ``before``)."""
    run = _current_wandb_run()
    if run is not None and run is not before:
        _record_failure(run, exc)


def _hydra_mode(cfg) -> RunMode | None:
    """RUN or MULTIRUN when ``cfg`` is the config of the Hydra job running now (launched
    from the command line: its output folder is the job's); else None (an API call)."""
    if not HydraConfig.initialized():
        return None
    try:
        hc = HydraConfig.get()
        job_dir = os.path.abspath(str(hc.runtime.output_dir))
        mine = os.path.abspath(str(cfg.paths.output_dir)) == job_dir
    except Exception:  # composed without a job (the compose API), or no paths
        return None
    return hc.mode if mine else None


def _resume_hint(cfg) -> str:
    """Where the last checkpoint of an interrupted run is, and the command to resume."""
    try:
        out = Path(str(cfg.paths.output_dir))
    except Exception:  # a config without paths (a direct API call)
        return "interrupted"
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return f"interrupted: no checkpoint was written yet in {out} (nothing to resume)"
    script = "search.py" if str(cfg.get("task_name")) == "search" else "train.py"
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    command = " ".join(
        ["python", script, *overrides, f"hydra.run.dir={out}", f"ckpt_path={ckpts[-1]}"]
    )
    return f"interrupted; the last checkpoint is {ckpts[-1]}\nresume with: {command}"


def metric_value(scalars: Mapping[str, float], name: str | None) -> float | None:
    """``scalars[name]`` as a float (``None`` when no metric is named), for a sweeper."""
    if not name:
        return None
    if name not in scalars:
        raise KeyError(
            f"optimized_metric={name!r} is not among this run's metrics {sorted(scalars)}; "
            "set optimized_metric to one of them"
        )
    return float(scalars[name])


def read_scalars(run_dir) -> dict[str, float]:
    """The ``scalars`` of ``<run_dir>/metrics.json`` (the numbers the loggers got)."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())["scalars"]
