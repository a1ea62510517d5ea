"""Sweep panel: axes in, grid / timing table / A-B compare out. All compute is ``workbench.sweep``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional, Sequence

import ipywidgets as W

from workbench.record import png_bytes
from workbench.sweep import Sweep, SweepError, SweepResult
from workbench.sweep.scoring import METRICS

# suggestions for the key fields; any config key works
AXIS_KEYS = [
    "sampler.steps", "sampler.cfg", "sampler.shift", "sampler", "template", "precision", "prompts", "seeds",
    "height", "width", "model", "reference", "reference.vlm_area", "lora", "negative_prompt",
]
TABLE_COLUMNS_HIDDEN = ("error",)  # shown in the tiles; the table keeps its width


def table_html(df) -> str:
    """The timing table as HTML (floats rounded for reading; the DataFrame keeps full precision)."""
    # pending cells hold None in object columns (to_html writes "None" there; na_rep covers floats only)
    df = df.astype(object).where(df.notna(), "")
    table = df.to_html(float_format=lambda v: f"{v:.3f}".rstrip("0").rstrip("."), na_rep="",
                       classes="workbench-sweep-table", border=0)
    return f"<div style='overflow-x:auto'>{table}</div>"


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


class SweepPanel(W.VBox):
    """Choose up to three axes and base overrides, run, watch the grid fill; compare two cells.

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
    ):
        self.out_dir = out_dir
        self.executor = executor
        self.metric_reference = metric_reference
        self.result: Optional[SweepResult] = None
        self.sweep: Optional[Sweep] = None
        self._holding = False
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
        self.run_button = W.Button(description="Run sweep", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="cells", bar_style="")
        self.status = W.HTML()
        # natural size, not stretched to the row; hidden until there is a picture (an empty image is a broken icon)
        natural = W.Layout(max_width="100%", align_self="flex-start", display="none")
        self.grid = W.Image(format="png", layout=natural)
        self.table = W.HTML()
        self.compare_a = W.Dropdown(description="A", options=[], layout=W.Layout(width="300px"))
        self.compare_b = W.Dropdown(description="B", options=[], layout=W.Layout(width="300px"))
        self.compare_image = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start",
                                                                   display="none"))
        self.compare_info = W.HTML()

        for w in self.axis_keys + self.axis_values + [self.base, self.metrics]:
            w.observe(self._replan, names="value")
        self.run_button.on_click(lambda _: self.run())
        self.compare_a.observe(self._compare, names="value")
        self.compare_b.observe(self._compare, names="value")
        compare = W.VBox([W.HTML("<b>A/B compare</b>"), W.HBox([self.compare_a, self.compare_b]),
                          self.compare_image, self.compare_info])
        super().__init__(
            [*rows, self.base, self.metrics, self.plan_info, W.HBox([self.run_button, self.progress, self.status]),
             self.grid, self.table, compare]
        )
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
        self.grid.layout.display = self.compare_image.layout.display = "none"
        self.table.value = self.compare_info.value = ""

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
        self.run_button.disabled = False
        return self.sweep

    # ----------------------------------------------------------------- run
    def run(self) -> Optional[SweepResult]:
        """Run the planned sweep, redrawing grid, table and progress after every cell."""
        sweep = self._replan()
        if sweep is None:
            return None
        self.run_button.disabled = True
        self._clear_results()  # the new run's grid appears with its first cell
        self.progress.max, self.progress.value, self.progress.bar_style = len(sweep.cells), 0, "info"
        self.status.value = "running..."
        try:
            self.result = sweep.run(progress=False, on_cell=self._on_cell, executor=self.executor)
        except Exception as err:  # shown, not swallowed: the traceback also goes to the log
            self.status.value = f"<span style='color:#a00'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"
            self.progress.bar_style = "danger"
            raise
        finally:
            self.run_button.disabled = False
        self._show(self.result)
        s = self.result.stats
        self.progress.value = self.progress.max
        self.progress.bar_style = "danger" if s["failed"] else "success"
        self.status.value = f"{s['ran']} ran, {s['cached']} cached, {s['failed']} failed"
        # only cells with images can be compared (a failed or invalid cell has nothing to show)
        labels = [(f"{i}: {c.label(sweep.axes)}", i) for i, c in enumerate(sweep.cells)
                  if self.result.cells[i] is not None and self.result.cells[i].images]
        self.compare_a.options, self.compare_b.options = labels, labels
        if len(labels) > 1:
            self.compare_a.value, self.compare_b.value = labels[0][1], labels[1][1]
        return self.result

    def _on_cell(self, cell_result, result: SweepResult) -> None:
        self.progress.value = result.done
        self._show(result)

    def _show(self, result: SweepResult) -> None:
        self.grid.value = png_bytes(result.grid)
        self.grid.layout.display = None
        df = result.table.drop(columns=[c for c in TABLE_COLUMNS_HIDDEN if c in result.table])
        self.table.value = table_html(df)

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

    def __repr__(self) -> str:  # the text form notebooks store (stable: no ids, no timings)
        metrics = f", metrics={list(self.metrics.value)!r}" if self.metrics.value else ""
        return f"SweepPanel(axes={self.axis_specs()!r}, base={self.base_overrides()!r}{metrics})"
