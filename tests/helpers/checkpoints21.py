"""The tiny Qwen-Image-2.1 model (model=tiny_qwen21: ``workbench.models.tiny21``) in the layouts 2.1 files come
in, for the loading tests: DiT single files in diffusers names or ComfyUI's (``model.diffusion_model.``
prefix, SwiGLU gate + up fused into ``img_mlp.gate_up``, gate rows first), Qwen3-VL single files
(transformers 5 or legacy names), the VAE with diffusers names, int8_convrot files (ComfyUI's
``comfy_quant`` layout; the values are not a real rotation: they are only ever refused), and a diffusers
``QwenImage21Pipeline`` folder (Turbo: ``sample_sigmas`` in its model_index.json).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

from workbench.config import ModelConfig, Variant
from workbench.loading.export import legacy_te_name, quantize, state

GATE, UP, FUSED = "img_mlp.gate_layer.weight", "img_mlp.proj.weight", "img_mlp.gate_up.weight"


@lru_cache(maxsize=1)
def reference21():
    """(text encoder, transformer, vae) of model=tiny_qwen21, fp32, as build_components makes them."""
    from workbench.models import tiny21

    cfg = ModelConfig(variant=Variant.qwen21)
    return tiny21.build_text_encoder(cfg), tiny21.build_transformer(cfg), tiny21.build_vae(cfg)


def fuse(sd: dict) -> dict:
    out = dict(sd)
    for gate in [k for k in sd if k.endswith(GATE)]:
        stem = gate[: -len(GATE)]
        out[stem + FUSED] = torch.cat([out.pop(gate), out.pop(stem + UP)])
    return out


def unfuse(sd: dict) -> dict:
    out = dict(sd)
    for fused in [k for k in sd if k.endswith(FUSED)]:
        stem = fused[: -len(FUSED)]
        out[stem + GATE], out[stem + UP] = out.pop(fused).chunk(2)
    return out


def write_dit21(path: Path, style: str = "fp32", prefix: str = "", fused: bool = False) -> dict:
    """A 2.1 DiT file; returns the de-quantised weights a loader must read back, by the module's names."""
    sd = state(reference21()[1])
    out, meta, expected = quantize(fuse(sd) if fused else sd, style)
    save_file({prefix + k: v for k, v in out.items()}, str(path), metadata=meta or None)
    return unfuse(expected)


def write_te21(path: Path, style: str = "fp32", legacy: bool = False) -> dict:
    sd = state(reference21()[0])
    rename = legacy_te_name if legacy else (lambda k: k)
    out, meta, expected = quantize({rename(k): v for k, v in sd.items()}, style)
    save_file(out, str(path), metadata=meta or None)
    back = {rename(k): k for k in sd}
    return {back[k]: v for k, v in expected.items()}


def write_vae21(path: Path, style: str = "fp32") -> dict:
    out, meta, expected = quantize(state(reference21()[2]), style)
    save_file(out, str(path), metadata=meta or None)
    return expected


def write_int8_convrot(path: Path, metadata: bool = True, prefix: str = "model.diffusion_model.") -> None:
    """ComfyUI's int8_convrot layout: int8 matrices, one float32 scale per row, a comfy_quant JSON blob per
    layer (format int8_tensorwise + convrot) and, optionally, the header's _quantization_metadata."""
    sd, out, layers = fuse(state(reference21()[1])), {}, {}
    conf = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256, "per_row": True}
    for name, t in sd.items():
        if not (name.endswith(".weight") and t.dim() == 2):
            out[name] = t.to(torch.bfloat16)
            continue
        scale = (t.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        stem = name[: -len("weight")]
        out[name] = (t / scale).round().clamp(-128, 127).to(torch.int8)
        out[stem + "weight_scale"] = scale.float()
        out[stem + "comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
        layers[stem[:-1]] = conf
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if metadata else None
    save_file({prefix + k: v for k, v in out.items()}, str(path), metadata=meta)


PIPELINE_PARTS = ("text_encoder", "transformer", "vae", "processor", "scheduler")


def write_pipeline21(folder: Path, sample_sigmas: list[float] | None = None, parts_of: Path | None = None) -> Path:
    """A diffusers QwenImage21Pipeline folder: model_index.json, transformer/ text_encoder/ vae/ processor/
    (the tokenizer files of the Qwen3-VL processor) scheduler/. Written part by part: the processor class
    needs torchvision for its video half, which the CPU wheel lacks. ``parts_of``: link the parts of that
    folder instead of writing them again (a Turbo folder differs by its model_index.json only)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from workbench.tokenizer import load_qwen3_tokenizer

    folder = Path(folder)
    if parts_of is not None:
        folder.mkdir(parents=True)
        for part in PIPELINE_PARTS:
            (folder / part).symlink_to(Path(parts_of).resolve() / part, target_is_directory=True)
    else:
        te, dit, vae = reference21()
        te.save_pretrained(str(folder / "text_encoder"))
        dit.save_pretrained(str(folder / "transformer"))
        vae.save_pretrained(str(folder / "vae"))
        load_qwen3_tokenizer().save_pretrained(str(folder / "processor"))
        FlowMatchEulerDiscreteScheduler().save_pretrained(str(folder / "scheduler"))
    index = {"_class_name": "QwenImage21Pipeline", "_diffusers_version": "0.42.1",
             "processor": ["transformers", "Qwen3VLProcessor"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
             "transformer": ["diffusers", "QwenImage21Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage21"],
             "sample_sigmas": sample_sigmas}
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
