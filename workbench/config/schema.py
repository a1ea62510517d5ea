"""Moved: the schema is one module per config group (workbench/config/model.py, template.py, ...,
run.py for the root ``Config``); the YAML side is workbench/config/build.py. This shim keeps the old
import path working until every caller imports from ``workbench.config``."""
# moved: see workbench.config (group modules) and workbench.config.build

from workbench.config import (  # noqa: F401
    CfgBatching,
    CompileMode,
    Config,
    ConfigError,
    ControlTokens,
    DType,
    ExecutorConfig,
    ExecutorName,
    Guidance,
    InductorMode,
    LoraAlpha,
    LoraConfig,
    LoraItem,
    MemoryMode,
    ModelConfig,
    ModelSource,
    PerfConfig,
    PrecisionConfig,
    Quantization,
    ReferenceConfig,
    ReferencePolicy,
    Resample,
    SamplerConfig,
    SchedulerKind,
    ShiftMode,
    TemplateConfig,
    TextEncoderSize,
    TinySpec,
    TransformerSize,
    VaeFit,
    VaeSize,
    Variant,
    VisionSize,
    WeightStorage,
)
from workbench.config.preflight import check_run_memory  # noqa: F401


def register_configs() -> None:  # moved: see workbench.config.build.register_configs
    from workbench.config.build import register_configs as register

    register()
