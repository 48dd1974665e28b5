"""Running a training command: user errors end in ONE line ``ERROR: ...`` on stderr and exit status 2.

A user error is something the person running the command can fix: a missing data folder or CSV, a CSV
without its columns, a class with no images, an output path that is a file or cannot be written, a missing
checkpoint. It is :class:`UserError`, one of :data:`USER_ERRORS` (missing / unreadable files, checkpoint
setup errors) or a ValueError raised inside a :func:`user_errors` block (our own validation of the inputs).
Anything else is a programming error and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skinapp.models import SETUP_ERRORS


class UserError(Exception):
    """Something the user can fix; its message says what is wrong and what to do."""


#: Exceptions that are user errors wherever they are raised.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, PermissionError,
                                                *SETUP_ERRORS)


@contextmanager
def user_errors() -> Iterator[None]:
    """Inside the block, a ValueError (our validation of data and options) is a :class:`UserError` too."""
    try:
        yield
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:  # raised by the OS: path, reason
        return f"{exc.filename}: {exc.strerror}; check the path and its permissions."
    return " ".join(str(exc).split()) or type(exc).__name__


def writable_folder(path: str | Path, what: str = "--out") -> Path:
    """Create ``path`` (and its parents) as a folder and check that files can be written in it.

    Raises:
        UserError: it is a file, cannot be created, or is not writable (the message names it and what to do).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; give a folder (it is created when missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be created ({exc.strerror or exc}); "
                        "give a folder you can write to.") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable ({os.strerror(errno.EACCES)}); "
                        "give a folder you can write to.")
    return path


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a user error prints ``ERROR: <message>`` on stderr and returns 2, success returns 0.

    argparse's own usage errors exit 2 by themselves (SystemExit passes through).
    """
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"ERROR: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0
