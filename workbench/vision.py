"""Qwen2.5-VL image preprocessing: smart resize, normalise, cut into 14-px patch pairs.

Written here (instead of calling transformers' image processor) because the fast processor needs
torchvision, which does not install beside the CPU torch wheel, and because the resize filter must
be a switch (HF resizes bicubic, ComfyUI bilinear; ``reference.vlm_resample``). ``tests/test_vision_and_edit.py``
checks that the bicubic output equals transformers' ``Qwen2VLImageProcessorPil`` bit for bit. The bilinear
case is PIL's bilinear on 8-bit pixels: ComfyUI's sizes, not its exact floats (it interpolates float tensors
with torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from workbench.models.arch import VISION_MERGE as MERGE
from workbench.models.arch import VISION_PATCH as PATCH
from workbench.models.arch import VISION_TEMPORAL_PATCH as TEMPORAL

FACTOR = PATCH * MERGE  # 28: sides are multiples of this
MIN_PIXELS = 3136  # Qwen2.5-VL preprocessor_config.json
MAX_PIXELS = 12845056
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class VisionInput:
    pixel_values: torch.Tensor  # (sum of grid_h*grid_w over images, 3 * 2 * 14 * 14)
    grids: list[tuple[int, int, int]]  # (t, h, w) in 14-px patches, per image

    @property
    def tokens_per_image(self) -> list[int]:
        return [t * h * w // MERGE**2 for t, h, w in self.grids]


def smart_resize(height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Sides rounded to multiples of 28 with the pixel count clamped to [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
    h, w = round(height / FACTOR) * FACTOR, round(width / FACTOR) * FACTOR
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def patchify(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised -> (grid_h * grid_w, 3 * 2 * 14 * 14), in the merge-window order the tower expects."""
    c, height, width = image.shape
    gh, gw = height // PATCH, width // PATCH
    x = image.reshape(c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/2, gw/2, 2, 2, C, 14, 14)
    x = x.unsqueeze(5).expand(*x.shape[:5], TEMPORAL, PATCH, PATCH)  # a still image is 2 equal frames
    return x.reshape(gh * gw, c * TEMPORAL * PATCH * PATCH)


def preprocess(
    images: list[Image.Image], resample: str = "bicubic", min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> VisionInput:
    """PIL images -> pixel patches and grids for ``Qwen2_5_VLForConditionalGeneration``."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r}: expected one of {sorted(RESAMPLE)}")
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    patches, grids = [], []
    for img in images:
        img = img.convert("RGB")
        h, w = smart_resize(img.height, img.width, min_pixels, max_pixels)
        img = img.resize((w, h), resample=RESAMPLE[resample])
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        patches.append(patchify((x - mean) / std))
        grids.append((1, h // PATCH, w // PATCH))
    return VisionInput(pixel_values=torch.cat(patches), grids=grids)
