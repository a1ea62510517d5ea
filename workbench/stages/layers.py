"""Qwen-Image-Layered's stages (diffusers 0.42.1 ``QwenImageLayeredPipeline``): one image in, N RGBA layers out.

The same 20B transformer class with two switches on (``use_layer3d_rope``: RoPE over (layer, h, w);
``use_additional_t_cond``: an "is RGB" time condition, 0 for RGBA) and an RGBA VAE. Only the VAE sees the input
image (the text encoder reads the prompt alone). The latent sequence holds ``layers + 1`` frames of noise (frame 0
becomes the whole image, frames 1..N the layers) followed by the input image's latents, like an edit reference.
The schedule's shift follows the input's size: mu = sqrt(input tokens / 256).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from workbench.stages.latents import QWEN_IMAGE, denormalise, normalise, pack, unpack
from workbench.stages.reference import References, area_size


def input_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(w, h) the image is sized to: ~``resolution``^2 pixels, its aspect, sides of 32."""
    return area_size(image.width, image.height, resolution * resolution, 32)


def sized_input(image: Image.Image, resolution: int) -> Image.Image:
    """The image as Layered sees it: RGBA (its alpha kept), at ``input_size`` (Lanczos, as diffusers)."""
    return image.convert("RGBA").resize(input_size(image, resolution), resample=Image.Resampling.LANCZOS)


def prepare_input(vae, image: Image.Image, resolution: int) -> References:
    """The image to split, as an RGBA VAE latent (mode, normalised, 2x2-packed) appended after the frames."""
    return encode_input(vae, sized_input(image, resolution))


@torch.no_grad()
def encode_input(vae, sized: Image.Image) -> References:
    """``prepare_input`` for an image already at its ``sized_input`` size (the caption reads the same copy)."""
    from workbench.stages.latents import to_vae_input

    w, h = sized.size
    z = normalise(vae.encode(to_vae_input(sized, vae)).latent_dist.mode(), vae)[:, :, 0]  # (1, 16, h/8, w/8)
    return References([], pack(z), [(1, z.shape[-2] // 2, z.shape[-1] // 2)], [(w, h)])


def noise(seeds: list[int], latent_height: int, latent_width: int, frames: int, device, dtype) -> torch.Tensor:
    """(B, frames * tokens, 64): each seed's (frames, 16, h, w) noise drawn at once on the CPU (diffusers'
    ``randn_tensor`` shape), packed frame after frame."""
    rows = []
    for seed in seeds:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        x = torch.randn((1, frames, QWEN_IMAGE.channels, latent_height, latent_width), generator=gen, dtype=dtype)
        rows.append(torch.cat([pack(x[:, f]) for f in range(frames)], dim=1))
    return torch.cat(rows).to(device)


def shift_mu(input_tokens: int) -> float:
    """The schedule's mu: sqrt of the input image's tokens over those of a 256 x 256 image."""
    return math.sqrt(input_tokens / (256 * 256 / 16 / 16))


@torch.no_grad()
def decode_frames(vae, tokens: torch.Tensor, latent_height: int, latent_width: int, frames: int) -> torch.Tensor:
    """(B, frames * tokens, 64) -> (B, frames, 4, H, W) in [-1, 1]: every frame decoded on its own."""
    b, n, _ = tokens.shape
    per = n // frames
    out = []
    for f in range(frames):
        z = unpack(tokens[:, f * per:(f + 1) * per], latent_height, latent_width).to(vae.dtype)
        out.append(vae.decode(denormalise(z, vae).unsqueeze(2), return_dict=False)[0][:, :, 0].float())
    return torch.stack(out, dim=1)
