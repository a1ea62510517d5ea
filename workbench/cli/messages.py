"""One-line error messages, as every verb prints them."""

from __future__ import annotations

import sys

_HYDRA_NOISE = ("To append to your config use", "Config search path", "provider=", "full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(err: BaseException) -> str:
    """Hydra / OmegaConf errors span several lines (and suggest ``+key=`` for a misspelt key, which
    would add the typo): keep the lines that say what is wrong, joined into one."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0] not in str(err):
        lines += [ln.strip() for ln in str(cause).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(_HYDRA_NOISE)]
    return " ".join(kept) or type(err).__name__


def print_error(err: BaseException) -> None:
    """``error: <message>`` on stderr, on one line whatever the message holds."""
    print("error: " + " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()), file=sys.stderr, flush=True)
