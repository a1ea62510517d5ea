"""Shared fixtures: composed tiny configs and one resident tiny workbench per test session.

Helpers shared by several test files live in ``tests/helpers/`` (test files never import each other);
``tests/`` is put on ``sys.path`` here so ``from helpers.<module> import ...`` works in any import mode.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The workbench's cache (file hashes, compiled blocks saved by perf=fast's precompile, Inductor's cache) goes to a
# folder of this test session, not the user's: a test must neither read what an earlier run left nor leave its own.
# Set before anything imports torch (which fixes Inductor's folder); child processes and notebook kernels inherit it.
os.environ["WORKBENCH_CACHE"] = tempfile.mkdtemp(prefix="workbench-test-cache-")
os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
_SESSION_CACHE = os.environ["WORKBENCH_CACHE"]
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def make_cfg():
    from workbench.config import compose, to_run_config

    def _make(*overrides: str):
        return to_run_config(compose(list(overrides)))

    return _make


@pytest.fixture(scope="session")
def bench(make_cfg):
    from workbench.pipeline import Workbench

    return Workbench.from_config(make_cfg())


@pytest.fixture(scope="session")
def tokenizer():
    from workbench.tokenizer import load_tokenizer

    return load_tokenizer()
