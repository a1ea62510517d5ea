"""Structured config schema: every YAML file under ``conf/`` is type-checked against these.

Registered in Hydra's ConfigStore (``register_configs``) so that an unknown key, a wrong type or an
enum value outside the allowed set fails at compose time with Hydra's message naming the key.
Semantic checks that a type cannot express (prompt not empty, sizes multiple of 16, steps >= 1)
live in ``__post_init__``; they run when ``OmegaConf.to_object`` turns the composed config into
these dataclasses (see ``workbench.config.compose.to_run_config``). Every float field refuses NaN /
Inf, and sizes, steps, batches, prompts and seeds are bounded by the limits documented in
``workbench.config.limits`` (each error names the value and the limit), all before any model loads.
"""

from __future__ import annotations

from workbench.errors import InputError
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from workbench.config import limits


class ConfigError(InputError):
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
class ControlTokens(str, Enum):
    refuse = "refuse"  # a prompt holding special-token text (<|im_end|>...) is an error
    escape = "escape"  # such text is tokenized as plain BPE pieces, never as control ids


_IM = ("<|im_start|>", "<|im_end|>")
_VISION = ("<|vision_start|>", "<|vision_end|>")
_IMAGE_PAD = "<|image_pad|>"


def _special_sequence(text: str, tokens: tuple[str, ...]) -> list[str]:
    """The occurrences of ``tokens`` in ``text``, in order."""
    import re

    return re.findall("|".join(re.escape(t) for t in tokens), text)


def _check_special_balance(t: "TemplateConfig") -> None:
    r"""Unbalanced chat / vision markers silently change what the model sees: refuse them at load time.

    ``<|im_start|>`` / ``<|im_end|>`` must alternate; only the last block may stay open (the
    ``<|im_start|>assistant\n`` generation prompt of the official templates). ``<|vision_start|>`` /
    ``<|vision_end|>`` must pair up exactly, in ``image_slot`` and in ``text``; an image slot holds
    exactly one ``<|image_pad|>`` inside its vision pair.
    """
    opened = False
    for tok in _special_sequence(t.text, _IM):
        if tok == _IM[0] and opened:
            raise ConfigError(
                f"template '{t.name}': key 'text' opens {_IM[0]} twice without {_IM[1]} in between; "
                f"close each block with {_IM[1]} (only the last, e.g. '{_IM[0]}assistant\\n', may stay open)"
            )
        if tok == _IM[1] and not opened:
            raise ConfigError(
                f"template '{t.name}': key 'text' has {_IM[1]} without a matching {_IM[0]} before it; "
                f"open the block with {_IM[0]} or remove the {_IM[1]}"
            )
        opened = tok == _IM[0]
    for key, text in (("image_slot", t.image_slot), ("text", t.text)):
        if key == "image_slot" and t.max_images == 0:
            continue  # the slot is never used
        inside = False
        for tok in _special_sequence(text, _VISION + (_IMAGE_PAD,)):
            if tok == _IMAGE_PAD and not inside:
                raise ConfigError(
                    f"template '{t.name}': key '{key}' has {_IMAGE_PAD} outside a "
                    f"{_VISION[0]}...{_VISION[1]} pair; write '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
                )
            if tok == _VISION[0] and inside or tok == _VISION[1] and not inside:
                raise ConfigError(
                    f"template '{t.name}': key '{key}' has unbalanced {_VISION[0]} / {_VISION[1]}; "
                    f"write each image as '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
                )
            if tok in _VISION:
                inside = tok == _VISION[0]
        if inside:
            raise ConfigError(
                f"template '{t.name}': key '{key}' has {_VISION[0]} without {_VISION[1]}; "
                f"write each image as '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
            )
    if t.max_images > 0 and t.image_slot.count(_IMAGE_PAD) != 1:
        raise ConfigError(
            f"template '{t.name}': key 'image_slot' must hold exactly one {_IMAGE_PAD} (one per image), "
            f"found {t.image_slot.count(_IMAGE_PAD)}"
        )
    if _IMAGE_PAD in t.text:
        raise ConfigError(
            f"template '{t.name}': key 'text' holds {_IMAGE_PAD} itself; put image slots in 'image_slot' "
            "and reference them with '{images}'"
        )


@dataclass
class TemplateConfig:
    r"""A prompt template as data.

    ``text`` holds one ``{prompt}`` slot and, for edit templates, one ``{images}`` slot that is
    filled with ``image_slot`` once per reference image (``{n}`` = 1-based image number).
    Everything up to and including ``drop_until`` (first occurrence) is the system prefix whose
    hidden states are dropped; ``null`` keeps every token. The drop count is computed by the
    tokenizer, never written down. ``drop_until`` may be any marker string, not only the official
    ``<|im_start|>user\n``: a custom template such as ``"### Task: draw.\n### Prompt:\n{prompt}"``
    with ``drop_until: "### Prompt:\n"`` drops exactly the tokens covering ``### Task: draw.\n###
    Prompt:\n`` (the tokenizer must place a token boundary right after the marker; see templates.py).

    ``control_tokens`` says what happens to a prompt that contains special-token text such as
    ``<|im_end|>``: ``refuse`` (an error naming the tokens) or ``escape`` (the prompt is tokenized
    as plain text: ``<|im_end|>`` becomes ordinary BPE pieces, never the control id).

    From a notebook cell, build one directly and pass it to ``Workbench.encode``::

        from workbench.config.schema import TemplateConfig
        mine = TemplateConfig(
            name="terse",
            text="<|im_start|>system\nDraw exactly this.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n",
        )
        cond = bench.encode(["a red fox"], mine)   # drop count computed from the text: 12 tokens

    or load one from YAML with ``workbench.templates.load_template(path)``.
    """

    name: str = MISSING
    text: str = MISSING
    image_slot: str = "<|vision_start|><|image_pad|><|vision_end|>"
    drop_until: Optional[str] = "<|im_start|>user\n"
    min_images: int = 0
    max_images: int = 0
    control_tokens: ControlTokens = ControlTokens.refuse

    def __post_init__(self) -> None:
        try:
            self.control_tokens = ControlTokens(self.control_tokens)  # a plain string from a notebook cell
        except ValueError:
            raise ConfigError(
                f"template '{self.name}': control_tokens={self.control_tokens!r}; expected one of "
                f"{[m.value for m in ControlTokens]} (template.control_tokens=refuse|escape)"
            ) from None
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
        _check_special_balance(self)


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
        limits.check_finite_fields(self, "sampler.", {
            "cfg": f"a number in 1..{limits.MAX_CFG:g} (1 turns guidance off)",
            "cfg_norm_strength": "a number >= 0 (ComfyUI CFGNorm strength)",
            "shift": "a number > 0 (fixed shift, e.g. 3.0)",
            "shift_terminal": "a number in (0, 1), or null to turn the terminal stretch off",
        }, ConfigError)
        if self.steps < 1:
            raise ConfigError(f"sampler.steps must be >= 1, got {self.steps}")
        if self.steps > limits.MAX_STEPS:
            raise ConfigError(f"sampler.steps={self.steps} is over the limit of {limits.MAX_STEPS} steps; "
                              "Qwen-Image needs 20-50 (Lightning LoRAs 4-8)")
        if self.cfg < 1.0:
            raise ConfigError(f"sampler.cfg must be >= 1 (1 turns guidance off), got {self.cfg}")
        if self.cfg > limits.MAX_CFG:
            raise ConfigError(f"sampler.cfg={self.cfg} is over the limit of {limits.MAX_CFG:g}; Qwen-Image uses 2.5-5")
        if self.shift <= 0:
            raise ConfigError(f"sampler.shift must be > 0, got {self.shift}; ComfyUI uses 3.1 (Lightning 3)")
        if self.shift_terminal is not None and not 0.0 < self.shift_terminal < 1.0:
            raise ConfigError(f"sampler.shift_terminal must be in (0, 1) or null, got {self.shift_terminal}")
        if self.cfg_norm_strength < 0:
            raise ConfigError(f"sampler.cfg_norm_strength must be >= 0, got {self.cfg_norm_strength}")
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
    """One LoRA file: a path, or a name under ``<root>/loras/`` of the model roots (see ``workbench.lora``)."""

    file: str = MISSING
    strength: float = 1.0  # 0 = exactly no LoRA; negative values subtract it
    alpha: LoraAlpha = LoraAlpha.apply  # tools disagree on .alpha: pick the one the file was made for

    def __post_init__(self) -> None:
        import math

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

    # The files are resolved by ``Config.__post_init__``: names are looked up under model.roots,
    # which this section cannot see.


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


class InductorMode(str, Enum):
    """torch.compile ``mode`` (TorchInductor); the speed of each is in benchmarks/README.md."""

    default = "default"
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"  # autotuned GEMMs, fused epilogues
    max_autotune = "max-autotune"  # the same + CUDA graphs
    reduce_overhead = "reduce-overhead"  # CUDA graphs only


@dataclass
class PerfConfig:
    """Speed switches of the diffusion transformer (workbench/perf.py); each measured in benchmarks/."""

    name: str = "eager"
    fast_attention: bool = False  # fused QKV + real-valued RoPE attention processor
    compile: CompileMode = CompileMode.none
    inductor_mode: InductorMode = InductorMode.default  # only used when compile != none
    attention_backend: Optional[str] = None  # diffusers attention dispatcher backend, e.g. _native_cudnn


# ----------------------------------------------------------------------------- reference images
class ReferencePolicy(str, Enum):
    # aspect-kept ~area, both sides rounded to multiple_of (32), Lanczos resize (diffusers pipelines)
    diffusers = "diffusers"
    # side * sqrt(area / (w * h)) with Python round(), "area" resize (ComfyUI TextEncodeQwenImageEdit[Plus]);
    # the VAE copy per vae_fit, sides multiple of multiple_of (8); odd latents padded circularly
    comfy = "comfy"


class VaeFit(str, Enum):
    round = "round"  # sides round(side * scale / 8) * 8 (ComfyUI Edit-Plus node)
    crop = "crop"  # plain rounding, then the VAE's centre crop to a multiple of 8 (ComfyUI Edit node)


class Resample(str, Enum):
    bicubic = "bicubic"  # transformers' Qwen2VLImageProcessor
    bilinear = "bilinear"  # ComfyUI's process_qwen2vl_images


@dataclass
class ReferenceConfig:
    """How edit reference images are sized for the vision-language model and for the VAE.

    Sizing is the users' top complaint (edits shifted / zoomed against the input), so each tool's
    rule is a config: ``policy`` picks the rounding (see ``workbench.stages.latents.reference_sizes``
    for the exact arithmetic), ``vlm_resample`` the filter of the VLM's smart resize.
    """

    name: str = "diffusers_edit_plus"
    policy: ReferencePolicy = ReferencePolicy.diffusers
    vlm_area: int = 384 * 384  # target pixel count of the copy the text encoder sees
    vae_area: int = 1024 * 1024  # target pixel count of the copy the VAE encodes
    multiple_of: int = 32  # diffusers: both copies' sides; comfy: the VAE copy's sides (8)
    vae_fit: VaeFit = VaeFit.round  # comfy only
    vlm_resample: Resample = Resample.bicubic

    def __post_init__(self) -> None:
        if self.policy == ReferencePolicy.diffusers and self.multiple_of % 16:
            raise ConfigError(
                f"reference.multiple_of must be a multiple of 16 with reference.policy=diffusers, got "
                f"{self.multiple_of}; use 32 (diffusers), or reference.policy=comfy for multiples of 8"
            )
        if self.policy == ReferencePolicy.comfy and (self.multiple_of < 8 or self.multiple_of % 8):
            raise ConfigError(
                f"reference.multiple_of must be a multiple of 8 with reference.policy=comfy (the VAE's "
                f"8x downscale), got {self.multiple_of}; ComfyUI uses 8"
            )
        for key in ("vlm_area", "vae_area"):
            if getattr(self, key) < 28 * 28:
                raise ConfigError(f"reference.{key} must be >= 784 pixels (one 28x28 VLM cell), got {getattr(self, key)}")
            if getattr(self, key) > limits.MAX_PIXELS:
                raise ConfigError(f"reference.{key}={getattr(self, key)} is over the limit of {limits.MAX_PIXELS} pixels")


# ----------------------------------------------------------------------------- sweep executor
class ExecutorName(str, Enum):
    local = "local"  # sweep cells run in this process, on its resident models
    ray = "ray"  # on Ray actors, one per GPU (or CPU slot), each holding resident models


@dataclass
class ExecutorConfig:
    """Where sweep cells run (workbench/sweep/executors.py). Not part of a cell's cache key: the same
    cell gives the same image on either executor, so each reuses the other's finished cells."""

    name: ExecutorName = ExecutorName.local
    address: Optional[str] = None  # ray: null = start a local cluster; "auto" = the running one; "ray://head:10001"
    num_actors: Optional[int] = None  # ray: null = one per GPU of the cluster (one per CPU slot without GPUs)
    gpus_per_actor: Optional[float] = None  # ray: null = 1 where the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0  # ray

    def __post_init__(self) -> None:
        limits.check_finite_fields(self, "executor.", {
            "gpus_per_actor": "a number >= 0 (0 = CPU actors), or null", "cpus_per_actor": "a number > 0"}, ConfigError)
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"executor.num_actors must be >= 1 (or null: one per GPU), got {self.num_actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"executor.gpus_per_actor must be >= 0 (0 = CPU actors), got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"executor.cpus_per_actor must be > 0, got {self.cpus_per_actor}")


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
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # sweeps only; never in a cell's cache key

    prompts: list[str] = field(default_factory=lambda: ["a red fox in the snow"])
    negative_prompt: str = " "  # used when sampler.cfg > 1
    seeds: list[int] = field(default_factory=lambda: [0])
    images: list[str] = field(default_factory=list)  # reference images for edit templates
    height: Optional[int] = 128  # null: from the last reference image (edit)
    width: Optional[int] = 128
    init_image: Optional[str] = None  # image-to-image: start from this image, noised to `strength`
    strength: float = 1.0  # image-to-image: fraction of the schedule that runs (ComfyUI's "denoise")
    snap_size: bool = False  # floor sides to multiples of 16 (noted in the record) instead of refusing
    batch_size: int = 1  # images per forward pass
    max_sequence_length: int = 1024
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        limits.check_finite_fields(self, "", {"strength": "a number in (0, 1] (1 = the whole schedule)"}, ConfigError)
        if not self.prompts:
            raise ConfigError("prompts is empty: give at least one prompt, e.g. prompts='[a cat]'")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise ConfigError(f"prompts[{i}] is empty: write what the image should show")
        for key, text in [(f"prompts[{i}]", p) for i, p in enumerate(self.prompts)] + [("negative_prompt", self.negative_prompt)]:
            if len(text) > limits.MAX_PROMPT_CHARS:
                raise ConfigError(f"{key} has {len(text)} characters, over the limit of {limits.MAX_PROMPT_CHARS}; "
                                  f"only the first max_sequence_length={self.max_sequence_length} tokens are used anyway")
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed, e.g. seeds='[0]'")
        lo, hi = limits.SEED_RANGE
        for i, seed in enumerate(self.seeds):
            if not lo <= seed <= hi:
                raise ConfigError(f"seeds[{i}]={seed} is outside the seed range {lo}..{hi} (2**64-1, what "
                                  "torch.Generator.manual_seed accepts)")
        self._check_size()
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if self.strength < 1.0 and self.init_image is None:
            raise ConfigError(
                f"strength={self.strength} needs init_image (image-to-image); set init_image=PATH or strength=1"
            )
        if self.init_image is not None and int(self.sampler.steps * self.strength) < 1:
            raise ConfigError(
                f"strength={self.strength} x sampler.steps={self.sampler.steps} leaves no step to run; "
                "raise sampler.steps or strength"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size > limits.MAX_BATCH:
            raise ConfigError(f"batch_size={self.batch_size} is over the limit of {limits.MAX_BATCH} images per forward pass")
        count = len(self.prompts) * len(self.seeds)
        if count > limits.MAX_IMAGES:
            raise ConfigError(f"{len(self.prompts)} prompts x {len(self.seeds)} seeds = {count} images, over the limit "
                              f"of {limits.MAX_IMAGES} per run; split the run (or use a sweep)")
        self._check_image_count()
        if not 1 <= self.max_sequence_length <= 4096:
            raise ConfigError(f"max_sequence_length must be in 1..4096, got {self.max_sequence_length}")
        self._check_loras_fit_perf_and_precision()
        self._check_template_boundary()
        # the checks below look at the machine and the files: after every check of the values
        limits.check_device(self.device, ConfigError)
        if self.init_image is not None:
            limits.open_image(self.init_image, "init_image", decode=False, error=ConfigError)
        for i, path in enumerate(self.images):
            limits.open_image(path, f"images[{i}]", decode=False, error=ConfigError)
        self._check_lora_files()
        self._check_memory()

    def _check_size(self) -> None:
        """Sides positive multiples of 16 (or snapped down to one), within MAX_SIDE and MAX_PIXELS."""
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is None:
                continue
            if value < 16:  # never snapped: flooring cannot make a zero or negative side valid
                raise ConfigError(f"{key}={value} is not a positive multiple of 16 (8x VAE x 2x2 patches); use 16 or "
                                  "more (snap_size only floors sides >= 16)")
            if value % 16 and not self.snap_size:
                lo, hi = value // 16 * 16, (value // 16 + 1) * 16
                raise ConfigError(
                    f"{key}={value} is not a positive multiple of 16 (8x VAE x 2x2 patches); use {lo} or {hi}, "
                    "or snap_size=true to floor it (noted in the record)"
                )
            if value > limits.MAX_SIDE:
                raise ConfigError(f"{key}={value} is over the limit of {limits.MAX_SIDE} pixels per side")
        if (self.height is None) != (self.width is None):
            raise ConfigError("height and width must both be set or both be null")
        if self.height is None and not self.images:
            raise ConfigError("height/width are null but no reference images are given to take the size from")
        if self.height is not None and self.height * self.width > limits.MAX_PIXELS:
            raise ConfigError(f"height x width = {self.height}x{self.width} = {self.height * self.width} pixels, over "
                              f"the limit of {limits.MAX_PIXELS} (4096x4096) pixels per image")

    def _check_image_count(self) -> None:
        """The reference images must fit the template; the message says what each edit template takes."""
        n, t = len(self.images), self.template
        if t.min_images <= n <= t.max_images:
            return
        want = f"{t.min_images}" if t.min_images == t.max_images else f"{t.min_images}-{t.max_images}"
        edits = _edit_templates()
        takes = ", ".join(f"{name} {lo if lo == hi else f'{lo}-{hi}'}" for name, (lo, hi) in edits.items())
        fits = [name for name, (lo, hi) in edits.items() if lo <= n <= hi and name != t.name]
        msg = f"template '{t.name}' takes {want} reference image(s) but images has {n}"
        if n == 0:
            raise ConfigError(f"{msg}; pass images='[path.png]'")
        if fits:
            raise ConfigError(f"{msg}; pick an edit template that takes {n}: template={fits[0]} "
                              f"(reference images per edit template: {takes})")
        most = max((hi for lo, hi in edits.values()), default=t.max_images)
        raise ConfigError(f"{msg}; no edit template takes {n} (reference images per edit template: {takes}). Pass "
                          f"at most {most}, e.g. combine several references into one image")

    def _check_template_boundary(self) -> None:
        """A drop_until that ends inside a token fails here, naming the template, not at encode time."""
        t = self.template
        if t.drop_until is None:
            return
        after = t.text[t.text.index(t.drop_until) + len(t.drop_until):][:1]
        if t.drop_until.endswith("\n") and after and not after.isspace():
            return  # Qwen's pre-tokenizer always ends a piece at a newline followed by a non-space: no need to tokenize
        from workbench.templates import TemplateError, check_boundary

        try:
            check_boundary(t)
        except TemplateError as err:
            raise ConfigError(str(err)) from None

    def _check_lora_files(self) -> None:
        """LoRAs given by name are found under model.roots (else $WORKBENCH_MODELS, else ./models)."""
        from workbench.lora import resolve_lora_file  # fail at config time, before models load

        for i, item in enumerate(self.lora.items):
            try:
                resolve_lora_file(item.file, self.model.roots or None)
            except FileNotFoundError as err:
                raise ConfigError(f"lora.items[{i}].file: {err}") from None

    def _check_memory(self) -> None:
        """Refuse sizes whose activations alone cannot fit the free memory (estimate, before allocating)."""
        if self.height is not None:  # else sized by the reference images: the pipeline checks once known
            check_run_memory(self, self.height, self.width, self.device)

    def _check_loras_fit_perf_and_precision(self) -> None:
        """LoRA x compile x fp8 combinations workbench.lora refuses, caught before any model loads."""
        active = [i for i in self.lora.items if i.strength != 0.0]
        if not active:
            return
        if self.precision.quantization == Quantization.fp8_torchao and self.lora.fuse:
            raise ConfigError(
                f"lora.fuse=true with precision={self.precision.name} (quantization=fp8_torchao): fusing into the "
                "quantised fp8 weights would drop the quantisation. Use lora.fuse=false with perf.compile=none "
                "(hooks on the fp8 layers), or precision=bf16 to fuse"
            )
        if self.perf.compile != CompileMode.none and not self.lora.fuse:
            raise ConfigError(
                f"lora.items as hooks (lora.fuse=false) with perf.compile={self.perf.compile.value} (perf={self.perf.name}): "
                "hooks cannot run inside compiled blocks. Set lora.fuse=true (merged into the weights, no "
                "recompile on strength changes) or perf.compile=none"
            )


def check_run_memory(cfg: Config, height: int, width: int, device: str) -> None:
    """``limits.check_memory`` for one forward batch of ``cfg`` at ``height`` x ``width`` on ``device``,
    with the model's own widths (the tiny spec, or the real Qwen-Image's for model files)."""
    bytes_of = {DType.float32: 4, DType.bfloat16: 2, DType.float16: 2}
    tiny = cfg.model.source == ModelSource.tiny
    batch = min(cfg.batch_size, len(cfg.prompts) * len(cfg.seeds))
    estimate = limits.estimate_bytes(
        batch, height, width,
        hidden=cfg.model.tiny.transformer.num_heads * cfg.model.tiny.transformer.head_dim if tiny else limits.REAL_HIDDEN,
        vae_base_dim=cfg.model.tiny.vae.base_dim if tiny else limits.REAL_VAE_BASE_DIM,
        transformer_bytes=bytes_of[DType(cfg.precision.transformer)], vae_bytes=bytes_of[DType(cfg.precision.vae)],
        cfg_batch=2 if cfg.sampler.cfg > 1 else 1,
    )
    limits.check_memory(estimate, device, f"height={height} width={width} batch_size={batch}", ConfigError)


def _edit_templates() -> dict[str, tuple[int, int]]:
    """{name: (min_images, max_images)} of the shipped templates that take reference images."""
    from omegaconf import OmegaConf

    from workbench.config.compose import config_dir

    found = {}
    try:
        for file in sorted((config_dir() / "template").glob("*.yaml")):
            data = OmegaConf.load(file)
            if int(data.get("max_images", 0) or 0) > 0:
                found[str(data.get("name", file.stem))] = (int(data.get("min_images", 0)), int(data.max_images))
    except Exception:  # noqa: BLE001 - only used to word a message; never hide the real error
        pass
    return found


def register_configs() -> None:
    """Register the schema: each group file merges into a typed field of ``Config``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
