"""The denoise loop's numerics guard: stop at the first non-finite step and name the likely cause."""

from __future__ import annotations

import torch

from workbench.errors import RunFailure


class NonFiniteError(RunFailure, FloatingPointError):
    """The denoise loop produced NaN / Inf."""


def check_finite(latents: torch.Tensor, prediction: torch.Tensor, step: int, steps: int,
                 guidance: float | None = None) -> None:
    """Raise at the first step whose prediction or latents hold NaN / Inf (one device sync per step).

    ``guidance``: the run's sampler.cfg; above 1 it multiplies the cond - uncond difference, and a
    large scale can overflow, so the message names it among the causes."""
    if bool(torch.isfinite(prediction).all() & torch.isfinite(latents).all()):  # one device sync
        return
    what = "model prediction" if not bool(torch.isfinite(prediction).all()) else "latents"
    if prediction.dtype == torch.float16:
        raise NonFiniteError(
            f"non-finite {what} at denoise step {step + 1} of {steps} with a float16 transformer "
            "(precision=fp16 or precision.transformer=float16): Qwen-Image's activations overflow float16's "
            "range (max 65504). Use precision=bf16 (same memory, float32's range), or fp32"
        )
    scale = (f"the guidance scale sampler.cfg={guidance:g} (guidance multiplies the cond - uncond difference; "
             "Qwen-Image uses 2.5-5), " if guidance is not None and guidance > 1 else "")
    raise NonFiniteError(
        f"non-finite {what} at denoise step {step + 1} of {steps} (transformer dtype {prediction.dtype}); "
        f"check {scale}the schedule (one-step schedules with a terminal stretch give NaN sigmas), the LoRA "
        "strengths and the inputs"
    )
