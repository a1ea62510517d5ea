"""What a weights file or folder is, from names and shapes in its header(s) only.

Used by discovery (``workbench models``) and by the loaders to refuse a file given for the wrong
slot before anything is read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workbench.loading.header import Header, read_header
from workbench.loading.keys import FUSED_GATE_UP, MARKERS, is_aux, strip_dit_prefix
from workbench.loading.quant import file_format, refusal
from workbench.models.arch21 import IMAGE_CHANNELS

KINDS = {"text_encoder": "text encoder", "transformer": "diffusion transformer", "vae": "VAE", "lora": "LoRA"}
DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}

# Names that identify other model families, to say what a wrong file looks like.
_LOOKALIKES = [
    ("blocks.0.self_attn.q.weight", "a Wan 2.x video diffusion transformer (original names)"),
    ("blocks.0.attn1.to_q.weight", "a Wan 2.x video diffusion transformer (diffusers names)"),
    ("double_blocks.0.img_attn.qkv.weight", "a Flux diffusion transformer"),
    ("decoder.mid_block.resnets.0.norm1.weight", "a 2-D image VAE (SD / Flux AutoencoderKL)"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder"),
    ("text_model.encoder.layers.0.self_attn.q_proj.weight", "a CLIP text encoder"),
    ("input_blocks.0.0.weight", "a Stable Diffusion UNet"),
]


FAMILY_20B, FAMILY_21 = "qwen-image", "qwen-image-2.1"  # = Variant.family of each family's variants
FAMILY_WORDS = {FAMILY_20B: "Qwen-Image (20B family)", FAMILY_21: "Qwen-Image-2.1"}


@dataclass
class Detected:
    kind: str  # text_encoder | transformer | vae | lora | unknown
    layout: str  # how the names are written (see classify)
    dtype: str  # bf16 / fp8_e4m3fn / fp8 scaled (scale_weight) / Q8_0 / int8_convrot ...
    variant: str | None = None  # transformers: t2i / t2i_2512 / edit / edit_2509 / edit_2511 / qwen21 / qwen21_turbo
    variant_from: str = ""  # the evidence for the variant
    looks_like: str = ""  # for kind=unknown: what the names suggest
    family: str = ""  # qwen-image | qwen-image-2.1 (components); "" for LoRAs and unknown files
    refused: str = ""  # why this file cannot be loaded although it is a component (a quantised format ...)
    sample_sigmas: list[float] | None = None  # a 2.1-Turbo folder's model_index.json grid

    def what(self) -> str:
        """``a diffusion transformer of Qwen-Image-2.1``."""
        return f"a {KINDS[self.kind]}" + (f" of {FAMILY_WORDS[self.family]}" if self.family else "")

    def describe(self) -> str:
        if self.kind == "unknown":
            return f"not a Qwen-Image component ({self.looks_like})"
        return f"{self.what()} ({self.layout}, {self.dtype})"


def classify(names) -> tuple[str, str, str]:
    """(kind, layout, looks_like) from tensor names (``classify_family`` adds the family)."""
    kind, _family, layout, looks = classify_family(names)
    return kind, layout, looks


def classify_family(tensors) -> tuple[str, str, str, str]:
    """(kind, family, layout, looks_like) from tensor names; ``tensors`` may be a header's
    ``{name: TensorInfo}``, whose shapes then separate look-alike VAEs."""
    names = set(tensors)
    shapes = {n: t.shape for n, t in tensors.items()} if isinstance(tensors, dict) else {}
    bare = {strip_dit_prefix(n) for n in names}
    under = " under model.diffusion_model." if any(n.startswith("model.diffusion_model.") for n in names) else ""
    if any(".lora_A." in n or ".lora_down." in n or ".lora_B." in n or ".lora_up." in n or n.startswith("lora_unet_") for n in names):
        return "lora", "", "LoRA", ""
    if "txt_in.text_norm.weight" in bare and "img_in.weight" in bare:  # 2.1's single-stream DiT
        fused = any(n.endswith(FUSED_GATE_UP) for n in bare)
        return "transformer", FAMILY_21, ("ComfyUI names (fused img_mlp.gate_up)" if fused else "diffusers names") + under, ""
    if "txt_norm.weight" in bare and "img_in.weight" in bare:
        return "transformer", FAMILY_20B, "diffusers names" + under, ""
    found = _text_encoder(names) or _vae(names, shapes)
    if found:
        return found
    for key, what in _LOOKALIKES:
        if key in bare:
            return "unknown", "", "", what
    return "unknown", "", "", f"unrecognised tensor names, e.g. {', '.join(sorted(names)[:3]) or 'none (empty file)'}"


def _text_encoder(names: set) -> tuple[str, str, str, str] | None:
    legacy = "model.embed_tokens.weight" in names
    if not legacy and "model.language_model.embed_tokens.weight" not in names:
        return None
    if any(n.endswith("self_attn.q_norm.weight") for n in names):  # Qwen3 normalises q / k per head; Qwen2.5 does not
        if any(".deepstack_merger_list." in n for n in names):
            return "text_encoder", FAMILY_21, "Qwen3-VL, " + ("legacy names (model.layers / visual.)" if legacy else "transformers 5 names"), ""
        return "unknown", "", "", ("a Qwen3 language model without the Qwen3-VL vision tower; Qwen-Image-2.1 needs "
                                   "Qwen3-VL-8B with its vision tower (visual.* tensors)")
    if legacy:
        return "text_encoder", FAMILY_20B, "legacy Qwen2.5-VL names (ComfyUI / transformers 4)", ""
    return "text_encoder", FAMILY_20B, "transformers 5 names", ""


def _vae(names: set, shapes: dict) -> tuple[str, str, str, str] | None:
    if "encoder.downsamples.0.downsamples.0.residual.0.gamma" in names:  # Wan 2.2's original residual-block names
        rgba = shapes.get("encoder.conv1.weight", (0, IMAGE_CHANNELS))[1] == IMAGE_CHANNELS
        if rgba:
            return "vae", FAMILY_21, "original Wan-2.2-style names", ""
        return "unknown", "", "", "a Wan 2.2 VAE (original names)"
    if "decoder.middle.0.residual.0.gamma" in names:
        return "vae", FAMILY_20B, "original Wan-2.1 names", ""
    if "decoder.mid_block.resnets.0.norm1.gamma" in names and "post_quant_conv.weight" in names:
        if "encoder.down_blocks.0.resnets.0.conv1.weight" in names:  # residual down blocks: the Wan 2.2 design 2.1 uses
            channels = shapes.get("encoder.conv_in.weight", (0, IMAGE_CHANNELS))[1]
            if channels == IMAGE_CHANNELS:
                return "vae", FAMILY_21, "diffusers names", ""
            return "unknown", "", "", f"a Wan 2.2 VAE (diffusers names, {channels}-channel input; Qwen-Image-2.1's takes RGBA)"
        return "vae", FAMILY_20B, "diffusers names", ""
    return None


def dtype_summary(header: Header) -> str:
    """The storage dtype most of the bytes are in, the fp8 scaling scheme, or a refused quantised format."""
    return (file_format(header) if header.format == "safetensors" else None) or _stored_dtype(header)


def _stored_dtype(header: Header) -> str:
    names = header.tensors
    if any(n.endswith(".weight_scale") for n in names):
        return "fp8 scaled (weight_scale)"
    if "scaled_fp8" in names or any(n.endswith(".scale_weight") for n in names):
        return "fp8 scaled (scale_weight)"
    by_bytes = Counter()
    for name, t in names.items():
        if not is_aux(strip_dit_prefix(name)):
            by_bytes[t.dtype] += t.nbytes
    if not by_bytes:
        return "empty"
    top = by_bytes.most_common(1)[0][0]
    return DTYPES.get(top, top)


def variant_from_name(name: str, family: str = FAMILY_20B) -> str:
    """The variant a file or folder name says: 2511 / 2509 edits, 2512 (the t2i refresh), edit, t2i;
    for the 2.1 family qwen21, or qwen21_turbo when the name says turbo."""
    low = name.lower()
    if family == FAMILY_21:
        return "qwen21_turbo" if "turbo" in low else "qwen21"
    if "2511" in low:
        return "edit_2511"
    if "2509" in low:
        return "edit_2509"
    if "2512" in low:
        return "t2i_2512"
    return "edit" if "edit" in low else "t2i"


def detect_header(header: Header, display_name: str | None = None) -> Detected:
    kind, family, layout, looks = classify_family(header.tensors)
    if header.format == "gguf":
        layout = "GGUF, " + layout if layout else "GGUF"
    fmt = file_format(header) if header.format == "safetensors" else None
    det = Detected(kind, layout, fmt or _stored_dtype(header), looks_like=looks, family=family)
    if fmt and kind in ("text_encoder", "transformer", "vae"):
        det.refused = refusal(fmt)
    elif family == FAMILY_21 and kind == "vae" and layout.startswith("original"):
        det.refused = ("the 2.1 VAE in its original (non-diffusers) names is not mapped yet; use the vae/ folder of "
                       "the diffusers release (Qwen/Qwen-Image-2.1) or a single file with diffusers names")
    elif family == FAMILY_21 and header.format == "gguf":
        det.refused = "GGUF files of the 2.1 transformer are not supported; use the bf16 (or fp8) file"
    if kind == "transformer":
        bare = {strip_dit_prefix(n) for n in header.tensors}
        if family == FAMILY_20B and MARKERS[1] in bare:
            det.variant, det.variant_from = "edit_2511", f"marker tensor {MARKERS[1]}"
        else:
            det.variant, det.variant_from = variant_from_name(display_name or header.path.name, family), "file name"
    return det


def detect_file(path: str | Path) -> Detected:
    return detect_header(read_header(path))


# ----------------------------------------------------------------------------- folders
def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")


def read_config(folder: Path) -> dict:
    from workbench.loading.errors import LoadError

    file = folder / "config.json"
    if not file.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise LoadError(
            f"{folder}: a model folder needs config.json (found: {found}); give a single .safetensors file "
            "instead, or the diffusers / HF folder that has config.json"
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{file}: not valid JSON ({err})") from None


def folder_kind(config: dict) -> tuple[str, str, str]:
    """(kind, family, looks_like) of an HF / diffusers model folder from its config.json."""
    cls = config.get("_class_name", "")
    kinds = {"QwenImageTransformer2DModel": ("transformer", FAMILY_20B), "QwenImage21Transformer2DModel": ("transformer", FAMILY_21),
             "AutoencoderKLQwenImage": ("vae", FAMILY_20B), "AutoencoderKLWan": ("vae", FAMILY_20B),
             "AutoencoderKLQwenImage21": ("vae", FAMILY_21)}
    if cls in kinds:
        return (*kinds[cls], "")
    if config.get("model_type") in ("qwen2_5_vl", "qwen2_vl"):
        return "text_encoder", FAMILY_20B, ""
    if config.get("model_type") == "qwen3_vl":
        return "text_encoder", FAMILY_21, ""
    return "unknown", "", f"config.json of {cls or config.get('model_type') or 'an unknown model'}"


def model_index(folder: Path) -> dict:
    """A diffusers pipeline folder's model_index.json ({} when there is none or it is not JSON)."""
    try:
        data = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_label(folder: Path) -> str:
    """The name a folder goes by: an HF cache snapshot (models--org--name/snapshots/<hash>) by its repo."""
    return folder.parent.parent.name if folder.parent.name == "snapshots" else folder.name


# the 20B pipelines' classes -> variant (Edit-2511 is told by zero_cond_t, 2512 by its name)
PIPELINE_VARIANTS = {"QwenImageEditPipeline": "edit", "QwenImageEditPlusPipeline": "edit_2509"}


def _folder_variant(det: Detected, folder: Path, config: dict) -> None:
    pipeline, label = model_index(folder.parent), folder_label(folder.parent)
    named = variant_from_name(label, det.family)
    if det.family == FAMILY_21:
        sigmas = pipeline.get("sample_sigmas")
        if isinstance(sigmas, list) and sigmas:  # 2.1-Turbo's fixed grid (diffusers' QwenImage21Pipeline config)
            det.variant, det.variant_from, det.sample_sigmas = "qwen21_turbo", "model_index.json sample_sigmas", [float(x) for x in sigmas]
        else:
            det.variant, det.variant_from = named, "folder name"
    elif config.get("zero_cond_t"):
        det.variant, det.variant_from = "edit_2511", "config.json zero_cond_t"
    elif pipeline.get("_class_name") in PIPELINE_VARIANTS:
        det.variant, det.variant_from = PIPELINE_VARIANTS[pipeline["_class_name"]], "model_index.json _class_name"
    else:
        det.variant, det.variant_from = named, "folder name"


def detect_folder(folder: str | Path) -> Detected:
    folder = Path(folder)
    config = read_config(folder)
    kind, family, looks = folder_kind(config)
    files = weight_files(folder)
    dtype = dtype_summary(read_header(files[0])) if files else "no .safetensors"
    det = Detected(kind, "diffusers folder" if "_class_name" in config else "HF folder", dtype, looks_like=looks, family=family)
    if kind == "transformer":
        _folder_variant(det, folder, config)
    return det
