"""The root ``Config`` of ``workbench run`` (conf/config.yaml): the groups plus the run's own keys."""

from __future__ import annotations

import dataclasses
import re
import typing

from dataclasses import dataclass, field
from typing import Optional

from workbench.config import limits
from workbench.config.accel import AccelConfig, check_accel_fits
from workbench.config.common import MISSING
from workbench.config.executor import ExecutorConfig
from workbench.config.lora import LoraConfig, check_lora_fits
from workbench.config.model import ModelConfig
from workbench.config.perf import PerfConfig
from workbench.config.precision import PrecisionConfig
from workbench.config.reference import ReferenceConfig
from workbench.config.sampler import SamplerConfig
from workbench.config.template import TemplateConfig
from workbench.errors import ConfigError
from workbench.values import plain


MAX_SEQUENCE_LENGTH = 4096
ENCODER_TAP = re.compile(r"post_norm|pre_norm|-([2-9]|[1-9][0-9]+)")
ENCODER_TAP_EXPECTED = ("post_norm (after the final norm, as diffusers' 20B pipelines read), pre_norm (the last "
                        "layer's output before it) or -k with k >= 2 (hidden_states[-k], an earlier layer)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)  # cache hooks, applied per run (workbench/accel.py)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # sweeps only; never in a cell's cache key

    prompts: list[str] = field(default_factory=lambda: ["a red fox in the snow"])
    negative_prompt: str = " "  # used when sampler.cfg > 1
    seeds: list[int] = field(default_factory=lambda: [0])
    images: list[str] = field(default_factory=list)  # reference images for edit templates
    height: Optional[int] = 128  # null: from the last reference image (edit)
    width: Optional[int] = 128
    init_image: Optional[str] = None  # image-to-image: start from this image, noised to `strength`
    strength: float = 1.0  # image-to-image: fraction of the schedule that runs (ComfyUI's "denoise")
    snap_size: bool = False  # floor sides to multiples of 16 (noted in the record) instead of refusing
    batch_size: int = 1  # images per forward pass
    max_sequence_length: int = 1024
    # the text encoder's state the DiT reads: post_norm | pre_norm | -k (stages/encode.py); null: the family's
    # reference (diffusers): post_norm for the 20B family, pre_norm for Qwen-Image-2.1 (resolved here)
    encoder_tap: Optional[str] = None
    # Qwen-Image-Layered (model.variant=layered): RGBA layers to split images[0] into, and the resolution bucket
    # its side is sized to (area bucket^2, sides of 32; diffusers' ``resolution``: 640 recommended, or 1024)
    layers: int = 4
    layered_resolution: int = 640
    # Layered with an empty prompt: the encoder captions the image first, in this instruction's language (cn | en;
    # diffusers' use_en_prompt, default False = cn), and the layers are generated from that caption
    layered_caption: str = "cn"
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        """The value checks; what needs the machine or the files (device, image files, LoRA files under
        model.roots, free memory, the template's token boundary) runs once in the build step
        (``workbench.config.build.to_run_config``), after these."""
        limits.check_finite_fields(self, "", {"strength": "a number in (0, 1] (1 = the whole schedule)"}, ConfigError)
        self._check_prompts_and_seeds()
        self._check_size()
        self._check_strength_and_batches()
        if not 1 <= self.max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise ConfigError(f"max_sequence_length must be in 1..{MAX_SEQUENCE_LENGTH}, got {self.max_sequence_length}")
        if self.encoder_tap is None:
            self.encoder_tap = "pre_norm" if self.model.variant.family == "qwen-image-2.1" else "post_norm"
        if not ENCODER_TAP.fullmatch(str(self.encoder_tap)):
            raise ConfigError(f"encoder_tap={self.encoder_tap!r}: expected {ENCODER_TAP_EXPECTED}")
        check_lora_fits(self.lora, self.precision, self.perf)
        check_accel_fits(self.accel, self.sampler, self.perf)
        self._check_family()
        self._check_layered()

    def _check_layered(self) -> None:
        """Layered splits one image; its size comes from that image and the bucket."""
        if not 1 <= self.layers <= limits.MAX_LAYERS:
            raise ConfigError(f"layers={self.layers}: expected 1..{limits.MAX_LAYERS} (RGBA layers to split the image into)")
        if self.layered_caption not in ("cn", "en"):
            raise ConfigError(f"layered_caption={self.layered_caption!r}: expected cn (diffusers' default) or en, the "
                              "language of the instruction the encoder captions an empty prompt's image with")
        if self.layered_resolution not in (640, 1024):
            raise ConfigError(f"layered_resolution={self.layered_resolution}: expected 640 (recommended) or 1024, the "
                              "buckets Qwen-Image-Layered was trained at")
        if self.model.variant != "layered":
            return
        if len(self.images) != 1:
            raise ConfigError(f"model.variant=layered splits one image into layers; images has {len(self.images)}: "
                              "give exactly one, e.g. images='[photo.png]'")
        if self.height is not None or self.init_image:
            raise ConfigError("model.variant=layered takes its size from images[0] and layered_resolution: set "
                              "height=null width=null (and no init_image)")
        if self.batch_size != 1:
            raise ConfigError("model.variant=layered runs one image per forward (its sequence holds layers + 1 frames); "
                              "set batch_size=1")

    def _check_template_family(self) -> None:
        """A template written for the other family runs only when the run says so (template.family)."""
        family, template = self.model.variant.family, self.template
        if template.family in ("any", family):
            return
        own = "qwen21" if family == "qwen-image-2.1" else "qwen_t2i (qwen_edit / qwen_edit_plus for edit models)"
        raise ConfigError(
            f"template={template.name} was written for {template.family}, but model.variant={self.model.variant.value} "
            f"is {family}: use template={own}, a template of no family (raw, chat), or run it across families on "
            f"purpose with template.family={family}"
        )

    def _check_family(self) -> None:
        """What Qwen-Image-2.1 does not take (its sides: multiples of 32, one encoder slot per 2x2 tokens)."""
        self._check_template_family()
        if self.model.variant.family != "qwen-image-2.1":
            return
        variant = f"model.variant={self.model.variant.value}"
        if self.init_image:
            raise ConfigError(f"init_image is set with {variant}: image-to-image is built for the 20B family only; "
                              "give the image as a condition image (images=[...]) or use a 20B model")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and value % 32 and not self.snap_size:
                raise ConfigError(f"{key}={value} with {variant}: sides must be multiples of 32 (16x VAE x 2x2 encoder "
                                  f"slots); use {value // 32 * 32 or 32} or {(value // 32 + 1) * 32}, or snap_size=true")
        # the speed levers hook or rewrite the 20B family's block classes (attention processors, layer names,
        # compile markers, LoRA key maps, cache hooks): refused on 2.1 until each is built and measured there
        unbuilt = [(self.perf.fast_attention, "perf.fast_attention=true", "perf=eager"),
                   (self.perf.compile != "none", f"perf.compile={plain(self.perf.compile)}", "perf.compile=none"),
                   (self.precision.quantization != "none", f"precision.quantization={plain(self.precision.quantization)}",
                    "precision=bf16 or precision.transformer_storage=float8_e4m3fn"),
                   (self.accel.method != "none", f"accel={self.accel.name}", "accel=none"),
                   (bool(self.lora.items), "lora items", "lora=none")]
        for on, key, fix in unbuilt:
            if on:
                raise ConfigError(f"{key} with {variant}: built for the 20B family's transformer only (Qwen-Image-2.1 "
                                  f"has other block classes); use {fix}")
        if self.sampler.guidance == "cfg_norm":
            raise ConfigError(f"sampler.guidance=cfg_norm with {variant}: ComfyUI's CFGNorm rescales per latent pixel "
                              "of the 20B family's 2x2-packed tokens; use sampler.guidance=cfg (2.1's rule) or true_cfg")
        if len(self.images) > 10:
            raise ConfigError(f"{len(self.images)} images with {variant}: Qwen-Image-2.1 takes at most 10 condition images")

    def _check_prompts_and_seeds(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts is empty: give at least one prompt, e.g. prompts='[a cat]'")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip() and self.model.variant != "layered":  # Layered captions its image instead
                raise ConfigError(f"prompts[{i}] is empty: write what the image should show")
        for key, text in [(f"prompts[{i}]", p) for i, p in enumerate(self.prompts)] + [("negative_prompt", self.negative_prompt)]:
            if len(text) > limits.MAX_PROMPT_CHARS:
                raise ConfigError(f"{key} has {len(text)} characters, over the limit of {limits.MAX_PROMPT_CHARS}; "
                                  f"only the first max_sequence_length={self.max_sequence_length} tokens are used anyway")
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed, e.g. seeds='[0]'")
        lo, hi = limits.SEED_RANGE
        for i, seed in enumerate(self.seeds):
            if not lo <= seed <= hi:
                raise ConfigError(f"seeds[{i}]={seed} is outside the seed range {lo}..{hi} (2**64-1, what "
                                  "torch.Generator.manual_seed accepts)")

    def _check_strength_and_batches(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if self.strength < 1.0 and self.init_image is None:
            raise ConfigError(
                f"strength={self.strength} needs init_image (image-to-image); set init_image=PATH or strength=1"
            )
        if self.init_image is not None and int(self.sampler.steps * self.strength) < 1:
            raise ConfigError(
                f"strength={self.strength} x sampler.steps={self.sampler.steps} leaves no step to run; "
                "raise sampler.steps or strength"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size > limits.MAX_BATCH:
            raise ConfigError(f"batch_size={self.batch_size} is over the limit of {limits.MAX_BATCH} images per forward pass")
        count = len(self.prompts) * len(self.seeds)
        if count > limits.MAX_IMAGES:
            raise ConfigError(f"{len(self.prompts)} prompts x {len(self.seeds)} seeds = {count} images, over the limit "
                              f"of {limits.MAX_IMAGES} per run; split the run (or use a sweep)")

    def _check_size(self) -> None:
        """Sides positive multiples of 16 (or snapped down to one), within MAX_SIDE and MAX_PIXELS."""
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is None:
                continue
            if value < 16:  # never snapped: flooring cannot make a zero or negative side valid
                raise ConfigError(f"{key}={value} is not a positive multiple of 16 (8x VAE x 2x2 patches); use 16 or "
                                  "more (snap_size only floors sides >= 16)")
            if value % 16 and not self.snap_size:
                lo, hi = value // 16 * 16, (value // 16 + 1) * 16
                raise ConfigError(
                    f"{key}={value} is not a positive multiple of 16 (8x VAE x 2x2 patches); use {lo} or {hi}, "
                    "or snap_size=true to floor it (noted in the record)"
                )
            if value > limits.MAX_SIDE:
                raise ConfigError(f"{key}={value} is over the limit of {limits.MAX_SIDE} pixels per side")
        if (self.height is None) != (self.width is None):
            raise ConfigError("height and width must both be set or both be null")
        if self.height is None and not self.images:
            raise ConfigError("height/width are null but no reference images are given to take the size from")
        if self.height is not None and self.height * self.width > limits.MAX_PIXELS:
            raise ConfigError(f"height x width = {self.height}x{self.width} = {self.height * self.width} pixels, over "
                              f"the limit of {limits.MAX_PIXELS} (4096x4096) pixels per image")


def schema_paths() -> dict[type, str]:
    """{dataclass: its key in the config}, e.g. SamplerConfig -> 'sampler', LoraItem -> 'lora.items[]'."""
    paths: dict[type, str] = {Config: ""}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            args = typing.get_args(hint)
            inner = args[0] if typing.get_origin(hint) is list and args else hint
            if dataclasses.is_dataclass(inner) and inner not in paths:
                paths[inner] = f"{prefix}{name}" + ("[]" if inner is not hint else "")
                walk(inner, paths[inner] + ".")

    walk(Config, "")
    return paths
