"""User-facing errors: one clear line, no traceback, non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix (params, data, model location). Printed as one line."""


USER_ERROR_EXIT_CODE = 2


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's main so user errors print one line instead of a traceback."""

    @functools.wraps(func)
    def wrapper() -> None:
        try:
            func()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper
