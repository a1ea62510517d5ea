"""The sweep grid: X columns, Y rows, one panel per Z value, axis legends, labelled blanks for failed cells.

Tiles share one size (the largest image, scaled up by an integer factor) so that small test images
stay readable; ``SweepResult.compare`` reuses the tiles and labels for its A/B image.
"""

from __future__ import annotations

import math
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
    font = _font(11)
    if error:
        lines = ["FAILED"] + _wrap(error, w - 8, font)
        max_lines = max(1, (h - 8) // 13)
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + ["..."]
        draw.multiline_text((4, 4), "\n".join(lines), fill=ERROR_INK, font=font, spacing=2)
    else:
        draw.text((w // 2, h // 2), "pending", fill=(120, 120, 120), font=font, anchor="mm")
    return out


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


def make_grid(sweep: SweepPlan, results: Sequence[Optional[CellResult]], min_side: int = 128) -> Image.Image:
    """The X/Y grid (one panel per Z value, side by side) with axis legends; blanks for failed / pending cells."""
    axes = sweep.axes
    nx, ny, nz = (list(sweep.shape) + [1, 1])[:3]
    tw, th = cell_size(results, min_side)
    font, title_font = _font(13), _font(15)
    pad = 4
    col_labels = [axes[0].label(v) for v in axes[0].values]
    row_labels = [axes[1].label(v) for v in axes[1].values] if len(axes) > 1 else [""]
    left = (max(int(font.getlength(s)) for s in row_labels) + 2 * pad) if len(axes) > 1 else pad
    left = min(left, 220)
    head_lines = max(len(_wrap(s, tw, font)) for s in col_labels)
    top = head_lines * 16 + 2 * pad + (22 if nz > 1 else 0)
    panel_w = left + nx * (tw + pad)
    panel_h = top + ny * (th + pad)
    out = Image.new("RGB", (nz * panel_w + (nz - 1) * 3 * pad + pad, panel_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(out)
    by_pos = {c.pos: c for c in sweep.cells}
    for iz in range(nz):
        ox = iz * (panel_w + 3 * pad)
        if nz > 1:
            draw.text((ox + left, pad), axes[2].label(axes[2].values[iz]), fill=INK, font=title_font)
        for ix, label in enumerate(col_labels):
            x = ox + left + ix * (tw + pad)
            draw.multiline_text((x + 2, top - head_lines * 16 - pad), "\n".join(_wrap(label, tw, font)), fill=INK, font=font)
        for iy in range(ny):
            y = top + iy * (th + pad)
            if len(axes) > 1:
                text = _wrap(row_labels[iy], left - 2 * pad, font)
                draw.multiline_text((ox + pad, y + th // 2 - 8 * len(text)), "\n".join(text), fill=INK, font=font)
            for ix in range(nx):
                cell = by_pos[(ix, iy, iz)]
                tile = tile_or_blank(results[cell.index], (tw, th), cell.error)
                out.paste(tile, (ox + left + ix * (tw + pad), y))
    return out
