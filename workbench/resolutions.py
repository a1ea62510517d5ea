"""Resolutions Qwen-Image was trained for, and snapping other sizes to the latent grid."""

from __future__ import annotations

# The origin notes' preferred list (ComfyUI's Qwen-Image resolutions), (width, height).
PREFERRED = [
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
]
# Official aspect buckets of the Qwen-Image model card, (width, height). Not all are multiples of 16.
OFFICIAL = [(1328, 1328), (1664, 928), (928, 1664), (1472, 1140), (1140, 1472), (1584, 1056), (1056, 1584)]


def snap(width: int, height: int, multiple: int = 16) -> tuple[int, int, str | None]:
    """Floor each side to ``multiple`` (what diffusers does silently); returns a note when it changed."""
    w, h = max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)
    note = None if (w, h) == (width, height) else f"size {width}x{height} snapped to {w}x{h} (sides multiple of {multiple})"
    return w, h, note


def nearest_preferred(width: int, height: int) -> tuple[int, int]:
    """The preferred resolution whose aspect ratio is closest to width / height."""
    import math

    target = math.log(width / height)
    return min(PREFERRED, key=lambda wh: abs(math.log(wh[0] / wh[1]) - target))
