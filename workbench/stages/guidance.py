"""Stage 3b: combine conditional and unconditional predictions (one function per tool's rule)."""

from __future__ import annotations

import torch

from workbench.config.schema import Guidance


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """diffusers: CFG, then rescale each token's prediction to the norm of the conditional one."""
    combined = uncond + scale * (cond - uncond)
    return combined * (cond.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))


def plain_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """DiffSynth-Studio: plain classifier-free guidance."""
    return uncond + scale * (cond - uncond)


COMBINE = {Guidance.true_cfg: true_cfg, Guidance.cfg: plain_cfg}
