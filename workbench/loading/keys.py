"""Tensor-name maps from each file layout to the names of the classes the workbench builds.

Each function takes the names found in a file and returns ``{model name: file name}``; nothing is
read or copied. Scale tensors and marker tensors are left out here (``quant.py`` reads scales next
to their weights; markers only inform detection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.loading.errors import LoadError

DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# ComfyUI marker tensors: `scaled_fp8` (file holds scaled fp8 weights), `__index_timestep_zero__`
# (Edit-2511: reference tokens get timestep 0, diffusers' zero_cond_t=True).
MARKERS = ("scaled_fp8", "__index_timestep_zero__")
# Per-layer quantisation companions: old scaled fp8 (`scale_weight`, `scale_input`), new ComfyUI
# quant format (`weight_scale`, `input_scale`, `comfy_quant` JSON bytes).
SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")


def is_aux(name: str) -> bool:
    """A marker or a quantisation companion, not a weight of the model."""
    return name in MARKERS or name.endswith(SCALE_SUFFIXES)


def strip_dit_prefix(name: str) -> str:
    for prefix in DIT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def transformer_names(names) -> dict[str, str]:
    """DiT files already use diffusers names, sometimes under ComfyUI's `model.diffusion_model.`."""
    return {strip_dit_prefix(n): n for n in names if not is_aux(strip_dit_prefix(n))}


@dataclass(frozen=True)
class Chunk:
    """Part ``index`` of ``chunks`` equal row blocks (dim 0) of the file tensor ``name``: one half of a
    fused weight. Name maps give it where a model tensor is a slice of a file tensor."""

    name: str
    index: int
    chunks: int


FUSED_GATE_UP = "img_mlp.gate_up.weight"


def transformer21_names(names) -> dict[str, str | Chunk]:
    """Qwen-Image-2.1 DiT files: diffusers names, or ComfyUI's (optional `model.diffusion_model.` prefix,
    the SwiGLU gate and up projections fused into one `img_mlp.gate_up` GEMM, gate rows first), which
    diffusers' ``convert_qwen_image21_transformer_checkpoint_to_diffusers`` splits the same way."""
    out: dict[str, str | Chunk] = {}
    for n in names:
        bare = strip_dit_prefix(n)
        if is_aux(bare):
            continue
        if bare.endswith(FUSED_GATE_UP):
            stem = bare[: -len(FUSED_GATE_UP)] + "img_mlp."
            out[stem + "gate_layer.weight"] = Chunk(n, 0, 2)
            out[stem + "proj.weight"] = Chunk(n, 1, 2)
        else:
            out[bare] = n
    return out


def text_encoder_name(name: str) -> str:
    """Legacy Qwen2.5-VL names (transformers 4, ComfyUI files) -> transformers 5 names."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + name[len("model.") :]
    return name


def text_encoder_names(names) -> dict[str, str]:
    return {text_encoder_name(n): n for n in names if not is_aux(n)}


# ----------------------------------------------------------------------------- Wan-2.1 VAE
_UPSAMPLE = re.compile(r"^decoder\.upsamples\.(\d+)\.")


def wan_num_res_blocks(names) -> int:
    """Encoder `downsamples` is a flat list of 4 stages: nrb resblocks + 1 resample (none last)."""
    n = len({int(m.group(1)) for m in map(re.compile(r"^encoder\.downsamples\.(\d+)\.").match, names) if m})
    if n < 7 or (n - 3) % 4:
        raise LoadError(f"Wan VAE with {n} encoder downsample entries; expected 4 x num_res_blocks + 3")
    return (n - 3) // 4


def _renumber_decoder(name: str, nrb: int) -> str:
    """Map a decoder index of a num_res_blocks=nrb file onto the nrb=2 numbering diffusers assumes.

    Wan's decoder is a flat list: per stage nrb+1 resblocks then one upsampler (none after the last
    stage). diffusers' `convert_wan_vae_to_diffusers` hard-codes the real model's nrb=2 (4 entries per
    stage: resblocks 0-2, upsampler 3); smaller files (the tiny model) are renumbered into that grid.
    """
    m = _UPSAMPLE.match(name)
    if not m or nrb == 2:
        return name
    stage, pos = divmod(int(m.group(1)), nrb + 2)
    slot = 4 * stage + (pos if pos <= nrb else 3)
    return f"decoder.upsamples.{slot}." + name[m.end() :]


def wan_vae_names(names) -> dict[str, str]:
    """Original Wan-2.1 VAE names -> diffusers names, with diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    names = [n for n in names if not is_aux(n)]
    nrb = wan_num_res_blocks(names)
    if nrb > 2:
        raise LoadError(f"Wan VAE with num_res_blocks={nrb}: only 1 or 2 can be mapped onto diffusers names")
    # The converter copies values by key, so converting {name: name} yields the name map itself.
    return convert_wan_vae_to_diffusers({_renumber_decoder(n, nrb): n for n in names})


def identity_names(names) -> dict[str, str]:
    return {n: n for n in names if not is_aux(n)}
