"""The ``accel`` group (conf/accel/): diffusers cache hooks that skip transformer work between steps.

Which methods exist, their knobs, and the combinations that cannot run (``check_accel_fits``), caught
before any model loads; applying them to the resident transformer is ``workbench.accel``.

Whose skip decisions depend on the weights' values (so random weights cannot show their real speed):
- ``first_block``: yes. It skips the other blocks when the first block's output residual changed by
  less than ``threshold`` (relative mean abs) since the last full step: how fast that residual moves
  depends on the trained weights.
- ``taylorseer``: no. Full steps come on a fixed schedule (every ``cache_interval`` steps after
  ``disable_cache_before_step``); the steps between are Taylor extrapolations. Speed is weight-free,
  only the quality cost depends on the weights. ``granularity``: what is extrapolated, each block's
  attention output (diffusers' default; the MLPs still run) or each whole block's output (nothing runs).
- ``pyramid_attention``: no. Each block's attention output is reused ``skip_range - 1`` times in a
  row inside a timestep window: a fixed schedule.
With ``perf.compile=regional`` the hooks must sit on whole blocks, so that each block that runs, runs compiled
beneath them (``workbench/hooked_compile.py``): first_block, and taylorseer at ``granularity=block``.
"Steps" above are the hooks' own count of transformer calls per cache slot (cond / uncond / batch),
from the first call of each denoise call: Heun's corrector is one more call per step, and an
image-to-image run counts from its first remaining step.
Not offered: MagCache (needs magnitude ratios calibrated per checkpoint and schedule), FasterCache
(written for video tensors, BCFHW, and guidance batches), SeaCache / TextKV (other model families).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from workbench.config.perf import CompileMode, InductorMode, PerfConfig
from workbench.config.sampler import CfgBatching, SamplerConfig
from workbench.errors import ConfigError


class AccelMethod(str, Enum):
    none = "none"  # every block runs every step (bit-identical to no hook at all)
    first_block = "first_block"  # diffusers FirstBlockCache: weight-dependent skips
    taylorseer = "taylorseer"  # diffusers TaylorSeerCache: scheduled full steps, Taylor steps between
    pyramid_attention = "pyramid_attention"  # diffusers PyramidAttentionBroadcast: scheduled attention reuse


class Granularity(str, Enum):
    attention = "attention"  # each block's attention output (diffusers' TaylorSeer default)
    block = "block"  # each whole block's output: the MLP is skipped too; composes with perf.compile=regional


@dataclass
class AccelConfig:
    """One cache method and its knobs; knobs of the other methods are ignored (kept in the record)."""

    name: str = "none"
    method: AccelMethod = AccelMethod.none
    threshold: float = 0.05  # first_block: skip while the first block's residual changed less than this
    cache_interval: int = 4  # taylorseer: one full step every cache_interval steps
    disable_cache_before_step: int = 3  # taylorseer: the first steps always run in full (warm-up)
    disable_cache_after_step: int = -1  # taylorseer: steps from here run in full; -1 = never
    max_order: int = 1  # taylorseer: order of the Taylor extrapolation (1 = linear)
    granularity: Granularity = Granularity.attention  # taylorseer: extrapolate attention outputs or whole blocks
    skip_range: int = 2  # pyramid_attention: compute attention once every skip_range calls
    timestep_range: list[float] = field(default_factory=lambda: [100.0, 800.0])  # pyramid_attention: window (0..1000)

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold) or not 0.0 < self.threshold < 10.0:
            raise ConfigError(f"accel.threshold={self.threshold} must be a number in (0, 10) (0.05: few skips, "
                              "0.2: many); it is the first block's relative residual change that still skips")
        for key, lo in (("cache_interval", 1), ("disable_cache_before_step", 0), ("max_order", 1), ("skip_range", 1)):
            if getattr(self, key) < lo:
                raise ConfigError(f"accel.{key}={getattr(self, key)} must be an integer >= {lo}")
        if self.max_order > 4:
            raise ConfigError(f"accel.max_order={self.max_order} must be 1..4 (higher orders extrapolate noise)")
        if self.disable_cache_after_step < -1:
            raise ConfigError(f"accel.disable_cache_after_step={self.disable_cache_after_step} must be -1 (never) "
                              "or a step index >= 0")
        window = list(self.timestep_range)
        if len(window) != 2 or not all(math.isfinite(v) for v in window) or not window[0] < window[1]:
            raise ConfigError(f"accel.timestep_range={window} must be two finite numbers [low, high] with low < high "
                              "(timesteps on diffusers' 0..1000 scale)")


def check_accel_fits(accel: AccelConfig, sampler: SamplerConfig, perf: PerfConfig) -> None:
    """accel x compile x guidance combinations ``workbench.accel`` refuses, caught before any model loads."""
    if accel.method == AccelMethod.none:
        return
    if perf.compile != CompileMode.none and not hooks_on_blocks(accel):
        raise ConfigError(
            f"accel={accel.name} (accel.method={accel.method.value}{_granularity(accel)}) with perf.compile="
            f"{perf.compile.value} (perf={perf.name}): its hooks sit inside the blocks, which a compiled (fullgraph) "
            f"block cannot trace. {_fix(accel)}"
        )
    if perf.compile != CompileMode.none and perf.inductor_mode in (InductorMode.max_autotune, InductorMode.reduce_overhead):
        raise ConfigError(
            f"accel={accel.name} with perf.inductor_mode={perf.inductor_mode.name}: that mode replays CUDA graphs "
            "recorded for one order of block calls, and the hooks' skips change the order from step to step. Use "
            "perf.inductor_mode=default or max_autotune_no_cudagraphs with accel, or accel=none"
        )
    if perf.compile == CompileMode.full:
        raise ConfigError(
            f"accel={accel.name} (accel.method={accel.method.value}) with perf.compile=full (perf={perf.name}): the "
            "whole-model compile would trace the hooks' per-step decisions. Use perf.compile=regional (the blocks "
            "then run compiled beneath the hooks), perf.compile=none, or accel=none"
        )
    if (accel.method == AccelMethod.pyramid_attention and sampler.cfg > 1.0
            and sampler.cfg_batching != CfgBatching.padded):
        raise ConfigError(
            f"accel={accel.name} (pyramid_attention) with sampler.cfg={sampler.cfg} and sampler.cfg_batching="
            f"{sampler.cfg_batching.value}: its attention cache has no cond / uncond slots, so separate "
            "negative passes would reuse the positive pass's attention. Set sampler.cfg_batching=padded "
            "(one batched pass), sampler.cfg=1, or another accel method"
        )


def state_bytes(accel: AccelConfig, layers: int, tokens: int, hidden: int, rows: int, width: int) -> int:
    """At most what the method's hooks keep between steps: TaylorSeer ``max_order + 1`` factors of each hooked
    module's image-stream output (each block's, or each attention's), PyramidAttentionBroadcast one attention output
    per block, FirstBlockCache two residuals. ``rows``: images per step over all cache slots (cond and uncond);
    ``width``: bytes per activation (factors keep their output's dtype). Text tokens are left out (a few hundred
    beside thousands). 1328x1328 in bf16 at TaylorSeer's order 1: 2 x 60 x 6889 x 3072 x 2 B = 5.1 GB."""
    per_output = rows * tokens * hidden * width
    if accel.method == AccelMethod.taylorseer:
        return (accel.max_order + 1) * layers * per_output
    if accel.method == AccelMethod.pyramid_attention:
        return layers * per_output
    if accel.method == AccelMethod.first_block:
        return 2 * per_output
    return 0


def hooks_on_blocks(accel: AccelConfig) -> bool:
    """Whether the method's hooks wrap whole transformer blocks (so compiled blocks can run beneath them)."""
    return accel.method == AccelMethod.first_block or (
        accel.method == AccelMethod.taylorseer and accel.granularity == Granularity.block)


def _granularity(accel: AccelConfig) -> str:
    return f", accel.granularity={accel.granularity.value}" if accel.method == AccelMethod.taylorseer else ""


def _fix(accel: AccelConfig) -> str:
    if accel.method == AccelMethod.taylorseer:
        return ("Set accel.granularity=block (whole blocks extrapolated, run compiled when they run), or "
                "perf.compile=none")
    return ("Use perf.compile=none (e.g. perf=eager, or perf.fast_attention=true perf.compile=none), accel=first_block "
            "or accel=taylorseer accel.granularity=block (they compose with perf.compile=regional), or accel=none")
