"""``Sweep.run``: read finished cells back, hand the others to an executor, store and count what comes back.

Reading back and storing happen here, in the sweep's process, whatever the executor: a remote one
needs no shared disk, and both fill the same cache, grid and table. Cells are written by one
background thread, so that PNG encoding (~0.2-0.5 s per 1024x1024 image; Pillow releases the GIL
while it compresses) overlaps the next cell's compute instead of adding to the sweep's wall time
(benchmarks/README.md, sweep overhead). The sweep returns only once every write has finished, and a
failed write raises.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Optional

from workbench.sweep.cache import cell_result, read_back, write_output
from workbench.sweep.executors import RunOptions, make_executor
from workbench.sweep.result import CellResult, SweepResult

if TYPE_CHECKING:
    from workbench.sweep.plan import Sweep


def run_sweep(
    sweep: Sweep,
    progress: bool,
    on_cell: Optional[Callable[[CellResult, SweepResult], Optional[bool]]],
    keep_models: bool,
    conditioning_cache_size: int,
    executor: Any,
) -> SweepResult:
    """The body of ``Sweep.run`` (its docstring has the arguments)."""
    from tqdm.auto import tqdm

    runner = make_executor(sweep.executor if executor is None else executor)  # fails before anything runs
    result = SweepResult(sweep)
    for cell in sweep.cells:
        if cell.config is None:
            result.cells[cell.index] = CellResult(cell, "failed", error=cell.error)
            result.stats["failed"] += 1
    order = sweep.execution_order()
    bar = tqdm(total=len(order), desc="sweep", disable=not progress, leave=False)

    def finish(res: CellResult) -> bool:
        result.cells[res.cell.index] = res
        result.run_order.append(res.cell.index)
        result.stats[{"ok": "ran", "cached": "cached", "failed": "failed"}[res.status]] += 1
        bar.update(1)
        return bool(on_cell is not None and on_cell(res, result))

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-writer")  # one thread: writes in order
    writes: list[Future] = []
    try:
        todo, stop = [], False
        for cell in order:
            res = read_back(sweep, cell)
            if res is None:
                todo.append(cell)
            elif finish(res):
                stop = True
                break
        if todo and not stop:
            outputs = runner.run(sweep, todo, RunOptions(keep_models, conditioning_cache_size))
            try:
                for cell, out in outputs:
                    result.stats["encodes"] += out.encodes
                    result.stats["conditioning_hits"] += out.conditioning_hits
                    result.stats["model_switches"] += int(out.model_switch)
                    writes.append(writer.submit(write_output, sweep, cell, out))
                    if finish(cell_result(sweep, cell, out)):
                        break
            finally:
                outputs.close()  # a stopped sweep: the executor drops the cells it has not started
    finally:
        writer.shutdown(wait=True)  # what ran lands on disk, even when the sweep is interrupted
        bar.close()
        result.save()
    for write in writes:
        write.result()  # re-raises the first failed write (disk full...): the sweep must not look complete
    return result
