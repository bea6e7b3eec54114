"""Which exceptions are the user's to fix (bad input), not the program's.

:data:`USER_ERRORS` is what the entry points answer with one line naming the key and
the fix instead of a traceback (``HYDRA_FULL_ERROR=1`` shows the traceback anyway).
The project's own error classes all derive from ``ValueError`` (``ConfigError``,
``AllocationError`` and its ``BudgetError``) or are listed by name here; a missing
file the user named is a ``FileNotFoundError``.
"""

from __future__ import annotations


class UserError(Exception):
    """Base for bad-input errors that are not a ``ValueError``."""


# ValueError: ConfigError, AllocationError, BudgetError, BaseMismatchError, and the
# value checks of the libraries (a malformed number in a config); RuntimeError
# subclasses that are the user's (a folder in use) register by deriving from UserError
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, UserError)
