"""The workbench's folder in the user's cache: file hashes (record.provenance), compiled code (compiling)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/qwen-image-workbench."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-image-workbench"
