"""One-line error messages, as every verb prints them."""

from __future__ import annotations

import sys

def one_line(err: BaseException) -> str:
    """Hydra / OmegaConf / workbench errors as one line (the build door's rule: Hydra's '+key=' hint,
    which would add the typo, its search path and internals left out)."""
    from workbench.config.build import describe_error

    return describe_error(err)


def print_error(err: BaseException) -> None:
    """``error: <message>`` on stderr, on one line whatever the message holds."""
    print("error: " + " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()), file=sys.stderr, flush=True)
