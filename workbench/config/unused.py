"""Settings a config accepts but its run does not use: a shift under the dynamic schedule, a negative prompt
without guidance, an accel knob of another method... diffusers and ComfyUI ignore them without a word, so a
sweep over one gives identical cells. One list, read twice: each run notes the ones it was given
(``unused_notes``), and a sweep refuses an axis whose key no cell uses (``workbench.sweep.plan``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workbench.config.perf import InductorMode
from workbench.config.run import Config
from workbench.values import plain

_DYNAMIC_ONLY = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
_ACCEL_KNOBS = {"threshold": "first_block", "cache_interval": "taylorseer", "disable_cache_before_step": "taylorseer",
                "disable_cache_after_step": "taylorseer", "max_order": "taylorseer", "granularity": "taylorseer",
                "skip_range": "pyramid_attention", "timestep_range": "pyramid_attention"}
_LAYERED_ONLY = ("layers", "layered_resolution", "layered_caption")
# read by sweeps only: the reference presets differ from the dataclass's defaults, so a note would follow
# every text-to-image run
_NOT_NOTED = ("reference",)


def ignored(cfg: Config) -> dict[str, str]:
    """{key: why this config's run does not read it}, whatever its value; a group's name ("reference") stands for
    all of its keys."""
    s, variant = cfg.sampler, plain(cfg.model.variant)
    out: dict[str, str] = {}
    if plain(s.shift_mode) == "dynamic":
        out["sampler.shift"] = "shift_mode=dynamic takes the shift from the image size (set sampler.shift_mode=fixed to use it)"
        if variant == "layered":  # its mu comes from the input image (stages.layers.shift_mu)
            out.update({f"sampler.{k}": "Layered takes its shift from the input image's size, as diffusers' pipeline"
                        for k in _DYNAMIC_ONLY})
    else:
        out.update({f"sampler.{k}": "shift_mode=fixed uses sampler.shift (set sampler.shift_mode=dynamic to use it)"
                    for k in _DYNAMIC_ONLY})
    if plain(s.guidance) != "cfg_norm":
        out["sampler.cfg_norm_strength"] = (f"it is the strength of guidance=cfg_norm and sampler.guidance="
                                            f"{plain(s.guidance)} (set sampler.guidance=cfg_norm to use it)")
    if s.cfg <= 1:
        no_guidance = "sampler.cfg=1 turns guidance off (set sampler.cfg above 1 to use it)"
        out.update({"negative_prompt": no_guidance, "sampler.guidance": no_guidance, "sampler.cfg_batching": no_guidance})
    method = plain(cfg.accel.method)
    out.update({f"accel.{knob}": f"it is a knob of accel={owner} and this run's accel.method is {method}"
                for knob, owner in _ACCEL_KNOBS.items() if owner != method})
    if variant != "layered":
        out.update({key: f"it acts on Layered only and model.variant={variant}" for key in _LAYERED_ONLY})
    if not cfg.images:
        out["reference"] = "it sizes reference images and images is empty"
    elif variant == "layered":
        out["reference"] = "Layered sizes its input image by layered_resolution"
    if plain(cfg.perf.compile) != "regional":
        out["perf.precompile"] = f"it saves the regional compile and perf.compile={plain(cfg.perf.compile)}"
    elif plain(cfg.perf.inductor_mode) in ("max-autotune", "reduce-overhead"):
        mode = InductorMode(plain(cfg.perf.inductor_mode)).name
        out["perf.precompile"] = (f"perf.inductor_mode={mode} captures CUDA graphs, which "
                                  "Dynamo's own cache path keeps (the block is traced in each process)")
    if variant not in ("qwen21", "qwen21_turbo"):
        out["perf.prefix_kv_cache"] = f"it acts on Qwen-Image-2.1 only and model.variant={variant}"
    else:
        out["perf.vae_single_frame"] = f"model.variant={variant} has Qwen-Image-2.1's VAE, built on 2-D convolutions already"
    return out


def why_ignored(cfg: Config, key: str) -> str | None:
    """Why ``key`` (a dotted key, or a group) is not read by this config's run; None when it is."""
    reasons = ignored(cfg)
    return reasons.get(key) or reasons.get(key.split(".")[0])


def unused_notes(cfg: Config) -> list[str]:
    """One note per ignored key this config sets away from its default (a preset's own values say nothing)."""
    notes = []
    for key, why in ignored(cfg).items():
        if key.split(".")[0] in _NOT_NOTED:
            continue
        value = plain(_value(cfg, key))
        if key == "negative_prompt" and value.strip():  # "" and the official " " both mean none
            notes.append(f"negative_prompt {value.strip()!r:.60} is not used: {why}")
        elif key != "negative_prompt" and value != plain(_default(key)):
            shown = f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else value
            notes.append(f"{key}={shown} is not used: {why}")
    return notes


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _default(key: str) -> Any:
    """The schema's default of a dotted key (``sampler.shift`` -> 1.0), read from the dataclasses."""
    cls: Any = Config
    for part in key.split("."):
        field = next(f for f in dataclasses.fields(cls) if f.name == part)
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        cls = type(value)
    return value
