"""Settings a config accepts but its run does not use: a shift under the dynamic schedule, a negative prompt
without guidance... diffusers and ComfyUI ignore them without a word, so a sweep over one gives identical
cells. One list, read twice: each run notes the ones it was given (``unused_notes``), and a sweep refuses an
axis whose key no cell uses (``workbench.sweep.plan``).
"""

from __future__ import annotations

from typing import Any

from workbench.config.run import Config
from workbench.config.sampler import SamplerConfig, ShiftMode
from workbench.values import plain

_DYNAMIC_ONLY = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")


def ignored(cfg: Config) -> dict[str, str]:
    """{key: why this config's run does not read it}, whatever the key's value."""
    s = cfg.sampler
    out: dict[str, str] = {}
    if plain(s.shift_mode) == ShiftMode.dynamic.value:
        out["sampler.shift"] = ("shift_mode=dynamic takes the shift from the image size (set sampler.shift_mode=fixed "
                                "to use it)")
        if plain(cfg.model.variant) == "layered":  # its mu comes from the input image (stages.layers.shift_mu)
            for key in _DYNAMIC_ONLY:
                out[f"sampler.{key}"] = "Layered takes its shift from the input image's size, as diffusers' pipeline"
    else:
        for key in _DYNAMIC_ONLY:
            out[f"sampler.{key}"] = "shift_mode=fixed uses sampler.shift (set sampler.shift_mode=dynamic to use it)"
    if plain(s.guidance) != "cfg_norm":
        out["sampler.cfg_norm_strength"] = (f"it is the strength of guidance=cfg_norm and sampler.guidance="
                                            f"{plain(s.guidance)} (set sampler.guidance=cfg_norm to use it)")
    if s.cfg <= 1:
        out["negative_prompt"] = "sampler.cfg=1 turns guidance off (set sampler.cfg above 1 to use it)"
    return out


def unused_notes(cfg: Config) -> list[str]:
    """One note per ignored key this config sets away from its default (a preset's own values say nothing)."""
    notes = []
    for key, why in ignored(cfg).items():
        value = _value(cfg, key)
        if not _is_default(key, value):
            shown = f" {value.strip()!r:.60}" if isinstance(value, str) else f"={value:g}"
            notes.append(f"{key}{shown} is not used: {why}")
    return notes


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _is_default(key: str, value: Any) -> bool:
    if key == "negative_prompt":
        return not value.strip()  # "" and the official " " both mean no negative prompt
    return value == getattr(SamplerConfig(), key.split(".", 1)[1])
