"""A sweep's results for reading and sharing: the styled table, timing / memory charts, export to files.

Library functions (a panel shows what they return; nothing here needs a browser or a notebook):

    styled_table(result)   pandas Styler: units in headers, blanks for cells without numbers, a bar on total time
    table_html(result)     its HTML, table id / class ``workbench-sweep-table`` for a click-to-sort script
    charts_png(result)     PNG: time per cell (stacked stages) and peak memory per cell; None before any cell ran
    export(result)         grid PNG, table CSV / Parquet under ``<out_dir>/exports/``, never overwriting

Charts are drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas, never through pyplot, so a
notebook's backend and figures are left as they were.
"""

from __future__ import annotations

import html
import io
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from workbench.sweep.axes import SweepError

if TYPE_CHECKING:
    from workbench.sweep.result import SweepResult

TABLE_ID = "workbench-sweep-table"
EXPORT_FORMATS = ("png", "csv", "parquet")
RAN = ("ok", "cached")  # statuses whose timing / memory numbers are the cell's
STAGES = ("encode", "denoise", "decode")
ERROR_CHARS = 60  # longer errors are cut in the table; the full text is the cell's title (hover)
# peak_mem_kind -> (table header, chart axis label); RSS on a CPU is the process's lifetime peak
MEMORY_LABELS = {
    "cuda": ("peak mem (MB, CUDA)", "CUDA peak (MB)"),
    "process rss": ("peak mem (MB, RSS, lifetime)", "process RSS, lifetime peak (MB)"),
}
STATUS_STYLE = {"failed": "color: #b00020; font-weight: bold", "invalid": "color: #b00020",
                "cached": "color: #888888", "pending": "color: #888888; font-style: italic"}


# ----------------------------------------------------------------------------- the table
def _memory_kinds(df) -> list[str]:
    return sorted({k for k in df.get("peak_mem_kind", []) if isinstance(k, str)})


def table_frame(result: SweepResult):
    """``result.table`` as shown: numbers blanked where the cell did not run, units in the headers, the
    memory kind in the memory header (a kind column only when kinds are mixed)."""
    df = result.table.copy()
    numbers = [f"{s}_s" for s in STAGES] + ["total_s", "peak_mem_mb"]
    ran = df["status"].isin(RAN)
    for column in [c for c in numbers if c in df]:
        df[column] = df[column].astype(float).where(ran)
    df["cond_cached"] = df["cond_cached"].astype(object).where(ran, None)
    names = {f"{s}_s": f"{s} (s)" for s in STAGES} | {"total_s": "total (s)", "cond_cached": "cond cached"}
    kinds = _memory_kinds(df)
    if len(kinds) == 1:
        names["peak_mem_mb"] = MEMORY_LABELS.get(kinds[0], (f"peak mem (MB, {kinds[0]})",))[0]
        df = df.drop(columns=["peak_mem_kind"])
    else:  # none ran yet, or cells on CUDA and on a CPU: each row says which
        names |= {"peak_mem_mb": "peak mem (MB)", "peak_mem_kind": "peak mem kind"}
        if not kinds:
            df = df.drop(columns=["peak_mem_kind"])
    return df.rename(columns=names)


def _error_html(text) -> str:
    """An error (or a cell's notes) cut to ``ERROR_CHARS``, the full text in the title attribute (shown on hover)."""
    if not isinstance(text, str) or not text:
        return ""
    if len(text) <= ERROR_CHARS:
        return html.escape(text)
    return f'<span title="{html.escape(text, quote=True)}">{html.escape(text[: ERROR_CHARS - 1])}…</span>'


def styled_table(result: SweepResult):
    """The table as a pandas Styler: seconds to 3 decimals, MB to 1, blanks (never None / nan) for cells
    that did not run, a bar on total time, failed rows' status in red and cached ones in grey.

    Header cells carry pandas' predictable classes ``col_heading level0 col<N>`` (N: the column's place),
    and the index is the cell number."""
    df = table_frame(result)
    styler = df.style.set_uuid("workbench-sweep").format(na_rep="", escape="html", precision=3)
    seconds = [c for c in df if c.endswith("(s)")]
    memory = [c for c in df if c.startswith("peak mem (MB")]
    styler = styler.format("{:.3f}", subset=seconds, na_rep="").format("{:.1f}", subset=memory, na_rep="")
    long_text = [c for c in ("notes", "error") if c in df]
    if long_text:
        styler = styler.format(_error_html, subset=long_text, escape=None)
    if "total (s)" in df and df["total (s)"].notna().any():
        styler = styler.bar(subset=["total (s)"], color="#9ecae1", vmin=0)
    styler = styler.map(lambda s: STATUS_STYLE.get(s, ""), subset=["status"])
    return styler.set_table_attributes(f'id="{TABLE_ID}" class="{TABLE_ID}"')


def table_html(result: SweepResult) -> str:
    """``styled_table(result)`` as HTML: ``<table id="workbench-sweep-table" class="workbench-sweep-table">``,
    stable element ids (the same result gives the same HTML)."""
    return styled_table(result).to_html()


# ----------------------------------------------------------------------------- the charts
def charts_png(result: SweepResult) -> Optional[bytes]:
    """Two panels, 800 x 300 px: seconds per cell stacked by stage (encode / denoise / decode; a cached
    cell is hatched, its time is the run that made it) and peak memory per cell. None when no cell ran."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    df = result.table
    ran = df[df["status"].isin(RAN)]
    if ran.empty:
        return None
    fig = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # this figure's own canvas: pyplot's backend is never consulted
    ax_t, ax_m = fig.subplots(1, 2)
    x = list(range(len(ran)))
    hatch = ["//" if s == "cached" else "" for s in ran["status"]]
    bottom = [0.0] * len(ran)
    for n, stage in enumerate(STAGES):
        height = [0.0 if v is None or v != v else float(v) for v in ran[f"{stage}_s"]]
        ax_t.bar(x, height, bottom=bottom, color=f"C{n}", hatch=hatch, edgecolor="white", linewidth=0)
        bottom = [b + h for b, h in zip(bottom, height)]
    handles = [Patch(facecolor=f"C{n}", label=stage) for n, stage in enumerate(STAGES)]
    if "cached" in set(ran["status"]):
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="cached (original run's time)"))
    ax_t.legend(handles=handles, fontsize=7, loc="upper left", frameon=False, ncols=2)
    ax_t.margins(y=0.3)  # room for the legend above the tallest bar
    ax_t.set_ylabel("seconds")
    ax_t.set_title("time per cell", fontsize=9)

    kinds = _memory_kinds(ran)
    colours = {"cuda": "C4", "process rss": "C5"}
    memory = [0.0 if v is None or v != v else float(v) for v in ran["peak_mem_mb"]]
    ax_m.bar(x, memory, color=[colours.get(k, "C7") for k in ran["peak_mem_kind"]])
    ax_m.set_ylabel(MEMORY_LABELS.get(kinds[0], ("", "peak memory (MB)"))[1] if len(kinds) == 1 else "peak memory (MB)")
    ax_m.set_title("peak memory per cell", fontsize=9)

    ticks = _tick_labels(result, list(ran.index))
    for ax in (ax_t, ax_m):
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_xlabel("cell", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _tick_labels(result: SweepResult, indices: Sequence[int], short: int = 14) -> list[str]:
    """The cell number, with the cell's axis values under it when they are short and the cells few."""
    labels = []
    for i in indices:
        text = result.sweep.cells[i].label(result.axes)
        labels.append(f"{i}\n{text}" if len(indices) <= 8 and len(text) <= short else str(i))
    return labels


# ----------------------------------------------------------------------------- export
def parquet_frame(df):
    """``df`` with every object column of mixed value types turned into strings (Parquet columns have one
    type; None stays missing). Columns of one type (str, bool with None) are kept as they are."""
    out = df.copy()
    for column in [c for c in out.columns if out[c].dtype.kind == "O"]:  # object (and str) columns
        values = [v for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if len({type(v) for v in values}) > 1:
            out[column] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in out[column]]
    return out


def _free_stem(folder: Path, formats: Sequence[str]) -> str:
    """``sweep-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when a file of that name exists already."""
    stem = f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = stem, 1
    while any((folder / f"{candidate}.{ext}").exists() for ext in formats):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def export(result: SweepResult, formats: Sequence[str] = EXPORT_FORMATS, folder: Optional[str | Path] = None) -> dict[str, Path]:
    """Write the grid (``png``, the sweep's description in its ``workbench`` text chunk) and the table
    (``csv``, ``parquet``) to ``folder`` (default ``<out_dir>/exports/``) as ``sweep-<time>.<ext>``;
    an existing file is never replaced. Returns format -> path."""
    from workbench import record as rec

    formats = list(dict.fromkeys([formats] if isinstance(formats, str) else formats))  # "png" is one format
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise SweepError(f"export format(s) {', '.join(map(repr, unknown)) or '(none)'} not known; "
                         f"choose from {', '.join(EXPORT_FORMATS)}")
    folder = Path(folder) if folder is not None else result.sweep.out_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(folder, formats)
    data: dict[str, bytes] = {}
    if "png" in formats:
        description = result.sweep.describe() | {"complete": result.complete, "stats": result.stats}
        data["png"] = rec.png_bytes(result.grid, {"sweep": description})
    table = result.table if {"csv", "parquet"} & set(formats) else None
    if "csv" in formats:
        data["csv"] = table.to_csv().encode("utf-8")
    if "parquet" in formats:
        buf = io.BytesIO()
        parquet_frame(table).to_parquet(buf, engine="pyarrow")
        data["parquet"] = buf.getvalue()
    paths = {}
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        with open(path, "xb") as f:  # exclusive: a file made meanwhile raises instead of being replaced
            f.write(data[fmt])
        paths[fmt] = path
    return paths
