"""Stopping a running sweep and watching it: ``SweepControl`` (what a panel holds) and ``Progress``
(the snapshot it is handed after every denoise step and every cell).

A panel runs ``Sweep.run(control=...)`` in a background thread and calls ``control.stop()`` from the
notebook's thread; ``on_progress`` is called from the sweep's thread. In this process (the local
executor) a stop takes effect after the running cell's current denoise step: that cell is cut (not
stored, run again next time) and the cells not started are not run. On Ray actors the control cannot
cross into the actors, so there a stop takes effect between cells: no new cell is handed out, the cells
in flight are cancelled or their outputs discarded (they count as not run), and progress comes per
cell (``step`` / ``steps`` stay 0).

``RunWatch`` is the sweep's side: one per run, it turns the events of the run (a cell starts, a step,
a cell ends) into ``Progress`` snapshots with the elapsed time and the estimate of what is left.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from PIL import Image

    from workbench.sweep.plan import Cell
    from workbench.sweep.result import SweepResult

__all__ = ["Progress", "SweepControl", "SweepInterrupted", "RunWatch", "stop_message"]

PHASES = ("read back", "load", "denoise", "decode", "done", "stopped")


@dataclass
class Progress:
    """A snapshot of a running sweep, handed to ``SweepControl.on_progress`` after every denoise step and
    every cell.

    ``phase``: what the running cell does ("read back", "load", "denoise", "decode"); "done" with
    ``cell_index`` None after each finished cell and at the end of a complete run; "stopped" at the end of
    a stopped one. ``preview``: the running cell's predicted image (its first image), only when the
    control asked for previews and one was decoded for this snapshot; None means unchanged.
    """

    cells_done: int  # cells finished in this run (ran, read back from cache, failed)
    cells_total: int  # the cells this run runs or reads back (the valid ones; invalid cells fail when planned)
    cell_index: Optional[int]  # the cell running now (display index, as in result.table); None between cells
    cell_label: str  # its label (Cell.label(axes)), "" when none
    phase: str
    step: int  # denoise steps done in the running cell (0..steps), over all its forward batches
    steps: int  # its total steps (0 before the cell starts denoising)
    elapsed_s: float  # since the run started
    eta_s: Optional[float]  # mean wall time of the cells that ran x cells left, minus the running cell's time
    preview: Optional["Image.Image"] = None


class SweepControl:
    """Stop button and progress feed of one or more ``Sweep.run`` calls; thread-safe.

    ``on_progress(Progress)``: called from the sweep's thread; an exception it raises is reported once as a
    warning and never breaks the sweep (a ``KeyboardInterrupt`` does interrupt it, as Ctrl-C would).
    ``preview_every_s``: decode the running cell's predicted image at most once every so many seconds
    (always on its first step; 0: every step) into ``Progress.preview``; None: no previews (decoding
    costs a VAE pass). A preview never changes the cell's result.
    """

    def __init__(self, on_progress: Optional[Callable[[Progress], None]] = None,
                 preview_every_s: Optional[float] = None):
        if preview_every_s is not None and preview_every_s < 0:
            raise ValueError(f"preview_every_s must be >= 0 seconds or None (no previews), got {preview_every_s}")
        self.on_progress = on_progress
        self.preview_every_s = preview_every_s
        self._stop = threading.Event()
        self._warned = False

    def stop(self) -> None:
        """Ask the sweep to stop: the running cell stops after its current denoise step; safe from any thread."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def report(self, snapshot: Progress) -> None:
        """Hand ``snapshot`` to ``on_progress``; its errors become one warning (the sweep goes on)."""
        if self.on_progress is None:
            return
        try:
            self.on_progress(snapshot)
        except Exception as err:  # noqa: BLE001 - a broken progress display must not lose the sweep's work
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"SweepControl.on_progress raised {type(err).__name__}: {err}; the sweep goes on without "
                    "reporting this error again. Fix the on_progress function", RuntimeWarning, stacklevel=2,
                )


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (a notebook's interrupt) during ``Sweep.run``: the finished cells are stored and the partial
    summary written; ``result`` is the partial ``SweepResult`` (``stopped`` True, ``cut`` the cell that
    was running). Running the same sweep again resumes."""

    def __init__(self, message: str, result: "SweepResult"):
        super().__init__(message)
        self.result = result


def stop_message(result: "SweepResult") -> str:
    """One line on a stopped sweep: what is stored, what was cut, how to resume."""
    stored = sum(r is not None and r.status in ("ok", "cached") for r in result.cells) - len(result.unstored)
    line = f"stopped: {stored} of {len(result.cells)} cells stored in {result.sweep.out_dir}"
    if result.cut is not None:
        cell = result.sweep.cells[result.cut]
        line += f"; cell {cell.index} ({cell.label(result.sweep.axes)}) was cut and not stored"
    return line + "; run the same command again to resume"


class RunWatch:
    """The progress of one run: the sweep's events in, ``Progress`` snapshots out (to the control, if any).

    Called from the sweep's thread only (the local runner calls ``step`` from the denoise loop, in that
    thread); the control's ``stop`` may come from any thread.
    """

    def __init__(self, control: Optional[SweepControl], total: int, axes=()):
        self.control = control
        self.total = total
        self.axes = axes
        self.started = time.perf_counter()
        self.done = 0
        self.ran_s: list[float] = []  # wall time of each cell that ran (not read back)
        self.cell: Optional[Cell] = None  # the running cell (or the one being read back)
        self._reading = False  # the current cell is read back, not run
        self.cell_started = self.started
        self.last_end = self.started  # when the previous cell ended (Ray cells have no start event)
        self.step_done = 0
        self.steps = 0
        self._last_preview: Optional[float] = None
        # Set while denoise steps are queued (the sweep's thread then mostly waits on the GPU), clear from a
        # batch's last step to the next cell's first: finished cells are written in that window. A writer thread
        # running elsewhere takes the GIL from the short host-bound phases (encode, noise, decode): they took
        # 2-3x longer beside a PNG encode (run38, H200, 1328x1328 cells). ``release_writes`` opens it for good.
        self.writes_may_run = threading.Event()
        self._writes_released = False

    @property
    def stopped(self) -> bool:
        return self.control is not None and self.control.stopped

    @property
    def previews(self) -> Optional[float]:
        """Seconds between previews, None when none are wanted."""
        return None if self.control is None else self.control.preview_every_s

    @property
    def running(self) -> Optional["Cell"]:
        """The cell being computed here now (not one being read back), None between cells."""
        return None if self._reading else self.cell

    def preview_due(self) -> bool:
        """Whether this step's preview should be decoded (the cell's first step, then every ``previews`` s)."""
        every = self.previews
        if every is None:
            return False
        return self._last_preview is None or time.perf_counter() - self._last_preview >= every

    # ------------------------------------------------------------- events
    def start(self, cell: "Cell", phase: str) -> None:
        """A cell starts (``phase`` "read back" or "load")."""
        self.cell, self.cell_started = cell, time.perf_counter()
        self._reading = phase == "read back"
        self.step_done = self.steps = 0
        self._last_preview = None
        self._report(phase)

    def step(self, done: int, total: int, preview: Optional["Image.Image"] = None) -> None:
        """The running cell finished its ``done``-th denoise step of ``total``."""
        self.step_done, self.steps = done, total
        self.writes_may_run.set()
        if preview is not None:
            self._last_preview = time.perf_counter()
        self._report("denoise", preview)

    def phase(self, name: str) -> None:
        if name == "decode" and not self._writes_released:
            self.writes_may_run.clear()
        self._report(name)

    def release_writes(self) -> None:
        """Let writes run whatever the sweep's thread does: cells computed elsewhere (Ray), the run's end."""
        self._writes_released = True
        self.writes_may_run.set()

    def finish(self, ran: bool) -> None:
        """A cell ended (``ran``: it was computed, not read back); it counts in ``cells_done``."""
        now = time.perf_counter()
        self.done += 1
        if ran:
            began = self.cell_started if self.cell is not None else self.last_end
            self.ran_s.append(now - began)
        self.last_end = now
        self.cell = None
        self.step_done = self.steps = 0
        self._report("done")

    def end(self, stopped: bool) -> None:
        """The run is over: the last snapshot ("done", or "stopped")."""
        self.cell = None
        self.step_done = self.steps = 0
        self._report("stopped" if stopped else "done")

    # ------------------------------------------------------------- snapshots
    def eta(self) -> Optional[float]:
        if not self.ran_s:
            return None
        mean = sum(self.ran_s) / len(self.ran_s)
        running = time.perf_counter() - self.cell_started if self.cell is not None else 0.0
        return max(0.0, mean * (self.total - self.done) - running)

    def snapshot(self, phase: str, preview: Optional["Image.Image"] = None) -> Progress:
        cell = self.cell
        return Progress(
            cells_done=self.done,
            cells_total=self.total,
            cell_index=None if cell is None else cell.index,
            cell_label="" if cell is None else cell.label(self.axes),
            phase=phase,
            step=self.step_done,
            steps=self.steps,
            elapsed_s=time.perf_counter() - self.started,
            eta_s=self.eta(),
            preview=preview,
        )

    def _report(self, phase: str, preview: Optional["Image.Image"] = None) -> None:
        if self.control is not None and self.control.on_progress is not None:
            self.control.report(self.snapshot(phase, preview))
