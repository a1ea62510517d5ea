"""Cache hooks (``accel`` group) on the resident transformer: applied per run, removed when the next
run asks for another method, their state reset at the start of every denoise call.

Like LoRAs, accel is not part of the model cache key: switching it never rebuilds the transformer,
it only swaps diffusers hooks (``enable_cache`` / ``disable_cache``). On a regionally compiled transformer, methods
whose hooks wrap whole blocks run the compiled blocks beneath the hooks (workbench/hooked_compile.py). The denoise loop wraps each
forward in ``step`` so the hooks see which pass (cond / uncond) and timestep they are in.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

from torch import nn

from workbench.compiling import is_compiled
from workbench.config.accel import AccelConfig, AccelMethod, Granularity, hooks_on_blocks
from workbench.accel_work import unwatch, watch
from workbench.hooked_compile import move_above_hooks, move_beneath_hooks
from workbench.errors import InputError


class AccelError(InputError):
    """An accel method that cannot run on this transformer; the message names the fix."""


class _State:
    """What is applied on one transformer, and the timestep the loop is at (pyramid_attention reads it)."""

    def __init__(self) -> None:
        self.key: tuple = (AccelMethod.none,)
        self.timestep: float = 1000.0
        self.unit = ""  # what the hooks wrap: "blocks" or "attention modules"
        self.counts = {"calls": 0, "computed": 0}  # since the last apply_accel (accel_work.watch)


_STATES: "weakref.WeakKeyDictionary[nn.Module, _State]" = weakref.WeakKeyDictionary()


def _real(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper (perf.compile=full): the real module


def _state(model: nn.Module) -> _State:
    model = _real(model)
    if model not in _STATES:
        _STATES[model] = _State()
    return _STATES[model]


def _key(accel: AccelConfig) -> tuple:
    m = accel.method
    if m == AccelMethod.first_block:
        return (m, accel.threshold)
    if m == AccelMethod.taylorseer:
        return (m, accel.cache_interval, accel.disable_cache_before_step, accel.disable_cache_after_step,
                accel.max_order, accel.granularity)
    if m == AccelMethod.pyramid_attention:
        return (m, accel.skip_range, tuple(accel.timestep_range))
    return (m,)


def hook_config(accel: AccelConfig, state: _State):
    """The diffusers config object of ``accel`` (None for ``none``)."""
    from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    m = accel.method
    if m == AccelMethod.first_block:
        return FirstBlockCacheConfig(threshold=accel.threshold)
    if m == AccelMethod.taylorseer:
        after = None if accel.disable_cache_after_step < 0 else accel.disable_cache_after_step
        blocks = [r"^transformer_blocks\.\d+$"] if accel.granularity == Granularity.block else None  # None: attention
        return TaylorSeerCacheConfig(cache_interval=accel.cache_interval, max_order=accel.max_order,
                                     disable_cache_before_step=accel.disable_cache_before_step,
                                     disable_cache_after_step=after, cache_identifiers=blocks,
                                     # None: each factor in its output's dtype. diffusers' default, bf16, would round
                                     # fp32 runs; fp32 doubles a bf16 run's state (10 GB at 1328x1328 at block
                                     # granularity, run44) for nothing: the differences are taken in the outputs' dtype
                                     taylor_factors_dtype=None)
    if m == AccelMethod.pyramid_attention:
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=accel.skip_range,
            spatial_attention_timestep_skip_range=tuple(accel.timestep_range),
            current_timestep_callback=lambda: state.timestep,
        )
    return None


def apply_accel(model: nn.Module, accel: AccelConfig) -> None:
    """Make exactly ``accel`` active on ``model`` (a no-op when it already is)."""
    state = _state(model)
    state.counts.update(calls=0, computed=0)  # ``work`` counts from here: generate applies its accel every run
    key = _key(accel)
    if key == state.key:
        return
    compiled = is_compiled(model)
    if accel.method != AccelMethod.none and compiled and (model is not _real(model) or not hooks_on_blocks(accel)):
        raise AccelError(
            f"accel={accel.name} (accel.method={accel.method.value}) on a compiled transformer (perf.compile="
            "regional / full): its hooks decide per step in Python inside the blocks (or around the whole model), "
            "which compiled code cannot trace. Use perf.compile=none, accel=none, or with perf.compile=regional "
            "accel=first_block or accel=taylorseer accel.granularity=block (hooks on whole blocks, which then run "
            "compiled beneath them)"
        )
    real = _real(model)
    if state.key[0] != AccelMethod.none:
        real.disable_cache()
        unwatch(real)
        move_above_hooks(real)
    state.key = (AccelMethod.none,)
    config = hook_config(accel, state)
    if config is not None:
        if compiled:
            move_beneath_hooks(real)
        real.enable_cache(config)
        state.key, state.unit = key, "blocks" if hooks_on_blocks(accel) else "attention modules"
        watch(real, state.counts)


def active(model: nn.Module) -> AccelMethod:
    """The method now applied on ``model``."""
    return _state(model).key[0]


def work(model: nn.Module) -> dict | None:
    """The hooked modules' calls since ``apply_accel`` (each ``generate``) and how many computed; None without a
    method."""
    state = _state(model)
    return None if state.key[0] == AccelMethod.none else {"unit": state.unit, **state.counts}


def reset(model: nn.Module) -> None:
    """Forget every cached tensor and step count: each denoise call starts as a fresh generation."""
    if active(model) != AccelMethod.none:
        _real(model)._reset_stateful_cache()


@contextmanager
def fresh(model: nn.Module) -> Iterator[None]:
    """One denoise call: the hooks start with no cached output of an earlier run or batch, and what they cached is
    released when it ends (a full-size run's state is GBs, which the next cell of a sweep needs)."""
    reset(model)
    try:
        yield
    finally:
        reset(model)


@contextmanager
def step(model: nn.Module, name: str, timestep: float) -> Iterator[None]:
    """One transformer call of the loop: ``name`` (cond / uncond / batch) selects the hooks' cache slot."""
    if active(model) == AccelMethod.none:  # nothing registered: no hook registry is created (bit-identical)
        yield
        return
    state = _state(model)
    state.timestep = float(timestep)
    with _real(model).cache_context(name):
        yield
