"""Stage 2: seeded noise, 2x2 packing, and VAE-encoded reference latents for edit.

Noise is drawn on the CPU from one ``torch.Generator`` per image and then moved, so a seed gives
the same latents on every device and whatever the batch composition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

LATENT_CHANNELS = 16


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): 2x2 patches as tokens (diffusers' ``_pack_latents``)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """(B, H/2 * W/2, C*4) -> (B, C, H, W); the inverse of ``pack``."""
    b, _, d = tokens.shape
    x = tokens.view(b, latent_height // 2, latent_width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, latent_height, latent_width)


def noise(seeds: list[int], latent_height: int, latent_width: int, device, dtype) -> torch.Tensor:
    """Packed initial noise (B, tokens, 64), one CPU generator per seed."""
    rows = []
    for seed in seeds:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        # (1, 1, C, H, W) drawn directly in the target dtype, on the CPU: exactly diffusers'
        # randn_tensor (some torch versions draw bf16 differently from float32-then-cast)
        shape = (1, 1, LATENT_CHANNELS, latent_height, latent_width)
        rows.append(torch.randn(shape, generator=gen, dtype=dtype)[:, 0])
    return pack(torch.cat(rows)).to(device=device)


def normalise(latents: torch.Tensor, vae) -> torch.Tensor:
    """VAE latents -> the model's space: (x - mean) / std per channel (on a frame axis or not)."""
    shape = (1, -1) + (1,) * (latents.dim() - 2)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
    return (latents - mean) / std


def denormalise(latents: torch.Tensor, vae) -> torch.Tensor:
    shape = (1, -1) + (1,) * (latents.dim() - 2)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
    return latents * std + mean


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
    policy = getattr(reference.policy, "value", reference.policy)
    fit = getattr(reference.vae_fit, "value", reference.vae_fit)
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


def resize(image: Image.Image, width: int, height: int, filter: str) -> Image.Image:
    """Resize with Lanczos (PIL, like diffusers) or "area" (torch ``interpolate(mode="area")``, like
    ComfyUI's ``common_upscale(..., "area")``; the result is rounded back to 8-bit)."""
    import numpy as np

    image = image.convert("RGB")
    if filter == "lanczos":
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    if filter != "area":
        raise ValueError(f"resize filter {filter!r}: expected lanczos or area")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)[None] / 255.0
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="area")[0]
    return Image.fromarray((y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy())


def pad_to_even(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> sides padded to even, circularly at the bottom / right, as ComfyUI's Qwen model
    pads odd reference latents (multiple-of-8 images) before 2x2 patching."""
    h, w = latents.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return latents
    return torch.nn.functional.pad(latents, (0, w % 2, 0, h % 2), mode="circular")


def to_vae_input(image: Image.Image, vae) -> torch.Tensor:
    """An already sized PIL image -> (1, 3, 1, H, W) in [-1, 1] on the VAE's device and dtype."""
    import numpy as np

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x * 2.0 - 1.0)[None, :, None].to(vae.device, vae.dtype)


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


@torch.no_grad()
def encode_init(vae, image: Image.Image, latent_height: int, latent_width: int):
    """The image-to-image start image -> the VAE's latent distribution (sampled per seed later).

    Resized with Lanczos to the output size, like diffusers' ``VaeImageProcessor``.
    """
    img = resize(image, latent_width * 8, latent_height * 8, "lanczos")
    return vae.encode(to_vae_input(img, vae)).latent_dist  # (1, 16, 1, h, w) mean / std


@torch.no_grad()
def img2img_noise(vae, init, seeds: list[int], sigma0: float, device, dtype) -> torch.Tensor:
    """Packed start latents for image-to-image: sigma0 * noise + (1 - sigma0) * init (flow matching).

    ``init``: ``encode_init``'s distribution. Per seed, one CPU generator first samples it, then draws
    the noise: the order of diffusers' ``QwenImageImg2ImgPipeline``, so results match it.
    """
    latent_height, latent_width = init.mean.shape[-2:]
    rows = []
    for seed in seeds:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x0 = normalise(init.sample(generator=gen), vae).transpose(1, 2).to(dtype)  # (1, 1, 16, h, w)
        shape = (1, 1, LATENT_CHANNELS, latent_height, latent_width)
        eps = torch.randn(shape, generator=gen, dtype=dtype).to(x0.device)
        rows.append((sigma0 * eps + (1.0 - sigma0) * x0)[:, 0])
    return pack(torch.cat(rows)).to(device)
