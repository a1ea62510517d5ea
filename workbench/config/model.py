"""The ``model`` group (conf/model/): which weights, and the sizes of the embedded tiny model."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from workbench.errors import ConfigError


class ModelSource(str, Enum):
    tiny = "tiny"  # embedded random-weight model of the real architecture
    files = "files"  # checkpoints found under the model roots (`workbench models` lists them)


class Variant(str, Enum):
    t2i = "t2i"
    edit = "edit"
    edit_2509 = "edit_2509"
    edit_2511 = "edit_2511"  # transformer with zero_cond_t=True
    t2i_2512 = "t2i_2512"  # Qwen-Image-2512: the t2i architecture, refreshed weights
    layered = "layered"  # Qwen-Image-Layered: an image -> N RGBA layers (RGBA VAE, layer-3D RoPE)
    qwen21 = "qwen21"  # Qwen-Image-2.1: Qwen3-VL encoder, single-stream DiT, RGBA VAE (t2i + up to 10 refs)
    qwen21_turbo = "qwen21_turbo"  # 2.1-Turbo: the same architecture, 8 fixed sigmas (sampler=qwen21_turbo)

    @property
    def family(self) -> str:
        """``qwen-image`` (the 20B family) or ``qwen-image-2.1``: which architecture the variant builds."""
        return "qwen-image-2.1" if self in (Variant.qwen21, Variant.qwen21_turbo) else "qwen-image"


@dataclass
class TextEncoderSize:
    """Qwen2.5-VL language model sizes (the 7B: 3584 / 28 layers / 28 heads / 4 kv heads)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    mrope_section: list[int] = field(default_factory=lambda: [2, 3, 3])  # sums to head_dim / 2


@dataclass
class VisionSize:
    """Qwen2.5-VL vision tower sizes (the 7B: depth 32, 1280 wide, 16 heads)."""

    depth: int = 2
    hidden_size: int = 32
    num_heads: int = 2
    intermediate_size: int = 64
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1])


@dataclass
class TransformerSize:
    """QwenImageTransformer2DModel sizes (the 20B: 60 layers, 24 heads x 128)."""

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])  # sums to head_dim


@dataclass
class VaeSize:
    base_dim: int = 16
    num_res_blocks: int = 1


@dataclass
class TinySpec:
    text_encoder: TextEncoderSize = field(default_factory=TextEncoderSize)
    vision: VisionSize = field(default_factory=VisionSize)
    transformer: TransformerSize = field(default_factory=TransformerSize)
    vae: VaeSize = field(default_factory=VaeSize)


@dataclass
class ModelConfig:
    name: str = "tiny"
    # one line a researcher reads (the model panel's dropdown label); not used to build anything
    description: str = ""
    source: ModelSource = ModelSource.tiny
    variant: Variant = Variant.t2i
    seed: int = 0  # weight-init seed of the embedded tiny model
    tiny: TinySpec = field(default_factory=TinySpec)
    # random weights created directly on the run's device in its dtypes (full-size random models
    # for GPU benchmarks); the default builds in float32 on the CPU, identical on every machine
    init_on_device: bool = False
    # source=tiny: a folder of trained weights (transformer.safetensors, vae.safetensors, trained.json)
    # loaded over the seeded build; "asset:NAME" is workbench/assets/NAME (model=tiny: asset:tiny_trained).
    # Not used with source=files.
    weights: Optional[str] = None
    # source=files: each component by the name `workbench models` shows (a file, a folder, or hf:org/name)
    transformer: Optional[str] = None
    text_encoder: Optional[str] = None
    vae: Optional[str] = None
    roots: list[str] = field(default_factory=list)  # empty: $WORKBENCH_MODELS (os.pathsep-separated), else ./models
    # What single files cannot tell (head sizes, RoPE axes, full-attention blocks): "real" uses
    # Qwen-Image's (heads of 128 / vision 80, rope 16+56+56), "tiny" takes them from model.tiny.
    arch_rules: str = "real"

    def __post_init__(self) -> None:
        slots = ("transformer", "text_encoder", "vae")
        if self.variant.family == "qwen-image-2.1" and self.weights:
            raise ConfigError(
                f"model.weights is set with model.variant={self.variant.value}: trained tiny weights exist for "
                "the 20B family only; remove model.weights (model=tiny_qwen21 is random-weight)"
            )
        if self.arch_rules not in ("real", "tiny"):
            raise ConfigError(f"model.arch_rules must be 'real' or 'tiny', got {self.arch_rules!r}")
        if self.source == ModelSource.files:
            unset = [f"model.{k}" for k in slots if not getattr(self, k)]
            if unset:
                raise ConfigError(
                    f"model.source=files but {', '.join(unset)} not set; give each the name shown by "
                    "`workbench models` (a file, a diffusers folder or hf:org/name)"
                )
        else:
            given = [f"model.{k}" for k in slots if getattr(self, k)]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} set but model.source={self.source.value}; use model.source=files "
                    "to load files, or remove them"
                )
