"""One exception type for problems the user can fix (bad flags, missing files, wrong data).

Entry points catch it and print a single ``error: ...`` line instead of a traceback, so a
researcher sees which file or flag is wrong and what was expected. Library code raises
``ValueError``/``TypeError`` for bad parameters and :class:`UserError` for bad files on disk;
only entry scripts speak of command-line flags.
"""
import functools
import sys


class UserError(Exception):
    """An input problem the user can fix; the message names the file or flag and the expectation."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def exit_on_user_error(main):
    """Decorate a CLI ``main`` so a :class:`UserError` ends the process with one line and status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
