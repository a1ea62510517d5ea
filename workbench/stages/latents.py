"""Stage 2: seeded noise, packing into tokens, VAE latents in the model's space, the image-to-image start.

The 20B family packs 2x2 patches of 16 channels into 64-channel tokens (``QWEN_IMAGE``); Qwen-Image-2.1
reads its 64-channel latents unpatched, one token per latent pixel (``QWEN21``): one ``Layout`` each.

Noise is drawn on the CPU from one ``torch.Generator`` per image and then moved, so a seed gives
the same latents on every device and whatever the batch composition.
"""

from __future__ import annotations

import torch
from PIL import Image

from dataclasses import dataclass

from workbench.models import arch, arch21


@dataclass(frozen=True)
class Layout:
    """How a family's VAE latents become transformer tokens."""

    channels: int  # VAE latent channels
    patch: int  # latent pixels per token side


QWEN_IMAGE = Layout(arch.LATENT_CHANNELS, arch.PATCH_SIZE)  # 16 channels, 2x2 patches -> 64-wide tokens
QWEN21 = Layout(arch21.LATENT_CHANNELS, arch21.PATCH_SIZE)  # 64 channels, unpatched


def pack(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p): p x p patches as tokens (diffusers' ``_pack_latents``;
    p = 1 is 2.1's plain flatten)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int, patch: int = 2) -> torch.Tensor:
    """(B, H/p * W/p, C*p*p) -> (B, C, H, W); the inverse of ``pack``."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, latent_height // patch, latent_width // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, latent_height, latent_width)


def noise(seeds: list[int], latent_height: int, latent_width: int, device, dtype,
          layout: Layout = QWEN_IMAGE) -> torch.Tensor:
    """Packed initial noise (B, tokens, 64), one CPU generator per seed."""
    rows = []
    for seed in seeds:
        gen = torch.Generator("cpu").manual_seed(int(seed))
        # (1, 1, C, H, W) drawn directly in the target dtype, on the CPU: exactly diffusers'
        # randn_tensor (some torch versions draw bf16 differently from float32-then-cast)
        shape = (1, 1, layout.channels, latent_height, latent_width)
        rows.append(torch.randn(shape, generator=gen, dtype=dtype)[:, 0])
    return pack(torch.cat(rows), layout.patch).to(device=device)


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


def vae_image_channels(vae) -> int:
    """3 (RGB, the 20B family's VAE) or 4 (RGBA: Qwen-Image-2.1's, Layered's)."""
    config = vae.config
    return int(getattr(config, "in_channels", None) or getattr(config, "input_channels", None) or 3)


def to_vae_input(image: Image.Image, vae) -> torch.Tensor:
    """An already sized PIL image -> (1, C, 1, H, W) in [-1, 1] on the VAE's device and dtype; C is the
    VAE's image channels (an RGB image gets an opaque alpha for an RGBA VAE)."""
    import numpy as np

    mode = "RGBA" if vae_image_channels(vae) == 4 else "RGB"
    x = torch.from_numpy(np.asarray(image.convert(mode), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x * 2.0 - 1.0)[None, :, None].to(vae.device, vae.dtype)


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
        shape = (1, 1, QWEN_IMAGE.channels, latent_height, latent_width)
        eps = torch.randn(shape, generator=gen, dtype=dtype).to(x0.device)
        rows.append((sigma0 * eps + (1.0 - sigma0) * x0)[:, 0])
    return pack(torch.cat(rows)).to(device)
