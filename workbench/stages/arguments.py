"""Checks of what a notebook hands the stage methods (``Workbench.encode`` / ``prepare_latents`` / ``denoise``
/ ``decode``...), before any model runs.

A config is validated when it is composed; a stage method is called with objects built in a cell, where
a prompt string instead of a list was encoded letter by letter, a height off the latent grid drew noise
for another size, and latents of the wrong size failed deep in torch (``shape '[1, 8, 8, 16, 2, 2]' is
invalid``). Each check here raises ``StageInputError`` naming the argument, what it got and what to pass.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from workbench.errors import InputError
from workbench.values import string_list


class StageInputError(InputError, TypeError):
    """A stage method got an argument it cannot use; the message names it, what it got and the fix."""


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)) and not value:
        return f"an empty {type(value).__name__}"
    return f"{type(value).__name__} {value!r:.60}" if isinstance(value, (str, int, float)) else type(value).__name__


def prompt_list(prompts: Any, name: str = "prompts") -> list[str]:
    """A list of prompt strings; one string is one prompt (as diffusers' ``prompt: str | list[str]``)."""
    prompts = string_list(prompts, name, StageInputError, "['a red fox']")
    if not prompts:
        raise StageInputError(f"{name} is empty: give at least one prompt, e.g. ['a red fox']")
    return prompts


def _integer(value: Any) -> bool:
    """An integer, numpy's included (``np.arange`` seeds, a size from an array's shape); not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def seed_list(seeds: Any) -> list[int]:
    """A non-empty list of seeds in torch.Generator's range; one int is one seed."""
    if _integer(seeds):
        seeds = [seeds]
    if isinstance(seeds, np.ndarray):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise StageInputError(f"seeds must be a non-empty list of integers, got {_kind(seeds)}; e.g. [0, 1, 2]")
    for i, seed in enumerate(seeds):
        if not _integer(seed) or not 0 <= seed < 2**64:
            raise StageInputError(f"seeds[{i}] = {seed!r} is not an integer in 0..2**64-1 (what torch.Generator accepts)")
    return [int(seed) for seed in seeds]


def instance(value: Any, cls: type, name: str, how: str) -> None:
    """``value`` is a ``cls``; else the error says how to get one (``how``)."""
    if not isinstance(value, cls):
        what = "PIL image" if cls.__module__.startswith("PIL") else cls.__name__
        article = "an" if what[0] in "AEIOU" else "a"
        raise StageInputError(f"{name} must be {article} {what}, got {_kind(value)}; {how}")


def pixel_size(height: Any, width: Any, multiple: int) -> None:
    """Output sides: positive integers on the model's latent grid (16 px for the 20B family, 32 for 2.1)."""
    for key, value in (("height", height), ("width", width)):
        if not _integer(value) or value < multiple or value % multiple:
            near = "" if not _integer(value) or value < multiple else \
                f"; use {value // multiple * multiple} or {(value // multiple + 1) * multiple}"
            raise StageInputError(f"{key}={value!r} is not a positive multiple of {multiple} pixels (the latent grid "
                                  f"of this model){near}")


def token_latents(latents: Any, tokens: int, channels: int, height: int, width: int, name: str = "latents") -> int:
    """Packed latents (batch, tokens, channels) for a ``height`` x ``width`` image; returns the batch size."""
    instance(latents, torch.Tensor, name, "pass what prepare_latents / denoise returned")
    if not latents.is_floating_point():
        raise StageInputError(f"{name} must be floating point, got {latents.dtype}")
    want = f"(batch, {tokens}, {channels}) for {height}x{width}"
    if latents.dim() != 3 or latents.shape[1:] != (tokens, channels) or latents.shape[0] < 1:
        raise StageInputError(f"{name} has shape {tuple(latents.shape)}; expected {want} (packed tokens, as "
                              "prepare_latents returns them): pass the height and width they were made for")
    return int(latents.shape[0])


def batch_of(cond: Any, batch: int, name: str, conditioning_cls: type) -> None:
    """A ``Conditioning`` with one item per latent (``cond.select(indices)`` picks a sub-batch)."""
    instance(cond, conditioning_cls, name, "pass what Workbench.encode returned")
    if len(cond) != batch:
        raise StageInputError(f"{name} holds {len(cond)} prompt(s) but the latents are a batch of {batch}; give one "
                              f"conditioning per latent: {name}.select([...]) picks them (e.g. [0] * {batch})")


def lora_items(items: Any, item_cls: type) -> list:
    """``LoraItem``s; a path (or a name under loras/) is one LoRA at strength 1, a dict holds LoraItem's keys."""
    if isinstance(items, (str, item_cls, dict)):
        items = [items]
    if not isinstance(items, Sequence):
        raise StageInputError(f"LoRAs must be a list of LoraItem, got {_kind(items)}; e.g. [LoraItem('my.safetensors', 0.8)]")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = item_cls(file=item)
        elif isinstance(item, dict):
            try:
                item = item_cls(**item)
            except TypeError as err:
                raise StageInputError(f"LoRA [{i}] {item!r:.80}: {err}; its keys are file, strength, alpha") from None
        instance(item, item_cls, f"LoRA [{i}]", "pass a LoraItem, a path or {'file': ..., 'strength': ...}")
        out.append(item)
    return out


def encode_options(max_sequence_length: Any, resample: Any, tap: Any) -> None:
    """``Workbench.encode``'s keyword arguments, by the config's own rules (0 gave an empty conditioning and -1 cut
    the last token without a word)."""
    from workbench.config.reference import Resample
    from workbench.config.run import ENCODER_TAP, ENCODER_TAP_EXPECTED, MAX_SEQUENCE_LENGTH

    if not _integer(max_sequence_length) or not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
        raise StageInputError(f"max_sequence_length={max_sequence_length!r} must be an integer in "
                              f"1..{MAX_SEQUENCE_LENGTH} (cfg.max_sequence_length)")
    if resample not in [r.value for r in Resample]:
        raise StageInputError(f"resample={resample!r}: expected bicubic (transformers' processor) or bilinear "
                              "(ComfyUI's), as reference.vlm_resample")
    if not isinstance(tap, str) or not ENCODER_TAP.fullmatch(tap):
        raise StageInputError(f"tap={tap!r}: expected {ENCODER_TAP_EXPECTED}; cfg.encoder_tap is resolved for the family")


def denoise_options(frames: Any, callback: Any, start_step: Any, steps: int) -> None:
    """``Workbench.denoise``'s keyword arguments: start_step == steps returned the noise untouched, -1 ran the
    last step alone, and a callback that cannot be called failed after the first step."""
    if not _integer(frames) or frames < 1:
        raise StageInputError(f"frames={frames!r} must be an integer >= 1 (1 image; Layered: its layers + 1)")
    if callback is not None and not callable(callback):
        raise StageInputError(f"callback={callback!r:.60} is not callable; pass a function of one StepInfo (or None)")
    if not _integer(start_step) or not 0 <= start_step < steps:
        raise StageInputError(f"start_step={start_step!r} must be in 0..{steps - 1} (sampler.steps={steps}); "
                              "image-to-image: pass the schedule prepare_img2img_latents returned")


def pil_images(images: Any, name: str = "images") -> None:
    """Reference images as PIL images (a path is opened by ``workbench.pipeline.load_image``)."""
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise StageInputError(f"{name} must be a list of PIL images, got {_kind(images)}; open each with "
                              "workbench.pipeline.load_image(path)")
    for i, image in enumerate(images):
        instance(image, Image.Image, f"{name}[{i}]", "open it with workbench.pipeline.load_image(path)")


def img2img(init: Any, sampler: Any, strength: Any) -> None:
    """``prepare_img2img_latents``' inputs, by the config's rules: strength 0 started at the end of the schedule
    (the init image back, untouched) and 2 was read as 1."""
    if not hasattr(init, "mean") or not hasattr(init, "sample"):
        raise StageInputError(f"init must be what Workbench.encode_init returned (the VAE's latent distribution), "
                              f"got {_kind(init)}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise StageInputError(f"strength={strength!r} must be in (0, 1] (1 = the whole schedule)")
    steps = getattr(sampler, "steps", None)
    if _integer(steps) and int(steps * strength) < 1:
        raise StageInputError(f"strength={strength} of sampler.steps={steps} runs no step (int(steps * strength) = 0); "
                              f"raise strength to >= {1 / steps:g} or the steps")


def job_indices(only: Any, prompts: int, seeds: int) -> None:
    """``generate(only=...)``: indices of the prompt-major (prompt, seed) list (one out of range returned nothing)."""
    jobs = prompts * seeds
    if only is not None and (isinstance(only, (str, bytes)) or not isinstance(only, Sequence) or not only
                             or not all(_integer(j) and 0 <= j < jobs for j in only)):
        raise StageInputError(f"only={only!r:.80}: give indices of the prompt-major (prompt, seed) list, "
                              f"0..{jobs - 1} here ({prompts} prompt(s) x {seeds} seed(s))")
