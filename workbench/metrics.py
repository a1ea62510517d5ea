"""Score an image against its caption from pixels alone, and compare images (PSNR, SSIM).

Made for the synthetic world of ``workbench.training.world`` (one flat shape on a flat background),
so that template / sampler / precision ablations on the trained tiny model are measured, not eyeballed:

- background colour: the most common named colour among the border pixels;
- shape colour: the most common named colour among the other pixels that differ from the background;
- shape kind: from moments and fill: a triangle (apex up) has its centroid a sixth of its height
  below the centre of its bounding box and is narrower at a quarter of its height than at three
  quarters (a rounded, blurry triangle still is); otherwise the fill ratio of the bounding box
  separates square (~1) from circle (~pi/4);
- position: the anchor (left / right / top / bottom / centre) nearest to the pixels' centroid;
- size: small / large from the area.

Image-vs-image measures come from scikit-image (PSNR, SSIM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from workbench.errors import InputError
from workbench.training.world import COLOURS, POSITION_WORDS, POSITIONS, SHAPES, SIZE, SIZES, ZH_COLOURS, ZH_POSITIONS, ZH_SHAPES, ZH_SIZES

ATTRIBUTES = ("background", "colour", "shape", "position", "size")

_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_SHORT = re.compile(rf"^a ({_C}) ({_S}) on a ({_C}) background$")
_LONG = re.compile(rf"^a ({'|'.join(SIZES)}) ({_C}) ({_S}) on the ({'|'.join(POSITION_WORDS)}), on a ({_C}) background$")
_EDIT = re.compile(rf"^make the ({_S}) ({_C})$")


def _inverse(d: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in d.items()}


_ZH = re.compile(
    f"^({'|'.join(ZH_COLOURS.values())})背景上，({'|'.join(ZH_POSITIONS.values())})有一个({'|'.join(ZH_SIZES.values())})的"
    f"({'|'.join(ZH_COLOURS.values())})({'|'.join(ZH_SHAPES.values())})$"
)


class CaptionError(InputError):
    """A caption outside the world's grammar."""


def parse_caption(caption: str) -> dict[str, Optional[str]]:
    """Caption -> {background, colour, shape, size, position}; size / position None when unsaid."""
    text = caption.strip()
    if m := _SHORT.match(text):
        return {"colour": m[1], "shape": m[2], "background": m[3], "size": None, "position": None}
    if m := _LONG.match(text):
        return {"size": m[1], "colour": m[2], "shape": m[3], "position": POSITION_WORDS[m[4]], "background": m[5]}
    if m := _ZH.match(text):
        zc, zp, zz, zs = _inverse(ZH_COLOURS), _inverse(ZH_POSITIONS), _inverse(ZH_SIZES), _inverse(ZH_SHAPES)
        return {"background": zc[m[1]], "position": zp[m[2]], "size": zz[m[3]], "colour": zc[m[4]], "shape": zs[m[5]]}
    raise CaptionError(
        f"caption {caption!r} is not in the world's grammar; expected 'a <colour> <shape> on a <colour> background' "
        "or 'a <size> <colour> <shape> on the <position>, on a <colour> background' "
        f"(colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)})"
    )


def parse_edit(instruction: str) -> tuple[str, str]:
    """"make the <shape> <colour>" -> (shape, colour)."""
    if m := _EDIT.match(instruction.strip()):
        return m[1], m[2]
    raise CaptionError(f"edit instruction {instruction!r}: expected 'make the <shape> <colour>' (shapes {', '.join(SHAPES)})")


_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


@dataclass
class Reading:
    """What the pixels show; ``None`` where nothing could be read (no shape found)."""

    background: str
    colour: Optional[str]
    shape: Optional[str]
    position: Optional[str]
    size: Optional[str]
    fill: float  # fill ratio of the bounding box
    area: float  # shape pixels, as a fraction of the image


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):  # the anchors and sizes are defined at 64x64
            image = image.resize((SIZE, SIZE), Image.Resampling.BOX)
        return np.asarray(image, dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"metrics: expected an RGB image (H, W, 3), got an array of shape {arr.shape}")
    return _as_array(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))


def read_image(image) -> Reading:
    """Read background, shape colour / kind / position / size from pixels (PIL image or HxWx3 array)."""
    x = _as_array(image)
    labels = ((x[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1).argmin(-1)  # nearest named colour
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    bg_rgb = _PALETTE[bg]
    # pixels clearly away from the background (anti-aliased edges are mixtures: not counted as colour votes)
    away = np.sqrt(((x - bg_rgb) ** 2).sum(-1)) > 60.0
    votes = np.bincount(labels[away & (labels != bg)], minlength=len(_NAMES))
    if votes.sum() < 4:  # nothing drawn
        return Reading(_NAMES[bg], None, None, None, None, 0.0, 0.0)
    colour = int(votes.argmax())
    mask = labels == colour
    ys, xs = np.nonzero(mask)
    area = float(mask.sum())
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = area / box
    top, height = ys.min(), ys.max() - ys.min() + 1
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    # renders: circles and squares |offset| <= 0.03 and width ratio >= 0.85; triangles >= 0.12 and <= 0.5
    offset = (cy - (top + height / 2)) / height
    widths = mask[top + int(0.25 * height)].sum() / max(1, mask[top + int(0.75 * height)].sum())
    if offset > 0.06 or widths < 0.68 or fill < 0.62:
        shape = "triangle"
    else:
        shape = "square" if fill > 0.88 else "circle"
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    # small (r=8) covers ~200 px, large (r=15) ~700: split at the geometric mean of the two areas
    size = "large" if area > np.pi * SIZES["small"] * SIZES["large"] else "small"
    return Reading(_NAMES[bg], _NAMES[colour], shape, position, size, float(fill), area / mask.size)


def score(image, caption: str) -> dict[str, Optional[bool]]:
    """Per attribute: True / False when the caption says it, None when it does not (short form)."""
    want = parse_caption(caption)
    got = read_image(image)
    return {a: (None if want[a] is None else getattr(got, a) == want[a]) for a in ATTRIBUTES}


def score_edit(source, edited, instruction: str) -> dict[str, bool]:
    """Did "make the <shape> <colour>" recolour the shape and keep the background, kind and place?"""
    shape, colour = parse_edit(instruction)
    before, after = read_image(source), read_image(edited)
    return {
        "colour": after.colour == colour,
        "background": after.background == before.background,
        "shape": after.shape == before.shape == shape,
        "position": after.position == before.position,
    }


def accuracy(scores: list[dict[str, Optional[bool]]]) -> dict[str, Optional[float]]:
    """Fraction right per attribute over the scores that said it (None: never said)."""
    out = {}
    for a in scores[0] if scores else ():
        said = [s[a] for s in scores if s[a] is not None]
        out[a] = float(np.mean(said)) if said else None
    return out


def adherence(scores: list[dict[str, Optional[bool]]]) -> float:
    """One number per set of images: the mean of every attribute that the captions said."""
    said = [v for s in scores for v in s.values() if v is not None]
    return float(np.mean(said)) if said else float("nan")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a.convert("RGB") if isinstance(a, Image.Image) else a, dtype=np.float64)
    y = np.asarray(b.convert("RGB") if isinstance(b, Image.Image) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"metrics: images differ in size ({x.shape} vs {y.shape}); resize one to the other first")
    return x, y


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two same-size 8-bit RGB images (inf when equal)."""
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _pair(a, b)
    if np.array_equal(x, y):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=255))


def ssim(a, b) -> float:
    """Structural similarity (1 = same) of two same-size 8-bit RGB images, over the colour channels."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b)
    return float(structural_similarity(x, y, data_range=255, channel_axis=-1))
