"""The one exception type the command-line entry points turn into a one-line message and exit code 2."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input, files or settings; the message names it and says what to do."""


def exit_on_user_error(main):
    """Wraps an entry point: UserError -> `error: <message>` on stderr, exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
