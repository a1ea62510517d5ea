"""Stage 1b: reference images for edit, sized by a policy (``reference.policy``): the copy the VLM
sees (fed to encode) and the VAE-encoded reference latents (fed to denoise).

diffusers sizes both copies to an area with the aspect kept; ComfyUI's TextEncodeQwenImageEdit[Plus]
nodes round differently and crop the VAE copy (``reference_sizes`` has the exact arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from workbench.stages.latents import QWEN21, normalise, pack, resize, to_vae_input
from workbench.values import plain
from workbench.vision import on_white


@dataclass
class References:
    """Edit reference images, prepared once per run: what the VLM sees and what the VAE encoded."""

    vlm_images: list[Image.Image]
    latents: torch.Tensor  # (1, sum of ref tokens, 64) packed, normalised
    shapes: list[tuple[int, int, int]]  # (1, h/16, w/16) per reference, for RoPE
    vae_sizes: list[tuple[int, int]]  # (w, h) each reference was encoded at


def area_size(width: int, height: int, area: int, multiple_of: int) -> tuple[int, int]:
    """(w, h) with the aspect of the input, ~``area`` pixels, sides rounded to ``multiple_of``."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(multiple_of, round(w / multiple_of) * multiple_of), max(multiple_of, round(h / multiple_of) * multiple_of)


def comfy_area_size(width: int, height: int, area: int, multiple_of: int = 1) -> tuple[int, int]:
    """ComfyUI's TextEncodeQwenImageEdit[Plus] sizing: scale = sqrt(area / (w * h)), each side
    ``round(side * scale / multiple_of) * multiple_of`` with Python's round (halves to even).
    ``multiple_of=1`` is the nodes' plain rounding (VLM copies, Edit's VAE copy), 8 Edit-Plus's VAE copy."""
    scale = math.sqrt(area / (width * height))
    w = round(width * scale / multiple_of) * multiple_of if multiple_of > 1 else round(width * scale)
    h = round(height * scale / multiple_of) * multiple_of if multiple_of > 1 else round(height * scale)
    return max(multiple_of, w), max(multiple_of, h)


def centre_crop_box(width: int, height: int, multiple_of: int = 8) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ComfyUI's VAE-encode crop: each side floored to ``multiple_of``,
    the cut split with the extra pixel at the end (offset = (side % multiple_of) // 2)."""
    w, h = width // multiple_of * multiple_of, height // multiple_of * multiple_of
    left, top = (width % multiple_of) // 2, (height % multiple_of) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class ReferenceSizes:
    """Where one reference image goes: the VLM copy, and the VAE copy (resized, then cropped)."""

    vlm: tuple[int, int]  # (w, h) handed to the vision preprocessing (which then snaps to 28)
    vae_resize: tuple[int, int]  # (w, h) the image is resized to for the VAE
    vae_crop: tuple[int, int, int, int]  # box cut from that, (left, top, right, bottom)
    resize_filter: str  # "lanczos" (diffusers' VaeImageProcessor) | "area" (ComfyUI common_upscale)

    @property
    def vae(self) -> tuple[int, int]:
        left, top, right, bottom = self.vae_crop
        return right - left, bottom - top


def reference_sizes(width: int, height: int, reference) -> ReferenceSizes:
    """The sizes a ``ReferenceConfig`` gives an input of ``width`` x ``height``.

    diffusers: both copies ``area_size`` (aspect kept, sides rounded to ``multiple_of`` = 32), no crop.
    comfy: the VLM copy ``comfy_area_size(vlm_area)`` with plain rounding; the VAE copy either
    rounded to ``multiple_of`` (``vae_fit=round``, Edit-Plus node) or plainly rounded and then
    centre-cropped to ``multiple_of`` (``vae_fit=crop``, Edit node + the VAE's encode crop).
    """
    policy, fit = plain(reference.policy), plain(reference.vae_fit)
    m = reference.multiple_of
    if policy == "diffusers":
        vw, vh = area_size(width, height, reference.vlm_area, m)
        w, h = area_size(width, height, reference.vae_area, m)
        return ReferenceSizes((vw, vh), (w, h), (0, 0, w, h), "lanczos")
    if policy != "comfy":
        raise ValueError(f"reference.policy={policy!r}: expected diffusers or comfy")
    vlm = comfy_area_size(width, height, reference.vlm_area)
    if fit == "round":
        w, h = comfy_area_size(width, height, reference.vae_area, m)
        return ReferenceSizes(vlm, (w, h), (0, 0, w, h), "area")
    w, h = comfy_area_size(width, height, reference.vae_area)
    return ReferenceSizes(vlm, (w, h), centre_crop_box(w, h, m), "area")


def pad_to_even(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> sides padded to even, circularly at the bottom / right, as ComfyUI's Qwen model
    pads odd reference latents (multiple-of-8 images) before 2x2 patching."""
    h, w = latents.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return latents
    return torch.nn.functional.pad(latents, (0, w % 2, 0, h % 2), mode="circular")


@torch.no_grad()
def encode_reference_sized(vae, image: Image.Image, sizes: ReferenceSizes) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A reference image sized by a policy -> (packed latents (1, tokens, 64), RoPE shape (1, h/2, w/2)).

    The latent is the distribution's mode (diffusers' "argmax"). Sides that are multiples of 8 but
    not 16 give odd latents; they are padded circularly to even (ComfyUI's behaviour), so the RoPE
    shape rounds up.
    """
    img = resize(image, *sizes.vae_resize, sizes.resize_filter).crop(sizes.vae_crop)
    latents = normalise(vae.encode(to_vae_input(img, vae)).latent_dist.mode(), vae)[:, :, 0]  # (1, 16, h, w)
    latents = pad_to_even(latents)
    return pack(latents), (1, latents.shape[-2] // 2, latents.shape[-1] // 2)


def prepare_references(vae, images: list[Image.Image], reference) -> References:
    """Size each reference by ``reference`` (a ``ReferenceConfig``) for the VLM and the VAE, and encode
    the VAE copies."""
    vlm, latents, shapes, sizes = [], [], [], []
    for img in images:
        plan = reference_sizes(img.width, img.height, reference)
        vlm.append(resize(img, *plan.vlm, plan.resize_filter))
        packed, shape = encode_reference_sized(vae, img, plan)
        latents.append(packed)
        shapes.append(shape)
        sizes.append(plan.vae)
    return References(vlm, torch.cat(latents, dim=1), shapes, sizes)


@torch.no_grad()
def prepare_references_qwen21(vae, images: list[Image.Image], area: int, multiple_of: int = 32) -> References:
    """Qwen-Image-2.1's condition images (diffusers' ``QwenImage21Pipeline``): each resized once, aspect
    kept, to ~``area`` pixels (``output_resolution``^2) with sides multiples of 32 (Lanczos, in RGBA); that
    copy feeds both the encoder (alpha over white) and the RGBA VAE (latent mode, normalised, unpatched)."""
    vlm, latents, shapes, sizes = [], [], [], []
    for img in images:
        w, h = area_size(img.width, img.height, area, multiple_of)
        sized = img.convert("RGBA").resize((w, h), resample=Image.Resampling.LANCZOS)
        vlm.append(on_white(sized))
        z = normalise(vae.encode(to_vae_input(sized, vae)).latent_dist.mode(), vae)[:, :, 0]  # (1, 64, h/16, w/16)
        latents.append(pack(z, QWEN21.patch))
        shapes.append((1, z.shape[-2], z.shape[-1]))
        sizes.append((w, h))
    return References(vlm, torch.cat(latents, dim=1), shapes, sizes)
