"""``key=value`` command lines for the small ``python -m guilomo.<tool>`` commands.

Hydra-like syntax without Hydra's run folders: every argument is ``key=value``; a
value is converted to the type of the key's default (``int``, ``float``, ``bool``:
true/false/1/0/yes/no; ``null``/``none`` for a key whose default is ``None``
becomes ``None``, any other text stays text, so a prompt like ``prompt=Question: yes``
is kept as typed). ``--help`` (or ``-h``) prints the usage text and exits 0. Unknown
keys and malformed arguments stop with the usage text;
:func:`run` turns the commands' input errors into one-line messages (no traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_args(argv: Sequence[str], defaults: Mapping, usage: str) -> dict:
    """``defaults`` updated with the ``key=value`` arguments of ``argv``."""
    out = dict(defaults)
    if any(arg in ("--help", "-h") for arg in argv):
        print(usage)
        raise SystemExit(0)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in defaults:
            what = "not key=value" if not eq else f"unknown key {key!r}"
            raise SystemExit(f"{usage}\nerror: {arg!r}: {what}; keys: {', '.join(defaults)}")
        out[key] = _convert(key, value, defaults[key], usage)
    return out


def _convert(key: str, value: str, default, usage: str):
    low = value.strip().lower()
    if default is None:
        return None if low in ("null", "none", "") else value
    if isinstance(default, bool):
        if low in TRUE | FALSE:
            return low in TRUE
        raise SystemExit(f"{usage}\nerror: {key}={value!r}: expected true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise SystemExit(
                f"{usage}\nerror: {key}={value!r}: expected a {type(default).__name__}"
            ) from None
    return value


def run(main: Callable[[], object]) -> None:
    """Call a command's ``main``; a bad input (file, folder, value) exits with its message."""
    try:
        main()
    except (ValueError, FileNotFoundError) as e:  # AllocationError is a ValueError
        raise SystemExit(f"error: {e}") from None
