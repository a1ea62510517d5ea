"""De-scaling of fp8 weights: ComfyUI's scaled fp8, old and new formats.

Old: ``<layer>.scale_weight`` beside ``<layer>.weight``; new: ``<layer>.weight_scale`` plus an optional
``<layer>.comfy_quant`` (JSON bytes naming the format) and ``input_scale`` (activation scale, unused
when weights are de-scaled). Either way W = W_fp8 * scale, computed in float32 and then cast to
the run's dtype, so a bf16 run rounds once.
"""

from __future__ import annotations

import json

import torch

from workbench.loading.errors import LoadError

SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2")


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
    """Refuse comfy_quant formats other than per-tensor fp8 (nvfp4, mxfp8, int8 blocks...)."""
    if not weight_name.endswith(".weight"):
        return
    key = weight_name[: -len("weight")] + "comfy_quant"
    if key not in names:
        return
    raw = read(key)
    try:
        fmt = json.loads(bytes(raw.to(torch.uint8).tolist()).decode()).get("format")
    except (ValueError, UnicodeDecodeError):
        raise LoadError(f"{path}: {key} is not the JSON ComfyUI writes for quantised layers") from None
    if fmt not in SUPPORTED_FORMATS:
        raise LoadError(
            f"{path}: layer {weight_name} is quantised as {fmt!r}; the workbench de-scales only per-tensor "
            f"{' / '.join(SUPPORTED_FORMATS)}; use the bf16 or fp8 file of this model"
        )


def descale(weight: torch.Tensor, scale: torch.Tensor, name: str, path) -> torch.Tensor:
    scale = scale.float()
    if scale.numel() == 1:
        return weight.float() * scale.reshape(())
    if scale.numel() == weight.shape[0]:  # per output channel
        return weight.float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    raise LoadError(f"{path}: scale of {name} has shape {tuple(scale.shape)}; expected a scalar or one per output row")
