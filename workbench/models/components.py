"""The resident set of models a run uses, built once from a ``ModelConfig`` + ``PrecisionConfig``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch

from workbench.config import DType, EncoderMemory, MemoryMode, ModelConfig, ModelSource, PrecisionConfig

TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any  # transformers Qwen2_5_VLForConditionalGeneration
    transformer: Any  # diffusers QwenImageTransformer2DModel
    vae: Any  # diffusers AutoencoderKLQwenImage
    device: torch.device
    identity: dict[str, str] = field(default_factory=dict)  # what was loaded, for records and cache keys
    family: str = "qwen-image"  # or "qwen-image-2.1" (``Variant.family``): which stage branches apply
    # where the encoder's inputs go (set by ``precision.encoder_memory``): the GPU for a streamed encoder whose
    # weights rest in host memory, the CPU for one that runs there; None: wherever its weights are
    encoder_device: Optional[torch.device] = None

    @property
    def is_qwen21(self) -> bool:
        return self.family == "qwen-image-2.1"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.config.temperal_downsample)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but no CUDA device is available here; use device=cpu or device=auto")
    return device


def _tiny_identity(model: ModelConfig, device: torch.device) -> dict[str, str]:
    spec = {"seed": model.seed, "variant": model.variant.value, "tiny": asdict(model.tiny)}
    trained = {}
    if model.weights:  # trained transformer + VAE: the files' digest names them; the text encoder stays seeded
        from workbench.models.tiny import weights_digest

        trained = {"weights": weights_digest(model)}
    if model.init_on_device:  # weights drawn by that device's generator, in the run's dtypes
        spec["init_on"] = device.type
    spec = json.dumps(spec, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    ids = {name: f"tiny:{name}:{digest}" for name in ("text_encoder", "transformer", "vae")}
    if trained:
        ids |= {name: f"tiny:{name}:{digest}:trained-{trained['weights']}" for name in ("transformer", "vae")}
    qwen3 = model.variant.family == "qwen-image-2.1"
    return ids | {"tokenizer": "vendored:qwen3_tokenizer" if qwen3 else "vendored:qwen2_5_vl_tokenizer"}


def _files_identity(parts: dict) -> dict[str, str]:
    """name | bytes | newest mtime of each component: a changed file gives a new identity."""
    out = {}
    for slot, loaded in parts.items():
        path = loaded.entry.path
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        mtime = max(int(p.stat().st_mtime) for p in files)
        out[slot] = f"{loaded.entry.name}|{sum(p.stat().st_size for p in files)}|{mtime}"
    out["tokenizer"] = parts["text_encoder"].report.get("tokenizer", "")
    return out


def _place(module: torch.nn.Module, device: torch.device, dtype: DType) -> torch.nn.Module:
    """Move to the run's device and cast to the run's dtype, keeping in float32 the modules the model
    class asks for (``_keep_in_fp32_modules``, as ``from_pretrained(torch_dtype=...)`` does).

    The cast is ``torch.nn.Module.to``: diffusers' ``ModelMixin.to`` (0.42) warns "should be kept in
    float32" on every dtype cast, even when that list is empty (``fp32_modules = ... or []`` is never
    None), and does nothing else for an unquantized, non-offloaded model; here the list is honoured."""
    module = module.to(device)
    target = TORCH_DTYPES[dtype]
    if module.dtype == target:
        return module
    torch.nn.Module.to(module, target)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if keep and target != torch.float32:
        for name, sub in module.named_modules():
            if any(k in name.split(".") for k in keep):
                torch.nn.Module.to(sub, torch.float32)
    return module


def build_components(model: ModelConfig, precision: PrecisionConfig, device: str = "auto", loras: Sequence[Any] = ()) -> Components:
    """Build (or load) every model of a run, on its device and in its dtype.

    ``loras`` (``LoraItem``s the run will apply) are checked with the model files before anything
    loads: a bad LoRA or VAE fails in a second, not after the transformer has loaded."""
    from workbench.models import tiny, tiny21
    from workbench.tokenizer import load_qwen3_tokenizer, load_tokenizer

    dev = resolve_device(device)
    if model.source == ModelSource.files:
        from workbench.loading.load import load_all

        dtypes = {slot: TORCH_DTYPES[getattr(precision, slot)] for slot in ("text_encoder", "transformer", "vae")}
        # offload modes exist for weights that do not fit the GPU: load them into host memory and let
        # apply_precision stream them (loading the 41 GB bf16 DiT onto a 24 GB card first would fail);
        # an encoder that streams or encodes on the CPU is loaded there whatever the DiT does
        host = torch.device("cpu")
        offload = precision.memory != MemoryMode.all_on_device
        devices = {"transformer": host if offload else dev, "vae": host if offload else dev,
                   "text_encoder": host if offload or precision.encoder_placement != EncoderMemory.resident else dev}
        parts = load_all(model, dtypes, devices, loras=loras)  # in each dtype
        return Components(
            tokenizer=parts["text_encoder"].tokenizer,
            text_encoder=parts["text_encoder"].module,
            transformer=parts["transformer"].module,
            vae=parts["vae"].module,
            device=dev,
            identity=_files_identity(parts),
            family=model.variant.family,  # the loaders refuse files of the other family (load.check_family)
        )
    if model.source != ModelSource.tiny:  # pragma: no cover - every member is handled above
        raise ValueError(f"model.source={model.source.value!r} is not supported")
    if loras:
        from workbench.lora import check_lora_files

        check_lora_files(loras, model.roots or None)  # headers only; shapes are checked when applied

    def build(make, dtype: DType, slot: str = ""):
        trained = bool(model.weights) and slot in ("transformer", "vae")
        if not model.init_on_device:
            module = make(model)
            if model.weights and slot == "text_encoder":  # compared in float32, before any cast
                tiny.check_text_encoder(module, model)
            return _place(tiny.load_trained(module, model, slot) if trained else module, dev, dtype)
        with tiny.init_on(dev, TORCH_DTYPES[dtype]):
            module = make(model)
        return tiny.load_trained(module, model, slot) if trained else module

    identity = _tiny_identity(model, dev)  # checks model.weights before anything is built
    stats = tiny.vae_stats(model)
    family = tiny21 if model.variant.family == "qwen-image-2.1" else tiny  # the builders of the variant's family
    return Components(
        tokenizer=load_qwen3_tokenizer() if family is tiny21 else load_tokenizer(),
        text_encoder=build(family.build_text_encoder, precision.text_encoder, "text_encoder"),
        transformer=build(family.build_transformer, precision.transformer, "transformer"),
        vae=build(lambda m: family.build_vae(m, stats), precision.vae, "vae"),
        device=dev,
        identity=identity,
        family=model.variant.family,
    )
