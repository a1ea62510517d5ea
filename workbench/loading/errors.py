"""The one error type of model loading.

A ``ConfigError`` subclass, so that ``workbench run`` prints it as a one-line config problem; every
message names the file, what was found and what was expected (or what to do).
"""

from __future__ import annotations

from workbench.errors import ConfigError


class LoadError(ConfigError):
    """A model file or folder cannot be loaded into the slot it was given for."""


def few(names, n: int = 5) -> str:
    """The first ``n`` names and how many more: error messages list examples, not thousands of keys."""
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
