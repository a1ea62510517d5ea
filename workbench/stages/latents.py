"""Stage 2: seeded noise, 2x2 packing, and VAE-encoded reference latents for edit.

Noise is drawn on the CPU from one ``torch.Generator`` per image and then moved, so a seed gives
the same latents on every device and whatever the batch composition.
"""

from __future__ import annotations

import math

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


def image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """PIL -> (1, 3, H, W) in [-1, 1], resized with Lanczos like diffusers' VaeImageProcessor."""
    import numpy as np

    img = image.convert("RGB").resize((width, height), resample=Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x * 2.0 - 1.0).unsqueeze(0)


@torch.no_grad()
def encode_reference(vae, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A reference image -> normalised latent mode, packed: (1, tokens, 64)."""
    x = image_to_tensor(image, width, height).to(vae.device, vae.dtype).unsqueeze(2)  # (1, 3, 1, H, W)
    latents = vae.encode(x).latent_dist.mode()  # (1, 16, 1, h, w); the mode, as diffusers' "argmax"
    return pack(normalise(latents, vae)[:, :, 0])
