"""The ``precision`` group (conf/precision/): dtypes, weight storage, quantisation, memory mode."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

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


class Fp8Scale(str, Enum):
    """How many scales fp8_torchao keeps: per row (activations per token, weights per output channel) or one
    per tensor (cuBLAS's plain fp8 GEMM; speed and error in benchmarks/README.md)."""

    row = "row"
    tensor = "tensor"


class MemoryMode(str, Enum):
    all_on_device = "all_on_device"  # every model resident on the device
    model_offload = "model_offload"  # one model on the GPU at a time (accelerate cpu_offload_with_hook)
    group_offload = "group_offload"  # transformer + text encoder streamed block by block (diffusers group offload)


class EncoderMemory(str, Enum):
    """Where the text encoder lives (``precision.encoder_memory``); null follows ``memory``."""

    resident = "resident"  # on the device the whole run
    stream = "stream"  # block by block from pinned host memory, the next block prefetched on a side stream
    cpu = "cpu"  # encodes on the CPU; only the conditioning moves to the device
    model_offload = "model_offload"  # moved whole to the device for each encode (accelerate hook ring)


@dataclass
class PrecisionConfig:
    """Dtypes of each model plus the transformer's storage / quantisation and the memory mode."""

    name: str = "fp32"
    transformer: DType = DType.float32  # compute dtype of the transformer
    text_encoder: DType = DType.float32
    vae: DType = DType.float32
    transformer_storage: WeightStorage = WeightStorage.same
    quantization: Quantization = Quantization.none
    fp8_scale: Fp8Scale = Fp8Scale.row  # quantization=fp8_torchao only
    memory: MemoryMode = MemoryMode.all_on_device
    group_offload_blocks: int = 1  # blocks per group in memory=group_offload
    # the text encoder on its own (issue 19): its placement (null: follows ``memory``: all_on_device ->
    # resident, model_offload -> model_offload, group_offload -> stream) and its weight storage (fp8: each
    # layer upcast to precision.text_encoder for its forward; half the bytes to hold or to stream)
    encoder_memory: Optional[EncoderMemory] = None
    text_encoder_storage: WeightStorage = WeightStorage.same

    @property
    def encoder_placement(self) -> EncoderMemory:
        """``encoder_memory`` with null resolved from ``memory``."""
        if self.encoder_memory is not None:
            return EncoderMemory(self.encoder_memory)
        return {MemoryMode.all_on_device: EncoderMemory.resident, MemoryMode.model_offload: EncoderMemory.model_offload,
                MemoryMode.group_offload: EncoderMemory.stream}[MemoryMode(self.memory)]

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
        if Fp8Scale(self.fp8_scale) != Fp8Scale.row and self.quantization != Quantization.fp8_torchao:
            raise ConfigError(
                f"precision {self.name!r}: fp8_scale={Fp8Scale(self.fp8_scale).value} sets the scales of "
                f"quantization=fp8_torchao, but quantization={Quantization(self.quantization).value}; use "
                "precision=fp8_torchao or drop precision.fp8_scale"
            )
        if self.text_encoder_storage != WeightStorage.same and self.text_encoder == DType.float32:
            raise ConfigError(
                f"precision {self.name!r}: text_encoder_storage={WeightStorage(self.text_encoder_storage).value} upcasts "
                "each layer to precision.text_encoder for its forward; set precision.text_encoder=bfloat16"
            )
        placement = self.encoder_memory is not None and EncoderMemory(self.encoder_memory)
        if placement == EncoderMemory.model_offload and self.memory != MemoryMode.model_offload:
            raise ConfigError(
                "precision.encoder_memory=model_offload chains the encoder into the model-offload ring of "
                f"precision.memory=model_offload, but precision.memory={MemoryMode(self.memory).value}; use stream, "
                "resident or cpu"
            )
        if self.memory == MemoryMode.model_offload and placement not in (False, EncoderMemory.model_offload):
            raise ConfigError(
                f"precision.encoder_memory={placement.value} with precision.memory=model_offload: the offload ring "
                "moves every model; leave encoder_memory null, or use precision.memory=group_offload"
            )
        if self.group_offload_blocks < 1:
            raise ConfigError(f"precision.group_offload_blocks must be >= 1, got {self.group_offload_blocks}")
