"""The ``sampler`` group (conf/sampler/): scheduler, steps, shift and guidance."""

from __future__ import annotations

import math

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from workbench.config import limits
from workbench.errors import ConfigError


class ShiftMode(str, Enum):
    dynamic = "dynamic"  # Qwen-Image: mu linear in image tokens, exponential time shift
    fixed = "fixed"  # ComfyUI ModelSamplingAuraFlow / Lightning: static shift


class Guidance(str, Enum):
    true_cfg = "true_cfg"  # diffusers: CFG, then rescale each token to the conditional norm
    cfg = "cfg"  # DiffSynth / ComfyUI KSampler: plain CFG
    cfg_norm = "cfg_norm"  # ComfyUI CFGNorm node: plain CFG, x0 rescaled to the conditional norm (<= 1)


class CfgBatching(str, Enum):
    auto = "auto"  # one batched forward when cond and uncond have equal length, else two
    padded = "padded"  # always one batched forward, shorter prompt padded + attention mask
    separate = "separate"  # always two forwards (diffusers)


class SchedulerKind(str, Enum):
    euler = "euler"  # diffusers FlowMatchEulerDiscreteScheduler (the Qwen-Image default)
    heun = "heun"  # second order on the same sigmas (two model calls per step, none on the last)
    unipc = "unipc"  # diffusers UniPCMultistepScheduler with flow sigmas


@dataclass
class SamplerConfig:
    name: str = "flow_euler"
    scheduler: SchedulerKind = SchedulerKind.euler
    steps: int = 20
    cfg: float = 1.0  # guidance scale; 1 = off (one forward per step)
    guidance: Guidance = Guidance.true_cfg
    cfg_norm_strength: float = 1.0  # guidance=cfg_norm only: ComfyUI CFGNorm "strength"
    # padded batches force a masked attention kernel: measured SLOWER than two forwards on an H100
    # (0.796 vs 0.642 s at 1328x1328, benchmarks/results), hence "auto"
    cfg_batching: CfgBatching = CfgBatching.auto
    shift_mode: ShiftMode = ShiftMode.dynamic
    shift: float = 1.0  # used when shift_mode=fixed (ComfyUI AuraFlow 3.0 / 3.1, Lightning 3)
    shift_terminal: Optional[float] = 0.02  # terminal stretch (dynamic mode); null = off
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    base_shift: float = 0.5
    max_shift: float = 0.9
    # a fixed sigma grid (descending, in (0, 1], the terminal 0 left out) in place of linspace(1, 1/steps,
    # steps); still shifted like it. Qwen-Image-2.1-Turbo ships one (its model_index ``sample_sigmas``)
    sigmas: Optional[list[float]] = None

    def __post_init__(self) -> None:
        limits.check_finite_fields(self, "sampler.", {
            "cfg": f"a number in 1..{limits.MAX_CFG:g} (1 turns guidance off)",
            "cfg_norm_strength": "a number >= 0 (ComfyUI CFGNorm strength)",
            "shift": "a number > 0 (fixed shift, e.g. 3.0)",
            "shift_terminal": "a number in (0, 1), or null to turn the terminal stretch off",
        }, ConfigError)
        if self.steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {self.steps}")
        if self.steps > limits.MAX_STEPS:
            raise ConfigError(f"sampler.steps={self.steps} is over the limit of {limits.MAX_STEPS} steps; "
                              "Qwen-Image needs 20-50 (Lightning LoRAs 4-8)")
        if self.cfg < 1.0:
            raise ConfigError(f"sampler.cfg must be >= 1 (1 turns guidance off), got {self.cfg}")
        if self.cfg > limits.MAX_CFG:
            raise ConfigError(f"sampler.cfg={self.cfg} is over the limit of {limits.MAX_CFG:g}; Qwen-Image uses 2.5-5")
        if self.shift <= 0:
            raise ConfigError(f"sampler.shift must be > 0, got {self.shift}; ComfyUI uses 3.1 (Lightning 3)")
        if self.shift_terminal is not None and not 0.0 < self.shift_terminal < 1.0:
            raise ConfigError(f"sampler.shift_terminal must be in (0, 1) or null, got {self.shift_terminal}")
        if self.cfg_norm_strength < 0:
            raise ConfigError(f"sampler.cfg_norm_strength must be >= 0, got {self.cfg_norm_strength}")
        if self.sigmas is not None:
            _check_sigmas(self)
        if self.steps == 1 and self.shift_mode == ShiftMode.dynamic and self.shift_terminal is not None:
            raise ConfigError(
                "sampler.steps=1 with shift_terminal set gives NaN sigmas (the terminal stretch divides "
                "by zero); use steps >= 2, or sampler.shift_terminal=null"
            )


def _check_sigmas(s: "SamplerConfig") -> None:
    sigmas = list(s.sigmas)
    if not sigmas:
        raise ConfigError("sampler.sigmas is empty; give the grid (e.g. [1.0, 0.75, 0.5, 0.25]) or null")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and 0.0 < x <= 1.0 for x in sigmas):
        raise ConfigError(f"sampler.sigmas {sigmas}: every value must be a number in (0, 1] (the terminal 0 is added)")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ConfigError(f"sampler.sigmas {sigmas} must be strictly decreasing")
    if len(sigmas) != s.steps:
        raise ConfigError(f"sampler.sigmas has {len(sigmas)} values but sampler.steps={s.steps}; the grid fixes the "
                          f"step count: set sampler.steps={len(sigmas)} (or sampler.sigmas=null)")
