"""Qwen2.5-VL / Qwen3-VL image preprocessing: smart resize, normalise, cut into patch pairs
(14 px for Qwen2.5-VL; 16 px and [-1, 1] normalisation for Qwen3-VL, ``QWEN3_VL``).

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
class VisionSpec:
    """What differs between the encoders' image processors."""

    patch: int = PATCH
    merge: int = MERGE
    temporal: int = TEMPORAL
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    # False: the caller has sized the image to multiples of patch * merge already (Qwen-Image-2.1 sizes
    # each condition image to the output area, and its encoder must see exactly one slot per 2x2 latents)
    smart_resize: bool = True


QWEN25_VL = VisionSpec()
QWEN3_VL = VisionSpec(patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), smart_resize=False)


@dataclass(frozen=True)
class VisionInput:
    pixel_values: torch.Tensor  # (sum of grid_h*grid_w over images, 3 * 2 * 14 * 14)
    grids: list[tuple[int, int, int]]  # (t, h, w) in 14-px patches, per image

    @property
    def tokens_per_image(self) -> list[int]:
        return [t * h * w // MERGE**2 for t, h, w in self.grids]


def on_white(image: Image.Image) -> Image.Image:
    """RGB for a vision encoder: transparency composited onto white, as transformers' processors do
    (``convert_to_rgb``; what 2.1's encoder was trained to see); an image without alpha is only converted."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


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


def patchify(image: torch.Tensor, spec: VisionSpec = QWEN25_VL) -> torch.Tensor:
    """(3, H, W) normalised -> (grid_h * grid_w, 3 * 2 * p * p), in the merge-window order the tower expects."""
    p, m, tp = spec.patch, spec.merge, spec.temporal
    c, height, width = image.shape
    gh, gw = height // p, width // p
    x = image.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/2, gw/2, 2, 2, C, p, p)
    x = x.unsqueeze(5).expand(*x.shape[:5], tp, p, p)  # a still image is 2 equal frames
    return x.reshape(gh * gw, c * tp * p * p)


def preprocess(
    images: list[Image.Image], resample: str = "bicubic", min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
    spec: VisionSpec = QWEN25_VL,
) -> VisionInput:
    """PIL images -> pixel patches and grids for ``Qwen2_5_VLForConditionalGeneration`` (or Qwen3-VL's
    with ``spec=QWEN3_VL``)."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample!r}: expected one of {sorted(RESAMPLE)}")
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    patches, grids = [], []
    for img in images:
        img = img.convert("RGB")
        if spec.smart_resize:
            h, w = smart_resize(img.height, img.width, min_pixels, max_pixels)
            img = img.resize((w, h), resample=RESAMPLE[resample])
        else:
            h, w = img.height, img.width
            side = spec.patch * spec.merge
            if h % side or w % side:
                raise ValueError(f"image of {w}x{h}: sides must be multiples of {side} for this encoder")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        patches.append(patchify((x - mean) / std, spec))
        grids.append((1, h // spec.patch, w // spec.patch))
    return VisionInput(pixel_values=torch.cat(patches), grids=grids)
