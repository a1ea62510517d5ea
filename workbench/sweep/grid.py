"""The sweep grid: X columns, Y rows, one panel per Z value, axis legends, labelled blanks for failed cells.

Tiles share one size (the largest image, scaled up by an integer factor) so that small test images
stay readable; ``SweepResult.compare`` reuses the tiles and labels for its A/B image. Legend fonts grow
with the grid's width and a blank tile's label with the tile, so text stays readable when a notebook
shows a large grid scaled down. ``grid_layout`` gives the tile boxes ``make_grid`` draws (for clicks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from workbench.sweep.plan import SweepPlan
    from workbench.sweep.result import CellResult

BACKGROUND = (255, 255, 255)
PENDING = (225, 225, 225)
FAILED = (245, 225, 225)
INK = (20, 20, 20)
ERROR_INK = (150, 0, 0)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def cell_size(results: Sequence[Optional[CellResult]], min_side: int = 128) -> tuple[int, int]:
    """Common tile size: the largest tile, scaled up by an integer factor to at least ``min_side``."""
    sizes = [r.tile.size for r in results if r is not None and r.tile is not None]
    w, h = (max(s[0] for s in sizes), max(s[1] for s in sizes)) if sizes else (min_side, min_side)
    scale = max(1, math.ceil(min_side / max(1, min(w, h))))
    return w * scale, h * scale


def _wrap(text: str, width_px: int, font) -> list[str]:
    """Greedy word wrap measured in pixels; words wider than a line are broken."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width_px and len(word) > 1:
                cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width_px or i == 1))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def tile_or_blank(res: Optional[CellResult], size: tuple[int, int], invalid: Optional[str] = None) -> Image.Image:
    """The cell's images centred in ``size``, or a blank: FAILED with the reason (``invalid``: no result), or pending."""
    w, h = size
    if res is not None and res.tile is not None:
        tile = res.tile
        scale = max(1, min(w // tile.width, h // tile.height))
        if scale > 1:
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        out = Image.new("RGB", size, BACKGROUND)
        out.paste(tile, ((w - tile.width) // 2, (h - tile.height) // 2))
        return out
    error = res.error if res is not None else invalid
    out = Image.new("RGB", size, FAILED if error else PENDING)
    draw = ImageDraw.Draw(out)
    size_px = blank_font_px(w)  # scales with the tile: readable wherever the tile is
    font, margin, line_h = _font(size_px), max(4, size_px // 3), _line_height(size_px)
    if error:
        lines = ["FAILED"] + _wrap(error, w - 2 * margin, font)
        max_lines = max(1, (h - 2 * margin) // line_h)
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + ["..."]
        _draw_lines(draw, (margin, margin), lines, font, line_h, ERROR_INK)
    else:
        draw.text((w // 2, h // 2), "pending", fill=(120, 120, 120), font=font, anchor="mm")
    return out


def blank_font_px(tile_width: int) -> int:
    """Font size of a blank tile's FAILED / pending label: 1/16 of the tile's width, at least 11 px."""
    return max(11, tile_width // 16)


def _line_height(font_px: int) -> int:
    """Line advance for ``font_px`` text: ascender + descender + a little air, so lines never touch."""
    return math.ceil(font_px * 1.3)


def _draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: list[str], font, line_h: int, fill) -> None:
    """One ``draw.text`` per line at our own line height (``multiline_text`` spaces lines its own way)."""
    x, y = xy
    for i, line in enumerate(lines):
        draw.text((x, y + i * line_h), line, fill=fill, font=font)


def in_a_row(images: list[Image.Image]) -> Image.Image:
    """Images pasted left to right on white (one cell's prompts x seeds); one image is returned as is."""
    if len(images) == 1:
        return images[0]
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width
    return out


def side_by_side(tiles: list[Image.Image], labels: list[str], pad: int = 6) -> Image.Image:
    """Tiles in a row, each under its wrapped label (the A/B image)."""
    font = _font(13)
    wrapped = [_wrap(label, t.width, font) for t, label in zip(tiles, labels)]
    head = 16 * max(len(w) for w in wrapped) + 6
    w = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    h = max(t.height for t in tiles) + head + pad
    out = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(out)
    x = pad
    for t, lines in zip(tiles, wrapped):
        draw.multiline_text((x, 3), "\n".join(lines), fill=INK, font=font, spacing=3)
        out.paste(t, (x, head))
        x += t.width + pad
    return out


@dataclass
class GridLayout:
    """Where each cell's tile sits in the grid image (grid pixels), so a click can be mapped to its cell."""

    size: tuple[int, int]  # (width, height) of the grid image
    tiles: dict[int, tuple[int, int, int, int]]  # cell index -> (x0, y0, x1, y1), x1 / y1 exclusive

    def cell_at(self, x: float, y: float) -> Optional[int]:
        """The cell whose tile holds pixel (x, y); None on padding, legends or outside the image."""
        for index, (x0, y0, x1, y1) in self.tiles.items():
            if x0 <= x < x1 and y0 <= y < y1:
                return index
        return None


@dataclass
class _Label:
    xy: tuple[int, int]
    lines: list[str]
    title: bool = False  # the Z panel's title (the larger font)


@dataclass
class _Geometry:
    """Everything ``make_grid`` draws, and where: one computation for the image and for ``grid_layout``."""

    layout: GridLayout
    tile_size: tuple[int, int]
    font_px: int
    title_px: int
    labels: list[_Label]


def legend_font_px(grid_width: int) -> int:
    """Legend font size: at least 12 px when the grid is shown 1000 px wide, never below 13 px."""
    return max(13, math.ceil(12 * grid_width / 1000))


def _geometry(sweep: SweepPlan, results: Sequence[Optional[CellResult]], min_side: int) -> _Geometry:
    """The grid's geometry at the smallest legend font that stays readable at 1000 px shown width.

    The width depends on the font (the Y legend's column) and the font on the width: start at 13 px and
    grow until the font is large enough for the width it makes (a few rounds; the width grows slowly).
    """
    tile = cell_size(results, min_side)
    font_px = 13
    for _ in range(8):
        geo = _geometry_at(sweep, tile, font_px)
        need = legend_font_px(geo.layout.size[0])
        if need <= font_px:
            return geo
        font_px = need
    return geo


def _geometry_at(sweep: SweepPlan, tile: tuple[int, int], font_px: int) -> _Geometry:
    """Tile boxes and legend positions for legend font ``font_px``; margins and line heights follow it."""
    axes = sweep.axes
    nx, ny, nz = (list(sweep.shape) + [1, 1])[:3]
    tw, th = tile
    title_px = round(font_px * 15 / 13)
    font = _font(font_px)
    pad = max(4, font_px // 4)  # between tiles, and around the legends
    line_h = _line_height(font_px)
    col_labels = [_wrap(axes[0].label(v), tw - 2, font) for v in axes[0].values]
    if len(axes) > 1:
        widest = max(int(font.getlength(axes[1].label(v))) for v in axes[1].values)
        left = min(widest + 2 * pad, round(220 * font_px / 13))  # a long Y label wraps instead of widening
    else:
        left = pad
    head_lines = max(len(lines) for lines in col_labels)
    title_h = _line_height(title_px) + pad if nz > 1 else 0
    top = pad + title_h + head_lines * line_h + pad
    panel_w = left + nx * (tw + pad)
    panel_h = top + ny * (th + pad)
    size = (nz * panel_w + (nz - 1) * 3 * pad + pad, panel_h + pad)
    labels: list[_Label] = []
    tiles: dict[int, tuple[int, int, int, int]] = {}
    by_pos = {c.pos: c for c in sweep.cells}
    for iz in range(nz):
        ox = iz * (panel_w + 3 * pad)
        if nz > 1:
            labels.append(_Label((ox + left, pad), [axes[2].label(axes[2].values[iz])], title=True))
        for ix, lines in enumerate(col_labels):
            labels.append(_Label((ox + left + ix * (tw + pad) + 2, top - pad - head_lines * line_h), lines))
        for iy in range(ny):
            y = top + iy * (th + pad)
            if len(axes) > 1:
                lines = _wrap(axes[1].label(axes[1].values[iy]), left - 2 * pad, font)[: max(1, th // line_h)]
                labels.append(_Label((ox + pad, max(top, y + th // 2 - line_h * len(lines) // 2)), lines))
            for ix in range(nx):
                x = ox + left + ix * (tw + pad)
                tiles[by_pos[(ix, iy, iz)].index] = (x, y, x + tw, y + th)
    return _Geometry(GridLayout(size, tiles), tile, font_px, title_px, labels)


def grid_layout(sweep: SweepPlan, results: Sequence[Optional[CellResult]], min_side: int = 128) -> GridLayout:
    """The tile boxes of the image ``make_grid(sweep, results, min_side)`` draws (same geometry)."""
    return _geometry(sweep, results, min_side).layout


def make_grid(sweep: SweepPlan, results: Sequence[Optional[CellResult]], min_side: int = 128) -> Image.Image:
    """The X/Y grid (one panel per Z value, side by side) with axis legends; blanks for failed / pending cells.

    Legend fonts scale with the grid's width, so a grid of large tiles stays readable when a notebook
    shows it scaled down to its column's width."""
    geo = _geometry(sweep, results, min_side)
    out = Image.new("RGB", geo.layout.size, BACKGROUND)
    draw = ImageDraw.Draw(out)
    font, title_font = _font(geo.font_px), _font(geo.title_px)
    for label in geo.labels:
        f = title_font if label.title else font
        _draw_lines(draw, label.xy, label.lines, f, _line_height(geo.title_px if label.title else geo.font_px), INK)
    for cell in sweep.cells:
        x0, y0, _, _ = geo.layout.tiles[cell.index]
        out.paste(tile_or_blank(results[cell.index], geo.tile_size, cell.error), (x0, y0))
    return out
