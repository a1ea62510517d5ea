"""Stage 3c: the denoising loop, readable top to bottom.

Per step: (optionally) append reference latents, run the transformer on cond (+ uncond, in one
batched forward when ``cfg_batching`` allows), combine with the guidance rule, take a sampler step
(diffusers' Euler or UniPC scheduler, or Heun on the same sigmas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from workbench import accel
from workbench.conditioning import Conditioning, concat
from workbench.config import CfgBatching, SamplerConfig, SchedulerKind
from workbench.stages.guidance import guide
from workbench.stages.numerics import FiniteWatch
from workbench.stages import single_stream
from workbench.stages.schedule import Schedule


class Interrupted(RuntimeError):
    """The step callback asked to stop."""


@dataclass
class StepInfo:
    step: int
    timestep: float
    sigma: float
    latents: torch.Tensor  # (B, tokens, 64) after the step
    x0: torch.Tensor  # (B, tokens, 64) predicted clean latents at this step
    size: Optional[tuple[int, int]] = None  # (height, width) in pixels of the target: what unpacks x0 for a preview


def _mask_or_none(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """diffusers passes no mask when nothing is padded; do the same so numerics match exactly. Reading the
    mask waits for the GPU: ``denoise`` asks once per conditioning, not per forward."""
    return None if bool(mask.all()) else mask


def _forward(transformer, latents, cond: Conditioning, mask: Optional[torch.Tensor], timestep, img_shapes, reference,
             name: str, prefix: Optional[single_stream.PrefixCache] = None) -> torch.Tensor:
    """One transformer call; ``mask`` is ``_mask_or_none(cond.mask)``; ``name`` (cond / uncond / batch) is the
    cache slot of the accel hooks and of 2.1's prefix KV cache (``prefix``: set for the single-stream 2.1 transformer)."""
    if prefix is not None:
        with accel.step(transformer, name, timestep):
            return single_stream.call(transformer, latents, cond, timestep, img_shapes, reference, prefix, name, mask)
    n = latents.shape[0]
    x = latents if reference is None else torch.cat([latents, reference.expand(n, -1, -1)], dim=1)
    with accel.step(transformer, name, timestep):
        out = _call(transformer, x, cond, mask, timestep, latents, img_shapes)
    return out[:, : latents.shape[1]]  # only the target tokens are denoised


def _call(transformer, x, cond: Conditioning, mask: Optional[torch.Tensor], timestep, latents, img_shapes) -> torch.Tensor:
    n = latents.shape[0]
    extra = {}
    if getattr(getattr(transformer, "config", None), "use_additional_t_cond", False):  # Layered: "is RGB" = 0
        extra["additional_t_cond"] = torch.zeros(n, dtype=torch.long, device=latents.device)
    return transformer(**extra,
        hidden_states=x,
        timestep=timestep.expand(n).to(latents.dtype) / 1000,
        encoder_hidden_states=cond.embeds.to(latents.dtype),
        encoder_hidden_states_mask=mask,
        img_shapes=[img_shapes] * n,
        return_dict=False,
    )[0]


def _batched(sampler: SamplerConfig, cond: Conditioning, uncond: Optional[Conditioning]) -> Optional[Conditioning]:
    """cond + uncond as one batch when ``cfg_batching`` allows it (``auto``: only when nothing is padded)."""
    if sampler.cfg_batching == CfgBatching.padded or (
        sampler.cfg_batching == CfgBatching.auto and cond.lengths == uncond.lengths and len(set(cond.lengths)) == 1
    ):
        return concat(cond, uncond)
    return None


def _heun_step(velocity, latents, v, t, sigma: float, sigma_next: float) -> torch.Tensor:
    """Heun (trapezoid) on the same sigmas, written here because diffusers' FlowMatchHeun scheduler
    cannot take the Qwen-Image dynamic-shift schedule; the last step to sigma 0 is Euler, as k-diffusion."""
    x = latents.float()
    if sigma_next == 0:
        return (x + (sigma_next - sigma) * v.float()).to(latents.dtype)
    euler = x + (sigma_next - sigma) * v.float()
    v_next = velocity(euler.to(latents.dtype), t.new_tensor(sigma_next * 1000), sigma_next)
    return (x + (sigma_next - sigma) * (v.float() + v_next.float()) / 2).to(latents.dtype)


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
    start_step: int = 0,
    schedule: Optional[Schedule] = None,
    prefix_kv_cache: bool = True,
) -> torch.Tensor:
    """Run the sampler from noise ``latents`` (B, tokens, 64); returns the final packed latents.

    ``schedule``: the ``Schedule`` to step (image-to-image passes the one it noised its start image
    with); by default a fresh one from ``sampler`` starting at ``start_step``.
    ``img_shapes``: (frames, h/16, w/16) of the target, then of each reference image.
    ``reference``: packed reference latents (1, ref tokens, 64), appended after the target tokens.
    ``callback``: called after each step with ``StepInfo``; returning True interrupts.
    ``prefix_kv_cache``: 2.1 only: reuse the text / condition keys and values after the first step.
    """
    schedule = schedule or Schedule(sampler, latents.shape[1], latents.device, start_step)
    guided = sampler.cfg > 1.0
    if guided and uncond is None:
        raise ValueError("sampler.cfg > 1 needs an unconditional (negative) conditioning")
    both = _batched(sampler, cond, uncond) if guided else None
    n = latents.shape[0]
    # 2.1: a fresh prefix cache per generation (the conditioning and references are this run's)
    prefix = single_stream.PrefixCache(transformer, prefix_kv_cache) if single_stream.is_single_stream(transformer) else None

    used = {"cond": cond} if not guided else {"batch": both} if both is not None else {"cond": cond, "uncond": uncond}
    masks = {name: _mask_or_none(c.mask) for name, c in used.items()}  # one wait for the GPU each, before the loop

    def velocity(x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        """The guided flow velocity at (x, t): 1 forward, or 2 (or 1 batched) with guidance."""
        if not guided:
            return _forward(transformer, x, cond, masks["cond"], t, img_shapes, reference, "cond", prefix)
        if both is not None:
            v_cond, v_uncond = _forward(transformer, torch.cat([x, x]), both, masks["batch"], t, img_shapes, reference,
                                        "batch", prefix).split(n)
        else:
            v_cond = _forward(transformer, x, cond, masks["cond"], t, img_shapes, reference, "cond", prefix)
            v_uncond = _forward(transformer, x, uncond, masks["uncond"], t, img_shapes, reference, "uncond", prefix)
        return guide(sampler, v_cond, v_uncond, x, sigma)

    sigmas = schedule.sigmas
    timesteps = [float(x) for x in schedule.scheduler.timesteps.tolist()] if callback is not None else None  # read once
    size = (img_shapes[0][1] * 16, img_shapes[0][2] * 16)  # (frames, h/16, w/16) of the target
    finite = FiniteWatch(latents.device, schedule.steps, sampler.cfg)
    with accel.fresh(transformer):  # no cached block output of an earlier run or batch is reused, none outlives it
        for i, t in tqdm(schedule.remaining(), desc="denoise", disable=not progress, leave=False):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            v = velocity(latents, t, sigma)
            x0 = latents - sigma * v  # flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0
            if sampler.scheduler == SchedulerKind.heun:
                latents = _heun_step(velocity, latents, v, t, sigma, sigma_next)
            else:
                latents = schedule.scheduler.step(v, t, latents, return_dict=False)[0]
            finite.step(i, latents, v)  # stops fp16 overflow at its first step, naming the fix
            if callback is not None and callback(StepInfo(i, timesteps[i], sigma, latents, x0, size)):
                finite.flush()  # a non-finite step is reported as such, not as an interruption
                raise Interrupted(f"interrupted by the step callback after step {i + 1} of {schedule.steps}")
    finite.flush()
    return latents
