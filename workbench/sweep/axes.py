"""Sweep axes: ``key=values`` strings parsed into typed value lists, before anything runs.

Value syntax (the X/Y/Z-plot conventions researchers already type):

    sampler.steps=4,8,16            a list (csv: quote values that contain commas: "a cat, at night",a dog)
    sampler.steps=1-8               an inclusive integer range, step 1
    sampler.steps=1-8 (+2)          with a step: 1, 3, 5, 7
    sampler.cfg=1.0-4.0 (+0.5)      a float range (floats need an explicit step)
    sampler.shift=3-1 (-1)          descending
    template=qwen_t2i,chat          config-group options work like any other key
    sampler.steps=range(2,10,2)     Hydra's sweep functions, as ``workbench run -m`` reads them: range
                                    (stop excluded, as Python's), choice, sort

Each value becomes one Hydra override ``key=value`` applied to the composed config, so groups
(``sampler=comfy_euler``) and keys (``sampler.steps=4``) mean exactly what they mean on the command
line. List-valued keys (``prompts``, ``seeds``, ``images``) take one element per value: the axis
``prompts=a cat,a dog`` gives the cells ``prompts=['a cat']`` and ``prompts=['a dog']``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from typing import Sequence, Union

from workbench.errors import ConfigError, InputError
from workbench.config.overrides import override_value

AXIS_NAMES = ("x", "y", "z")
MAX_VALUES = 256  # per axis: a typo such as 1-10000 should fail, not queue ten thousand cells
LIST_KEYS = ("prompts", "seeds", "images")  # list-valued config keys: each axis value is one element

Value = Union[int, float, str]

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*({_NUM})\s*\))?\s*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SweepError(InputError):
    """An axis or a cell cannot be swept; the message names the axis, the key and the value."""


@dataclass(frozen=True)
class Axis:
    key: str  # config key or group, e.g. "sampler.steps", "template", "prompts"
    values: tuple[Value, ...]
    text: str = ""  # what the user typed, for messages

    def override(self, value: Value) -> str:
        """The Hydra override that sets this axis to ``value``."""
        if self.key in LIST_KEYS:
            return f"{self.key}=[{override_value(value)}]"
        return f"{self.key}={override_value(value)}"

    def label(self, value: Value) -> str:
        """Short legend text for one value (grid headers, table columns)."""
        return f"{self.key.rsplit('.', 1)[-1]}={value}"


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_values(text: str, key: str = "key") -> list[Value]:
    """``'1-8 (+2)'`` -> [1, 3, 5, 7]; ``'4,8,16'`` -> [4, 8, 16]; ``'qwen_t2i,chat'`` -> strings;
    ``'range(2,10,2)'`` -> Hydra's sweep of ``key``."""
    if not text.strip():
        raise SweepError("no values given")
    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):  # `run`'s list syntax: csv would keep the brackets in the values
        raise SweepError(f"{text!r} is a list; an axis takes its values without brackets, one cell per value: "
                         f"{key}={bare[1:-1].strip()} (quote a value that holds a comma)")
    if _HYDRA_SWEEP.match(bare):
        return _hydra_sweep(key, bare)
    m = _RANGE.match(text)
    if m:
        return _range(*m.groups())
    items = next(csv.reader([text], skipinitialspace=True))
    values: list[Value] = []
    for item in items:
        item = item.strip()
        if not item:
            raise SweepError(f"empty value in {text!r} (two commas in a row, or a trailing comma)")
        try:
            values.append(_number(item))
        except ValueError:
            values.append(item)
    if len(values) > MAX_VALUES:
        raise SweepError(f"{len(values)} values; at most {MAX_VALUES} per axis")
    return values


_HYDRA_SWEEP = re.compile(r"^(range|choice|sort|shuffle|interval|glob|tag)\s*\(")


def _hydra_sweep(key: str, text: str) -> list[Value]:
    """The values of Hydra's sweep ``key=text`` (range / choice / sort), read by Hydra's own grammar."""
    from workbench.config.build import sweep_values

    name = _HYDRA_SWEEP.match(text).group(1)
    if name in ("shuffle", "interval", "glob", "tag"):
        why = {"shuffle": "draws a random order", "interval": "is a range for optimisers, with no values to list",
               "glob": "selects config-group options by pattern", "tag": "only labels a sweep"}[name]
        raise SweepError(f"{text!r}: Hydra's {name}() {why}; give the values (e.g. 4,8,16, 1-8 (+2) or range(2,10,2))")
    try:
        values = sweep_values(key, text, MAX_VALUES)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    if not values:
        raise SweepError(f"{text!r} gives no values")
    if len(values) > MAX_VALUES:
        raise SweepError(f"{text!r} gives more than {MAX_VALUES} values; at most {MAX_VALUES} per axis")
    bad = [v for v in values if not isinstance(v, (int, float, str, type(None)))]
    if bad:
        raise SweepError(f"{text!r}: value {bad[0]!r} is a {type(bad[0]).__name__}; an axis value is a number or a string")
    return values


def _range(start_s: str, stop_s: str, step_s: str | None) -> list[Value]:
    start, stop = _number(start_s), _number(stop_s)
    is_float = any(isinstance(v, float) for v in (start, stop)) or (step_s is not None and isinstance(_number(step_s), float))
    if step_s is None:
        if is_float:
            raise SweepError(f"float range {start_s}-{stop_s} needs a step, e.g. '{start_s}-{stop_s} (+0.5)'")
        step: int | float = 1 if stop >= start else -1
    else:
        step = _number(step_s)
    if step == 0:
        raise SweepError(f"range {start_s}-{stop_s} has step 0")
    if (stop - start) * step < 0:
        raise SweepError(
            f"range {start_s}-{stop_s} with step {step_s} never reaches {stop_s}; "
            f"use '({'+' if stop > start else '-'}{abs(step)})'"
        )
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_VALUES:
        raise SweepError(f"range {start_s}-{stop_s} ({step_s or 1}) has {count} values; at most {MAX_VALUES} per axis")
    if is_float:
        return [round(float(start) + i * float(step), 10) for i in range(count)]
    return [int(start) + i * int(step) for i in range(count)]


def parse_axis(spec: Union[str, Axis, tuple[str, Sequence[Value]]], name: str = "x") -> Axis:
    """``'sampler.steps=1-8 (+2)'``, ``('sampler.steps', [2, 4])`` or an ``Axis`` -> ``Axis``."""
    if isinstance(spec, Axis):
        return spec
    if isinstance(spec, tuple):
        key, values = spec
        text = f"{key}={','.join(map(str, values))}"
        values = tuple(values)
    else:
        if "=" not in spec:
            raise SweepError(f"axis {name.upper()}: {spec!r} is not 'key=values' (e.g. 'sampler.steps=4,8,16')")
        key, _, raw = spec.partition("=")
        key, text = key.strip(), spec
        try:
            values = tuple(parse_values(raw, key.strip()))
        except SweepError as err:
            raise SweepError(f"axis {name.upper()} ({key}): {err}") from None
    if key.startswith(("+", "~")) or not _KEY.match(key):
        raise SweepError(
            f"axis {name.upper()}: {key!r} is not a config key; use an existing key such as 'sampler.steps' "
            "(adding '+' or deleting '~' keys is not allowed in a sweep)"
        )
    if not values:
        raise SweepError(f"axis {name.upper()} ({key}): no values given")
    if len(set(map(repr, values))) != len(values):
        raise SweepError(f"axis {name.upper()} ({key}): repeated values in {list(values)}")
    return Axis(key, tuple(values), text)


def parse_axes(specs: Sequence[Union[str, Axis, tuple]]) -> list[Axis]:
    """Up to three axes (X, Y, Z); the same key twice is refused."""
    specs = [s for s in specs if not (isinstance(s, str) and not s.strip())]
    if not specs:
        raise SweepError("a sweep needs at least one axis, e.g. 'sampler.steps=4,8,16'")
    if len(specs) > len(AXIS_NAMES):
        raise SweepError(f"{len(specs)} axes given; at most {len(AXIS_NAMES)} (X, Y, Z)")
    axes = [parse_axis(s, n) for s, n in zip(specs, AXIS_NAMES)]
    keys = [a.key for a in axes]
    for k in keys:
        if keys.count(k) > 1:
            raise SweepError(f"key {k!r} is on two axes; put all its values on one axis")
    return axes
