"""What the config modules share without importing OmegaConf (only the build module does)."""

from __future__ import annotations

# OmegaConf's marker of a required key (``omegaconf.MISSING`` is this string): a dataclass default of
# MISSING makes composing fail naming the key when no YAML file sets it.
MISSING = "???"
