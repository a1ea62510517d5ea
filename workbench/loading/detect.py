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
from workbench.loading.keys import MARKERS, is_aux, strip_dit_prefix

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


@dataclass
class Detected:
    kind: str  # text_encoder | transformer | vae | lora | unknown
    layout: str  # how the names are written (see classify)
    dtype: str  # bf16 / fp8_e4m3fn / fp8 scaled (scale_weight) / Q8_0 ...
    variant: str | None = None  # transformers: t2i / edit / edit_2509 / edit_2511
    variant_from: str = ""  # the evidence for the variant
    looks_like: str = ""  # for kind=unknown: what the names suggest

    def describe(self) -> str:
        if self.kind == "unknown":
            return f"not a Qwen-Image component ({self.looks_like})"
        return f"a {KINDS[self.kind]} ({self.layout}, {self.dtype})"


def classify(names) -> tuple[str, str, str]:
    """(kind, layout, looks_like) from tensor names."""
    names = set(names)
    bare = {strip_dit_prefix(n) for n in names}
    if any(".lora_A." in n or ".lora_down." in n or ".lora_B." in n or ".lora_up." in n or n.startswith("lora_unet_") for n in names):
        return "lora", "LoRA", ""
    if "txt_norm.weight" in bare and "img_in.weight" in bare:
        prefixed = any(n.startswith("model.diffusion_model.") for n in names)
        return "transformer", "diffusers names" + (" under model.diffusion_model." if prefixed else ""), ""
    if "model.embed_tokens.weight" in names:
        return "text_encoder", "legacy Qwen2.5-VL names (ComfyUI / transformers 4)", ""
    if "model.language_model.embed_tokens.weight" in names:
        return "text_encoder", "transformers 5 names", ""
    if "decoder.middle.0.residual.0.gamma" in names:
        return "vae", "original Wan-2.1 names", ""
    if "decoder.mid_block.resnets.0.norm1.gamma" in names and "post_quant_conv.weight" in names:
        return "vae", "diffusers names", ""
    for key, what in _LOOKALIKES:
        if key in bare:
            return "unknown", "", what
    return "unknown", "", f"unrecognised tensor names, e.g. {', '.join(sorted(names)[:3]) or 'none (empty file)'}"


def dtype_summary(header: Header) -> str:
    """The storage dtype most of the bytes are in, plus the fp8 scaling scheme if any."""
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


def variant_from_name(name: str) -> str:
    low = name.lower()
    if "2511" in low:
        return "edit_2511"
    if "2509" in low:
        return "edit_2509"
    return "edit" if "edit" in low else "t2i"


def detect_header(header: Header, display_name: str | None = None) -> Detected:
    kind, layout, looks = classify(header.tensors)
    if header.format == "gguf":
        layout = "GGUF, " + layout if layout else "GGUF"
    det = Detected(kind, layout, dtype_summary(header), looks_like=looks)
    if kind == "transformer":
        bare = {strip_dit_prefix(n) for n in header.tensors}
        if MARKERS[1] in bare:
            det.variant, det.variant_from = "edit_2511", f"marker tensor {MARKERS[1]}"
        else:
            det.variant, det.variant_from = variant_from_name(display_name or header.path.name), "file name"
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


def folder_kind(config: dict) -> tuple[str, str]:
    """(kind, looks_like) of an HF / diffusers model folder from its config.json."""
    cls = config.get("_class_name", "")
    if cls == "QwenImageTransformer2DModel":
        return "transformer", ""
    if cls in ("AutoencoderKLQwenImage", "AutoencoderKLWan"):
        return "vae", ""
    if config.get("model_type") in ("qwen2_5_vl", "qwen2_vl"):
        return "text_encoder", ""
    return "unknown", f"config.json of {cls or config.get('model_type') or 'an unknown model'}"


def detect_folder(folder: str | Path) -> Detected:
    folder = Path(folder)
    config = read_config(folder)
    kind, looks = folder_kind(config)
    files = weight_files(folder)
    dtype = dtype_summary(read_header(files[0])) if files else "no .safetensors"
    det = Detected(kind, "diffusers folder" if "_class_name" in config else "HF folder", dtype, looks_like=looks)
    if kind == "transformer":
        z = bool(config.get("zero_cond_t"))
        det.variant = "edit_2511" if z else variant_from_name(str(folder.parent.name))
        det.variant_from = "config.json zero_cond_t" if z else "folder name"
    return det
