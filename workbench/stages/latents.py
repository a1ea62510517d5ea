"""Stage 2: seeded noise, 2x2 packing, VAE latents in the model's space, the image-to-image start.

Noise is drawn on the CPU from one ``torch.Generator`` per image and then moved, so a seed gives
the same latents on every device and whatever the batch composition.
"""

from __future__ import annotations

import torch
from PIL import Image

from workbench.models.arch import LATENT_CHANNELS


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


def to_vae_input(image: Image.Image, vae) -> torch.Tensor:
    """An already sized PIL image -> (1, 3, 1, H, W) in [-1, 1] on the VAE's device and dtype."""
    import numpy as np

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
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
        shape = (1, 1, LATENT_CHANNELS, latent_height, latent_width)
        eps = torch.randn(shape, generator=gen, dtype=dtype).to(x0.device)
        rows.append((sigma0 * eps + (1.0 - sigma0) * x0)[:, 0])
    return pack(torch.cat(rows)).to(device)
