"""Hydra's and OmegaConf's error texts as the one line the workbench prints (pure text: the build door, which
imports Hydra, hands them here)."""

from __future__ import annotations

import re

_SCALAR_FOR_LIST = re.compile(r"Error merging override ([\w.]+)=(.*?): Invalid value assigned: \w+ is not a ListConfig")


def one_line(text: str) -> str:
    """Hydra's multi-line messages ('Available options in ...:' then one option a line) as one line."""
    parts = []
    for paragraph in text.strip().split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        cut = next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))
        lines = lines[:cut]  # Hydra's search path: internals, no help to a user
        group = re.fullmatch(r"Available options in '(.+)':", lines[0]) if lines else None
        if group:
            parts.append(f"{group[1]} options available: {', '.join(lines[1:])}")
        elif lines and lines[0].endswith(":") and len(lines) > 1:
            parts.append(f"{lines[0]} {', '.join(lines[1:])}")
        else:
            parts.append(" ".join(lines))
    return "; ".join(p for p in parts if p)


def list_hint(text: str) -> str:
    """``seeds=3`` for a list key: OmegaConf says ``int is not a ListConfig``; add the form to type."""
    m = _SCALAR_FOR_LIST.search(text)
    return text if m is None else f"{text}; {m[1]} is a list: write {m[1]}=[{m[2]}]"
