"""Check helpers for config values: each error names the key and how to fix it.

The floor every settings check stands on. A stage's own checks live next to its
settings (``search/checks.py``, ``finetune/checks.py``, ``eval``, ``budget``,
``moe.config``); :mod:`guilomo.validate` runs them before any weights load. Config
errors are :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import is_dataclass
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and how to fix it."""


_MISSING = object()


def get(cfg: DictConfig, key: str, default: Any = _MISSING) -> Any:
    """``cfg[key]`` (dotted), resolved to plain Python; a missing mandatory value raises."""
    try:
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception as e:  # an interpolation that does not resolve, a '???' value
        raise ConfigError(f"{key}: {e}; set {key}=<value>") from e
    if node is _MISSING:
        if default is _MISSING:
            raise ConfigError(f"{key} is not set; set {key}=<value>")
        return default
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(key: str, v, lo: int | None = None, hi: int | None = None, none_ok=False) -> None:
    if v is None and none_ok:
        return
    rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        null = " (or null)" if none_ok else ""
        raise ConfigError(f"{key}={v!r} must be an integer{rng}{null}; set {key}=<integer>")


def check_real(key: str, v, lo: float | None = None, positive=False, none_ok=False) -> None:
    if v is None and none_ok:
        return
    ok = is_real(v) and (lo is None or v >= lo) and (not positive or v > 0)
    if not ok:
        what = "> 0" if positive else (f">= {lo}" if lo is not None else "")
        raise ConfigError(f"{key}={v!r} must be a finite number {what}; set {key}=<number>")


def check_bool(key: str, v) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false")


def check_choice(key: str, v, allowed) -> None:
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not one of {list(allowed)}")


def check_target(key: str, target) -> Callable:
    """The function a config's ``_target_`` names (importable), else a ConfigError."""
    try:
        return get_method(str(target))
    except Exception as e:  # hydra raises ImportError / ValueError variants
        raise ConfigError(
            f"{key}={target!r} is not a function guilomo can import ({e}); pick a file of "
            "conf/allocation/ (e.g. allocation=uniform) or name an importable function"
        ) from e


def check_fields(prefix: str, cls, data: dict) -> None:
    """Every value of ``data`` has the type the settings dataclass ``cls`` annotates (an int
    is not a float, a bool is neither, numbers are finite), recursing into nested ones.
    Run before constructing ``cls``, whose own checks then see well-typed values."""
    hints = typing.get_type_hints(cls)
    for name, v in data.items():
        if name not in hints:
            continue  # unknown keys: the dataclass's own error lists the known ones
        key, hint = f"{prefix}.{name}", hints[name]
        args = typing.get_args(hint)
        none_ok = type(None) in args
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            base = next(a for a in args if a is not type(None))
        if is_dataclass(base):
            if isinstance(v, dict):
                check_fields(key, base, v)
        elif base is int:
            check_int(key, v, none_ok=none_ok)
        elif base is float:
            check_real(key, v, none_ok=none_ok)
        elif base is bool:
            check_bool(key, v)
        elif base is str:
            if not (isinstance(v, str) or (v is None and none_ok)):
                raise ConfigError(f"{key}={v!r} must be a string")
        elif typing.get_origin(base) is tuple:
            if not (isinstance(v, (list, tuple)) and all(is_real(x) for x in v)):
                raise ConfigError(f"{key}={v!r} must be a list of finite numbers")


def check_known(prefix: str, keys, known) -> None:
    """Every key of ``keys`` is in ``known`` (a misspelt ``+seeed=3`` would otherwise be
    silently ignored); the error names the key, the closest known one and the rest."""
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    where = f"{prefix}.{key}" if prefix else str(key)
    raise ConfigError(
        f"unknown key '{where}': {hint}known keys{' of ' + prefix if prefix else ''}: "
        f"{', '.join(sorted(map(str, known)))}"
    )
