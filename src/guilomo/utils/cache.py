"""Where guilomo keeps what it builds or downloads once: ``$GUILOMO_CACHE``, else
``~/.cache/guilomo`` (the dequantised SmolLM2, the BIG-bench archive). Never inside
the repo, shared by all runs; ``paths.cache_dir`` in the config overrides it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$GUILOMO_CACHE``, else ``~/.cache/guilomo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GUILOMO_CACHE") or Path.home() / ".cache" / "guilomo").expanduser()
