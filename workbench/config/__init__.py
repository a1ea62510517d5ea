"""The config: one dataclass module per group of ``conf/`` and the build door that fills them.

- ``model``, ``template``, ``sampler``, ``lora``, ``precision``, ``reference``, ``perf``, ``accel``, ``executor``
  (one module per ``conf/<group>/``) and ``run`` (the root ``Config``): dataclasses, enums and their
  value checks in ``__post_init__`` (prompt not empty, sizes multiples of 16, steps >= 1, no NaN / Inf,
  the bounds of ``limits``); no Hydra, no disk.
- ``build``: the only module that imports Hydra / OmegaConf. It registers ``Config`` in Hydra's
  ConfigStore, so an unknown key, a wrong type or an enum value outside the allowed set fails at
  compose time naming the key; ``to_run_config`` builds the dataclasses and then runs the checks
  that need the machine or the files (``preflight``), once, before any model loads.

Every schema name is importable from here; the build functions (``compose``, ``to_run_config``, ...)
too, loaded on first use so that importing a dataclass never imports Hydra.
"""

from workbench.config.accel import AccelConfig, AccelMethod, Granularity, check_accel_fits
from workbench.config.executor import ExecutorConfig, ExecutorName
from workbench.config.lora import LoraAlpha, LoraConfig, LoraItem, check_lora_fits
from workbench.config.model import (
    ModelConfig,
    ModelSource,
    TextEncoderSize,
    TinySpec,
    TransformerSize,
    VaeSize,
    Variant,
    VisionSize,
)
from workbench.config.overrides import escape_interpolation, literal, override_value
from workbench.config.perf import AttentionKernel, CompileMode, InductorMode, PerfConfig
from workbench.config.precision import DType, EncoderMemory, Fp8Scale, MemoryMode, PrecisionConfig, Quantization, WeightStorage
from workbench.config.reference import ReferenceConfig, ReferencePolicy, Resample, VaeFit
from workbench.config.run import Config
from workbench.config.sampler import CfgBatching, Guidance, SamplerConfig, SchedulerKind, ShiftMode
from workbench.config.template import ControlTokens, TemplateConfig
from workbench.errors import ConfigError

_BUILD = ("ComposeError", "compose", "compose_many", "config_dir", "describe_error", "edit_templates", "group_config",
          "load_template", "option_data", "options", "record_config", "register_configs", "resolved", "to_object",
          "to_run_config")

__all__ = [
    "AccelConfig", "AccelMethod", "CfgBatching", "Granularity", "CompileMode", "Config", "ConfigError", "ControlTokens", "DType", "ExecutorConfig",
    "AttentionKernel", "EncoderMemory", "ExecutorName", "Guidance", "InductorMode", "LoraAlpha", "LoraConfig", "LoraItem", "MemoryMode",
    "Fp8Scale", "ModelConfig", "ModelSource", "PerfConfig", "PrecisionConfig", "Quantization", "ReferenceConfig",
    "ReferencePolicy", "Resample", "SamplerConfig", "SchedulerKind", "ShiftMode", "TemplateConfig",
    "TextEncoderSize", "TinySpec", "TransformerSize", "VaeFit", "VaeSize", "Variant", "VisionSize",
    "WeightStorage", "check_accel_fits", "check_lora_fits", "escape_interpolation", "literal", "override_value", *_BUILD,
]


def __getattr__(name: str):
    # lazy: the build module imports Hydra and the preflight checks; a dataclass import must not
    if name in _BUILD:
        import importlib

        return getattr(importlib.import_module("workbench.config.build"), name)
    raise AttributeError(f"module 'workbench.config' has no attribute {name!r}")
