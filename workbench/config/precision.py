"""The ``precision`` group (conf/precision/): dtypes, weight storage, quantisation, memory mode."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from workbench.errors import ConfigError


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class WeightStorage(str, Enum):
    same = "same"  # weights stored in the compute dtype
    float8_e4m3fn = "float8_e4m3fn"  # fp8 storage, upcast per layer to the compute dtype (diffusers layerwise casting)


class Quantization(str, Enum):
    none = "none"
    fp8_torchao = "fp8_torchao"  # fp8 GEMMs (torchao dynamic activation + weight, rowwise); CUDA, sm >= 89


class MemoryMode(str, Enum):
    all_on_device = "all_on_device"  # every model resident on the device
    model_offload = "model_offload"  # one model on the GPU at a time (accelerate cpu_offload_with_hook)
    group_offload = "group_offload"  # transformer + text encoder streamed block by block (diffusers group offload)


@dataclass
class PrecisionConfig:
    """Dtypes of each model plus the transformer's storage / quantisation and the memory mode."""

    name: str = "fp32"
    transformer: DType = DType.float32  # compute dtype of the transformer
    text_encoder: DType = DType.float32
    vae: DType = DType.float32
    transformer_storage: WeightStorage = WeightStorage.same
    quantization: Quantization = Quantization.none
    memory: MemoryMode = MemoryMode.all_on_device
    group_offload_blocks: int = 1  # blocks per group in memory=group_offload

    def __post_init__(self) -> None:
        if self.transformer_storage != WeightStorage.same and self.quantization != Quantization.none:
            raise ConfigError(
                f"precision {self.name!r}: transformer_storage={self.transformer_storage.value} and "
                f"quantization={self.quantization.value} both change the transformer weights; pick one"
            )
        if self.quantization == Quantization.fp8_torchao and self.transformer == DType.float32:
            raise ConfigError(
                f"precision {self.name!r}: quantization=fp8_torchao needs a bf16 transformer; set "
                "precision.transformer=bfloat16"
            )
        if self.group_offload_blocks < 1:
            raise ConfigError(f"precision.group_offload_blocks must be >= 1, got {self.group_offload_blocks}")
