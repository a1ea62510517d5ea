"""The workbench's error classes and exit codes: a leaf module (imports nothing of the package).

Every error whose message already names the cause and the fix derives from ``WorkbenchError``, so the
CLI, the magics and the panels catch one type and print one line instead of a traceback.

- ``InputError``: the input is wrong (config, file, record, workflow); refused before any work, or
  before anything is written. Exit code ``EXIT_INPUT`` (2).
  ``ConfigError`` (a config value is wrong) and model loading's ``LoadError`` derive from it.
- ``RunFailure``: the input was accepted but the run failed while it ran (a write failed, the device
  ran out of memory, the numbers went non-finite). Exit code ``EXIT_RUNTIME`` (3).
Anything else is a bug: Python's own exit code 1 with its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1  # an uncaught exception: Python prints its traceback and exits 1
EXIT_INPUT = 2  # bad input (config, file, record, workflow), refused with a one-line message
EXIT_RUNTIME = 3  # accepted input, failure while running (write failed, out of memory, non-finite)
EXIT_DIFFERS = 4  # `workbench reproduce`: the re-run finished and differs from the stored image(s)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class WorkbenchError(Exception):
    """Root of the errors whose message names the cause and the fix."""

    exit_code = EXIT_INPUT


class InputError(WorkbenchError, ValueError):
    """Bad input, refused before work is done or anything is written."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """A config value is wrong; the message names the key, what was found and what is expected.

    Lives here (not in ``workbench.config``) so that model loading's ``LoadError`` can derive from it
    without importing the config package."""


class RunFailure(WorkbenchError, RuntimeError):
    """Accepted input, failure while running; the message says what was written."""

    exit_code = EXIT_RUNTIME


def exit_code(err: BaseException) -> int:
    """The documented exit code for ``err`` (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(err, "exit_code", EXIT_BUG) if isinstance(err, WorkbenchError) else EXIT_BUG
