"""Fixtures for test modules that compare against exact references: the seeded random model.

Import both into a test module (``from helpers.random_model import bench, make_cfg  # noqa: F401``):
they override the session's ``make_cfg`` / ``bench`` (the trained default) there with
``model=tiny_random``, whose weights are drawn from a seed, as the parity references are.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def make_cfg(make_cfg):
    """These tests compare against exact references: the seeded random model (model=tiny_random)."""
    return lambda *overrides: make_cfg("model=tiny_random", *overrides)


@pytest.fixture(scope="module")
def bench(make_cfg):
    from workbench.pipeline import Workbench

    return Workbench.from_config(make_cfg())
