"""Quantised weights: ComfyUI's scaled fp8 is de-scaled; every other quantised format is refused by name.

Old scaled fp8: ``<layer>.scale_weight`` beside ``<layer>.weight``; new: ``<layer>.weight_scale`` plus an
optional ``<layer>.comfy_quant`` (JSON bytes naming the format) and ``input_scale`` (activation scale,
unused when weights are de-scaled). Either way W = W_fp8 * scale, computed in float32 and then cast to
the run's dtype, so a bf16 run rounds once.

Refused (``file_format`` names them from the header alone, so discovery shows them and a load fails
before reading weights): ``int8_convrot`` (int8 rows after a group-wise Hadamard rotation, ConvRot: the
rotation is undone by ComfyUI's kernels at run time, and the exact rotation matrix is not something a
de-quantiser here could check against a reference), plain int8 (``int8_tensorwise``), ``nvfp4`` / ``mxfp8``
(block-scaled, Blackwell kernels), ``convrot_w4a4`` and any other ``comfy_quant`` format.
Imports no torch at module level: discovery reads it.
"""

from __future__ import annotations

import json

from workbench.loading.errors import LoadError

SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2")
# what each refused format is, for the one-line refusal
FORMAT_WORDS = {
    "int8_convrot": "ComfyUI int8 with a group-wise Hadamard rotation (ConvRot), run by ComfyUI's int8 kernels",
    "int8_tensorwise": "ComfyUI int8 weights with scales",
    "int8": "int8 weights (ComfyUI int8_tensorwise / int8_convrot)",
    "nvfp4": "4-bit floats with fp8 block scales, for Blackwell GPUs",
    "mxfp8": "fp8 with shared power-of-two block scales",
    "convrot_w4a4": "4-bit integers after a Hadamard rotation",
}


def format_name(conf: dict) -> str:
    """The name a ``comfy_quant`` / ``_quantization_metadata`` layer entry goes by (int8 + convrot: int8_convrot)."""
    fmt = str(conf.get("format", "unknown"))
    return "int8_convrot" if fmt == "int8_tensorwise" and conf.get("convrot") else fmt


def refusal(fmt: str) -> str:
    """One line: the format, what it is, and the fix."""
    what = FORMAT_WORDS.get(fmt, "a quantised format the workbench does not read")
    return (f"quantised as {fmt!r} ({what}); the workbench loads bf16 / fp16 / fp32 files and fp8 files (plain or "
            f"scaled {' / '.join(SUPPORTED_FORMATS)}) only: use the bf16 (or fp8) file of this model")


def file_format(header) -> str | None:
    """The refused quantised format of a safetensors file from its header (``header.Header``), or None:
    the header's ``_quantization_metadata``, else the per-layer ``comfy_quant`` blobs (a few bytes each, read
    without loading a tensor), else the weights' storage dtypes."""
    formats: set[str] = set()
    raw = header.metadata.get("_quantization_metadata")
    if raw:
        try:
            formats |= {format_name(c) for c in json.loads(raw).get("layers", {}).values() if isinstance(c, dict)}
        except (ValueError, AttributeError):
            pass
    for name in [n for n in header.tensors if n.endswith(".comfy_quant")]:
        try:
            formats.add(format_name(json.loads(header.read_bytes(name).decode())))
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            pass  # unreadable blobs are refused by name when the weights load (check_format)
    refused = sorted(formats - set(SUPPORTED_FORMATS))
    if refused:
        return refused[0]
    weights = {n: t for n, t in header.tensors.items() if n.endswith(".weight") and len(t.shape) >= 2}
    dtypes = {t.dtype for t in weights.values()}
    if "I8" in dtypes:
        return "int8"
    if "U8" in dtypes or any(n.endswith(".weight_scale_2") for n in header.tensors):
        return "nvfp4"  # 4-bit pairs packed in bytes, fp8 block scales and a second, global scale
    if any(n.endswith(".weight_scale") and t.dtype == "U8" for n, t in header.tensors.items()):
        return "mxfp8"  # e8m0 block exponents
    return None


def scale_name(weight_name: str, names) -> str | None:
    """The file's scale tensor for a weight, if it has one."""
    if not weight_name.endswith(".weight"):
        return None
    stem = weight_name[: -len("weight")]
    for candidate in (stem + "scale_weight", stem + "weight_scale"):
        if candidate in names:
            return candidate
    return None


def check_format(read, weight_name: str, names, path) -> None:
    """Refuse comfy_quant formats other than per-tensor fp8 (int8_convrot, nvfp4, mxfp8, int8 ...)."""
    import torch

    if not weight_name.endswith(".weight"):
        return
    key = weight_name[: -len("weight")] + "comfy_quant"
    if key not in names:
        return
    raw = read(key)
    try:
        conf = json.loads(bytes(raw.to(torch.uint8).tolist()).decode())
        fmt = format_name(conf)
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise LoadError(f"{path}: {key} is not the JSON ComfyUI writes for quantised layers") from None
    if fmt not in SUPPORTED_FORMATS:
        raise LoadError(f"{path}: layer {weight_name} is {refusal(fmt)}")


def descale(weight, scale, name: str, path):
    scale = scale.float()
    if scale.numel() == 1:
        return weight.float() * scale.reshape(())
    if scale.numel() == weight.shape[0]:  # per output channel
        return weight.float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    raise LoadError(f"{path}: scale of {name} has shape {tuple(scale.shape)}; expected a scalar or one per output row")
