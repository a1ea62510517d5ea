"""Sweep panel: axes in; live progress, a clickable grid, a sortable table with charts, A/B compare out.

All compute is ``workbench.sweep`` (plan, run, control, report); the panel is a view over it. The Run
button runs the sweep in a background thread, so that the kernel stays free to receive the Stop click
(a click is a message the kernel's main thread handles; a sweep running there would hold it until the
end). ``panel.run()`` runs in the calling thread instead, for notebook cells and scripts that want the
result back.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import ipywidgets as W

from workbench.record import png_bytes
from workbench.sweep import Progress, Sweep, SweepControl, SweepError, SweepInterrupted, SweepResult
from workbench.sweep import report
from workbench.sweep.scoring import METRICS
from workbench.widgets.snapshot import StaticCopy
from workbench.widgets.sweep_results import SweepResults, error_html

# suggestions for the key fields; any config key works
AXIS_KEYS = [
    "sampler.steps", "sampler.cfg", "sampler.shift", "sampler", "template", "precision", "prompts", "seeds",
    "height", "width", "model", "reference", "reference.vlm_area", "lora", "negative_prompt", "encoder_tap",
    "accel", "accel.threshold", "accel.cache_interval", "accel.granularity", "perf", "perf.attention_kernel",
]
PROGRESS_EVERY_S = 0.1  # widget redraws per denoise step at most this often (each is a message to the browser)
PREVIEW_EVERY_S = 1.0  # x0 previews decoded at most this often (a VAE decode each)


def group_options_html(axes) -> str:
    """For an axis over a config group (sampler, precision, template, model...), the options conf/ offers."""
    from workbench.config import ConfigError
    from workbench.config.build import options

    lines = []
    for a in axes:
        try:
            lines.append(f"{html.escape(a.key)} options: {html.escape(', '.join(options(a.key)))}")
        except ConfigError:  # a plain key (sampler.steps, prompts): no options to list
            continue
    return "".join(f"<br><span style='color:#555'>{line}</span>" for line in lines)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


@contextlib.contextmanager
def _warnings_of_this_thread(show: Callable[[str], None]):
    """Warnings raised in this thread go to ``show`` (the panel) as well as to the usual place; other
    threads' warnings are left alone (``warnings.catch_warnings`` would swap the filters of all threads)."""
    me, original = threading.get_ident(), warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if threading.get_ident() == me:
            show(f"{category.__name__}: {message}")
        original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        if warnings.showwarning is showwarning:
            warnings.showwarning = original


def _axis_fields(axes: Sequence[tuple[str, str]]) -> tuple[list[W.Combobox], list[W.Text]]:
    """The X / Y / Z key and values fields, filled from ``axes``."""
    keys, values = [], []
    for i, name in enumerate("XYZ"):
        key, value = axes[i] if i < len(axes) else ("", "")
        keys.append(W.Combobox(value=key, options=AXIS_KEYS, placeholder="config key", description=f"{name} axis",
                               ensure_option=False, layout=W.Layout(width="280px")))
        values.append(W.Text(value=value, placeholder="e.g. 2,4,8 or 1-8 (+2)", continuous_update=False,
                             layout=W.Layout(width="320px")))
    return keys, values


class SweepPanel(W.VBox):
    """Choose up to three axes and base overrides; Run (Stop, Run again to resume); watch the grid fill;
    click a tile for its image, overrides, record and timings; sort the table; compare two cells.

    ``panel.result`` holds the ``SweepResult`` (``.table``, ``.grid``, ``.compare``) for further work.
    """

    def __init__(
        self,
        axes: Sequence[tuple[str, str]] = (("sampler.steps", "2,4"),),
        base: Sequence[str] = ("height=64", "width=64"),
        out_dir: Optional[str | Path] = None,
        executor=None,  # None: the config's executor section (a base line executor=ray works too); "local" / "ray"
        metrics: Sequence[str] = (),  # table columns: adherence, psnr, ssim (workbench.sweep.scoring)
        metric_reference: int = 0,  # the cell PSNR / SSIM compare against
        preview: bool = True,  # x0 preview of the running cell (a VAE decode at most once a second)
    ):
        self.out_dir = out_dir
        self.executor = executor
        self.metric_reference = metric_reference
        self.result: Optional[SweepResult] = None
        self.sweep: Optional[Sweep] = None
        self._holding = False
        self._control: Optional[SweepControl] = None
        self._thread: Optional[threading.Thread] = None
        self._busy = False  # from Run until the result is fully shown (the thread lives a little longer)
        self._static: Optional[StaticCopy] = None
        self._last_redraw = 0.0
        self._warned: list[str] = []

        # ---- inputs
        self.axis_keys, self.axis_values = _axis_fields(axes)
        self.base = W.Textarea(value="\n".join(base), description="base", placeholder="one override per line",
                               layout=W.Layout(width="604px", height="64px"))
        self.metrics = W.SelectMultiple(options=METRICS, value=tuple(metrics), rows=len(METRICS),
                                        description="metrics", layout=W.Layout(width="280px"))
        self.plan_info = W.HTML()

        # ---- run controls and live progress
        self.run_button = W.Button(description="Run sweep", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.preview_toggle = W.Checkbox(value=preview, description="x0 preview", indent=False,
                                         layout=W.Layout(width="110px"))
        self.progress = W.IntProgress(value=0, min=0, max=1, description="cells", bar_style="")
        self.progress_text = W.HTML()
        self.step_progress = W.IntProgress(value=0, min=0, max=1, description="steps", bar_style="info")
        self.cell_text = W.HTML()
        self.preview = W.Image(format="png", layout=W.Layout(width="128px", display="none"))
        self.status = W.HTML()
        self.warnings = W.HTML()

        self.results = SweepResults()  # grid (click a tile), table + charts, A/B

        for w in self.axis_keys + self.axis_values + [self.base, self.metrics]:
            w.observe(self._replan, names="value")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        live = W.HBox([W.VBox([W.HBox([self.progress, self.progress_text]),
                               W.HBox([self.step_progress, self.cell_text])]), self.preview])
        super().__init__([
            *(W.HBox([k, v]) for k, v in zip(self.axis_keys, self.axis_values)), W.HBox([self.base, self.metrics]), self.plan_info,
            W.HBox([self.run_button, self.stop_button, self.preview_toggle, self.status]), live, self.warnings,
            self.results,
        ])
        self._replan()

    # ----------------------------------------------------------------- state -> plan
    def axis_specs(self) -> list[str]:
        return [f"{k.value.strip()}={v.value}" for k, v in zip(self.axis_keys, self.axis_values) if k.value.strip()]

    def base_overrides(self) -> list[str]:
        return [line.strip() for line in self.base.value.splitlines() if line.strip()]

    def set_axis(self, index: int, key: str, values: str) -> None:
        """Programmatic edit of one axis (what typing into the fields does)."""
        self._holding = True  # one replan for both fields
        try:
            self.axis_keys[index].value, self.axis_values[index].value = key, values
        finally:
            self._holding = False
        self._replan()

    def _replan(self, change=None) -> Optional[Sweep]:
        if self._holding:
            return self.sweep
        try:
            self.sweep = Sweep.plan(self.axis_specs(), self.base_overrides(), self.out_dir,
                                    metrics=self.metrics.value, metric_reference=self.metric_reference)
        except SweepError as err:
            self.sweep = None
            self.plan_info.value = f"<span style='color:#a00'>{html.escape(str(err))}</span>"
            self.run_button.disabled = True
            self.results.clear()
            return None
        if self.result is not None and self.sweep.describe() != self.result.sweep.describe():
            self.results.clear()  # the shown results are of another plan
        bad = sum(c.error is not None for c in self.sweep.cells)
        shape = " x ".join(map(str, self.sweep.shape))
        note = f", {bad} invalid combination(s) will be blank tiles" if bad else ""
        self.plan_info.value = f"{len(self.sweep.cells)} cells ({shape}){note}{group_options_html(self.sweep.axes)}"
        self.run_button.disabled = self.running
        return self.sweep

    # ----------------------------------------------------------------- run / stop
    @property
    def running(self) -> bool:
        return self._busy

    def run(self) -> Optional[SweepResult]:
        """Run the planned sweep in this thread (a notebook cell, a script) and return its result.

        The notebook's interrupt stops it between denoise steps: the finished cells stay cached, the
        panel shows the partial result, and ``SweepInterrupted`` (a ``KeyboardInterrupt``) is raised."""
        sweep = self._begin()
        return None if sweep is None else self._execute(sweep, raise_errors=True)

    def start(self) -> bool:
        """What the Run button does: run the planned sweep in a background thread (``stop`` / the Stop
        button cuts it; ``wait`` joins it). False when nothing started (a bad plan, a run under way)."""
        if self.running:
            return False
        sweep = self._begin()
        if sweep is None:
            return False
        self._thread = threading.Thread(target=self._execute, args=(sweep, False), name="workbench-sweep", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the running sweep after its current denoise step; Run resumes it (finished cells are cached)."""
        if self._control is not None:
            self._control.stop()
            self.stop_button.disabled = True
            self.status.value = "stopping after the current step..."

    def wait(self, timeout: Optional[float] = None) -> Optional[SweepResult]:
        """Wait for a ``start``-ed sweep; its result (None while it still runs)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return None if self.running else self.result

    def _begin(self) -> Optional[Sweep]:
        sweep = self._replan()
        if sweep is None or self.running:
            return None
        self._control = SweepControl(on_progress=self._on_progress,
                                     preview_every_s=PREVIEW_EVERY_S if self.preview_toggle.value else None)
        self._busy = True
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.results.clear()  # the new run's grid appears with its first cell
        self.result = None
        self._warned = []
        self.warnings.value = ""
        self.progress.max, self.progress.value, self.progress.bar_style = len(sweep.cells), 0, "info"
        self.progress_text.value = self.cell_text.value = ""
        self.step_progress.value = 0
        self.preview.layout.display = "none"
        self.status.value = "running..."
        return sweep

    def _execute(self, sweep: Sweep, raise_errors: bool) -> Optional[SweepResult]:
        """The body of ``run`` and of the background thread: run, then show what came back."""
        interrupted: Optional[SweepInterrupted] = None
        try:
            with _warnings_of_this_thread(self._warn):
                result = sweep.run(progress=False, on_cell=self._on_cell, executor=self.executor, control=self._control)
        except SweepInterrupted as err:  # the notebook's interrupt: show the partial result, then re-raise
            result, interrupted = err.result, err
        except Exception as err:  # shown in the panel; a background run has nowhere else to raise to
            self.progress.bar_style = "danger"
            self._ready(error_html(err))
            if raise_errors:
                raise
            return None
        self._finish(result)
        if interrupted is not None and raise_errors:
            raise interrupted
        return result

    def _finish(self, result: SweepResult) -> None:
        """Show everything the run produced; the status line and the buttons change last, so "N ran" means
        the grid, table, charts and static copy are all in place."""
        self.result = result
        self.results.show_final(result)
        s = result.stats
        counts = f"{s['ran']} ran, {s['cached']} cached, {s['failed']} failed"
        if result.stopped:
            cut = "" if result.cut is None else f"; cell {result.cut} was cut and runs again"
            status = f"stopped: {counts}{cut}. Run resumes."
            self.progress.bar_style = "warning"
        else:
            status = counts
            self.progress.value = self.progress.max
            self.progress.bar_style = "danger" if s["failed"] else "success"
        self.cell_text.value = ""
        if self._static is not None:
            shape = "x".join(map(str, result.sweep.shape))
            axes = ", ".join(f"{a.key}={','.join(map(str, a.values))}" for a in result.sweep.axes)
            self._static.update(f"sweep {axes} ({shape}): {status}", png_bytes(result.grid), report.table_html(result))
        self._ready(status)

    def _ready(self, status: str) -> None:
        """The run is over (finished, stopped or failed): say so and give the buttons back."""
        self._control = None
        self._busy = False
        self.status.value = status
        self.run_button.disabled, self.stop_button.disabled = self.sweep is None, True

    # ----------------------------------------------------------------- live views
    def _on_progress(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.phase in ("done", "stopped") or p.step in (0, p.steps)
        if not final and now - self._last_redraw < PROGRESS_EVERY_S and p.preview is None:
            return
        self._last_redraw = now
        self.progress.max, self.progress.value = max(1, p.cells_total), p.cells_done
        eta = f", about {_seconds(p.eta_s)} left" if p.eta_s is not None else ""
        self.progress_text.value = f"{p.cells_done} / {p.cells_total} cells, {_seconds(p.elapsed_s)}{eta}"
        if p.cell_index is not None:
            steps = f" {p.step}/{p.steps}" if p.steps else ""
            self.cell_text.value = f"cell {p.cell_index}: {html.escape(p.cell_label)} ({p.phase}{steps})"
            self.step_progress.max, self.step_progress.value = max(1, p.steps), p.step
        if p.preview is not None:
            self.preview.value = png_bytes(p.preview, compress_level=1)
            self.preview.layout.display = None

    def _warn(self, text: str) -> None:
        if text in self._warned:
            return
        self._warned.append(text)
        items = "".join(f"<li>{html.escape(w)}</li>" for w in self._warned[-10:])
        self.warnings.value = f"<div style='background:#fff8e1;padding:2px 8px'><b>warnings</b><ul>{items}</ul></div>"

    def _on_cell(self, cell_result, result: SweepResult) -> None:
        self.progress.value = result.done
        self.results.show(result)

    # ----------------------------------------------------------------- notebook display
    def _ipython_display_(self) -> None:
        """The widget, and under it a static copy of the last result that the saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self._static = StaticCopy("the sweep's grid and table are copied here when it finishes "
                                  "(kept in the saved notebook)")

    def __repr__(self) -> str:  # the text form notebooks store (stable: no ids, no timings)
        metrics = f", metrics={list(self.metrics.value)!r}" if self.metrics.value else ""
        return f"SweepPanel(axes={self.axis_specs()!r}, base={self.base_overrides()!r}{metrics})"
