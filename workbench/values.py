"""Config values as plain data (a leaf: records, the build door and sweeps share these)."""

from __future__ import annotations

from enum import Enum
from typing import Any


def plain(value: Any) -> Any:
    """An ``Enum`` member as its value, anything else unchanged: a config built in a notebook cell may
    hold ``"comfy"`` where a composed one holds ``ReferencePolicy.comfy``, and both mean the same."""
    return value.value if isinstance(value, Enum) else value


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config or record (``sampler.steps``, ``lora.items[0].file``), to compare two."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}
