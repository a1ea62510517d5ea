"""The config: one dataclass module per group of ``conf/`` (pure values and their checks) and the build
door ``workbench.config.build`` (YAML / Hydra overrides -> these objects; the only Hydra user).

Every schema name is importable from here; the build functions (``compose``, ``to_run_config``, ...)
too, loaded on first use so that importing a dataclass never imports Hydra.
"""

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
from workbench.config.perf import CompileMode, InductorMode, PerfConfig
from workbench.config.precision import DType, MemoryMode, PrecisionConfig, Quantization, WeightStorage
from workbench.config.reference import ReferenceConfig, ReferencePolicy, Resample, VaeFit
from workbench.config.run import Config
from workbench.config.sampler import CfgBatching, Guidance, SamplerConfig, SchedulerKind, ShiftMode
from workbench.config.template import ControlTokens, TemplateConfig
from workbench.errors import ConfigError

_BUILD = ("ComposeError", "compose", "compose_many", "config_dir", "describe_error", "load_template", "options",
          "override_value", "register_configs", "to_run_config")

__all__ = [
    "CfgBatching", "CompileMode", "Config", "ConfigError", "ControlTokens", "DType", "ExecutorConfig",
    "ExecutorName", "Guidance", "InductorMode", "LoraAlpha", "LoraConfig", "LoraItem", "MemoryMode",
    "ModelConfig", "ModelSource", "PerfConfig", "PrecisionConfig", "Quantization", "ReferenceConfig",
    "ReferencePolicy", "Resample", "SamplerConfig", "SchedulerKind", "ShiftMode", "TemplateConfig",
    "TextEncoderSize", "TinySpec", "TransformerSize", "VaeFit", "VaeSize", "Variant", "VisionSize",
    "WeightStorage", "check_lora_fits", *_BUILD,
]


def __getattr__(name: str):
    # lazy: the build module imports Hydra and the preflight checks; a dataclass import must not
    if name in _BUILD:
        import importlib

        return getattr(importlib.import_module("workbench.config.build"), name)
    raise AttributeError(f"module 'workbench.config' has no attribute {name!r}")
