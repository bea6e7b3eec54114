"""Read the rows of one split of a Hugging Face dataset: hub name or local path.

``path`` may be a hub id (``tau/commonsense_qa``, with ``name`` the config), a
local file (.json/.jsonl/.parquet/.csv, which holds the 'train' split only) or a
local directory whose files are named by split (``train.jsonl``,
``validation.jsonl``, ``test.jsonl``...). ``data_files`` is passed through to
``datasets.load_dataset`` with ``path`` as the builder (e.g. ``path: json``).
"""

from __future__ import annotations

from pathlib import Path

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_local(path: str) -> bool:
    """A path meant as a local file or folder (not a hub id), whether or not it exists."""
    return path.startswith((".", "/", "~")) or Path(path).suffix in BUILDERS


def load_rows(
    path: str, split: str = "train", name: str | None = None, data_files=None
) -> list[dict]:
    from datasets import load_dataset

    local = Path(path).expanduser()
    if data_files is not None:
        splits = load_dataset(path, name, data_files=data_files)
    elif local.is_file():
        if local.suffix not in BUILDERS:
            raise ValueError(f"{local}: unsupported file type; use one of {sorted(BUILDERS)}")
        splits = load_dataset(BUILDERS[local.suffix], data_files={"train": str(local)})
    elif local.is_dir():
        splits = load_dataset(str(local))
    elif looks_local(path):
        raise FileNotFoundError(
            f"dataset file or directory not found: {local} (set task_kwargs.path)"
        )
    else:
        splits = load_dataset(path, name)
    if split not in splits:
        raise ValueError(
            f"{path}: no split {split!r} (it has {sorted(splits)}); "
            "set train_split/val_split/test_split to one of these, or null to carve held-out splits"
        )
    return list(splits[split])
