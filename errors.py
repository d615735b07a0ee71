"""The toolkit's one error policy: a user's mistake ends a command with one `error:` line that names
the file, band, key or value at fault and says what to do; a bug in the toolkit keeps its traceback.

Library code raises ConfigError (a config key or command-line value) or DataError (an input file);
every entry script's `main` is decorated with `command`, which turns them (and an OSError that names a file,
such as a full disk or a missing folder) into that line and exit code 1.
"""
import functools
import sys


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class ConfigError(UserError, ValueError):
    """A bad config key or value, or command-line argument."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file (and band or key) at fault."""


class TrainingError(UserError):
    """A run that cannot go on (a diverged loss); the message says where and what to change."""


def command(main):
    """Decorator of an entry script's main(argv): UserError and file-system errors -> `error: ...` on
    stderr and exit code 1 (SystemExit); anything else propagates with its traceback."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            sys.exit(f"error: {e}")
        except OSError as e:
            if e.filename is None:
                raise
            sys.exit(f"error: {e.filename}: {e.strerror or e}")
    return wrapper
