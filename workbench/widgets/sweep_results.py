"""The results half of the sweep panel: a clickable grid with the clicked cell's detail, a sortable table
with charts, and A/B compare with a difference map. A view over a ``SweepResult`` (all numbers come from
``workbench.sweep``: ``grid_layout``, ``report``, ``compare``)."""

from __future__ import annotations

import html
import shlex
from typing import Optional

import ipywidgets as W

from workbench.record import png_bytes
from workbench.sweep import SweepResult
from workbench.sweep import report
from workbench.widgets.views import CopyButton, GridView, SortableTable, tile_boxes


def error_html(err: BaseException) -> str:
    return f"<span style='color:#a00'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"


def _rows_html(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    ) + "</table>"


def _zoom_toggle() -> W.ToggleButtons:
    return W.ToggleButtons(options=[("fit width", True), ("1:1", False)], value=True,
                           style=W.ToggleButtonsStyle(button_width="80px"))


def _image(css_class: str, **layout) -> W.Image:
    """A hidden image shown at its own size at most (a VBox would stretch it to the full width)."""
    image = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start", display="none", **layout))
    image.add_class(css_class)
    return image


class SweepResults(W.Tab):
    """Tabs Grid / Table / A/B compare over the shown result (live while a sweep runs, final after)."""

    def __init__(self):
        self.result: Optional[SweepResult] = None
        self.grid = GridView()
        self.grid_fit = _zoom_toggle()
        self.save_button = W.Button(description="Save grid + table", icon="save", disabled=True)
        self.saved = W.HTML()
        self.detail_image = _image("wb-detail")
        self.detail_info = W.HTML()
        self.detail_overrides = W.Text(description="overrides", layout=W.Layout(width="640px", display="none"))
        self.copy_button = CopyButton(label="copy overrides", layout=W.Layout(display="none"))
        self.table = SortableTable()
        self.charts = _image("wb-charts")
        self.compare_a = W.Dropdown(description="A", options=[], layout=W.Layout(width="300px"))
        self.compare_b = W.Dropdown(description="B", options=[], layout=W.Layout(width="300px"))
        self.compare_zoom = _zoom_toggle()
        self.compare_image = _image("wb-compare")
        self.compare_info = W.HTML()

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
        super().__init__(children=[grid_tab, table_tab, compare_tab], titles=("Grid", "Table", "A/B compare"))

    def clear(self) -> None:
        """The shown results belong to another plan (or to the run being replaced): hide them."""
        self.result = None
        self.grid.png, self.grid.tiles, self.grid.selected = b"", [], -1
        self.table.html = self.compare_info.value = self.detail_info.value = self.saved.value = ""
        for w in (self.compare_image, self.detail_image, self.detail_overrides, self.copy_button, self.charts):
            w.layout.display = "none"
        self.compare_a.options = self.compare_b.options = []
        self.save_button.disabled = True

    def show(self, result: SweepResult) -> None:
        """A result as it fills in: grid and table (cheap enough for every finished cell)."""
        self.result = result
        layout = result.grid_layout
        self.grid.png = png_bytes(result.grid, compress_level=1)
        self.grid.size, self.grid.tiles = list(layout.size), tile_boxes(layout)
        self.grid.labels = {str(c.index): f"cell {c.index}: {c.label(result.axes)}" for c in result.sweep.cells}
        self.table.html = report.table_html(result)

    def show_final(self, result: SweepResult) -> None:
        """A finished (or stopped) result: also the charts, the A/B choices and the Save button."""
        self.show(result)
        self.charts.value = report.charts_png(result) or b""
        self.charts.layout.display = None if self.charts.value else "none"
        # only cells with images can be compared (a failed, cut or invalid cell has nothing to show)
        labels = [(f"{i}: {c.label(result.axes)}", i) for i, c in enumerate(result.sweep.cells)
                  if result.cells[i] is not None and result.cells[i].images]
        self.compare_a.options, self.compare_b.options = labels, labels
        if len(labels) > 1:
            self.compare_a.value, self.compare_b.value = labels[0][1], labels[1][1]
        self.save_button.disabled = False

    def show_cell(self, index: int) -> None:
        """What clicking a tile does: the cell's image at full size, overrides, record path, timings."""
        result = self.result
        if result is None or not 0 <= index < len(result.cells):
            return
        cell, res = result.sweep.cells[index], result.cells[index]
        self.grid.selected = index
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
        self.detail_info.value = _rows_html(rows)
        self.detail_overrides.value = self.copy_button.text = shlex.join([*result.sweep.base, *cell.overrides])
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
            self.saved.value = error_html(err)
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
