"""The ``reference`` group (conf/reference/): how edit reference images are sized."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from workbench.config import limits
from workbench.errors import ConfigError


class ReferencePolicy(str, Enum):
    # aspect-kept ~area, both sides rounded to multiple_of (32), Lanczos resize (diffusers pipelines)
    diffusers = "diffusers"
    # side * sqrt(area / (w * h)) with Python round(), "area" resize (ComfyUI TextEncodeQwenImageEdit[Plus]);
    # the VAE copy per vae_fit, sides multiple of multiple_of (8); odd latents padded circularly
    comfy = "comfy"


class VaeFit(str, Enum):
    round = "round"  # sides round(side * scale / 8) * 8 (ComfyUI Edit-Plus node)
    crop = "crop"  # plain rounding, then the VAE's centre crop to a multiple of 8 (ComfyUI Edit node)


class Resample(str, Enum):
    bicubic = "bicubic"  # transformers' Qwen2VLImageProcessor
    bilinear = "bilinear"  # ComfyUI's process_qwen2vl_images


@dataclass
class ReferenceConfig:
    """How edit reference images are sized for the vision-language model and for the VAE.

    Sizing is the users' top complaint (edits shifted / zoomed against the input), so each tool's
    rule is a config: ``policy`` picks the rounding (see ``workbench.stages.latents.reference_sizes``
    for the exact arithmetic), ``vlm_resample`` the filter of the VLM's smart resize.
    """

    name: str = "diffusers_edit_plus"
    policy: ReferencePolicy = ReferencePolicy.diffusers
    vlm_area: int = 384 * 384  # target pixel count of the copy the text encoder sees
    vae_area: int = 1024 * 1024  # target pixel count of the copy the VAE encodes
    multiple_of: int = 32  # diffusers: both copies' sides; comfy: the VAE copy's sides (8)
    vae_fit: VaeFit = VaeFit.round  # comfy only
    vlm_resample: Resample = Resample.bicubic

    def __post_init__(self) -> None:
        if self.policy == ReferencePolicy.diffusers and self.multiple_of % 16:
            raise ConfigError(
                f"reference.multiple_of must be a multiple of 16 with reference.policy=diffusers, got "
                f"{self.multiple_of}; use 32 (diffusers), or reference.policy=comfy for multiples of 8"
            )
        if self.policy == ReferencePolicy.comfy and (self.multiple_of < 8 or self.multiple_of % 8):
            raise ConfigError(
                f"reference.multiple_of must be a multiple of 8 with reference.policy=comfy (the VAE's "
                f"8x downscale), got {self.multiple_of}; ComfyUI uses 8"
            )
        for key in ("vlm_area", "vae_area"):
            if getattr(self, key) < 28 * 28:
                raise ConfigError(f"reference.{key} must be >= 784 pixels (one 28x28 VLM cell), got {getattr(self, key)}")
            if getattr(self, key) > limits.MAX_PIXELS:
                raise ConfigError(f"reference.{key}={getattr(self, key)} is over the limit of {limits.MAX_PIXELS} pixels")
