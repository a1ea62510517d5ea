"""Structured config schema: every YAML file under ``conf/`` is type-checked against these.

Registered in Hydra's ConfigStore (``register_configs``) so that an unknown key, a wrong type or an
enum value outside the allowed set fails at compose time with Hydra's message naming the key.
Semantic checks that a type cannot express (prompt not empty, sizes multiple of 16, steps >= 1)
live in ``__post_init__``; they run when ``OmegaConf.to_object`` turns the composed config into
these dataclasses (see ``workbench.config.compose.to_run_config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value is wrong; the message names the key, what was found and what is expected."""


class ModelSource(str, Enum):
    tiny = "tiny"  # embedded random-weight model of the real architecture
    files = "files"  # checkpoints found under the model roots (`workbench models` lists them)


class Variant(str, Enum):
    t2i = "t2i"
    edit = "edit"
    edit_2509 = "edit_2509"
    edit_2511 = "edit_2511"  # transformer with zero_cond_t=True


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class ShiftMode(str, Enum):
    dynamic = "dynamic"  # Qwen-Image: mu linear in image tokens, exponential time shift
    fixed = "fixed"  # ComfyUI ModelSamplingAuraFlow / Lightning: static shift


class Guidance(str, Enum):
    true_cfg = "true_cfg"  # diffusers: CFG, then rescale each token to the conditional norm
    cfg = "cfg"  # DiffSynth / ComfyUI KSampler: plain CFG
    cfg_norm = "cfg_norm"  # ComfyUI CFGNorm node: plain CFG, x0 rescaled to the conditional norm (<= 1)


class CfgBatching(str, Enum):
    auto = "auto"  # one batched forward when cond and uncond have equal length, else two
    padded = "padded"  # always one batched forward, shorter prompt padded + attention mask
    separate = "separate"  # always two forwards (diffusers)


class SchedulerKind(str, Enum):
    euler = "euler"  # diffusers FlowMatchEulerDiscreteScheduler (the Qwen-Image default)
    heun = "heun"  # second order on the same sigmas (two model calls per step, none on the last)
    unipc = "unipc"  # diffusers UniPCMultistepScheduler with flow sigmas


# ----------------------------------------------------------------------------- model sizes
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
    source: ModelSource = ModelSource.tiny
    variant: Variant = Variant.t2i
    seed: int = 0  # weight-init seed of the embedded tiny model
    tiny: TinySpec = field(default_factory=TinySpec)
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


# ----------------------------------------------------------------------------- template
@dataclass
class TemplateConfig:
    """A prompt template as data.

    ``text`` holds one ``{prompt}`` slot and, for edit templates, one ``{images}`` slot that is
    filled with ``image_slot`` once per reference image (``{n}`` = 1-based image number).
    Everything up to and including ``drop_until`` (first occurrence) is the system prefix whose
    hidden states are dropped; ``null`` keeps every token. The drop count is computed by the
    tokenizer, never written down.
    """

    name: str = MISSING
    text: str = MISSING
    image_slot: str = "<|vision_start|><|image_pad|><|vision_end|>"
    drop_until: Optional[str] = "<|im_start|>user\n"
    min_images: int = 0
    max_images: int = 0

    def __post_init__(self) -> None:
        if self.text.count("{prompt}") != 1:
            raise ConfigError(
                f"template '{self.name}': key 'text' must contain exactly one '{{prompt}}' slot, "
                f"found {self.text.count('{prompt}')}"
            )
        has_images = "{images}" in self.text
        if self.max_images > 0 and not has_images:
            raise ConfigError(
                f"template '{self.name}': max_images={self.max_images} but key 'text' has no "
                "'{images}' slot; add one or set max_images: 0"
            )
        if has_images and self.max_images == 0:
            raise ConfigError(
                f"template '{self.name}': key 'text' has an '{{images}}' slot but max_images is 0; "
                "set min_images / max_images"
            )
        if self.min_images > self.max_images:
            raise ConfigError(
                f"template '{self.name}': min_images={self.min_images} > max_images={self.max_images}"
            )
        if self.drop_until is not None and self.drop_until not in self.text:
            raise ConfigError(
                f"template '{self.name}': drop_until {self.drop_until!r} does not occur in key 'text'; "
                "use the marker that ends the system prefix, or null to keep every token"
            )
        if self.drop_until is not None and self.text.index(self.drop_until) > self.text.index("{prompt}"):
            raise ConfigError(
                f"template '{self.name}': drop_until {self.drop_until!r} comes after '{{prompt}}' in key "
                "'text'; the dropped prefix must end before the prompt"
            )


# ----------------------------------------------------------------------------- sampler
@dataclass
class SamplerConfig:
    name: str = "flow_euler"
    scheduler: SchedulerKind = SchedulerKind.euler
    steps: int = 20
    cfg: float = 1.0  # guidance scale; 1 = off (one forward per step)
    guidance: Guidance = Guidance.true_cfg
    cfg_norm_strength: float = 1.0  # guidance=cfg_norm only: ComfyUI CFGNorm "strength"
    # padded batches force a masked attention kernel: measured SLOWER than two forwards on an H100
    # (0.796 vs 0.642 s at 1328x1328, benchmarks/results), hence "auto"
    cfg_batching: CfgBatching = CfgBatching.auto
    shift_mode: ShiftMode = ShiftMode.dynamic
    shift: float = 1.0  # used when shift_mode=fixed (ComfyUI AuraFlow 3.0 / 3.1, Lightning 3)
    shift_terminal: Optional[float] = 0.02  # terminal stretch (dynamic mode); null = off
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    base_shift: float = 0.5
    max_shift: float = 0.9

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {self.steps}")
        if self.cfg < 1.0:
            raise ConfigError(f"sampler.cfg must be >= 1 (1 turns guidance off), got {self.cfg}")
        if self.steps == 1 and self.shift_mode == ShiftMode.dynamic and self.shift_terminal is not None:
            raise ConfigError(
                "sampler.steps=1 with shift_terminal set gives NaN sigmas (the terminal stretch divides "
                "by zero); use steps >= 2, or sampler.shift_terminal=null"
            )


# ----------------------------------------------------------------------------- lora
class LoraAlpha(str, Enum):
    apply = "apply"  # scale by alpha / rank where the file has X.alpha (ComfyUI, kohya, lightx2v, diffusers)
    ignore = "ignore"  # never read X.alpha (DiffSynth-Studio GeneralLoRALoader)


@dataclass
class LoraItem:
    """One LoRA file: a path, or a name under ``./models/loras/`` (see ``workbench.lora``)."""

    file: str = MISSING
    strength: float = 1.0  # 0 = exactly no LoRA; negative values subtract it
    alpha: LoraAlpha = LoraAlpha.apply  # tools disagree on .alpha: pick the one the file was made for

    def __post_init__(self) -> None:
        import math

        if not str(self.file).strip():
            raise ConfigError("lora.items[].file is empty: give a path or a name under ./models/loras/")
        if not math.isfinite(self.strength):
            raise ConfigError(f"lora.items[] {self.file!r}: strength must be a finite number, got {self.strength}")


@dataclass
class LoraConfig:
    """LoRAs applied to the transformer through hooks; changing them never reloads the model."""

    name: str = "none"
    items: list[LoraItem] = field(default_factory=list)
    fuse: bool = False  # merge into the weights (faster steps; exact unfuse on the next change)

    def __post_init__(self) -> None:
        from workbench.lora import resolve_lora_file  # fail at config time, before models load

        for i, item in enumerate(self.items):
            try:
                resolve_lora_file(item.file)
            except FileNotFoundError as err:
                raise ConfigError(f"lora.items[{i}].file: {err}") from None


# ----------------------------------------------------------------------------- precision
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


# ----------------------------------------------------------------------------- speed
class CompileMode(str, Enum):
    none = "none"
    regional = "regional"  # compile the repeated transformer block once (seconds)
    full = "full"  # compile the whole transformer (minutes)


@dataclass
class PerfConfig:
    """Speed switches of the diffusion transformer (workbench/perf.py); each measured in benchmarks/."""

    name: str = "eager"
    fast_attention: bool = False  # fused QKV + real-valued RoPE attention processor
    compile: CompileMode = CompileMode.none
    attention_backend: Optional[str] = None  # diffusers attention dispatcher backend, e.g. _native_cudnn


# ----------------------------------------------------------------------------- reference images
@dataclass
class ReferenceConfig:
    """How edit reference images are sized for the vision-language model and for the VAE."""

    name: str = "diffusers_edit_plus"
    vlm_area: int = 384 * 384  # target pixel count of the copy the text encoder sees
    vae_area: int = 1024 * 1024  # target pixel count of the copy the VAE encodes
    multiple_of: int = 32

    def __post_init__(self) -> None:
        if self.multiple_of % 16:
            raise ConfigError(f"reference.multiple_of must be a multiple of 16, got {self.multiple_of}")


# ----------------------------------------------------------------------------- top level
@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    prompts: list[str] = field(default_factory=lambda: ["a red fox in the snow"])
    negative_prompt: str = " "  # used when sampler.cfg > 1
    seeds: list[int] = field(default_factory=lambda: [0])
    images: list[str] = field(default_factory=list)  # reference images for edit templates
    height: Optional[int] = 128  # null: from the last reference image (edit)
    width: Optional[int] = 128
    snap_size: bool = False  # floor sides to multiples of 16 (noted in the record) instead of refusing
    batch_size: int = 1  # images per forward pass
    max_sequence_length: int = 1024
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts is empty: give at least one prompt, e.g. prompts='[a cat]'")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise ConfigError(f"prompts[{i}] is empty: write what the image should show")
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed, e.g. seeds='[0]'")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and (value < 16 or value % 16) and not self.snap_size:
                lo, hi = max(16, value // 16 * 16), (value // 16 + 1) * 16
                raise ConfigError(
                    f"{key}={value} is not a positive multiple of 16 (8x VAE x 2x2 patches); use {lo} or {hi}, "
                    "or snap_size=true to floor it (noted in the record)"
                )
        if (self.height is None) != (self.width is None):
            raise ConfigError("height and width must both be set or both be null")
        if self.height is None and not self.images:
            raise ConfigError("height/width are null but no reference images are given to take the size from")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        n = len(self.images)
        t = self.template
        if n < t.min_images or n > t.max_images:
            want = f"{t.min_images}" if t.min_images == t.max_images else f"{t.min_images}-{t.max_images}"
            raise ConfigError(
                f"template '{t.name}' takes {want} reference image(s) but images has {n}; "
                + ("pick an edit template (template=qwen_edit_plus)" if n else "pass images='[path.png]'")
            )
        if not 1 <= self.max_sequence_length <= 4096:
            raise ConfigError(f"max_sequence_length must be in 1..4096, got {self.max_sequence_length}")


def register_configs() -> None:
    """Register the schema: each group file merges into a typed field of ``Config``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
