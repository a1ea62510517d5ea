"""Running a plan: ``Sweep`` (a ``SweepPlan`` with its ``run``) reads finished cells back, hands the
others to an executor, stores and counts what comes back.

Reading back and storing happen here, in the sweep's process, whatever the executor: a remote one
needs no shared disk, and both fill the same cache, grid and table. Cells are written by one
background thread, so that PNG encoding (~0.2-0.5 s per 1024x1024 image; Pillow releases the GIL
while it compresses) overlaps the next cell's compute instead of adding to the sweep's wall time
(benchmarks/README.md, sweep overhead). The sweep returns only once every write has finished. A
failed write (disk full) is never reported as ok: its cell is marked failed, the sweep stops computing
new cells and raises ``SweepWriteError`` (a ``RunFailure``) saying how many cells are stored; the cells
not stored run again next time. The summary files are replaced only by a complete sweep
(``SweepResult.save``).

Stopping: ``control.stop()`` (``workbench.sweep.control.SweepControl``, from any thread) or Ctrl-C. A stop
cuts the running cell after its current denoise step (local executor; on Ray, between cells): the cut
cell is not a failure, it is not stored and ``result.cut`` names it; the cells not started are not run;
the finished ones are written (the writer finishes them) and the partial summary saved. Ctrl-C does the
same and then raises ``SweepInterrupted`` (a ``KeyboardInterrupt``) carrying the partial result. Running
the same plan again resumes: finished cells are read back, the cut one and the rest run.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from workbench.errors import RunFailure
from workbench.sweep.axes import SweepError
from workbench.sweep.cache import cell_result, read_back, write_output
from workbench.sweep.control import RunWatch, SweepControl, SweepInterrupted, stop_message
from workbench.sweep.executors import Executor, RunOptions, make_executor
from workbench.sweep.plan import Cell, SweepPlan
from workbench.sweep.result import CellResult, SweepResult

OnCell = Callable[[CellResult, SweepResult], Optional[bool]]


class Sweep(SweepPlan):
    """A planned sweep (``Sweep.plan(axes, base, out_dir)``: every cell validated) that runs (``run``)."""

    def run(
        self,
        progress: bool = True,
        on_cell: Optional[OnCell] = None,
        keep_models: bool = True,
        conditioning_cache_size: int = 16,
        executor: Any = None,
        control: Optional[SweepControl] = None,
    ) -> SweepResult:
        """Run (or read back) every cell; returns when all are done, or stopped.

        ``on_cell(cell_result, sweep_result)`` is called after each cell (panels redraw the grid there);
        returning True stops the sweep early (finished cells stay cached). ``keep_models=False`` frees
        the resident models when the sweep moves to the next (model, precision, device) group, for
        weights that do not fit twice. ``executor``: where the cells run; None takes the config's
        ``executor`` section (e.g. the base override ``executor=ray``), or pass ``"local"``, ``"ray"``,
        an ``ExecutorConfig`` or an executor object (``workbench.sweep.executors``). Finished cells are
        read back here, whatever the executor; only the others are handed to it.

        ``control`` (``SweepControl``): ``control.stop()`` from any thread (a panel's button) stops the
        sweep after the running cell's current denoise step (on Ray: between cells); that cell is cut, not
        stored (``result.cut``), the cells not started stay pending, ``result.stopped`` is True and the
        partial summary is saved. ``control.on_progress`` gets a ``Progress`` after every step and cell
        (with previews when ``preview_every_s`` is set). Ctrl-C does the same stop, then raises
        ``SweepInterrupted`` (a ``KeyboardInterrupt``) whose ``result`` is the partial result. Calling
        ``run`` again resumes: finished cells are read back, the rest run.
        """
        return run_sweep(self, progress, on_cell, keep_models, conditioning_cache_size, executor, control)


class SweepWriteError(RunFailure):
    """Cells ran but could not be stored (disk full...): they are marked failed in ``result`` (the
    partial ``SweepResult``) and run again next time; the message says how many cells are stored."""

    def __init__(self, message: str, result: SweepResult):
        super().__init__(message)
        self.result = result


def check_out_dir(folder: Path) -> None:
    """Create the sweep folder and prove it writable (a file, a read-only or a full disk fail here)."""
    try:
        (folder / "cells").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder / "cells"):
            pass
    except OSError as err:
        raise SweepError(
            f"sweep folder {folder} cannot be written ({type(err).__name__}: {err.strerror or err}); "
            "give another folder (Sweep.plan(out_dir=...), --out) or fix its permissions"
        ) from None


def run_sweep(
    sweep: SweepPlan,
    progress: bool,
    on_cell: Optional[OnCell],
    keep_models: bool,
    conditioning_cache_size: int,
    executor: Any,
    control: Optional[SweepControl] = None,
) -> SweepResult:
    """The body of ``Sweep.run`` (its docstring has the arguments)."""
    from tqdm.auto import tqdm

    _check_run_arguments(on_cell, control, conditioning_cache_size)  # before anything runs (on_cell failed after a cell)
    runner = make_executor(sweep.executor if executor is None else executor)  # fails before anything runs
    check_out_dir(sweep.out_dir)  # a sweep folder that cannot be written fails before any cell is computed
    result = SweepResult(sweep)
    for cell in sweep.cells:
        if cell.config is None:
            result.cells[cell.index] = CellResult(cell, "failed", error=cell.error)
            result.stats["failed"] += 1
    order = sweep.execution_order()
    watch = RunWatch(control, len(order), sweep.axes)
    bar = tqdm(total=len(order), desc="sweep", disable=not progress, leave=False)
    tally = _Tally(result, on_cell, bar, watch)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-writer")  # one thread: writes in order
    if getattr(runner, "name", None) != "local":  # cells computed elsewhere: no phase of this thread to keep free
        watch.release_writes()
    writes: list[tuple[Cell, Future]] = []
    interrupted = False
    try:
        todo = _read_back_finished(sweep, order, tally)
        if todo and not tally.halted:
            options = RunOptions(keep_models, conditioning_cache_size, watch)
            _run_cells(sweep, todo, runner, options, tally, writer, writes)
    except KeyboardInterrupt:  # Ctrl-C / a notebook's interrupt: store what finished, then SweepInterrupted
        interrupted = True
        running = watch.running
        if running is not None and result.cells[running.index] is None:
            result.cut = running.index
    finally:
        watch.release_writes()
        writer.shutdown(wait=True)  # what ran lands on disk, even when the sweep is interrupted
        tally.bar.close()
        first_error = _mark_unstored(result, writes, on_cell)
        halted = tally.halted or watch.stopped
        result.stopped = interrupted or (halted and any(r is None for r in result.cells))
        save_error = _save_summary(result)  # never masks the exception that may be on its way out
    watch.end(result.stopped)
    if interrupted:
        raise SweepInterrupted(stop_message(result), result) from None
    if result.unstored:
        raise SweepWriteError(_unstored_message(result, first_error), result)
    if save_error is not None:
        raise SweepWriteError(
            f"sweep {sweep.out_dir}: the cells that ran are stored, but the summary (grid, table, sweep.json) could not be "
            f"written ({type(save_error).__name__}: {save_error}); free disk space and run the sweep again "
            "(it reads every cell back)", result,
        )
    return result


def _check_run_arguments(on_cell, control, conditioning_cache_size) -> None:
    if on_cell is not None and not callable(on_cell):
        raise SweepError(f"on_cell={on_cell!r:.60} is not callable; pass a function (cell_result, sweep_result) or None")
    if control is not None and not isinstance(control, SweepControl):
        raise SweepError(f"control must be a SweepControl (workbench.sweep.control), got {type(control).__name__}")
    if isinstance(conditioning_cache_size, bool) or not isinstance(conditioning_cache_size, int) or conditioning_cache_size < 0:
        raise SweepError(f"conditioning_cache_size={conditioning_cache_size!r} must be an integer >= 0 (0: no cache)")


class _Tally:
    """Puts each finished cell in the result, counts it, advances the bar, tells ``on_cell``."""

    def __init__(self, result: SweepResult, on_cell: Optional[OnCell], bar, watch: RunWatch):
        self.result, self.on_cell, self.bar, self.watch = result, on_cell, bar, watch
        self.halted = False  # a stop (control, on_cell, a cut cell) ended the run early

    def finish(self, res: CellResult) -> bool:
        """Record ``res``; True when the sweep is to stop (``on_cell`` asked, or the control was stopped)."""
        result = self.result
        result.cells[res.cell.index] = res
        result.run_order.append(res.cell.index)
        result.stats[{"ok": "ran", "cached": "cached", "failed": "failed"}[res.status]] += 1
        self.bar.update(1)
        self.watch.finish(ran=res.status != "cached")
        if self.on_cell is not None and self.on_cell(res, result):
            self.halted = True
        return self.halt_if_stopped()

    def halt_if_stopped(self) -> bool:
        """True (and the run halted) when the run is to stop."""
        self.halted = self.halted or self.watch.stopped
        return self.halted


def _read_back_finished(sweep: SweepPlan, order: list[Cell], tally: _Tally) -> list[Cell]:
    """Read the cached cells back (in run order); the cells left to run, none when the sweep was stopped."""
    todo = []
    for cell in order:
        if tally.halt_if_stopped():
            return []
        res = read_back(sweep, cell)
        if res is None:
            todo.append(cell)
            continue
        tally.watch.start(cell, "read back")
        if tally.finish(res):
            return []
    return todo


def _run_cells(sweep: SweepPlan, todo: list[Cell], runner: Executor, options: RunOptions, tally: _Tally,
               writer: ThreadPoolExecutor, writes: list[tuple[Cell, Future]]) -> None:
    """Hand ``todo`` to the executor; queue each output's write and count it as it comes back. Stops at
    ``on_cell``'s request, at a stop (the cut cell is not stored) or at the first failed write (the disk is
    full: more cells would be lost too)."""
    stats = tally.result.stats
    outputs = runner.run(sweep, todo, options)
    try:
        for cell, out in outputs:
            if out.status == "cut":  # stopped mid-cell: nothing to store, it runs again next time
                tally.result.cut = cell.index
                tally.halted = True
                break
            stats["encodes"] += out.encodes
            stats["conditioning_hits"] += out.conditioning_hits
            stats["model_switches"] += int(out.model_switch)
            writes.append((cell, writer.submit(_write_while_denoising, tally.watch, sweep, cell, out)))
            if tally.finish(cell_result(sweep, cell, out)):
                break
            if any(f.done() and f.exception() is not None for _, f in writes):
                break
    finally:
        outputs.close()  # a stopped sweep: the executor drops the cells it has not started


def _write_while_denoising(watch: RunWatch, sweep: SweepPlan, cell: Cell, out) -> None:
    """Store a finished cell once the next cell's denoise steps are queued (or the run ends): see
    ``RunWatch.writes_may_run``."""
    watch.writes_may_run.wait()
    write_output(sweep, cell, out)


def _save_summary(result: SweepResult) -> Optional[BaseException]:
    """Write the summary (complete, else the *.partial files); the error of a failed write (a full disk)."""
    try:
        result.save()
    except Exception as err:  # noqa: BLE001 - reported by run_sweep, after the cells' own errors
        return err
    return None


def _mark_unstored(result: SweepResult, writes: list[tuple[Cell, Future]], on_cell: Optional[OnCell]) -> Optional[BaseException]:
    """Turn cells whose write failed into failed cells (never reported as ok); the first error."""
    first = None
    for cell, future in writes:
        err = future.exception()
        if err is None:
            continue
        res = result.cells[cell.index]
        if res is None or res.status != "ok":  # a failed cell's error.json: nothing computed was lost
            continue
        result.stats["ran"] -= 1
        result.stats["failed"] += 1
        first = first or err
        result.unstored.append(cell.index)
        failed = CellResult(cell, "failed", error=f"not stored ({type(err).__name__}: {err}); runs again next time",
                            record=res.record, worker=res.worker)
        result.cells[cell.index] = failed
        if on_cell is not None:  # panels redraw the tile they were shown as ok
            try:
                on_cell(failed, result)
            except Exception:  # noqa: BLE001 - a redraw must not hide the failed write reported next
                pass
    return first


def _unstored_message(result: SweepResult, err: Optional[BaseException]) -> str:
    stored = sum(r is not None and r.status in ("ok", "cached") for r in result.cells)
    not_run = sum(r is None for r in result.cells)
    total = len(result.cells)
    return (
        f"sweep {result.sweep.out_dir}: {len(result.unstored)} cell(s) ran but could not be written "
        f"({type(err).__name__}: {err}); {stored} of {total} cells are stored"
        + (f", {not_run} not run" if not_run else "")
        + ". The cells not stored are marked failed and run again next time; free disk space and run the "
        "sweep again. The summary of this run is in grid.partial.png / table.partial.csv / sweep.partial.json "
        "(a complete grid.png is never replaced by a partial one)"
    )
