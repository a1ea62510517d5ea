"""The workbench's folder in the user's cache: file hashes (record.provenance), compiled code (compiling).
Light on purpose (no torch): the CLI checks these folders before anything heavy is imported."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/qwen-image-workbench."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-image-workbench"


ENV = "TORCHINDUCTOR_CACHE_DIR"


def default_cache_dir() -> Path:
    """``torch-compile`` in the workbench's cache folder (``$WORKBENCH_CACHE``, else ~/.cache/qwen-image-workbench)."""
    return user_cache_dir() / "torch-compile"


def check_cache_dir(perf) -> None:
    """Refuse, before any model loads, a compile cache folder that cannot be made or written (a file where a
    folder must be, no permission): Inductor would fail in the middle of the build with its own traceback.
    ``$TORCHINDUCTOR_CACHE_DIR`` is checked whatever ``perf.compile`` says: torch makes that folder as soon as
    ``torch._dynamo`` is imported (diffusers does), and fails there. Read without importing Inductor."""
    from workbench.config import CompileMode
    from workbench.record.files import check_output_dir

    if os.environ.get(ENV):
        check_output_dir(os.environ[ENV], ENV, final=False, what="compile cache folder")
    elif perf.compile != CompileMode.none:
        check_output_dir(default_cache_dir(), "WORKBENCH_CACHE", final=False, what="compile cache folder")
