"""What a sweep hands back: per-cell results, and views over them (grid, timing table, A/B compare).

Every view works on partial results too, so a panel can redraw after each cell.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from PIL import Image

from workbench import record as rec
from workbench.sweep.axes import Axis, SweepError
from workbench.sweep.grid import GridLayout, cell_size, grid_layout, in_a_row, make_grid, side_by_side, tile_or_blank
from workbench.sweep.scoring import cell_scores, work_speedup

if TYPE_CHECKING:
    from workbench.sweep.plan import Cell, SweepPlan


@dataclass
class CellResult:
    cell: Cell
    status: str  # ok | cached | failed
    images: list[Image.Image] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    error: Optional[str] = None
    conditioning_cached: bool = False
    worker: Optional[str] = None  # "host:pid" of the process that ran it (None: read back or invalid)
    latents: Optional[Any] = None  # numpy (images, tokens, 64) final latents; None for failed / older cells

    @property
    def timings(self) -> dict[str, float]:
        return self.record.get("timings_s", {})

    @property
    def tile(self) -> Optional[Image.Image]:
        """The cell's images side by side (one per prompt x seed), or None when it failed."""
        if not self.images:
            return None
        return in_a_row(self.images)


@dataclass
class Comparison:
    """A/B view of two cells: images side by side, the config keys that differ, pixel difference."""

    a: CellResult
    b: CellResult
    image: Image.Image
    diff: dict[str, tuple[Any, Any]]  # flattened config key -> (value in a, value in b)
    mean_abs_diff: Optional[float]  # mean |a - b| over pixels (0..255), None when sizes differ / failed
    psnr: Optional[float] = None  # dB (inf when equal), workbench.metrics; None when sizes differ / failed
    ssim: Optional[float] = None  # 1 = same structure
    difference: Optional[Image.Image] = None  # |A - B| x4 at the cells' own resolution (1:1)

    def __repr__(self) -> str:
        keys = ", ".join(self.diff) or "none"
        return f"Comparison(cell {self.a.cell.index} vs {self.b.cell.index}; differing keys: {keys})"


SUMMARY = ("grid.png", "table.csv", "sweep.json")
PARTIAL_SUMMARY = ("grid.partial.png", "table.partial.csv", "sweep.partial.json")


def replace_together(files: dict[Path, bytes]) -> None:
    """Write each file to a temporary name beside it, then rename them all into place: a failed write
    (disk full) leaves every old file as it was. New files get the umask's permissions (``os.open``
    with 0o666 applies it; ``mkstemp`` would make them 0600)."""
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            temps[path] = tmp
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # gone after a rename; removes the leftovers of a failed write


class SweepResult:
    """Results in display order; ``grid``, ``table`` and ``compare`` work on partial results too."""

    def __init__(self, sweep: SweepPlan):
        self.sweep = sweep
        self.cells: list[Optional[CellResult]] = [None] * len(sweep.cells)
        # model_switches: how often a runner moved to another (model, precision, device) group
        self.stats = {"ran": 0, "cached": 0, "failed": 0, "encodes": 0, "conditioning_hits": 0, "model_switches": 0}
        self.run_order: list[int] = []  # cell indices in the order they were executed
        self.unstored: list[int] = []  # cells that ran but whose write failed (marked failed; run again next time)
        self.stopped = False  # the run ended before every cell had a result (a stop, Ctrl-C, on_cell)
        self.cut: Optional[int] = None  # the cell a stop cut mid-run (not stored; runs again next time)

    @property
    def axes(self) -> list[Axis]:
        return self.sweep.axes

    @property
    def done(self) -> int:
        return sum(r is not None for r in self.cells)

    def cell(self, x: int = 0, y: int = 0, z: int = 0) -> CellResult:
        """The result at grid position (x, y, z)."""
        for c in self.sweep.cells:
            if c.pos == (x, y, z):
                res = self.cells[c.index]
                if res is None:
                    raise KeyError(f"cell {c.label(self.axes)} has not run yet")
                return res
        raise KeyError(f"no cell at x={x}, y={y}, z={z}; the grid is {self.sweep.shape}")

    @property
    def grid(self) -> Image.Image:
        return make_grid(self.sweep, self.cells)

    @property
    def grid_layout(self) -> GridLayout:
        """Where each cell's tile is in ``grid`` (``cell_at(x, y)`` maps a click in grid pixels to a cell)."""
        return grid_layout(self.sweep, self.cells)

    @property
    def table(self):
        """pandas DataFrame, one row per cell (display order): axis values, status, timings, memory, settings,
        and the sweep's metric columns (``workbench.sweep.scoring``) when it asked for any."""
        import pandas as pd

        rows = []
        for cell in self.sweep.cells:
            res = self.cells[cell.index]
            row: dict[str, Any] = {a.key: v for a, v in zip(self.axes, cell.values)}
            row["status"] = res.status if res else (
                "invalid" if cell.error else "stopped" if cell.index == self.cut else "pending")
            t = res.timings if res else {}
            for stage in ("encode", "denoise", "decode"):
                row[f"{stage}_s"] = t.get(stage)
            row["total_s"] = t.get("total")
            row["cond_cached"] = res.conditioning_cached if res else None
            row["work_speedup"] = work_speedup(res)  # accel: hooked calls / computed, machine-independent
            mem = res.record.get("peak_memory", {}) if res else {}
            row["peak_mem_mb"] = round(max(mem.values()) / 2**20, 1) if mem else None
            # what the number is: CUDA allocations of the cell, or on a CPU the process's lifetime peak RSS
            # (getrusage cannot be reset; report.py labels it 'lifetime peak')
            row["peak_mem_kind"] = ("cuda" if "cuda_max_allocated_bytes" in mem else "process rss") if mem else None
            c = cell.config
            if c is not None:
                row.update(
                    model=c.model.name,
                    precision=c.precision.name,
                    template=c.template.name,
                    sampler=c.sampler.name,
                    steps=c.sampler.steps,
                    cfg=c.sampler.cfg,
                    size=f"{c.width}x{c.height}" if c.height else "from image",
                    seeds=",".join(map(str, c.seeds)),
                )
            if self.sweep.metrics:
                ref = self.cells[self.sweep.metric_reference]
                row.update(cell_scores(res, ref, self.sweep.metrics, self.sweep.metric_reference))
            # what the run said of itself (a snapped size, a setting it does not use): once per cell
            entries = res.record.get("images", []) if res else []
            row["notes"] = "; ".join(dict.fromkeys(n for e in entries if isinstance(e, dict) for n in e.get("notes", [])))
            row["error"] = (res.error if res else cell.error) or ""
            rows.append(row)
        df = pd.DataFrame(rows)
        df.index.name = "cell"
        return df

    def compare(self, a: int, b: int) -> Comparison:
        """A/B: cells ``a`` and ``b`` (display-order indices, see ``table``)."""
        n = len(self.cells)
        for i in (a, b):
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise SweepError(f"compare({a!r}, {b!r}): cell {i!r} is not an index of this sweep's {n} cells "
                                 f"(0..{n - 1}, the order of result.table)")
        ra, rb = self.cells[a], self.cells[b]
        for i, r in ((a, ra), (b, rb)):
            if r is None:
                raise KeyError(f"cell {i} has not run yet")
        fa = rec.flatten(ra.cell.resolved or {})
        fb = rec.flatten(rb.cell.resolved or {})
        diff = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
        axes = self.axes
        tiles = [tile_or_blank(r, cell_size([ra, rb])) for r in (ra, rb)]
        labels = [f"A: {ra.cell.label(axes)}", f"B: {rb.cell.label(axes)}"]
        if ra.tile is None or rb.tile is None or ra.tile.size != rb.tile.size:
            return Comparison(ra, rb, side_by_side(tiles, labels), diff, None)
        from workbench import metrics

        pa = np.asarray(ra.tile.convert("RGB"), dtype=np.float32)
        pb = np.asarray(rb.tile.convert("RGB"), dtype=np.float32)
        delta = np.abs(pa - pb)
        # the difference map, amplified 4x so that a change of a few levels is visible
        diff_map = Image.fromarray(np.clip(delta * 4, 0, 255).astype(np.uint8))
        shown = diff_map.resize(tiles[0].size, Image.Resampling.NEAREST)  # at the size the A and B tiles are shown
        image = side_by_side(tiles + [shown], labels + ["|A - B| x4"])
        return Comparison(ra, rb, image, diff, float(delta.mean()), metrics.psnr(ra.tile, rb.tile),
                          metrics.ssim(ra.tile, rb.tile), diff_map)

    @property
    def complete(self) -> bool:
        """Every cell has a result (ran, read back, or failed with its reason) and all of them are stored."""
        return all(r is not None for r in self.cells) and not self.unstored

    def save(self, complete: Optional[bool] = None) -> Path:
        """Write the summary (grid, table, sweep.json) to the sweep folder; returns the folder.

        A complete sweep replaces ``grid.png``, ``table.csv`` and ``sweep.json`` (and removes the partial
        files of earlier runs). A partial one (stopped, interrupted, a write failed) writes
        ``grid.partial.png``, ``table.partial.csv`` and ``sweep.partial.json`` instead, so the summary of
        an earlier complete run is never replaced by a partial one. All three are written to temporary
        files first and renamed into place only when every one was written: a full disk replaces nothing.
        """
        complete = self.complete if complete is None else complete
        out = self.sweep.out_dir
        names = SUMMARY if complete else PARTIAL_SUMMARY
        summary = self.sweep.describe() | {"complete": complete, "stats": self.stats}
        if self.stopped:
            summary |= {"stopped": True, "cut": self.cut}
        # the grid is a large view of the cells (which keep default compression): fastest zlib level,
        # since its encoding is the one write that cannot overlap compute (it happens after the last cell)
        data = [
            rec.png_bytes(self.grid, compress_level=1),
            self.table.to_csv().encode("utf-8"),
            (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        ]
        replace_together({out / n: d for n, d in zip(names, data)})
        if complete:
            for name in PARTIAL_SUMMARY:
                (out / name).unlink(missing_ok=True)
        return out

    def _repr_png_(self) -> bytes:  # notebooks show the grid
        return rec.png_bytes(self.grid)

    def __repr__(self) -> str:
        s = self.stats
        shape = "x".join(map(str, self.sweep.shape))
        return (
            f"SweepResult({len(self.cells)} cells, grid {shape}: {s['ran']} ran, {s['cached']} cached, "
            f"{s['failed']} failed; {s['encodes']} encodes, {s['model_switches']} model switches"
            + (f"; stopped, {self.done} of {len(self.cells)} done" if self.stopped else "")
            + (f", cell {self.cut} cut" if self.cut is not None else "") + ")"
        )
