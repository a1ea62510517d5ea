"""Stage 3c: the denoising loop, readable top to bottom.

Per step: (optionally) append reference latents, run the transformer on cond (+ uncond, in one
batched forward when ``batch_cfg``), combine with the guidance rule, take a scheduler step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from workbench.conditioning import Conditioning, concat
from workbench.config.schema import SamplerConfig
from workbench.stages.guidance import COMBINE
from workbench.stages.schedule import make_scheduler, set_schedule


class Interrupted(RuntimeError):
    """The step callback asked to stop."""


@dataclass
class StepInfo:
    step: int
    timestep: float
    sigma: float
    latents: torch.Tensor  # (B, tokens, 64) after the step
    x0: torch.Tensor  # (B, tokens, 64) predicted clean latents at this step


def _mask_or_none(mask: torch.Tensor) -> Optional[torch.Tensor]:
    # diffusers passes no mask when nothing is padded; do the same so numerics match exactly
    return None if bool(mask.all()) else mask


def _forward(transformer, latents, cond: Conditioning, timestep, img_shapes, reference) -> torch.Tensor:
    n = latents.shape[0]
    x = latents if reference is None else torch.cat([latents, reference.expand(n, -1, -1)], dim=1)
    out = transformer(
        hidden_states=x,
        timestep=timestep.expand(n).to(latents.dtype) / 1000,
        encoder_hidden_states=cond.embeds.to(latents.dtype),
        encoder_hidden_states_mask=_mask_or_none(cond.mask),
        img_shapes=[img_shapes] * n,
        return_dict=False,
    )[0]
    return out[:, : latents.shape[1]]  # only the target tokens are denoised


@torch.no_grad()
def denoise(
    transformer,
    latents: torch.Tensor,
    cond: Conditioning,
    sampler: SamplerConfig,
    img_shapes: list[tuple[int, int, int]],
    uncond: Optional[Conditioning] = None,
    reference: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[StepInfo], Optional[bool]]] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run the sampler from noise ``latents`` (B, tokens, 64); returns the final packed latents.

    ``img_shapes``: (frames, h/16, w/16) of the target, then of each reference image.
    ``reference``: packed reference latents (1, ref tokens, 64), appended after the target tokens.
    ``callback``: called after each step with ``StepInfo``; returning True interrupts.
    """
    scheduler = make_scheduler(sampler)
    set_schedule(scheduler, sampler, image_tokens=latents.shape[1], device=latents.device)
    guided = sampler.cfg > 1.0
    if guided and uncond is None:
        raise ValueError("sampler.cfg > 1 needs an unconditional (negative) conditioning")
    both = concat(cond, uncond) if guided and sampler.batch_cfg else None
    combine = COMBINE[sampler.guidance]
    n = latents.shape[0]

    for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoise", disable=not progress, leave=False)):
        if not guided:
            pred = _forward(transformer, latents, cond, t, img_shapes, reference)
        elif both is not None:
            pred_cond, pred_uncond = _forward(
                transformer, torch.cat([latents, latents]), both, t, img_shapes, reference
            ).split(n)
            pred = combine(pred_cond, pred_uncond, sampler.cfg)
        else:
            pred_cond = _forward(transformer, latents, cond, t, img_shapes, reference)
            pred_uncond = _forward(transformer, latents, uncond, t, img_shapes, reference)
            pred = combine(pred_cond, pred_uncond, sampler.cfg)

        sigma = scheduler.sigmas[i]
        x0 = latents - sigma * pred  # flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if callback is not None and callback(StepInfo(i, float(t), float(sigma), latents, x0)):
            raise Interrupted(f"interrupted by the step callback after step {i + 1} of {len(scheduler.timesteps)}")
    return latents
