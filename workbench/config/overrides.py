"""The one rule for writing values into Hydra overrides and OmegaConf trees as literal text.

Pure string work (no Hydra import): the sweep axes, the model panel, the CLI and the ComfyUI importer
write overrides with ``override_value``; records are read back with ``literal`` so that a recorded
``${...}`` stays text and is never resolved. ``merge_overrides`` swaps the lines of some keys in a
list of overrides (the model panel's "use as sweep base").
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

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


def override_key(line: str) -> str:
    """The config key one override line sets, without Hydra's prefixes and package: ``+model.x=1`` ->
    ``model.x``, ``~precision`` -> ``precision``, ``model@foo=tiny`` -> ``model``; '' for a blank line
    or a ``#`` comment. Keys hold no quotes, so everything after the first ``=`` (quoted or not) is the value."""
    text = line.strip()
    if not text or text.startswith("#"):
        return ""
    return text.lstrip("+~").split("=", 1)[0].split("@", 1)[0].strip()


def sets_key(line: str, keys: Iterable[str]) -> bool:
    """Does ``line`` set one of ``keys`` or something under it (``model`` covers ``model.vae``, not ``modelx``)?"""
    found = override_key(line)
    return bool(found) and any(found == k or found.startswith(k + ".") for k in keys)


def merge_overrides(base_lines: Iterable[str], new_lines: Iterable[str],
                    replace_keys: Optional[Iterable[str]] = None) -> list[str]:
    """``base_lines`` without the lines setting ``replace_keys`` (default: the top-level keys of
    ``new_lines``), then ``new_lines``: a sweep base takes another model's settings while its other
    lines (sizes, prompts) stay, in order. Blank lines are dropped; comments stay."""
    new_lines = [line.strip() for line in new_lines if line.strip()]
    keys = list(replace_keys) if replace_keys is not None else [
        override_key(line).split(".", 1)[0] for line in new_lines if override_key(line)]
    kept = [line.strip() for line in base_lines if line.strip() and not sets_key(line, keys)]
    return kept + new_lines
