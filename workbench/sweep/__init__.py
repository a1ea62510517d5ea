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

The modules, in the order a sweep uses them:
    axes       ``key=values`` strings -> typed axes
    plan       cells and their validated configs, the execution order (``Sweep``)
    execute    ``Sweep.run``: read back finished cells, hand the rest to an executor, store what comes back
    executors  where cells run: this process or Ray actors
    runner     one cell on resident models (``CellRunner``) -> ``CellOutput``
    cache      cell folders: the config hash, store, read back
    result     ``SweepResult``: table, A/B compare, save
    grid       the grid image with legends
"""

from workbench.sweep.axes import SweepError
from workbench.sweep.cache import CorruptCellWarning
from workbench.sweep.grid import FAILED, make_grid  # FAILED: the tile colour tests look for
from workbench.sweep.plan import Cell, Sweep, _describe  # _describe: workbench.magics' one-line errors
from workbench.sweep.result import CellResult, Comparison, SweepResult
from workbench.sweep.runner import CellOutput, CellRunner


def __getattr__(name: str):  # execute imports the executors, which import this package: load it on use
    if name == "SweepWriteError":
        from workbench.sweep.execute import SweepWriteError

        return SweepWriteError
    raise AttributeError(name)

__all__ = ["Sweep", "SweepResult", "CellResult", "CellOutput", "CellRunner", "Cell", "Comparison", "SweepError", "SweepWriteError", "CorruptCellWarning", "make_grid"]
