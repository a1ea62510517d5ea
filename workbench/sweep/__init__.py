"""Sweeps: up to three axes (X / Y / Z) over any config key, run on resident models, cached on disk.

    from workbench.sweep import Sweep
    sweep = Sweep.plan(["sampler.steps=2-8 (+2)", "precision=fp32,bf16"], base=["height=64", "width=64"])
    result = sweep.run()            # every cell's config was validated before this line
    result.grid                     # PIL image with axis legends; failed cells are labelled blank tiles
    result.table                    # pandas: per-cell timings (encode / denoise / decode), peak memory, settings
    control = SweepControl(on_progress=print)   # sweep.run(control=control) in a thread; control.stop() stops it

Why it is built this way:
- every cell is a full Hydra composition (base overrides + one override per axis), validated with
  ``to_run_config`` in ``plan`` so typos fail before a model loads;
- cells run grouped by (model, precision, device), outermost, so each set of weights is built once
  (``Workbench.from_config`` keeps it resident), and cells that share (template, prompts, images,
  model) reuse one conditioning;
- each finished cell is written atomically to ``<out_dir>/cells/<hash of its resolved config>/``;
  a cell whose ``record.json`` exists is read back instead of run, so re-running a sweep skips finished
  cells and an interrupted one resumes; a cell that cannot be read back (truncated PNG, broken record)
  is computed again with a ``CorruptCellWarning`` naming it;
- ``grid.png`` / ``table.csv`` / ``sweep.json`` are replaced only by a complete sweep; a stopped or failed
  one writes ``grid.partial.png`` / ``table.partial.csv`` / ``sweep.partial.json``; a cell whose write
  failed (disk full) is marked failed, never ok, and the sweep raises ``SweepWriteError``;
- a cell that raises (bad combination, out of memory) becomes a labelled blank tile and the sweep goes on;
- where cells run is pluggable (``workbench.sweep.executors``: this process, or Ray actors holding resident
  models on each GPU): executors run cells with the one ``CellRunner`` and hand back ``CellOutput``s,
  which ``Sweep.run`` stores in the same cache, grid and table; ``executor`` settings never enter a
  cell's config hash, so either executor reuses the other's finished cells.

The modules, in the order a sweep uses them (each imports only those above it; ``keys`` is a leaf):
    axes       ``key=values`` strings -> typed axes
    keys       pure keys of a resolved config: the cache hash, the model group, the conditioning
    scoring    the metric columns (checked when planned)
    plan       the plan as data: cells and their validated configs, the execution order (``SweepPlan``)
    grid       the grid image with legends, and its tile boxes (``grid_layout``)
    result     ``SweepResult``: table, A/B compare, save
    report     views for reading and sharing: styled table, timing / memory charts, export
    cache      cell folders (the run layout: record.json + images/): store, read back
    control    ``SweepControl`` (stop, progress feed), ``Progress``, ``SweepInterrupted``; the run's ``RunWatch``
    runner     one cell on resident models (``CellRunner``) -> ``CellOutput`` with the run record
    executors  where cells run: this process or Ray actors
    execute    ``Sweep`` (the plan + ``run``): read back finished cells, hand the rest to an executor, store
"""

from workbench.sweep.axes import SweepError
from workbench.sweep.cache import CorruptCellWarning
from workbench.sweep.control import Progress, SweepControl, SweepInterrupted
from workbench.sweep.execute import Sweep, SweepWriteError
from workbench.sweep.grid import FAILED, GridLayout, grid_layout, make_grid  # FAILED: the tile colour tests look for
from workbench.sweep.plan import Cell, SweepPlan
from workbench.sweep.result import CellResult, Comparison, SweepResult
from workbench.sweep.runner import CellOutput, CellRunner

__all__ = ["Sweep", "SweepPlan", "SweepResult", "CellResult", "CellOutput", "CellRunner", "Cell", "Comparison",
           "SweepError", "SweepWriteError", "CorruptCellWarning", "FAILED", "make_grid",
           "GridLayout", "grid_layout", "SweepControl", "Progress", "SweepInterrupted"]
