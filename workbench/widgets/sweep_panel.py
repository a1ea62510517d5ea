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
import shlex
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
from workbench.widgets.views import CopyButton, GridView, SortableTable, tile_boxes

# suggestions for the key fields; any config key works
AXIS_KEYS = [
    "sampler.steps", "sampler.cfg", "sampler.shift", "sampler", "template", "precision", "prompts", "seeds",
    "height", "width", "model", "reference", "reference.vlm_area", "lora", "negative_prompt",
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


def _error_html(err: BaseException) -> str:
    return f"<span style='color:#a00'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"


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
        self._live: Optional[SweepResult] = None  # the running sweep's result, filled cell by cell

        # ---- inputs
        self.axis_keys, self.axis_values = [], []
        rows = []
        for i, name in enumerate("XYZ"):
            key, values = axes[i] if i < len(axes) else ("", "")
            k = W.Combobox(value=key, options=AXIS_KEYS, placeholder="config key", description=f"{name} axis",
                           ensure_option=False, layout=W.Layout(width="280px"))
            v = W.Text(value=values, placeholder="e.g. 2,4,8 or 1-8 (+2)", continuous_update=False,
                       layout=W.Layout(width="320px"))
            self.axis_keys.append(k)
            self.axis_values.append(v)
            rows.append(W.HBox([k, v]))
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

        # ---- results: grid (click a tile), table + charts, A/B
        self.grid = GridView()
        self.grid_fit = W.ToggleButtons(options=[("fit width", True), ("1:1", False)], value=True,
                                        style=W.ToggleButtonsStyle(button_width="80px"))
        self.save_button = W.Button(description="Save grid + table", icon="save", disabled=True)
        self.saved = W.HTML()
        self.detail_image = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start", display="none"))
        self.detail_info = W.HTML()
        self.detail_overrides = W.Text(description="overrides", layout=W.Layout(width="640px", display="none"))
        self.copy_button = CopyButton(label="copy overrides", layout=W.Layout(display="none"))
        self.table = SortableTable()
        self.charts = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start", display="none"))
        self.compare_a = W.Dropdown(description="A", options=[], layout=W.Layout(width="300px"))
        self.compare_b = W.Dropdown(description="B", options=[], layout=W.Layout(width="300px"))
        self.compare_zoom = W.ToggleButtons(options=[("fit width", True), ("1:1", False)], value=True,
                                            style=W.ToggleButtonsStyle(button_width="80px"))
        self.compare_image = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start",
                                                                   display="none"))
        self.compare_info = W.HTML()
        self.charts.add_class("wb-charts")
        self.compare_image.add_class("wb-compare")

        for w in self.axis_keys + self.axis_values + [self.base, self.metrics]:
            w.observe(self._replan, names="value")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.save_button.on_click(lambda _: self.save())
        self.grid.on_click(self.show_cell)
        self.grid_fit.observe(lambda ch: setattr(self.grid, "fit", ch["new"]), names="value")
        self.compare_zoom.observe(self._zoom_compare, names="value")
        self.compare_a.observe(self._compare, names="value")
        self.compare_b.observe(self._compare, names="value")

        detail = W.VBox([self.detail_image, self.detail_info, W.HBox([self.detail_overrides, self.copy_button])])
        grid_tab = W.VBox([W.HBox([self.grid_fit, self.save_button, self.saved]), self.grid, detail])
        table_tab = W.VBox([self.table, self.charts])
        compare_tab = W.VBox([W.HBox([self.compare_a, self.compare_b, self.compare_zoom]),
                              W.Box([self.compare_image], layout=W.Layout(overflow="auto", max_height="80vh")),
                              self.compare_info])
        self.tabs = W.Tab(children=[grid_tab, table_tab, compare_tab], titles=("Grid", "Table", "A/B compare"))
        live = W.HBox([W.VBox([W.HBox([self.progress, self.progress_text]),
                               W.HBox([self.step_progress, self.cell_text])]), self.preview])
        super().__init__([
            *rows, W.HBox([self.base, self.metrics]), self.plan_info,
            W.HBox([self.run_button, self.stop_button, self.preview_toggle, self.status]), live, self.warnings,
            self.tabs,
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

    def _clear_results(self) -> None:
        """The shown grid, table and A/B belong to another plan (or to the run being replaced): hide them."""
        self.grid.png, self.grid.tiles, self.grid.selected = b"", [], -1
        self.table.html = self.compare_info.value = self.detail_info.value = self.saved.value = ""
        for w in (self.compare_image, self.detail_image, self.detail_overrides, self.copy_button, self.charts):
            w.layout.display = "none"
        self.compare_a.options = self.compare_b.options = []
        self.save_button.disabled = True

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
            self._clear_results()
            return None
        if self.result is not None and self.sweep.describe() != self.result.sweep.describe():
            self._clear_results()  # the shown results are of another plan
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
        self._clear_results()  # the new run's grid appears with its first cell
        self.result = self._live = None
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
            self._ready(_error_html(err))
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
        self._show(result)
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
        self.charts.value = report.charts_png(result) or b""
        self.charts.layout.display = None if self.charts.value else "none"
        # only cells with images can be compared (a failed, cut or invalid cell has nothing to show)
        labels = [(f"{i}: {c.label(result.axes)}", i) for i, c in enumerate(result.sweep.cells)
                  if result.cells[i] is not None and result.cells[i].images]
        self.compare_a.options, self.compare_b.options = labels, labels
        if len(labels) > 1:
            self.compare_a.value, self.compare_b.value = labels[0][1], labels[1][1]
        if self._static is not None:
            shape = "x".join(map(str, result.sweep.shape))
            axes = ", ".join(f"{a.key}={','.join(map(str, a.values))}" for a in result.sweep.axes)
            self._static.update(f"sweep {axes} ({shape}): {status}", png_bytes(result.grid), report.table_html(result))
        self.save_button.disabled = False
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
        self._live = result
        self.progress.value = result.done
        self._show(result)

    def _show(self, result: SweepResult) -> None:
        layout = result.grid_layout
        self.grid.png = png_bytes(result.grid, compress_level=1)
        self.grid.size, self.grid.tiles = list(layout.size), tile_boxes(layout)
        self.grid.labels = {str(c.index): f"cell {c.index}: {c.label(result.axes)}" for c in result.sweep.cells}
        self.table.html = report.table_html(result)

    # ----------------------------------------------------------------- a tile, saving, A/B
    def show_cell(self, index: int) -> None:
        """What clicking a tile does: the cell's image at full size, overrides, record path, timings."""
        result = self.result or self._live
        if result is None or not 0 <= index < len(result.cells):
            return
        cell, res = result.sweep.cells[index], result.cells[index]
        self.grid.selected = index
        overrides = [*result.sweep.base, *cell.overrides]
        line = shlex.join(overrides)
        rows = [("cell", f"{index}: {cell.label(result.axes)}"),
                ("status", res.status if res else ("invalid" if cell.error else "not run"))]
        record = result.sweep.cell_dir(cell) / "record.json"
        if record.is_file():
            rows.append(("record", str(record)))
        if res is not None:
            rows += [(f"{k} (s)", f"{v:.3f}") for k, v in res.timings.items()]
        error = (res.error if res else None) or cell.error
        if error:
            rows.append(("error", error))
        self.detail_info.value = "<table>" + "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        ) + "</table>"
        self.detail_overrides.value = self.copy_button.text = line
        self.detail_overrides.layout.display = self.copy_button.layout.display = None
        if res is not None and res.tile is not None:
            self.detail_image.value = png_bytes(res.tile)
            self.detail_image.layout.display = None
        else:
            self.detail_image.layout.display = "none"

    def save(self) -> dict:
        """What the Save button does: the grid (PNG) and the table (CSV, Parquet) under the sweep folder."""
        if self.result is None:
            return {}
        try:
            paths = report.export(self.result)
        except Exception as err:  # noqa: BLE001 - a full disk or a missing engine is shown, the panel stays usable
            self.saved.value = _error_html(err)
            return {}
        self.saved.value = "saved " + ", ".join(f"{html.escape(k)}: <code>{html.escape(str(p))}</code>"
                                                for k, p in paths.items())
        return paths

    def _zoom_compare(self, change) -> None:
        self.compare_image.layout.max_width = "100%" if change["new"] else "none"

    def _compare(self, change=None) -> None:
        if self.result is None or self.compare_a.value is None or self.compare_b.value is None:
            return
        try:
            cmp = self.result.compare(self.compare_a.value, self.compare_b.value)
        except KeyError as err:
            self.compare_info.value = html.escape(str(err))
            return
        self.compare_image.value = png_bytes(cmp.image)
        self.compare_image.layout.display = None
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>"
            for k, (a, b) in cmp.diff.items()
        )
        mad = "n/a" if cmp.mean_abs_diff is None else f"{cmp.mean_abs_diff:.2f}"
        psnr = "n/a" if cmp.psnr is None else f"{cmp.psnr:.2f} dB"
        ssim = "n/a" if cmp.ssim is None else f"{cmp.ssim:.4f}"
        self.compare_info.value = (
            f"mean |A-B| per pixel: {mad} (0-255), PSNR {psnr}, SSIM {ssim}"
            f"<table><tr><th>key</th><th>A</th><th>B</th></tr>{rows}</table>"
        )

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
