"""The one rule for writing values into Hydra overrides and OmegaConf trees as literal text.

Pure string work (no Hydra import): the sweep axes, the model panel, the CLI and the ComfyUI importer
write overrides with ``override_value``; records are read back with ``literal`` so that a recorded
``${...}`` stays text and is never resolved.
"""

from __future__ import annotations

import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_./:+-]+")  # Hydra reads these unquoted as the same string


def _typed_word(text: str) -> bool:
    """Would Hydra read ``text`` unquoted as something other than a string (a number, bool or null)?"""
    if text.lower() in ("null", "true", "false", "nan", "inf", "+inf", "-inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _double_backslashes_before(text: str, marker: str) -> str:
    """Double every run of backslashes right before ``marker`` (before the end of ``text`` for '')."""
    pattern = r"(\\+)\Z" if not marker else rf"(\\+)(?={re.escape(marker)})"
    return re.sub(pattern, lambda m: m.group(1) * 2, text)


def escape_interpolation(text: str) -> str:
    """``text`` as an OmegaConf string that resolves to itself: each ``${`` escaped as ``\\${``, with
    the backslashes before it doubled (OmegaConf reads ``\\\\`` before ``${`` as one backslash)."""
    return _double_backslashes_before(text, "${").replace("${", "\\${")


def literal(value: Any) -> Any:
    """A record's values with every string escaped, so OmegaConf reads them as text and resolves nothing."""
    if isinstance(value, str):
        return escape_interpolation(value)
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value


def override_value(value: Any) -> str:
    """``value`` as the right-hand side of a Hydra override, composing back to exactly ``value``.

    Numbers, bools and None as Hydra literals; lists and tuples as ``[a, b]``; a string bare when Hydra
    reads it unquoted as the same string, else single-quoted: ``${`` escaped (``escape_interpolation``)
    so the text stays literal, a quote written ``\\'``, and backslashes before a quote or the end
    doubled (Hydra's quoted strings keep every other backslash as it is).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.fullmatch(text) and not _typed_word(text):
        return text
    text = _double_backslashes_before(escape_interpolation(text), "'").replace("'", "\\'")
    return "'" + _double_backslashes_before(text, "") + "'"
