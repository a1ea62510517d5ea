"""The workbench: resident components plus one method per stage, and ``generate`` that chains them.

Build once (``Workbench.from_config``), then call ``encode`` / ``prepare_latents`` / ``denoise`` /
``decode`` alone or ``generate`` for whole configs, as often as you like: models stay resident.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator, Optional

import torch
from PIL import Image

from workbench import vision
from workbench.compiling import CompileCounts, is_compiled
from workbench.conditioning import Conditioning
from workbench.conditioning_cache import DEFAULT_CACHE, ConditioningCache
from workbench.config import AccelConfig, Config, LoraItem, ReferenceConfig, SamplerConfig, TemplateConfig
from workbench.config.unused import unused_notes
from workbench.accel import apply_accel
from workbench.lora import apply_loras
from workbench.models import arch21
from workbench.models.build import components_for
from workbench.perf import set_run_perf
from workbench.models.components import Components
from workbench.resolutions import snap
from workbench.stages import arguments as check
from workbench.stages import caption as caption_stage
from workbench.stages import decode as decode_stage
from workbench.stages import denoise as denoise_stage
from workbench.stages import encode as encode_stage
from workbench.stages import latents as latents_stage
from workbench.stages import layers as layers_stage
from workbench.stages.reference import References, prepare_references, prepare_references_qwen21
from workbench.stages.schedule import Schedule
from workbench.values import plain

__all__ = ["Workbench", "GeneratedImage", "References", "load_image", "timed"]


@dataclass
class GeneratedImage:
    image: Image.Image
    prompt: str
    seed: int
    latents: torch.Tensor  # (1, tokens, 64) final packed latents (CPU)
    timings: dict[str, float] = field(default_factory=dict)  # seconds, shared per forward batch
    notes: list[str] = field(default_factory=list)  # what the run changed on its own (e.g. size snapping)
    layers: list[Image.Image] = field(default_factory=list)  # Layered: the RGBA layers (``image``: the whole, frame 0)
    caption: Optional[str] = None  # Layered with an empty prompt: the encoder's caption it was generated from


def load_image(path: str, key: str = "images", mode: str = "RGB") -> Image.Image:
    """Open a reference / init image as RGB (``mode="RGBA"``: with its transparency, for Layered's RGBA VAE);
    ``asset:NAME`` refers to the images shipped in workbench/assets. A missing, non-image, truncated or
    decompression-bomb file is a one-line ``ConfigError`` naming the file and the config ``key`` (checked at
    config time too)."""
    from workbench.config.limits import open_image
    from workbench.config import ConfigError

    return open_image(path, key, decode=True, error=ConfigError, mode=mode)


@dataclass
class _Run:
    """What ``generate`` prepares once and shares between its forward batches."""

    height: int
    width: int
    refs: Optional[References]
    init_latents: object  # the init image's VAE latent distribution (image-to-image), else None
    cond: Conditioning  # every prompt
    uncond: Optional[Conditioning]  # the negative prompt, once (guided runs)
    notes: list[str]  # size snapping, a cut negative prompt: said for every image
    cut: dict[int, str]  # prompt index -> its truncation note
    captions: dict[int, str] = field(default_factory=dict)  # Layered: empty prompt index -> the encoder's caption


class Workbench:
    def __init__(self, components: Components, conditioning_cache: Optional[ConditioningCache] = None):
        self.components = components
        # process-wide by default: workbenches on the same encoder share conditionings (see conditioning_cache.py)
        self.conditioning_cache = DEFAULT_CACHE if conditioning_cache is None else conditioning_cache
        self.last_compile: Optional[dict] = None  # what the last ``generate`` compiled (compiled transformers)

    @classmethod
    def from_config(cls, cfg: Config, conditioning_cache: Optional[ConditioningCache] = None) -> "Workbench":
        """The config's models, built once per process and shared (``models.build.components_for``).
        ``cfg``: a ``Config`` (``to_run_config(compose([...]))``), or what ``compose`` returns (validated here)."""
        return cls(components_for(_run_config(cfg)), conditioning_cache)

    def clear_conditioning_cache(self) -> int:
        """Forget cached conditionings (of every workbench sharing this cache); returns how many."""
        return self.conditioning_cache.clear()

    def set_loras(self, items, fuse: bool = False, roots=None):
        """Make exactly ``items`` (``LoraItem``s) the LoRAs of the transformer, through hooks (or fused):
        never rebuilds or reloads it. Components are shared, so this also holds for other workbenches
        on the same cached transformer; ``generate`` re-applies its config's LoRAs for that reason.
        ``roots``: where LoRA names are looked up (model.roots; else $WORKBENCH_MODELS, else ./models)."""
        items = check.lora_items(items, LoraItem)  # a path is one LoRA at strength 1; a dict holds LoraItem's keys
        return apply_loras(self.components.transformer, items, fuse=fuse, roots=roots or None)

    def set_accel(self, accel) -> None:
        """Make ``accel`` (``AccelConfig``) the cache hooks of the shared transformer; never rebuilds it.
        ``generate`` re-applies its config's accel on every run, as it does for LoRAs."""
        check.instance(accel, AccelConfig, "accel", "pass cfg.accel, or AccelConfig(method=...) from workbench.config")
        apply_accel(self.components.transformer, accel)

    @property
    def device(self) -> torch.device:
        return self.components.device

    # ----------------------------------------------------------------- stages
    def encode(
        self,
        prompts: list[str],
        template: TemplateConfig,
        images: list[Image.Image] = (),
        max_sequence_length: int = 1024,
        resample: str = "bicubic",
        tap: str = "post_norm",
    ) -> Conditioning:
        """Prompts (+ the VLM copies of reference images, shared by every prompt) -> ``Conditioning``.

        ``template`` is any ``TemplateConfig``: from the config, ``load_template(path)`` or built in a
        cell. Served from ``self.conditioning_cache`` when the same encoder has already encoded the
        same inputs; ``resample`` is the VLM resize filter (``reference.vlm_resample``).
        """
        prompts = check.prompt_list(prompts)
        check.instance(template, TemplateConfig, "template",
                       "pass cfg.template, workbench.config.build.load_template(path) or a TemplateConfig(...)")
        check.pil_images(images)
        resample = plain(resample)
        check.encode_options(max_sequence_length, resample, tap)
        c = self.components
        style = encode_stage.QWEN3_STYLE if c.is_qwen21 else encode_stage.QWEN25_STYLE
        preprocessing = {"resample": resample, "min_pixels": vision.MIN_PIXELS, "max_pixels": vision.MAX_PIXELS,
                         "tap": tap, "style": repr(style)}
        key = self.conditioning_cache.key(c, template, prompts, images, max_sequence_length, preprocessing)
        return self.conditioning_cache.get_or_encode(
            key,
            lambda: encode_stage.encode_prompts(
                c.tokenizer, c.text_encoder, template, list(prompts), list(images), max_sequence_length, resample, tap,
                style, c.encoder_device,
            ).to(self.device),  # an encoder on the CPU hands its conditioning to the device here
        )

    def prepare_references(self, images: list[Image.Image], reference: ReferenceConfig) -> References:
        """Size each reference by ``reference.policy`` (diffusers / comfy) for the VLM and the VAE; 2.1:
        one copy at ``reference.vae_area`` (its ``output_resolution``^2) for both."""
        check.pil_images(images)
        if self.components.is_qwen21:
            return prepare_references_qwen21(self.components.vae, images, reference.vae_area)
        return prepare_references(self.components.vae, images, reference)

    def prepare_layered_input(self, image: Image.Image, resolution: int = 640) -> References:
        """Qwen-Image-Layered: the image to split, sized to the ``resolution`` bucket, as its RGBA VAE latent."""
        return layers_stage.prepare_input(self.components.vae, image, resolution)

    @property
    def layout(self) -> latents_stage.Layout:
        """How this family's latents become tokens (``stages/latents.py``)."""
        return latents_stage.QWEN21 if self.components.is_qwen21 else latents_stage.QWEN_IMAGE

    @property
    def size_multiple(self) -> int:
        """Output sides are multiples of this many pixels: 16 (8x VAE x 2x2 patches), 32 for 2.1."""
        return arch21.SIZE_MULTIPLE if self.components.is_qwen21 else 16

    def tokens_per_image(self, height: int, width: int) -> int:
        """Latent tokens of one height x width image (a Layered latent holds one such run per frame)."""
        side = self.components.vae_scale_factor * self.layout.patch  # pixels per token side
        return (height // side) * (width // side)

    def _check_latents(self, latents, height: int, width: int, frames: int = 1) -> int:
        """Packed latents for ``frames`` images of height x width; returns the batch size."""
        check.pixel_size(height, width, self.size_multiple)
        return check.token_latents(latents, frames * self.tokens_per_image(height, width),
                                   self.layout.channels * self.layout.patch ** 2, height, width)

    def prepare_latents(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """Seeded noise, packed into tokens: (len(seeds), tokens, channels), one CPU generator per seed."""
        seeds = check.seed_list(seeds)
        check.pixel_size(height, width, self.size_multiple)
        f = self.components.vae_scale_factor
        return latents_stage.noise(seeds, height // f, width // f, self.device, self.components.transformer.dtype,
                                   self.layout)

    def encode_init(self, image: Image.Image, height: int, width: int):
        """The image-to-image start image at the output size -> its VAE latent distribution."""
        check.instance(image, Image.Image, "image", "open it with workbench.pipeline.load_image(path)")
        check.pixel_size(height, width, self.size_multiple)
        f = self.components.vae_scale_factor
        return latents_stage.encode_init(self.components.vae, image, height // f, width // f)

    def prepare_img2img_latents(
        self, seeds: list[int], init, sampler: SamplerConfig, strength: float
    ) -> tuple[torch.Tensor, Schedule]:
        """Start latents for image-to-image from ``encode_init``'s result, and the ``Schedule`` they
        were noised for (pass it to ``denoise``: it starts at ``schedule.start_step``)."""
        check.img2img(init, sampler, strength)
        tokens = init.mean.shape[-2] * init.mean.shape[-1] // 4  # 2x2 patches
        schedule = Schedule.img2img(sampler, tokens, strength, self.device)
        latents = latents_stage.img2img_noise(
            self.components.vae, init, seeds, schedule.start_sigma, self.device, self.components.transformer.dtype
        )
        return latents, schedule

    def denoise(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        sampler: SamplerConfig,
        height: int,
        width: int,
        uncond: Optional[Conditioning] = None,
        references: Optional[References] = None,
        callback: Optional[Callable] = None,
        progress: bool = True,
        start_step: int = 0,
        schedule: Optional[Schedule] = None,
        prefix_kv_cache: bool = True,
        frames: int = 1,
    ) -> torch.Tensor:
        """``schedule``: the one ``prepare_img2img_latents`` returned (else a fresh one from ``start_step``).
        ``prefix_kv_cache``: Qwen-Image-2.1 only (``perf.prefix_kv_cache``). ``frames``: Layered's layers + 1."""
        check.instance(sampler, SamplerConfig, "sampler", "pass cfg.sampler (a SamplerConfig)")
        check.denoise_options(frames, callback, start_step if schedule is None else schedule.start_step, sampler.steps)
        batch = self._check_latents(latents, height, width, frames)
        check.batch_of(cond, batch, "cond", Conditioning)
        if uncond is not None:
            check.batch_of(uncond, batch, "uncond", Conditioning)
        shapes = [(1, height // 16, width // 16)] * frames + (references.shapes if references else [])
        ref = references.latents.to(latents.dtype) if references else None
        return denoise_stage.denoise(
            self.components.transformer, latents, cond, sampler, shapes, uncond, ref, callback, progress, start_step,
            schedule, prefix_kv_cache,
        )

    def decode_first(self, latents: torch.Tensor, height: int, width: int) -> Image.Image:
        """The batch's first image (Layered: its first frame, the whole image), decoded: step previews."""
        return self.decode(latents[:1, : self.tokens_per_image(height, width)], height, width)[0]

    def decode(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        """Latents -> PIL images (RGBA for 2.1's RGBA VAE)."""
        self._check_latents(latents, height, width)
        f = self.components.vae_scale_factor
        images = decode_stage.decode(self.components.vae, latents, height // f, width // f, self.layout.patch)
        return decode_stage.to_pil(images)

    # ----------------------------------------------------------------- whole runs
    def generate(self, cfg: Config, callback: Optional[Callable] = None, progress: bool = True,
                 only: Optional[Collection[int]] = None) -> list[GeneratedImage]:
        """Every (prompt, seed) pair of ``cfg``, ``cfg.batch_size`` images per forward pass.

        ``only``: indices into the prompt-major (prompt, seed) list; just the forward batches holding
        them run (``workbench reproduce IMAGE``). Prompts are still encoded together and batches cut
        as in the full run, since both change the bits (padding, batch size).
        """
        cfg = _run_config(cfg)
        timings: dict[str, float] = {}
        before = CompileCounts.now() if is_compiled(self.components.transformer) else None
        self.set_loras(cfg.lora.items, fuse=cfg.lora.fuse, roots=cfg.model.roots)  # a no-op when unchanged
        self.set_accel(cfg.accel)  # a no-op when unchanged
        set_run_perf(self.components, cfg.perf)  # the switches a run sets on the resident models
        jobs = [(p, s) for p in range(len(cfg.prompts)) for s in cfg.seeds]
        check.job_indices(only, len(cfg.prompts), len(cfg.seeds))
        run = self._prepare_run(cfg, timings)
        results: list[GeneratedImage] = []
        for start in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[start : start + cfg.batch_size]
            if only is not None and not any(start <= j < start + len(chunk) for j in only):
                continue
            t: dict[str, float] = dict(timings)
            latents = self._run_batch(cfg, run, chunk, t, callback, progress)
            with self._timed(t, "decode"):
                pil, layers = self._decode_run(cfg, latents, run)
            for k, ((p, s), img) in enumerate(zip(chunk, pil)):
                image_notes = run.notes + ([run.cut[p]] if p in run.cut else [])
                if p in run.captions:
                    image_notes = image_notes + [f"prompts[{p}] is empty: generated from the encoder's caption of the "
                                                 f"image (layered_caption={cfg.layered_caption}, as diffusers)"]
                results.append(GeneratedImage(img, cfg.prompts[p], s, latents[k : k + 1].float().cpu(), t, image_notes,
                                              layers[k] if layers else [], run.captions.get(p)))
        self.last_compile = None if before is None else (CompileCounts.now() - before).as_record()
        return results

    def _decode_run(self, cfg: Config, latents: torch.Tensor, run: "_Run"):
        """(images, layers per image): Layered decodes every frame (frame 0 the whole, then the layers)."""
        if cfg.model.variant != "layered":
            return self.decode(latents, run.height, run.width), None
        f = self.components.vae_scale_factor
        frames = layers_stage.decode_frames(self.components.vae, latents, run.height // f, run.width // f, cfg.layers + 1)
        pil = [decode_stage.to_pil(item) for item in frames]
        return [p[0] for p in pil], [p[1:] for p in pil]

    def _prepare_run(self, cfg: Config, timings: dict[str, float]) -> "_Run":
        """What every forward batch of ``cfg`` shares: references, output size, init latents, conditionings."""
        with self._timed(timings, "references"):
            layered = cfg.model.variant == "layered"  # its RGBA VAE encodes the input's alpha too, as diffusers'
            images = [load_image(p, f"images[{i}]", "RGBA" if layered else "RGB") for i, p in enumerate(cfg.images)]
            if layered:  # the image to split: the VAE's alone (and the captioner's, for an empty prompt)
                sized = layers_stage.sized_input(images[0], cfg.layered_resolution)
                refs = layers_stage.encode_input(self.components.vae, sized)
            else:
                refs = self.prepare_references(images, cfg.reference) if images else None
            init = load_image(cfg.init_image, "init_image") if cfg.init_image else None
        height, width = cfg.height, cfg.width
        if height is None:  # edit: the size of the last reference, like diffusers
            width, height = refs.vae_sizes[-1]
        width, height, size_note = snap(width, height, self.size_multiple)
        if cfg.height is None:  # sized by the reference: estimate the memory now that the size is known
            from workbench.config.preflight import check_run_memory

            check_run_memory(cfg, height, width, str(self.device))
        notes = ([size_note] if size_note else []) + unused_notes(cfg)  # a shift the schedule ignores...
        captions: dict[int, str] = {}
        if layered and any(not p.strip() for p in cfg.prompts):  # an empty prompt is the image's caption (diffusers)
            with self._timed(timings, "caption"):
                captions = caption_stage.caption_empty_prompts(cfg.prompts, self.components.tokenizer,
                                                               self.components.text_encoder, sized, cfg.layered_caption)
        prompts = [captions.get(i, p) for i, p in enumerate(cfg.prompts)]
        vlm_images = refs.vlm_images if refs else []
        with self._timed(timings, "references"):  # the init image is encoded once, for every chunk
            init_latents = self.encode_init(init, height, width) if init is not None else None

        with self._timed(timings, "encode"):
            resample = cfg.reference.vlm_resample
            cond = self.encode(prompts, cfg.template, vlm_images, cfg.max_sequence_length, resample, cfg.encoder_tap)
            uncond = (
                self.encode([cfg.negative_prompt], cfg.template, vlm_images, cfg.max_sequence_length, resample,
                            cfg.encoder_tap)
                if cfg.sampler.cfg > 1
                else None
            )
        if self.components.is_qwen21:  # 2.1 never cuts a prompt (encode refuses one over the limit)
            return _Run(height, width, refs, init_latents, cond, uncond, notes, {}, captions)
        # prompts cut at max_sequence_length: said in each image's notes (the run prints them)
        tokenizer = self.components.tokenizer
        cut = encode_stage.truncation_notes(tokenizer, cfg.template, cond, cfg.max_sequence_length)
        if uncond is not None:
            cut_negative = encode_stage.truncation_notes(
                tokenizer, cfg.template, uncond, cfg.max_sequence_length, label="negative_prompt")
            notes = notes + list(cut_negative.values())
        return _Run(height, width, refs, init_latents, cond, uncond, notes, cut, captions)

    def _run_batch(self, cfg: Config, run: "_Run", chunk: list[tuple[int, int]], t: dict[str, float],
                   callback: Optional[Callable], progress: bool) -> torch.Tensor:
        """Noise (or the noised init image) -> denoised latents for one forward batch of (prompt, seed)."""
        cond = run.cond.select([p for p, _ in chunk])
        uncond = run.uncond.select([0] * len(chunk)) if run.uncond is not None else None
        seeds = [s for _, s in chunk]
        frames = cfg.layers + 1 if cfg.model.variant == "layered" else 1
        with self._timed(t, "latents"):
            if frames > 1:  # Layered: layers + 1 frames of noise, its own shift
                f = self.components.vae_scale_factor
                latents = layers_stage.noise(seeds, run.height // f, run.width // f, frames, self.device,
                                             self.components.transformer.dtype)
                mu = layers_stage.shift_mu(run.refs.latents.shape[1])
                schedule = Schedule(cfg.sampler, latents.shape[1], self.device, mu=mu)
            elif run.init_latents is None:
                latents, schedule = self.prepare_latents(seeds, run.height, run.width), None
            else:
                latents, schedule = self.prepare_img2img_latents(seeds, run.init_latents, cfg.sampler, cfg.strength)
        with self._timed(t, "denoise"):
            return self.denoise(latents, cond, cfg.sampler, run.height, run.width, uncond, run.refs, callback,
                                progress, schedule=schedule, prefix_kv_cache=cfg.perf.prefix_kv_cache, frames=frames)

    def _timed(self, timings: dict[str, float], name: str):
        return timed(timings, name, self.device)


def _run_config(cfg) -> Config:
    """A ``Config``; a composed DictConfig is validated into one (``to_run_config``)."""
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        from workbench.config import to_run_config

        return to_run_config(cfg)
    check.instance(cfg, Config, "cfg", "build one with to_run_config(compose([...overrides]))")
    return cfg


@contextmanager
def timed(timings: dict[str, float], name: str, device: Optional[torch.device] = None) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]``, synchronising a CUDA device around it."""
    sync = device is not None and device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if sync:
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
