"""Sweep views for reading and sharing: grid legends readable at any size, tile boxes for clicks,
the styled table, the charts, export. Fake cell results (solid colours) except one real tiny sweep."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench.record import read_png_record
from workbench.sweep import FAILED, SweepError
from workbench.sweep.axes import Axis
from workbench.sweep.grid import blank_font_px, tile_or_blank
from workbench.sweep.plan import SweepPlan, _grid
from workbench.sweep.result import CellResult, SweepResult
from workbench.sweep import report


def colour(index: int) -> tuple[int, int, int]:
    return (20 + 29 * index % 200, 255 - 23 * index % 200, 60 + 41 * index % 190)


def fake(axes: list[Axis], tmp_path: Path, side: int = 64, status=lambda i: "ok", kind: str = "process rss") -> SweepResult:
    """A result of solid-colour cells (no model): ``status(i)`` is ok / cached / failed / None (pending)."""
    plan = SweepPlan(axes, [], _grid(axes), tmp_path)
    result = SweepResult(plan)
    mem_key = "cuda_max_allocated_bytes" if kind == "cuda" else "process_max_rss_bytes"
    for cell in plan.cells:
        s = status(cell.index)
        if s == "failed":
            result.cells[cell.index] = CellResult(cell, "failed", error="RuntimeError: out of memory " + "x" * 100,
                                                  record={"error": "boom"})
        elif s is not None:
            timings = {"encode": 0.01 * cell.index, "denoise": 0.5 + 0.1 * cell.index, "decode": 0.2, "total": 0.0}
            timings["total"] = sum(timings.values())
            record = {"timings_s": timings, "peak_memory": {mem_key: (100 + cell.index) * 2**20}}
            result.cells[cell.index] = CellResult(cell, s, [Image.new("RGB", (side, side), colour(cell.index))],
                                                  record=record, conditioning_cached=s == "cached")
    return result


def ink_rows(band: np.ndarray) -> int:
    """Height in pixels of the ink (dark pixels) in an image band: first to last row holding any."""
    rows = np.where((band < 128).all(axis=-1).any(axis=1))[0]
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


AXES_3x3 = [Axis("sampler.steps", (2, 4, 8)), Axis("sampler.cfg", (1.0, 2.5, 4.0))]


# ----------------------------------------------------------------------------- readable legends
@pytest.mark.parametrize("side", [64, 1024, 1328])
def test_legend_text_stays_readable_when_the_grid_is_shown_1000_px_wide(tmp_path, side):
    result = fake(AXES_3x3, tmp_path, side)
    grid = np.asarray(result.grid)
    layout = result.grid_layout
    width = layout.size[0]
    top = min(y0 for _, y0, _, _ in layout.tiles.values())
    header = ink_rows(grid[:top])  # the X legend: "steps=2" ... above the first row of tiles
    left = min(x0 for x0, _, _, _ in layout.tiles.values())
    x0, y0, x1, y1 = layout.tiles[0]
    row_label = ink_rows(grid[y0:y1, :left])  # the Y legend beside the first row
    shown = 1000 / width  # the scale a notebook column ~1000 px wide shows the grid at
    assert header * shown >= 10 and row_label * shown >= 10, (header, row_label, width)  # font >= 12 px shown
    assert header >= 12  # never below the old 13 px font at small sizes
    if side == 64:
        assert header <= 16  # small grids keep the small font: legends do not dwarf the tiles
    assert header < top  # the legend fits its band: no overlap with the tiles


def test_z_titles_scale_and_failed_labels_scale_with_the_tile(tmp_path):
    axes = AXES_3x3 + [Axis("seed", (0, 1))]
    result = fake(axes, tmp_path, 1024, status=lambda i: "failed" if i == 4 else "ok")
    grid = np.asarray(result.grid)
    layout = result.grid_layout
    title_band = grid[: layout.tiles[0][1]]
    assert ink_rows(title_band) * 1000 / layout.size[0] >= 20  # title line + legend line, both readable

    x0, y0, x1, y1 = layout.tiles[4]
    tile = grid[y0:y1, x0:x1]
    assert (tile == np.array(FAILED, dtype=grid.dtype)).all(axis=-1).mean() > 0.5  # the blank is drawn
    red = (tile[..., 0] > 100) & (tile[..., 1] < 80)  # ERROR_INK text
    rows = np.where(red.any(axis=1))[0]
    first_line = rows[: np.argmax(np.diff(rows) > 1)] if (np.diff(rows) > 1).any() else rows
    assert blank_font_px(1024) == 64
    assert 0.6 * 64 <= len(first_line) <= 64  # "FAILED": cap height of a 64 px font (tile width / 16)
    small = np.asarray(tile_or_blank(None, (128, 128), "boom"))
    small_red = np.where(((small[..., 0] > 100) & (small[..., 1] < 80)).any(axis=1))[0]
    assert 6 <= small_red.max() - small_red.min() + 1 < 30  # an 11 px font on a small tile


# ----------------------------------------------------------------------------- tile geometry for clicks
def test_grid_layout_boxes_hold_each_cells_image_and_cell_at_maps_back(tmp_path):
    axes = [Axis("sampler.steps", (2, 4)), Axis("sampler.cfg", (1.0, 2.0)), Axis("seed", (0, 1))]
    result = fake(axes, tmp_path, 64)
    grid = result.grid
    layout = result.grid_layout
    assert layout.size == grid.size and sorted(layout.tiles) == list(range(8))
    pixels = np.asarray(grid)
    for index, (x0, y0, x1, y1) in layout.tiles.items():
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert tuple(pixels[cy, cx]) == colour(index)
        assert tuple(pixels[y0, x0]) == tuple(pixels[y1 - 1, x1 - 1]) == colour(index)  # the box is the tile
        assert layout.cell_at(cx, cy) == index and layout.cell_at(x0, y0) == index
        assert layout.cell_at(x1, cy) != index and layout.cell_at(cx, y1) != index  # exclusive ends
    assert layout.cell_at(0, 0) is None  # the legend corner
    x0, y0, x1, y1 = layout.tiles[0]
    assert layout.cell_at(x1 + 1, y0 + 5) is None  # the padding between tiles
    assert tuple(pixels[y0 + 5, x1 + 1]) == (255, 255, 255)
    assert layout.cell_at(-1, -1) is None and layout.cell_at(*grid.size) is None


# ----------------------------------------------------------------------------- the styled table
def test_styled_table_units_blanks_status_colours_and_error_title(tmp_path):
    states = {0: "ok", 1: "cached", 2: "failed", 3: None}
    result = fake([Axis("sampler.steps", (2, 4, 6, 8))], tmp_path, status=states.get)
    frame = report.table_frame(result)
    assert list(frame.columns[:7]) == ["sampler.steps", "status", "encode (s)", "denoise (s)", "decode (s)", "total (s)",
                                       "cond cached"]
    assert "peak mem (MB, RSS, lifetime)" in frame and "peak_mem_kind" not in frame
    page = report.table_html(result)
    assert page == report.table_html(result)  # stable: no random ids
    assert 'id="workbench-sweep-table"' in page and 'class="workbench-sweep-table"' in page
    assert "None" not in page and "nan" not in page
    headers = re.findall(r'<th id="[^"]+" class="col_heading level0 col(\d+)" >([^<]*)</th>', page)
    assert [name for _, name in headers] == list(frame.columns) and [int(i) for i, _ in headers] == list(range(len(frame.columns)))

    def row(i):
        return re.search(rf'<th id="[^"]+" class="row_heading level0 row{i}" >{i}</th>(.*?)</tr>', page, re.S).group(1)

    cells = re.findall(r"<td[^>]*>(.*?)</td>", row(0), re.S)
    assert cells[2:6] == ["0.000", "0.500", "0.200", "0.700"]  # 3 decimals
    assert cells[frame.columns.get_loc("peak mem (MB, RSS, lifetime)")] == "100.0"
    for i in (2, 3):  # failed and pending rows: blank numbers
        assert re.findall(r"<td[^>]*>(.*?)</td>", row(i), re.S)[2:7] == ["", "", "", "", ""]
    css = page.split("</style>")[0]
    assert re.search(r"#T_workbench-sweep_row2_col1[^{]*\{\s*color: #b00020", css)  # failed: red
    assert re.search(r"#T_workbench-sweep_row1_col1[^{]*\{\s*color: #888888", css)  # cached: grey
    assert "linear-gradient" in css and "_col5" in css.split("linear-gradient")[0].rsplit("}", 1)[-1]  # bar on total
    error = re.findall(r"<td[^>]*>(.*?)</td>", row(2), re.S)[-1]
    assert error.startswith('<span title="RuntimeError: out of memory xxxx') and error.endswith("…</span>")
    assert len(re.sub("<[^>]+>", "", error)) == report.ERROR_CHARS


def test_mixed_memory_kinds_keep_a_kind_column(tmp_path):
    result = fake([Axis("sampler.steps", (2, 4))], tmp_path)
    result.cells[1].record["peak_memory"] = {"cuda_max_allocated_bytes": 2**30}
    frame = report.table_frame(result)
    assert list(frame["peak mem kind"]) == ["process rss", "cuda"] and list(frame["peak mem (MB)"]) == [100.0, 1024.0]
    cuda = fake([Axis("sampler.steps", (2, 4))], tmp_path, kind="cuda")
    assert "peak mem (MB, CUDA)" in report.table_frame(cuda)
    pending = fake([Axis("sampler.steps", (2, 4))], tmp_path, status=lambda i: None)
    html = report.table_html(pending)
    assert "None" not in html and "nan" not in html and "linear-gradient" not in html


# ----------------------------------------------------------------------------- charts
def test_charts_png_draws_both_panels_and_none_before_any_cell_ran(tmp_path):
    result = fake(AXES_3x3, tmp_path, status=lambda i: "cached" if i % 2 else "ok")
    png = report.charts_png(result)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (800, 300)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 60  # bars: saturated pixels (text and axes are grey)
    assert coloured[:, :400].sum() > 2000 and coloured[:, 400:].sum() > 2000
    assert report.charts_png(fake(AXES_3x3, tmp_path, status=lambda i: None)) is None
    failed = fake(AXES_3x3, tmp_path, status=lambda i: "failed")
    assert report.charts_png(failed) is None


def test_charts_leave_pyplot_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    report.charts_png(fake([Axis("sampler.steps", (2, 4))], tmp_path))
    assert matplotlib.get_backend() == before
    import sys

    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


# ----------------------------------------------------------------------------- export
def test_export_writes_files_that_read_back_and_never_overwrites(tmp_path, monkeypatch):
    from datetime import datetime

    class Frozen(datetime):  # every export in the same second
        @classmethod
        def now(cls, tz=None):
            return datetime(2025, 1, 2, 3, 4, 5)

    monkeypatch.setattr(report, "datetime", Frozen)
    axes = [Axis("sampler.cfg", (1.0, "high", 3)), Axis("sampler.steps", (2, 4))]  # a column of mixed types
    result = fake(axes, tmp_path / "sweep", status=lambda i: "failed" if i == 4 else ("cached" if i == 5 else "ok"))
    paths = report.export(result)
    assert set(paths) == {"png", "csv", "parquet"}
    assert all(p.parent == tmp_path / "sweep" / "exports" for p in paths.values())
    assert paths["png"].name == "sweep-20250102-030405.png"
    with Image.open(paths["png"]) as img:
        assert img.size == result.grid.size
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(result.grid))
    assert read_png_record(paths["png"])["sweep"]["axes"][0]["key"] == "sampler.cfg"

    table = result.table
    csv = pd.read_csv(paths["csv"], index_col="cell")
    parquet = pd.read_parquet(paths["parquet"])
    for back in (csv, parquet):
        assert list(back.columns) == list(table.columns) and list(back.index) == list(table.index)
        assert np.allclose(back["total_s"].astype(float), table["total_s"].astype(float), equal_nan=True)
        assert list(back["status"]) == list(table["status"])
        assert [str(v) for v in back["sampler.cfg"]] == [str(v) for v in table["sampler.cfg"]]
    assert list(parquet["peak_mem_mb"].isna()) == [False] * 4 + [True] + [False]
    assert list(parquet["cond_cached"]) == [False] * 4 + [False, True]

    again = report.export(result, ["csv"])  # the same second: a new name, the first file untouched
    assert again["csv"].name == "sweep-20250102-030405-2.csv"
    assert paths["csv"].read_text() == again["csv"].read_text()
    third = report.export(result, ("csv", "png"), folder=tmp_path / "elsewhere")
    assert third["png"].parent == tmp_path / "elsewhere" and len(list((tmp_path / "sweep" / "exports").iterdir())) == 4

    with pytest.raises(SweepError, match=r"export format\(s\) 'jpg' not known; choose from png, csv, parquet"):
        report.export(result, ["png", "jpg"])
    assert len(list((tmp_path / "sweep" / "exports").iterdir())) == 4  # refused before writing anything
    assert set(report.export(result, "csv")) == {"csv"}  # one string is one format (it was 'c', 's', 'v')


# ----------------------------------------------------------------------------- a real tiny sweep
def test_views_of_a_real_tiny_sweep(tmp_path):
    from workbench.sweep import Sweep

    result = Sweep.plan(["sampler.steps=2,3"], ["model=tiny_random", "height=64", "width=64"], tmp_path).run(progress=False)
    page = report.table_html(result)
    assert "peak mem (MB, RSS, lifetime)" in page or "peak mem (MB, CUDA)" in page
    assert "tiny_random" in page and "None" not in page
    assert Image.open(io.BytesIO(report.charts_png(result))).size == (800, 300)
    layout = result.grid_layout
    assert layout.size == result.grid.size and len(layout.tiles) == 2
    paths = report.export(result, ["png", "parquet"])
    assert pd.read_parquet(paths["parquet"])["model"].tolist() == ["tiny_random"] * 2
