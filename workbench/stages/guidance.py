"""Stage 3b: combine conditional and unconditional velocity predictions, one rule per tool.

Predictions are packed flow velocities (B, tokens, 64) where 64 = 16 latent channels x 2x2 pixels.
"""

from __future__ import annotations

import torch

from workbench.config import Guidance, SamplerConfig


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """diffusers: CFG, then rescale each token's prediction to the norm of the conditional one."""
    combined = uncond + scale * (cond - uncond)
    return combined * (cond.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))


def plain_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """DiffSynth-Studio / ComfyUI KSampler: plain classifier-free guidance."""
    return uncond + scale * (cond - uncond)


def _pixel_channel_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm over the 16 latent channels at each latent pixel: (B, T, 64) -> (B, T, 1, 4)."""
    b, t, d = x.shape
    return x.view(b, t, d // 4, 4).norm(dim=2, keepdim=True)


def cfg_norm(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, latents: torch.Tensor, sigma: float, strength: float = 1.0
) -> torch.Tensor:
    """ComfyUI's CFGNorm node, moved to velocity space.

    ComfyUI rescales the guided x0 prediction, per latent pixel, by |x0_cond| / |x0_guided| over the
    channel axis, clamped to [0, 1], times ``strength``. Here x0 = x - sigma * v, so we compute both
    x0, rescale, and convert back: v = (x - x0') / sigma.
    """
    guided = plain_cfg(cond, uncond, scale)
    x = latents.float()
    x0_cond, x0 = x - sigma * cond.float(), x - sigma * guided.float()
    ratio = (_pixel_channel_norm(x0_cond) / (_pixel_channel_norm(x0) + 1e-8)).clamp(0.0, 1.0)
    b, t, d = x0.shape
    x0 = (x0.view(b, t, d // 4, 4) * ratio * strength).view(b, t, d)
    return ((x - x0) / sigma).to(cond.dtype)


def guide(s: SamplerConfig, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """Apply the sampler's guidance rule at noise level ``sigma``."""
    if s.guidance == Guidance.true_cfg:
        return true_cfg(cond, uncond, s.cfg)
    if s.guidance == Guidance.cfg:
        return plain_cfg(cond, uncond, s.cfg)
    return cfg_norm(cond, uncond, s.cfg, latents, sigma, s.cfg_norm_strength)
