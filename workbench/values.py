"""Config values as plain data (a leaf: records, the build door and sweeps share these)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence


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


def string_list(value: Any, what: str, error: type[Exception], example: str) -> list[str]:
    """``value`` as a list of strings: one string is one item (iterating it would give its letters); anything
    but a list of strings raises ``error`` naming ``what`` and showing ``example``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise error(f"{what} must be a list of strings, got {type(value).__name__}; e.g. {example}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise error(f"{what}[{i}] must be a string, got {type(item).__name__} {item!r:.60}")
    return list(value)
