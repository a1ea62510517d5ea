"""A sweep's plan, as data: one validated config per grid cell, and the order that keeps models resident.

Every cell is composed and validated here, so a typo fails before a model loads. Running the plan is
``workbench.sweep.execute`` (``Sweep``, this plan with its ``run``): this module imports nothing that runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from workbench.sweep.axes import Axis, SweepError, parse_axes
from workbench.sweep.keys import conditioning_key, config_hash, is_executor_key, model_group_key
from workbench.sweep.scoring import check_metrics
from workbench.values import string_list


@dataclass
class Cell:
    """One grid position: its axis values, overrides and validated config (or the reason it has none)."""

    index: int  # position in display order (X fastest, then Y, then Z)
    pos: tuple[int, int, int]  # (ix, iy, iz)
    values: tuple  # one value per axis
    overrides: list[str]  # the axis overrides (the base overrides come first)
    config: Any = None  # workbench.config.Config, None when invalid
    resolved: Optional[dict] = None
    key: Optional[str] = None  # config_hash(resolved)
    error: Optional[str] = None  # why this combination cannot run

    def label(self, axes: Sequence[Axis]) -> str:
        return ", ".join(a.label(v) for a, v in zip(axes, self.values))


class SweepPlan:
    """A validated plan: axes, base overrides, one ``Cell`` per grid position, and the run order."""

    def __init__(
        self,
        axes: list[Axis],
        base: list[str],
        cells: list[Cell],
        out_dir: Path,
        executor: Any = None,
        metrics: Sequence[str] = (),
        metric_reference: int = 0,
    ):
        self.axes = axes
        self.base = base
        self.cells = cells
        self.out_dir = Path(out_dir)
        self.executor = executor  # ExecutorConfig from the composed config (base overrides); None: local
        self.metrics = tuple(metrics)  # table columns (workbench.sweep.scoring): adherence, psnr, ssim
        self.metric_reference = metric_reference  # the cell PSNR / SSIM compare against (display index)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    @classmethod
    def plan(
        cls,
        axes: Sequence,
        base: Sequence[str] = (),
        out_dir: Optional[str | Path] = None,
        metrics: Sequence[str] = (),
        metric_reference: int = 0,
    ):
        """Parse the axes, compose and validate every cell (an instance of ``cls``: ``Sweep.plan`` gives a
        ``Sweep``); raise ``SweepError`` before anything runs.

        A value that fails in every cell it appears in raises, naming its axis and value. A
        combination that fails while its values work elsewhere (e.g. ``steps=1`` only with one sampler)
        is kept as an invalid cell: it becomes a blank tile with the reason.

        ``metrics`` adds table columns (``adherence`` to each cell's captions, ``psnr`` / ``ssim`` against
        the cell ``metric_reference``); they are checked here too (adherence needs captions of the tiny
        model's world).
        """
        parsed = parse_axes([axes] if isinstance(axes, str) else list(axes))  # one string is one axis
        example = "['height=64', 'width=64']"
        base = [b for b in string_list(base, "base overrides", SweepError, example) if b.strip()]
        _check_axes(parsed, base)
        cells = _grid(parsed)
        _compose(cells, base)
        if all(c.error for c in cells):
            _refuse_a_failing_base(base)
        _refuse_values_that_never_work(parsed, cells)
        _refuse_axes_that_change_nothing(parsed, cells)
        out_dir = _default_out_dir(parsed, base) if out_dir is None else Path(out_dir)
        executor = next((c.config.executor for c in cells if c.config is not None), None)
        metrics = check_metrics(metrics, cells, metric_reference)
        return cls(parsed, base, cells, out_dir, executor, metrics, metric_reference)

    def execution_order(self) -> list[Cell]:
        """Valid cells grouped by (model, precision, device) outermost, then by shared conditioning."""
        valid = [c for c in self.cells if c.config is not None]
        model_rank: dict[str, int] = {}
        cond_rank: dict[str, int] = {}
        for c in valid:
            model_rank.setdefault(model_group_key(c.resolved), len(model_rank))
            cond_rank.setdefault(conditioning_key(c.resolved), len(cond_rank))
        return sorted(
            valid,
            key=lambda c: (model_rank[model_group_key(c.resolved)], cond_rank[conditioning_key(c.resolved)], c.index),
        )

    def describe(self) -> dict:
        return {
            "axes": [{"name": "XYZ"[i], "key": a.key, "values": list(a.values)} for i, a in enumerate(self.axes)],
            "base": self.base,
            "metrics": list(self.metrics),
            "cells": [
                {"index": c.index, "pos": list(c.pos), "overrides": c.overrides, "key": c.key, "error": c.error}
                for c in self.cells
            ],
        }

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / str(cell.key)


# ----------------------------------------------------------------------------- the steps of SweepPlan.plan
def _check_axes(axes: list[Axis], base: list[str]) -> None:
    """Refuse an executor axis (where cells run does not change them) and a key set by an axis and the base."""
    for a in axes:
        if is_executor_key(a.key):
            raise SweepError(
                f"{a.key!r} cannot be an axis: where cells run does not change them; pass it as a base "
                "override (executor=ray) or as Sweep.run(executor=...)"
            )
    for b in base:
        key = b.split("=", 1)[0].strip().lstrip("+~")
        if key in {a.key for a in axes}:
            raise SweepError(f"base override {b!r} sets a key that is also an axis; drop one of them")
        if re.split(r"[./@]", key)[0] == "hydra":  # hydra.run.dir, hydra/launcher=...: composed away, unread
            raise SweepError(f"base override {b!r}: hydra.* settings choose where `workbench run` writes; a sweep "
                             "writes its cells under out_dir (Sweep.plan(out_dir=...), %workbench sweep --out)")


def _grid(axes: list[Axis]) -> list[Cell]:
    """One cell per grid position, in display order (X fastest, then Y, then Z)."""
    cells: list[Cell] = []
    ranges = [range(len(a.values)) for a in axes] + [range(1)] * (3 - len(axes))
    for i, (iz, iy, ix) in enumerate(itertools.product(ranges[2], ranges[1], ranges[0])):
        pos = (ix, iy, iz)
        values = tuple(a.values[p] for a, p in zip(axes, pos))
        cells.append(Cell(i, pos, values, [a.override(v) for a, v in zip(axes, values)]))
    return cells


def _compose(cells: list[Cell], base: list[str]) -> None:
    """Each cell's typed config, resolved dict and cache key, or the reason it has none."""
    from workbench.config.build import compose_many, describe_error, resolved, to_run_config

    # Hydra composes once per distinct set of group overrides, not once per cell
    for cell, dcfg in zip(cells, compose_many([base + c.overrides for c in cells])):
        try:
            if isinstance(dcfg, Exception):
                raise dcfg
            cell.config = to_run_config(dcfg)
            cell.resolved = resolved(dcfg)
            cell.resolved.pop("executor", None)  # where a cell runs is not what it is: same key on every executor
            cell.key = config_hash(cell.resolved)
        except Exception as err:  # Hydra composition, OmegaConf types, ConfigError
            cell.error = describe_error(err)


def _refuse_a_failing_base(base: list[str]) -> None:
    """Every cell failed: when the base overrides fail on their own (a typo such as ``widht=64``), the
    error is theirs, not the first axis value's."""
    from workbench.config.build import compose_many, describe_error, to_run_config

    (composed,) = compose_many([base])
    try:
        if isinstance(composed, Exception):
            raise composed
        to_run_config(composed)
    except Exception as err:  # Hydra composition, OmegaConf types, ConfigError
        raise SweepError(f"base overrides {base}: {describe_error(err)}") from None


def _refuse_values_that_never_work(axes: list[Axis], cells: list[Cell]) -> None:
    """A value that fails in every cell it is in is a typo: fail now, naming it. When several do
    (a wrong key fails every cell), blame the axis whose key the error message names."""
    never = []
    for n, axis in enumerate(axes):
        for p, value in enumerate(axis.values):
            mine = [c for c in cells if c.pos[n] == p]
            if all(c.error for c in mine):
                never.append((axis.key not in str(mine[0].error), n, axis, value, mine[0].error))
    if never:
        _, n, axis, value, error = min(never, key=lambda t: (t[0], t[1]))
        raise SweepError(f"axis {'XYZ'[n]} ({axis.key}) value {value!r}: {error}")


def _refuse_axes_that_change_nothing(axes: list[Axis], cells: list[Cell]) -> None:
    """An axis whose key no valid cell reads (a shift under the dynamic schedule, a negative prompt without
    guidance) would give identical cells: refuse it, saying why and what makes it count."""
    from workbench.config.unused import why_ignored

    valid = [c for c in cells if c.config is not None]
    for n, axis in enumerate(axes):
        why = [why_ignored(c.config, axis.key) for c in valid]
        if valid and all(why):
            raise SweepError(f"axis {'XYZ'[n]} ({axis.key}) changes nothing: no cell uses {axis.key}, since {why[0]}")


def _default_out_dir(axes: list[Axis], base: list[str]) -> Path:
    """``outputs/sweeps/<hash of axes and base>``; executor overrides left out, so a sweep finds its
    cache whatever runs it."""
    kept = [b for b in base if not is_executor_key(b.split("=", 1)[0])]
    spec = json.dumps({"axes": [a.text or a.key for a in axes], "base": kept})
    return Path("outputs") / "sweeps" / hashlib.sha256(spec.encode()).hexdigest()[:12]
