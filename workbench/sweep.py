"""Sweeps: up to three axes (X / Y / Z) over any config key, run on resident models, cached on disk.

    from workbench.sweep import Sweep
    sweep = Sweep.plan(["sampler.steps=2-8 (+2)", "precision=fp32,bf16"], base=["height=64", "width=64"])
    result = sweep.run()            # every cell's config was validated before this line
    result.grid                     # PIL image with axis legends; failed cells are labelled blank tiles
    result.table                    # pandas: per-cell timings (encode / denoise / decode), peak memory, settings

Why it is built this way:
- every cell is a full Hydra composition (base overrides + one override per axis), validated with
  ``to_run_config`` in ``plan`` so typos fail before a model loads;
- cells run grouped by (model, precision, device), outermost, so each set of weights is built once
  (``Workbench.from_config`` keeps it resident), and cells that share (template, prompts, images,
  model) reuse one conditioning;
- each finished cell is written atomically to ``<out_dir>/cells/<hash of its resolved config>/``;
  a cell whose ``record.json`` exists is read back instead of run, so re-running a sweep skips finished
  cells and an interrupted one resumes;
- a cell that raises (bad combination, out of memory) becomes a labelled blank tile and the sweep goes on;
- where cells run is pluggable (``workbench.sweep_executors``: this process, or Ray actors holding resident
  models on each GPU): executors run cells with the one ``CellRunner`` and hand back ``CellOutput``s,
  which ``Sweep.run`` stores in the same cache, grid and table; ``executor`` settings never enter a
  cell's config hash, so either executor reuses the other's finished cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from workbench.sweep_axes import Axis, SweepError, parse_axes

__all__ = ["Sweep", "SweepResult", "CellResult", "CellOutput", "CellRunner", "Cell", "Comparison", "SweepError", "make_grid"]

CACHE_VERSION = "sweep-cell-v1"  # bump when what a cell writes changes


def config_hash(resolved: dict) -> str:
    """Hash of a resolved config: the cell cache key (same config -> same folder)."""
    text = json.dumps({"v": CACHE_VERSION, "config": resolved}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _describe(err: BaseException) -> str:
    """One readable line from Hydra / OmegaConf / ConfigError exceptions (their cause holds the key)."""
    head = str(err).strip().split("\n")[0]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        head = f"{head} ({str(cause).strip().splitlines()[0]})"
    if "Available options" in str(err):  # unknown group option: keep Hydra's list of choices
        options = str(err).split("Available options", 1)[1].split("Config search path")[0]
        head += " available:" + ",".join(" " + o.strip() for o in options.splitlines()[1:] if o.strip())
    return head


# ----------------------------------------------------------------------------- plan
@dataclass
class Cell:
    """One grid position: its axis values, overrides and validated config (or the reason it has none)."""

    index: int  # position in display order (X fastest, then Y, then Z)
    pos: tuple[int, int, int]  # (ix, iy, iz)
    values: tuple  # one value per axis
    overrides: list[str]  # the axis overrides (the base overrides come first)
    config: Any = None  # workbench.config.schema.Config, None when invalid
    resolved: Optional[dict] = None
    key: Optional[str] = None  # config_hash(resolved)
    error: Optional[str] = None  # why this combination cannot run

    def label(self, axes: Sequence[Axis]) -> str:
        return ", ".join(a.label(v) for a, v in zip(axes, self.values))


def _is_executor_key(key: str) -> bool:
    key = key.strip().lstrip("+~")
    return key == "executor" or key.startswith("executor.")


def _model_key(resolved: dict) -> str:
    return json.dumps([resolved["model"], resolved["precision"], resolved["device"]], sort_keys=True)


def _conditioning_key(resolved: dict) -> str:
    """What the conditioning depends on: template, prompts, images (and their sizing), model, encoder dtype."""
    r = resolved
    guided = r["sampler"]["cfg"] > 1
    parts = {
        "template": r["template"],
        "prompts": r["prompts"],
        "negative": r["negative_prompt"] if guided else None,
        "images": r["images"],
        "reference": r["reference"] if r["images"] else None,
        "model": r["model"],
        "dtype": [r["precision"]["text_encoder"], r["precision"]["vae"] if r["images"] else None],
        "device": r["device"],
        "max_sequence_length": r["max_sequence_length"],
    }
    return json.dumps(parts, sort_keys=True)


# ----------------------------------------------------------------------------- results
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

    @property
    def timings(self) -> dict[str, float]:
        return self.record.get("timings_s", {})

    @property
    def tile(self) -> Optional[Image.Image]:
        """The cell's images side by side (one per prompt x seed), or None when it failed."""
        if not self.images:
            return None
        if len(self.images) == 1:
            return self.images[0]
        w, h = sum(i.width for i in self.images), max(i.height for i in self.images)
        out = Image.new("RGB", (w, h), "white")
        x = 0
        for img in self.images:
            out.paste(img, (x, 0))
            x += img.width
        return out


@dataclass
class Comparison:
    """A/B view of two cells: images side by side, the config keys that differ, pixel difference."""

    a: CellResult
    b: CellResult
    image: Image.Image
    diff: dict[str, tuple[Any, Any]]  # flattened config key -> (value in a, value in b)
    mean_abs_diff: Optional[float]  # mean |a - b| over pixels (0..255), None when sizes differ / failed

    def __repr__(self) -> str:
        keys = ", ".join(self.diff) or "none"
        return f"Comparison(cell {self.a.cell.index} vs {self.b.cell.index}; differing keys: {keys})"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


class SweepResult:
    """Results in display order; ``grid``, ``table`` and ``compare`` work on partial results too."""

    def __init__(self, sweep: "Sweep"):
        self.sweep = sweep
        self.cells: list[Optional[CellResult]] = [None] * len(sweep.cells)
        self.stats = {"ran": 0, "cached": 0, "failed": 0, "encodes": 0, "conditioning_hits": 0, "model_switches": 0}  # switches between model groups that ran
        self.run_order: list[int] = []  # cell indices in the order they were executed

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
    def table(self):
        """pandas DataFrame, one row per cell (display order): axis values, status, timings, memory, settings."""
        import pandas as pd

        rows = []
        for cell in self.sweep.cells:
            res = self.cells[cell.index]
            row: dict[str, Any] = {a.key: v for a, v in zip(self.axes, cell.values)}
            row["status"] = res.status if res else ("invalid" if cell.error else "pending")
            t = res.timings if res else {}
            for stage in ("encode", "denoise", "decode"):
                row[f"{stage}_s"] = t.get(stage)
            row["total_s"] = t.get("total")
            row["cond_cached"] = res.conditioning_cached if res else None
            mem = res.record.get("peak_memory", {}) if res else {}
            row["peak_mem_mb"] = round(max(mem.values()) / 2**20, 1) if mem else None
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
            row["error"] = (res.error if res else cell.error) or ""
            rows.append(row)
        df = pd.DataFrame(rows)
        df.index.name = "cell"
        return df

    def compare(self, a: int, b: int) -> Comparison:
        """A/B: cells ``a`` and ``b`` (display-order indices, see ``table``)."""
        ra, rb = self.cells[a], self.cells[b]
        for i, r in ((a, ra), (b, rb)):
            if r is None:
                raise KeyError(f"cell {i} has not run yet")
        fa = _flatten(ra.cell.resolved or {})
        fb = _flatten(rb.cell.resolved or {})
        diff = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
        mad = None
        if ra.tile is not None and rb.tile is not None and ra.tile.size == rb.tile.size:
            import numpy as np

            pa = np.asarray(ra.tile.convert("RGB"), dtype=np.float32)
            pb = np.asarray(rb.tile.convert("RGB"), dtype=np.float32)
            mad = float(np.abs(pa - pb).mean())
        axes = self.axes
        tiles = [_tile_or_blank(r, _cell_size([ra, rb])) for r in (ra, rb)]
        labels = [f"A: {ra.cell.label(axes)}", f"B: {rb.cell.label(axes)}"]
        image = _side_by_side(tiles, labels)
        return Comparison(ra, rb, image, diff, mad)

    def save(self) -> Path:
        """Write grid.png, table.csv and sweep.json to the sweep folder; returns the folder."""
        from workbench import record as rec

        out = self.sweep.out_dir
        import io

        buf = io.BytesIO()
        self.grid.save(buf, format="PNG")
        rec.atomic_write_bytes(out / "grid.png", buf.getvalue())
        rec.atomic_write_bytes(out / "table.csv", self.table.to_csv().encode("utf-8"))
        rec.atomic_write_json(out / "sweep.json", self.sweep.describe() | {"stats": self.stats})
        return out

    def _repr_png_(self) -> bytes:  # notebooks show the grid
        import io

        buf = io.BytesIO()
        self.grid.save(buf, format="PNG")
        return buf.getvalue()

    def __repr__(self) -> str:
        s = self.stats
        shape = "x".join(map(str, self.sweep.shape))
        return (
            f"SweepResult({len(self.cells)} cells, grid {shape}: {s['ran']} ran, {s['cached']} cached, "
            f"{s['failed']} failed; {s['encodes']} encodes, {s['model_switches']} model switches)"
        )


# ----------------------------------------------------------------------------- the sweep
class Sweep:
    """A validated plan: axes, base overrides, one ``Cell`` per grid position, and the run order."""

    def __init__(self, axes: list[Axis], base: list[str], cells: list[Cell], out_dir: Path, executor: Any = None):
        self.axes = axes
        self.base = base
        self.cells = cells
        self.out_dir = Path(out_dir)
        self.executor = executor  # ExecutorConfig from the composed config (base overrides); None: local

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    @classmethod
    def plan(
        cls,
        axes: Sequence,
        base: Sequence[str] = (),
        out_dir: Optional[str | Path] = None,
    ) -> "Sweep":
        """Parse the axes, compose and validate every cell; raise ``SweepError`` before anything runs.

        A value that fails in every cell it appears in raises, naming its axis and value. A
        combination that fails while its values work elsewhere (e.g. ``steps=1`` only with one sampler)
        is kept as an invalid cell: it becomes a blank tile with the reason.
        """
        from omegaconf import OmegaConf

        from workbench.config import compose, to_run_config

        parsed = parse_axes(list(axes))
        for a in parsed:
            if _is_executor_key(a.key):
                raise SweepError(
                    f"{a.key!r} cannot be an axis: where cells run does not change them; pass it as a base "
                    "override (executor=ray) or as Sweep.run(executor=...)"
                )
        base = [b for b in base if b.strip()]
        for b in base:
            if b.split("=", 1)[0].strip() in {a.key for a in parsed}:
                raise SweepError(f"base override {b!r} sets a key that is also an axis; drop one of them")
        cells: list[Cell] = []
        ranges = [range(len(a.values)) for a in parsed] + [range(1)] * (3 - len(parsed))
        for i, (iz, iy, ix) in enumerate(itertools.product(ranges[2], ranges[1], ranges[0])):
            pos = (ix, iy, iz)
            values = tuple(a.values[p] for a, p in zip(parsed, pos))
            overrides = [a.override(v) for a, v in zip(parsed, values)]
            cell = Cell(i, pos, values, overrides)
            try:
                dcfg = compose(base + overrides)
                cell.config = to_run_config(dcfg)
                cell.resolved = OmegaConf.to_container(dcfg, resolve=True)
                cell.resolved.pop("executor", None)  # where a cell runs is not what it is: same key on every executor
                cell.key = config_hash(cell.resolved)
            except Exception as err:  # Hydra composition, OmegaConf types, ConfigError
                cell.error = _describe(err)
            cells.append(cell)

        # a value that fails in every cell it is in is a typo: fail now, naming it. When several do
        # (a wrong key fails every cell), blame the axis whose key the error message names.
        never = []
        for n, axis in enumerate(parsed):
            for p, value in enumerate(axis.values):
                mine = [c for c in cells if c.pos[n] == p]
                if all(c.error for c in mine):
                    never.append((axis.key not in str(mine[0].error), n, axis, value, mine[0].error))
        if never:
            _, n, axis, value, error = min(never, key=lambda t: (t[0], t[1]))
            raise SweepError(f"axis {'XYZ'[n]} ({axis.key}) value {value!r}: {error}")
        if out_dir is None:  # executor overrides left out: a sweep finds its cache whatever runs it
            kept = [b for b in base if not _is_executor_key(b.split("=", 1)[0])]
            spec = json.dumps({"axes": [a.text or a.key for a in parsed], "base": kept})
            out_dir = Path("outputs") / "sweeps" / hashlib.sha256(spec.encode()).hexdigest()[:12]
        executor = next((c.config.executor for c in cells if c.config is not None), None)
        return cls(parsed, base, cells, Path(out_dir), executor)

    def execution_order(self) -> list[Cell]:
        """Valid cells grouped by (model, precision, device) outermost, then by shared conditioning."""
        valid = [c for c in self.cells if c.config is not None]
        model_rank: dict[str, int] = {}
        cond_rank: dict[str, int] = {}
        for c in valid:
            model_rank.setdefault(_model_key(c.resolved), len(model_rank))
            cond_rank.setdefault(_conditioning_key(c.resolved), len(cond_rank))
        return sorted(
            valid,
            key=lambda c: (model_rank[_model_key(c.resolved)], cond_rank[_conditioning_key(c.resolved)], c.index),
        )

    def describe(self) -> dict:
        return {
            "axes": [{"name": "XYZ"[i], "key": a.key, "values": list(a.values)} for i, a in enumerate(self.axes)],
            "base": self.base,
            "cells": [
                {"index": c.index, "pos": list(c.pos), "overrides": c.overrides, "key": c.key, "error": c.error}
                for c in self.cells
            ],
        }

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / str(cell.key)

    def run(
        self,
        progress: bool = True,
        on_cell: Optional[Callable[[CellResult, SweepResult], Optional[bool]]] = None,
        keep_models: bool = True,
        conditioning_cache_size: int = 16,
        executor: Any = None,
    ) -> SweepResult:
        """Run (or read back) every cell; returns when all are done.

        ``on_cell(cell_result, sweep_result)`` is called after each cell (panels redraw the grid there);
        returning True stops the sweep early (finished cells stay cached). ``keep_models=False`` frees
        the resident models when the sweep moves to the next (model, precision, device) group, for
        weights that do not fit twice. ``executor``: where the cells run; None takes the config's
        ``executor`` section (e.g. the base override ``executor=ray``), or pass ``"local"``, ``"ray"``,
        an ``ExecutorConfig`` or an executor object (``workbench.sweep_executors``). Finished cells are
        read back here, whatever the executor; only the others are handed to it.
        """
        from tqdm.auto import tqdm

        from workbench.sweep_executors import RunOptions, make_executor

        runner = make_executor(self.executor if executor is None else executor)  # fails before anything runs
        result = SweepResult(self)
        for cell in self.cells:
            if cell.config is None:
                result.cells[cell.index] = CellResult(cell, "failed", error=cell.error)
                result.stats["failed"] += 1
        order = self.execution_order()
        bar = tqdm(total=len(order), desc="sweep", disable=not progress, leave=False)

        def finish(res: CellResult) -> bool:
            result.cells[res.cell.index] = res
            result.run_order.append(res.cell.index)
            result.stats[{"ok": "ran", "cached": "cached", "failed": "failed"}[res.status]] += 1
            bar.update(1)
            return bool(on_cell is not None and on_cell(res, result))

        try:
            todo, stop = [], False
            for cell in order:
                res = read_back(self, cell)
                if res is None:
                    todo.append(cell)
                elif finish(res):
                    stop = True
                    break
            if todo and not stop:
                outputs = runner.run(self, todo, RunOptions(keep_models, conditioning_cache_size))
                try:
                    for cell, out in outputs:
                        result.stats["encodes"] += out.encodes
                        result.stats["conditioning_hits"] += out.conditioning_hits
                        result.stats["model_switches"] += int(out.model_switch)
                        if finish(store_output(self, cell, out)):
                            break
                finally:
                    outputs.close()  # a stopped sweep: the executor drops the cells it has not started
        finally:
            bar.close()
            result.save()
        return result


# ----------------------------------------------------------------------------- running one cell
@dataclass
class CellOutput:
    """What running one cell produced, before it is stored: picklable, so a Ray actor can send it back."""

    status: str  # ok | failed
    images: list[Image.Image] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # record.json; "images" holds one entry (file name, seed...) per image
    error: Optional[str] = None
    encodes: int = 0
    conditioning_hits: int = 0
    model_switch: bool = False  # this cell's (model, precision, device) differs from the runner's previous cell
    worker: Optional[str] = None  # "host:pid"


class CellRunner:
    """Runs cells where the models live (this process, or one Ray actor): a resident workbench per
    (model, precision, device), a conditioning LRU shared by its cells, and model switches.

    It writes nothing: ``store_output`` puts its outputs in the cache in the sweep's process, so a remote
    actor needs no shared disk and both executors fill the cache the same way.
    """

    def __init__(self, keep_models: bool = True, cache_size: int = 16):
        from workbench.conditioning_cache import ConditioningCache

        self.keep_models = keep_models
        self.cache_size = cache_size
        # the library's conditioning cache, shared by this runner's workbenches; its keys hold the encoder's
        # identity + dtype, so entries stay valid across model switches and a group that differs only in
        # the transformer (precision, LoRA, perf) reuses them
        self.conditioning = ConditioningCache(max_entries=cache_size)
        self.model: Optional[str] = None  # _model_key of the last cell

    def run(self, sweep: Sweep, cell: Cell) -> CellOutput:
        import os
        import socket

        model = _model_key(cell.resolved)
        switch = self.model is not None and model != self.model
        if switch:
            if not self.keep_models:
                from workbench.pipeline import free_models

                free_models()
        self.model = model
        try:
            out = self._generate(sweep, cell)
        except Exception as err:  # one bad cell (OOM, a combination the models refuse) must not end the sweep
            _release_cuda()
            message = f"{type(err).__name__}: {err}"
            out = CellOutput("failed", error=message, record={"config": cell.resolved, "error": message})
        out.model_switch = switch
        out.worker = f"{socket.gethostname()}:{os.getpid()}"
        return out

    def _generate(self, sweep: Sweep, cell: Cell) -> CellOutput:
        import torch

        from workbench import record as rec
        from workbench.pipeline import Workbench

        cfg = cell.config
        t: dict[str, float] = {}
        started = time.perf_counter()
        with _timed(t, "load", None):
            # resident: built once per (model, precision, device); encodes go through this runner's cache
            bench = Workbench.from_config(cfg, conditioning_cache=self.conditioning)
        self.conditioning.max_entries = self.cache_size  # executors may change it between sweeps
        if bench.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bench.device)
        hits, misses = self.conditioning.hits, self.conditioning.misses
        generated = bench.generate(cfg, progress=False)  # the pipeline's own chain
        hits, misses = self.conditioning.hits - hits, self.conditioning.misses - misses
        hit = misses == 0

        shared = {k: generated[0].timings.get(k, 0.0) for k in ("references", "encode")}
        batches = {id(g.timings): g.timings for g in generated}.values()  # one dict per forward batch
        for stage in ("latents", "denoise", "decode"):
            t[stage] = sum(b.get(stage, 0.0) for b in batches)
        t.update(shared)
        t["total"] = time.perf_counter() - started

        axes = sweep.axes
        record = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cell.resolved,
            "sweep": {
                "base": sweep.base,
                "overrides": cell.overrides,
                "axes": {a.key: v for a, v in zip(axes, cell.values)},
                "pos": list(cell.pos),
            },
            "models": bench.components.identity,
            "device": rec.device_info(bench.device),
            "versions": rec.library_versions(),
            "git_commit": rec.git_commit(),
            "model_files": rec.model_file_hashes(cell.resolved),  # as workbench run records them
            "reference_images": rec.reference_image_hashes(list(cfg.images)),
            "timings_s": {k: round(v, 6) for k, v in t.items()},
            "peak_memory": rec.peak_memory(bench.device),
            "conditioning_cached": hit,
            "images": [
                {
                    "file": f"{i:03d}-seed{g.seed}.png",
                    "prompt": g.prompt,
                    "seed": g.seed,
                    "width": g.image.width,
                    "height": g.image.height,
                    "notes": list(getattr(g, "notes", [])),
                }
                for i, g in enumerate(generated)
            ],
        }
        images = [g.image for g in generated]
        return CellOutput("ok", images, record, encodes=misses, conditioning_hits=hits)


def store_output(sweep: Sweep, cell: Cell, out: CellOutput) -> CellResult:
    """Write one cell's output to the cache (``record.json`` last: its presence marks the cell done)."""
    from workbench import record as rec

    folder = sweep.cell_dir(cell)
    if out.status != "ok":
        rec.atomic_write_json(folder / "error.json", {"error": out.error, "overrides": cell.overrides})
        return CellResult(cell, "failed", error=out.error, record=out.record, worker=out.worker)
    files = []
    head = {k: v for k, v in out.record.items() if k != "images"}
    for entry, image in zip(out.record["images"], out.images):
        rec.save_png(folder / entry["file"], image, head | {"image": entry})
        files.append(folder / entry["file"])
    (folder / "error.json").unlink(missing_ok=True)
    rec.atomic_write_json(folder / "record.json", out.record)
    hit = out.record.get("conditioning_cached", False)
    return CellResult(cell, "ok", out.images, files, out.record, conditioning_cached=hit, worker=out.worker)


def read_back(sweep: Sweep, cell: Cell) -> Optional[CellResult]:
    """The cached result of a finished cell, or None when it has to run."""
    path = sweep.cell_dir(cell) / "record.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    files = [path.parent / e["file"] for e in record.get("images", [])]
    if not files or not all(f.is_file() for f in files):
        return None  # a partial cell (images removed by hand): run it again
    images = []
    for f in files:
        with Image.open(f) as img:
            images.append(img.convert("RGB"))
    return CellResult(cell, "cached", images, files, record, conditioning_cached=record.get("conditioning_cached", False))


@contextmanager
def _timed(timings: dict[str, float], name: str, device) -> Iterator[None]:
    import torch

    sync = device is not None and device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if sync:
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _release_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the grid image
BACKGROUND = (255, 255, 255)
PENDING = (225, 225, 225)
FAILED = (245, 225, 225)
INK = (20, 20, 20)
ERROR_INK = (150, 0, 0)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _cell_size(results: Sequence[Optional[CellResult]], min_side: int = 128) -> tuple[int, int]:
    """Common tile size: the largest tile, scaled up by an integer factor to at least ``min_side``."""
    sizes = [r.tile.size for r in results if r is not None and r.tile is not None]
    w, h = (max(s[0] for s in sizes), max(s[1] for s in sizes)) if sizes else (min_side, min_side)
    scale = max(1, math.ceil(min_side / max(1, min(w, h))))
    return w * scale, h * scale


def _wrap(text: str, width_px: int, font) -> list[str]:
    """Greedy word wrap measured in pixels; words wider than a line are broken."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width_px and len(word) > 1:
                cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width_px or i == 1))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _tile_or_blank(res: Optional[CellResult], size: tuple[int, int], invalid: Optional[str] = None) -> Image.Image:
    w, h = size
    if res is not None and res.tile is not None:
        tile = res.tile
        scale = max(1, min(w // tile.width, h // tile.height))
        if scale > 1:
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        out = Image.new("RGB", size, BACKGROUND)
        out.paste(tile, ((w - tile.width) // 2, (h - tile.height) // 2))
        return out
    error = res.error if res is not None else invalid
    out = Image.new("RGB", size, FAILED if error else PENDING)
    draw = ImageDraw.Draw(out)
    font = _font(11)
    if error:
        lines = ["FAILED"] + _wrap(error, w - 8, font)
        max_lines = max(1, (h - 8) // 13)
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + ["..."]
        draw.multiline_text((4, 4), "\n".join(lines), fill=ERROR_INK, font=font, spacing=2)
    else:
        draw.text((w // 2, h // 2), "pending", fill=(120, 120, 120), font=font, anchor="mm")
    return out


def _side_by_side(tiles: list[Image.Image], labels: list[str], pad: int = 6) -> Image.Image:
    font = _font(13)
    wrapped = [_wrap(label, t.width, font) for t, label in zip(tiles, labels)]
    head = 16 * max(len(w) for w in wrapped) + 6
    w = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    h = max(t.height for t in tiles) + head + pad
    out = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(out)
    x = pad
    for t, lines in zip(tiles, wrapped):
        draw.multiline_text((x, 3), "\n".join(lines), fill=INK, font=font, spacing=3)
        out.paste(t, (x, head))
        x += t.width + pad
    return out


def make_grid(sweep: Sweep, results: Sequence[Optional[CellResult]], min_side: int = 128) -> Image.Image:
    """The X/Y grid (one panel per Z value, side by side) with axis legends; blanks for failed / pending cells."""
    axes = sweep.axes
    nx, ny, nz = (list(sweep.shape) + [1, 1])[:3]
    tw, th = _cell_size(results, min_side)
    font, title_font = _font(13), _font(15)
    pad = 4
    col_labels = [axes[0].label(v) for v in axes[0].values]
    row_labels = [axes[1].label(v) for v in axes[1].values] if len(axes) > 1 else [""]
    left = (max(int(font.getlength(s)) for s in row_labels) + 2 * pad) if len(axes) > 1 else pad
    left = min(left, 220)
    head_lines = max(len(_wrap(s, tw, font)) for s in col_labels)
    top = head_lines * 16 + 2 * pad + (22 if nz > 1 else 0)
    panel_w = left + nx * (tw + pad)
    panel_h = top + ny * (th + pad)
    out = Image.new("RGB", (nz * panel_w + (nz - 1) * 3 * pad + pad, panel_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(out)
    by_pos = {c.pos: c for c in sweep.cells}
    for iz in range(nz):
        ox = iz * (panel_w + 3 * pad)
        if nz > 1:
            draw.text((ox + left, pad), axes[2].label(axes[2].values[iz]), fill=INK, font=title_font)
        for ix, label in enumerate(col_labels):
            x = ox + left + ix * (tw + pad)
            draw.multiline_text((x + 2, top - head_lines * 16 - pad), "\n".join(_wrap(label, tw, font)), fill=INK, font=font)
        for iy in range(ny):
            y = top + iy * (th + pad)
            if len(axes) > 1:
                text = _wrap(row_labels[iy], left - 2 * pad, font)
                draw.multiline_text((ox + pad, y + th // 2 - 8 * len(text)), "\n".join(text), fill=INK, font=font)
            for ix in range(nx):
                cell = by_pos[(ix, iy, iz)]
                tile = _tile_or_blank(results[cell.index], (tw, th), cell.error)
                out.paste(tile, (ox + left + ix * (tw + pad), y))
    return out
