"""Safe output: where a command may write, and atomic writes of files and folders.

A crash or a full disk mid-write never leaves a truncated file where a good one
(or nothing) was expected; readers see either the old file or the new one.
:func:`atomic_write` does it for a file, :func:`staged_folder` for a folder (written
in a temporary sibling, renamed into place when complete).

:func:`check_output` is the one rule of every command's ``out=``, checked before any
work: it is never the input, inside it or around it (``overwrite=true`` does not
change that), nothing already in a protected folder (a run's) is replaced, and an
existing file or non-empty folder is replaced only with ``overwrite=true``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An ``out=`` a command must not write to (the message names the key and the fix)."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def check_output(
    out: str | Path,
    inputs: Mapping[str, str | Path | None] | None = None,
    overwrite: bool = False,
    *,
    protected: Mapping[str, Path | None] | None = None,
    kind: str = "folder",
    key: str = "out",
    switch: str = "overwrite=true",
) -> Path:
    """``out`` made absolute, or an :class:`OutputError` naming ``key=`` and the fix.

    ``inputs``: ``{key: path}`` of what the command reads (never written, inside or
    around); ``protected``: ``{description: folder}`` whose existing entries are never
    replaced (a new name inside is fine); ``kind``: ``folder`` or ``file``; ``switch``:
    how the command spells its overwrite switch, for the messages.
    """
    path = Path(out).expanduser().resolve()
    for name, given in (inputs or {}).items():
        src = None if given is None else Path(given).expanduser().resolve()
        rel = _relation(path, src)
        if rel:
            raise OutputError(
                f"{key}={out} {rel} the input {name}={given}: writing there would destroy it "
                f"({switch} does not allow that); choose a path outside it"
            )
    for what, folder in (protected or {}).items():
        where = None if folder is None else folder.resolve()
        if _relation(path, where) in ("is", "contains") or (
            where in path.parents and os.path.lexists(path)
        ):
            raise OutputError(
                f"{key}={out} would replace files of {what} {folder} ({switch} does not "
                "allow that); choose a new name"
            )
    if kind == "file" and path.is_dir():
        raise OutputError(f"{key}={out} is a folder; choose a new file name instead")
    if os.path.lexists(path) and not overwrite and not _empty(path):
        what = "folder" if path.is_dir() else "file"
        raise OutputError(
            f"{key}={out} already exists and is not empty (a {what}): choose a new {kind} or "
            f"pass {switch}"
        )
    parent = next(p for p in path.parents if os.path.lexists(p))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a folder" if not parent.is_dir() else "is not writable"
        raise OutputError(f"{key}={out}: {parent} {why}; choose a path in a writable folder")
    return path


def _relation(path: Path, other: Path | None) -> str:
    if other is None:
        return ""
    if path == other:
        return "is"
    if other in path.parents:
        return "lies inside"
    return "contains" if path in other.parents else ""


def _empty(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return not any(path.iterdir())
    return path.is_file() and not path.is_symlink() and path.stat().st_size == 0


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A new temporary sibling of ``out`` to write into; renamed to ``out`` when the block
    ends without an error (replacing what :func:`check_output` allowed), removed if not."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; whatever ``out`` was is moved aside first, then deleted."""
    if not os.path.lexists(out) or (out.is_dir() and _empty(out)):
        os.replace(new, out)  # rename(2) replaces an empty folder
        return
    old = out.with_name(f".{out.name}.{secrets.token_hex(3)}.old")
    os.replace(out, old)
    os.replace(new, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
