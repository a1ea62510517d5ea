"""Config values as plain data."""

from __future__ import annotations

from enum import Enum
from typing import Any


def plain(value: Any) -> Any:
    """An ``Enum`` member as its value, anything else unchanged: a config built in a notebook cell may
    hold ``"comfy"`` where a composed one holds ``ReferencePolicy.comfy``, and both mean the same."""
    return value.value if isinstance(value, Enum) else value
