"""Stage 3a: the noise schedule (sigmas and timesteps) from a ``SamplerConfig``.

Uses diffusers' schedulers with the Qwen-Image settings and the same sigma grid and ``mu`` as the
diffusers pipeline: sigmas = linspace(1, 1/steps, steps), mu linear in the number of image tokens
between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift). Heun runs on the
Euler scheduler's sigmas (diffusers' FlowMatchHeun cannot take this dynamic-shift schedule).
"""

from __future__ import annotations

import numpy as np

from workbench.config import SamplerConfig, SchedulerKind, ShiftMode


def calculate_mu(image_tokens: int, s: SamplerConfig) -> float:
    slope = (s.max_shift - s.base_shift) / (s.max_image_seq_len - s.base_image_seq_len)
    return image_tokens * slope + (s.base_shift - slope * s.base_image_seq_len)


def _shift_kwargs(s: SamplerConfig) -> dict:
    if s.shift_mode == ShiftMode.dynamic:
        return dict(
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=s.base_shift,
            max_shift=s.max_shift,
            base_image_seq_len=s.base_image_seq_len,
            max_image_seq_len=s.max_image_seq_len,
            shift_terminal=s.shift_terminal,
            time_shift_type="exponential",
        )
    return dict(shift=s.shift, use_dynamic_shifting=False, shift_terminal=s.shift_terminal)


def make_scheduler(s: SamplerConfig):
    """The diffusers scheduler object for this sampler (Euler's also serves Heun)."""
    if s.scheduler == SchedulerKind.unipc:
        from diffusers import UniPCMultistepScheduler

        kw = _shift_kwargs(s)
        return UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=kw.pop("shift"),
            **{k: v for k, v in kw.items() if k in ("use_dynamic_shifting", "time_shift_type", "shift_terminal")},
        )
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **_shift_kwargs(s))


def set_schedule(scheduler, s: SamplerConfig, image_tokens: int, device, mu: float | None = None) -> None:
    """Set sigmas/timesteps on ``scheduler`` for ``s.steps`` steps at this image size (``mu``: a family's own
    shift, e.g. Layered's, in place of the one computed from ``image_tokens``)."""
    sigmas = np.array(s.sigmas, dtype=np.float64) if s.sigmas is not None else np.linspace(1.0, 1.0 / s.steps, s.steps)
    kwargs = {"mu": calculate_mu(image_tokens, s) if mu is None else mu} if s.shift_mode == ShiftMode.dynamic else {}
    scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)


def img2img_start(steps: int, strength: float) -> int:
    """First step index for image-to-image at ``strength`` (diffusers' ``get_timesteps`` rule):
    the last ``steps * strength`` steps run, starting from the init image noised to that sigma."""
    return int(max(steps - min(steps * strength, steps), 0))


class Schedule:
    """The sigmas and timesteps of one forward batch at one image size, on a fresh scheduler.

    Shared by image-to-image (which noises its start image to ``start_sigma``) and the denoise loop
    (which steps ``scheduler`` from ``start_step``); a scheduler keeps a step index, so each forward
    batch gets its own ``Schedule``.
    """

    def __init__(self, sampler: SamplerConfig, image_tokens: int, device="cpu", start_step: int = 0,
                 mu: float | None = None):
        self.sampler, self.start_step = sampler, start_step
        self.scheduler = make_scheduler(sampler)
        set_schedule(self.scheduler, sampler, image_tokens, device, mu)
        if start_step and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start_step)
        self.sigmas: list[float] = self.scheduler.sigmas.tolist()  # steps + 1 values, the last 0

    @classmethod
    def img2img(cls, sampler: SamplerConfig, image_tokens: int, strength: float, device="cpu") -> "Schedule":
        """The schedule of an image-to-image run at ``strength``: its last ``steps * strength`` steps."""
        return cls(sampler, image_tokens, device, img2img_start(sampler.steps, strength))

    @property
    def start_sigma(self) -> float:
        return self.sigmas[self.start_step]

    @property
    def steps(self) -> int:
        """Steps of the whole schedule (those before ``start_step`` included)."""
        return len(self.sigmas) - 1

    def remaining(self) -> list[tuple[int, object]]:
        """(step index, timestep) of each step to run."""
        return list(enumerate(self.scheduler.timesteps))[self.start_step:]
