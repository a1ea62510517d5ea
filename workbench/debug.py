"""Debugging tools of the origin notes' debug nodes: latent / conditioning stats, comparisons, previews.

All return plain dicts / PIL images so notebooks can tabulate them (``pandas.DataFrame(...)``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image

from workbench.stages.latents import unpack


def latent_stats(latents: torch.Tensor) -> dict:
    """Per-channel mean / std / min / max and non-finite counts of (B, C, H, W) or packed (B, T, 64) latents.

    Packed latents are reported per latent channel (16), not per packed feature (64).
    """
    x = latents.detach().float()
    if x.dim() == 3:  # packed (B, T, C*4): channels are the slow axis of the last dim
        b, t, d = x.shape
        x = x.reshape(b, t, d // 4, 4).permute(2, 0, 1, 3).reshape(d // 4, -1)
    elif x.dim() == 4:
        x = x.transpose(0, 1).reshape(x.shape[1], -1)
    else:
        raise ValueError(f"latent_stats expects (B, C, H, W) or packed (B, T, C*4), got shape {tuple(latents.shape)}")
    finite = torch.isfinite(x)
    safe = torch.where(finite, x, torch.zeros_like(x))
    count = finite.sum(dim=1).clamp(min=1)
    mean = safe.sum(dim=1) / count
    var = (torch.where(finite, x - mean[:, None], torch.zeros_like(x)) ** 2).sum(dim=1) / (count - 1).clamp(min=1)
    big = torch.finfo(torch.float32).max
    return {
        "channels": x.shape[0],
        "mean": mean.tolist(),
        "std": var.sqrt().tolist(),
        "min": torch.where(finite, x, torch.full_like(x, big)).min(dim=1).values.tolist(),
        "max": torch.where(finite, x, torch.full_like(x, -big)).max(dim=1).values.tolist(),
        "nan": int(torch.isnan(x).sum()),
        "inf": int(torch.isinf(x).sum()),
    }


def _as_array(x) -> np.ndarray:
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"), dtype=np.float64)
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def compare(a, b, data_range: Optional[float] = None) -> dict:
    """MSE, PSNR, cosine similarity and max |a - b| of two latents / images (PIL, tensor or array).

    ``data_range`` for PSNR defaults to 255 for PIL images and to the peak-to-peak of ``a`` otherwise.
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"compare: shapes differ {x.shape} vs {y.shape}")
    if data_range is None:
        data_range = 255.0 if isinstance(a, Image.Image) else float(np.ptp(x)) or 1.0
    diff = x - y
    mse = float(np.mean(diff**2))
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return {
        "mse": mse,
        "psnr": math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse),
        "cosine": float(np.sum(x * y) / denom) if denom else float("nan"),
        "max_abs_diff": float(np.abs(diff).max()),
    }


class X0Previews:
    """A denoise callback that decodes the predicted clean image every ``every`` steps.

    Usage: ``previews = X0Previews(bench, height, width); bench.denoise(..., callback=previews)``;
    then ``previews.images`` is a list of (step, PIL image).
    """

    def __init__(self, bench, height: int, width: int, every: int = 1, stop_after: Optional[int] = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"X0Previews: every={every!r} must be an integer >= 1 (decode every N-th step)")
        self.bench, self.height, self.width, self.every, self.stop_after = bench, height, width, every, stop_after
        self.images: list[tuple[int, Image.Image]] = []

    def __call__(self, info) -> bool:
        if info.step % self.every == 0:  # the first image of the batch (Layered: its first frame, the whole image)
            self.images.append((info.step, self.bench.decode_first(info.x0, self.height, self.width)))
        return self.stop_after is not None and info.step + 1 >= self.stop_after


def unpacked(latents: torch.Tensor, height: int, width: int, vae_scale_factor: int = 8) -> torch.Tensor:
    """Packed (B, T, 64) -> (B, 16, H/8, W/8) for per-pixel inspection."""
    return unpack(latents, height // vae_scale_factor, width // vae_scale_factor)

