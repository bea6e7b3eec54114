"""One run, one folder: unique default run folders, and a lock no second run can take.

- ``${guilomo.run_id:}`` (an OmegaConf resolver, used by ``conf/hydra/default.yaml``)
  is a random token, so two runs started in the same second get different folders
  (``<date>_<time>_<token>``). Like Hydra's ``${now:}`` it is cached in the config, and
  Hydra copies that cache into every multirun job's config, so the jobs of one sweep
  share its folder and two sweeps never do.
- :func:`claim` takes an exclusive ``flock`` on ``<folder>/.guilomo.lock`` for the life of
  the process: a second run pointed at the same folder fails at once, naming the run
  that holds it. The kernel drops the lock when the holder dies, even by ``kill -9``,
  so resuming a crashed run in its own folder works. Child processes of the holder
  (Lightning's DDP launcher re-runs the script) share the claim.
- :class:`RunDirCallback` (a Hydra callback in ``conf/hydra/default.yaml``) claims the
  folder before Hydra writes into it and turns an unwritable ``hydra.run.dir`` into an
  error naming the key; the run functions claim again (a no-op under Hydra) so direct
  API calls are covered too. For a single run it also runs the stage's validator (the
  ``validators`` entry named by ``hydra.job.name``, a dotted path) before Hydra writes
  its ``.hydra/`` record and job log: a run refused for a user error leaves every byte
  of an existing folder (a finished run, say) as it was. The run functions validate
  again, so errors that are bugs rather than user input surface there with a traceback.
- :func:`run_folder_of` finds the run folder an adapter lies in (``<run>/adapter``), so
  the adapter tools never replace a run's files.
"""

from __future__ import annotations

import copy
import fcntl
import os
import secrets
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from guilomo.utils.errors import USER_ERRORS, UserError

LOCK_FILE = ".guilomo.lock"
ENV_CLAIMED = "GUILOMO_RUN_DIR"  # set by the holder; its child processes share the folder

_held: dict[str, int] = {}  # folder -> open lock file descriptor, in this process


class RunDirInUse(UserError, RuntimeError):
    """Another live run writes into this folder."""


def new_run_id() -> str:
    return secrets.token_hex(3)


OmegaConf.register_new_resolver("guilomo.run_id", new_run_id, use_cache=True, replace=True)


def claim(folder: str | os.PathLike, key: str = "paths.output_dir") -> Path:
    """Make ``folder`` and lock it for this process (and its children) until it exits."""
    path = Path(folder).resolve()
    name = str(path)
    if name in _held or os.environ.get(ENV_CLAIMED) == name:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirInUse(
            f"{key}={path} cannot be created or written ({e.strerror}): choose a writable folder"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirInUse(
            f"{key}={path} is in use by another run ({holder}); two runs in one folder "
            "overwrite each other: leave hydra.run.dir at its default (a new folder per "
            "run) or choose another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    _held[name] = fd
    os.environ[ENV_CLAIMED] = name
    return path


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The folder holding ``path`` (``<run>/adapter``) if it is a run's: it has a lock
    file or a ``.hydra`` folder."""
    folder = Path(path).expanduser().resolve().parent
    if (folder / LOCK_FILE).exists() or (folder / ".hydra").is_dir():
        return folder
    return None


def release(folder: str | os.PathLike) -> None:
    """Give up this process's claim on ``folder`` (nothing if it holds none)."""
    name = str(Path(folder).resolve())
    fd = _held.pop(name, None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock
    if os.environ.get(ENV_CLAIMED) == name:
        del os.environ[ENV_CLAIMED]


def _refuse(e: Exception | str) -> None:
    """Stop the process from a Hydra callback: Hydra turns an exception raised there into a
    warning and carries on (it would then write into the folder), so exit instead."""
    print(f"Error: {e}", file=sys.stderr)
    raise SystemExit(1)


class RunDirCallback(Callback):
    """Claim the run folder before Hydra writes into it (single runs and multirun jobs);
    validate a single run's config first (see the module docstring)."""

    def __init__(self, validators: Mapping[str, str] | None = None):
        self.validators = dict(validators or {})

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir))
        new = not folder.exists()
        try:
            claim(folder, key="hydra.run.dir")
        except RunDirInUse as e:
            _refuse(e)
        target = self.validators.get(str(config.hydra.job.name))
        if target:
            _validate_job(config, get_method(target), folder if new else None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            sweep.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _refuse(
                f"hydra.sweep.dir={sweep} cannot be created ({e.strerror}): choose a writable folder"
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            try:
                claim(config.hydra.runtime.output_dir, key="hydra.sweep.dir")
            except RunDirInUse as e:
                _refuse(e)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            release(config.hydra.runtime.output_dir)


def _validate_job(config: DictConfig, validate, created: Path | None) -> None:
    """Run ``validate`` on the job's config as the run will see it (``hydra:`` resolvers
    answer as they will in the job) and refuse the run on a user error, removing the
    folder ``created`` for it if the check left nothing but the lock there."""
    job = copy.deepcopy(config)
    with open_dict(job):
        job.hydra.runtime.output_dir = os.path.abspath(str(job.hydra.run.dir))
    HydraConfig.instance().set_config(job)  # Hydra sets it again when the job starts
    task = copy.deepcopy(job)
    with open_dict(task):
        del task["hydra"]
    try:
        validate(task)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        if created is not None:
            release(created)
            leftovers = [p for p in created.iterdir() if p.name != LOCK_FILE]
            if not leftovers:
                (created / LOCK_FILE).unlink(missing_ok=True)
                created.rmdir()
        _refuse(e)
