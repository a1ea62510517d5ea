"""The ``lora`` group (conf/lora/): LoRA files and strengths, as values.

The LoRA rules, in one place: the values of an item here (file given, finite strength) and the
combinations with precision / perf that cannot run (``check_lora_fits``); where a file name points
(model roots) is checked once per config by the build step (``workbench.config.build.to_run_config``
through ``workbench.config.preflight``); what the file holds and how it is applied is ``workbench.lora``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from workbench.config.common import MISSING
from workbench.config.perf import CompileMode, PerfConfig
from workbench.config.precision import PrecisionConfig, Quantization
from workbench.errors import ConfigError


class LoraAlpha(str, Enum):
    apply = "apply"  # scale by alpha / rank where the file has X.alpha (ComfyUI, kohya, lightx2v, diffusers)
    ignore = "ignore"  # never read X.alpha (DiffSynth-Studio GeneralLoRALoader)


@dataclass
class LoraItem:
    """One LoRA file: a path, or a name under ``<root>/loras/`` of the model roots (see ``workbench.lora``)."""

    file: str = MISSING
    strength: float = 1.0  # 0 = exactly no LoRA; negative values subtract it
    alpha: LoraAlpha = LoraAlpha.apply  # tools disagree on .alpha: pick the one the file was made for

    def __post_init__(self) -> None:
        if not str(self.file).strip():
            raise ConfigError("lora.items[].file is empty: give a path or a name under ./models/loras/")
        if not math.isfinite(self.strength):
            raise ConfigError(
                f"lora.items[].strength={self.strength} (file {self.file!r}) is not a finite number; expected a "
                "finite number (1 = full strength, 0 = no LoRA, negative subtracts it)"
            )


@dataclass
class LoraConfig:
    """LoRAs applied to the transformer through hooks; changing them never reloads the model."""

    name: str = "none"
    items: list[LoraItem] = field(default_factory=list)
    fuse: bool = False  # merge into the weights (faster steps; exact unfuse on the next change)


def check_lora_fits(lora: LoraConfig, precision: PrecisionConfig, perf: PerfConfig) -> None:
    """LoRA x compile x fp8 combinations ``workbench.lora`` refuses, caught before any model loads."""
    if not any(i.strength != 0.0 for i in lora.items):
        return
    if precision.quantization == Quantization.fp8_torchao and lora.fuse:
        raise ConfigError(
            f"lora.fuse=true with precision={precision.name} (quantization=fp8_torchao): fusing into the "
            "quantised fp8 weights would drop the quantisation. Use lora.fuse=false with perf.compile=none "
            "(hooks on the fp8 layers), or precision=bf16 to fuse"
        )
    if perf.compile != CompileMode.none and not lora.fuse:
        raise ConfigError(
            f"lora.items as hooks (lora.fuse=false) with perf.compile={perf.compile.value} (perf={perf.name}): "
            "hooks cannot run inside compiled blocks. Set lora.fuse=true (merged into the weights, no "
            "recompile on strength changes) or perf.compile=none"
        )
