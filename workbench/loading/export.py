"""Writing a model in the layout another tool wants: ComfyUI single files, a diffusers folder.

The inverse of the loaders: ``export_comfyui`` writes ``text_encoders/``, ``diffusion_models/`` and
``vae/`` files the way ComfyUI's repackaged checkpoints are written (legacy Qwen2.5-VL names, the
original Wan-2.1 VAE names, optional fp8 / scaled fp8 storage, the Edit-2511 marker tensor);
``export_diffusers`` writes the folder ``QwenImagePipeline.from_pretrained`` reads, through diffusers'
own ``save_pretrained``. Any model goes: a config (the tiny one in seconds), loaded components or a
``Workbench``. The per-file writers return the de-quantised fp32 weights a loader must read back,
keyed by the module's own names, so a round trip can be checked exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
STYLES = ("fp32", "bf16", "fp16", "fp8", "fp8_scaled_old", "fp8_scaled_new")


def state(module) -> dict[str, torch.Tensor]:
    """Detached contiguous copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- dtype / fp8 styles
def _is_matrix(name: str, t: torch.Tensor) -> bool:
    return name.endswith(".weight") and t.dim() >= 2


def quantize(sd: dict, style: str) -> tuple[dict, dict, dict]:
    """(tensors to write, header metadata, expected de-quantised fp32 weights) for one storage style.

    styles: fp32, bf16, fp16, fp8 (plain cast of matrices, rest bf16), fp8_scaled_old
    (`scale_weight` + `scaled_fp8` marker), fp8_scaled_new (`weight_scale` + `comfy_quant` JSON +
    `input_scale` + header `_quantization_metadata`): the three fp8 conventions ComfyUI files use.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r}; choose one of {', '.join(STYLES)}")
    if style in ("fp32", "bf16", "fp16"):
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[style]
        out = {k: v.to(dt) for k, v in sd.items()}
        return out, {}, {k: v.float() for k, v in out.items()}
    out, expected, layers = {}, {}, {}
    for name, t in sd.items():
        if not _is_matrix(name, t):
            out[name] = t.to(torch.bfloat16)
            expected[name] = out[name].float()
            continue
        if style == "fp8":
            out[name] = t.to(FP8)
            expected[name] = out[name].float()
            continue
        scale = (t.abs().max() / FP8_MAX).float().clamp(min=1e-12)
        q = (t / scale).to(FP8)
        out[name] = q
        expected[name] = q.float() * scale
        stem = name[: -len("weight")]
        if style == "fp8_scaled_old":
            out[stem + "scale_weight"] = scale.reshape(())
        else:
            out[stem + "weight_scale"] = scale.reshape(())
            out[stem + "input_scale"] = torch.ones((), dtype=torch.float32)
            out[stem + "comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
            layers[stem[:-1]] = {"format": "float8_e4m3fn"}
    meta = {}
    if style == "fp8_scaled_old":
        out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    elif style == "fp8_scaled_new":
        meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    return out, meta, expected


# ----------------------------------------------------------------------------- text encoder
def legacy_te_name(name: str) -> str:
    """transformers 5 -> legacy (ComfyUI / transformers 4) names; ``keys.text_encoder_name`` undoes it."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def write_text_encoder(module, path: Path, style: str = "fp32", drop_lm_head: bool = False) -> dict:
    """One ComfyUI text-encoder file (legacy names, vision tower included: edit prompts need it)."""
    sd = state(module)
    if drop_lm_head:  # some repackaged files leave it out: conditioning never uses it
        sd.pop("lm_head.weight", None)
    legacy = {legacy_te_name(k): k for k in sd}
    out, meta, expected = quantize({legacy_te_name(k): v for k, v in sd.items()}, style)
    save_file(out, str(path), metadata=meta or None)
    return {legacy[k]: v for k, v in expected.items()}


def write_text_encoder_folder(module, folder: Path, tokenizer: bool = True) -> Path:
    """An HF Qwen2.5-VL folder (config.json + safetensors, and the tokenizer unless told not to)."""
    from workbench.tokenizer import load_tokenizer

    module.save_pretrained(str(folder))
    if tokenizer:
        load_tokenizer().save_pretrained(str(folder))
    return Path(folder)


# ----------------------------------------------------------------------------- transformer
def write_transformer(module, path: Path, style: str = "fp32", prefix: str = "", zero_cond_t_marker: bool = False) -> dict:
    """One diffusion-transformer file; ComfyUI keeps the Edit-2511 flag as the marker tensor."""
    out, meta, expected = quantize(state(module), style)
    if zero_cond_t_marker:
        out["__index_timestep_zero__"] = torch.tensor([])
    save_file({prefix + k: v for k, v in out.items()}, str(path), metadata=meta or None)
    return expected


# ----------------------------------------------------------------------------- VAE
_RESNET = [("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
           ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]


def _resnet_to_wan(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def wan_name(name: str, nrb: int) -> str:
    """diffusers -> original Wan-2.1 VAE name: the inverse of diffusers' convert_wan_vae_to_diffusers.

    Wan keeps flat lists: encoder.downsamples (same indices as diffusers), decoder.upsamples with
    nrb+1 resblocks and one upsampler per stage; middle = [resblock, attention, resblock]; head =
    [norm, SiLU, conv]. ComfyUI's qwen_image_vae.safetensors uses these names.
    """
    fixed = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
             "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.", "decoder.norm_out.": "decoder.head.0.",
             "encoder.conv_out.": "encoder.head.2.", "decoder.conv_out.": "decoder.head.2."}
    for new, old in fixed.items():
        if name.startswith(new):
            return old + name[len(new) :]
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", name):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_resnet_to_wan(m[3])}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", name):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", name):
        return f"encoder.downsamples.{m[1]}.{_resnet_to_wan(m[2])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", name):
        return f"decoder.upsamples.{int(m[1]) * (nrb + 2) + int(m[2])}.{_resnet_to_wan(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", name):
        return f"decoder.upsamples.{int(m[1]) * (nrb + 2) + nrb + 1}.{m[2]}"
    raise ValueError(f"no Wan-2.1 name for the VAE tensor {name}")


def write_vae(module, path: Path, layout: str = "wan", style: str = "fp32") -> dict:
    """One VAE file, in the original Wan-2.1 names (ComfyUI) or diffusers' names (layout="diffusers")."""
    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout={layout!r}; choose 'wan' (ComfyUI) or 'diffusers'")
    out, meta, expected = quantize(state(module), style)
    if layout == "wan":
        nrb = module.config.num_res_blocks
        out = {wan_name(k, nrb): v for k, v in out.items()}
    save_file(out, str(path), metadata=meta or None)
    return expected


# ----------------------------------------------------------------------------- whole models
def _parts(model: Any) -> tuple[Any, Any, Any, Any]:
    """(text encoder, transformer, VAE, tokenizer) from a Workbench, Components, Config, ModelConfig or a
    (text encoder, transformer, VAE) tuple; configs are built on the CPU in fp32 (the tiny one in seconds)."""
    from workbench.config import Config, ModelConfig, PrecisionConfig
    from workbench.models.components import Components, build_components

    if isinstance(model, tuple):
        from workbench.tokenizer import load_tokenizer

        return (*model, load_tokenizer())
    if isinstance(model, Config):
        model = model.model
    if isinstance(model, ModelConfig):
        model = build_components(model, PrecisionConfig(), "cpu")
    model = getattr(model, "components", model)  # a Workbench
    if not isinstance(model, Components):
        raise TypeError(f"cannot export a {type(model).__name__}; give a Workbench, Components, Config or ModelConfig")
    return model.text_encoder, model.transformer, model.vae, model.tokenizer


def _label(model: Any) -> str:
    """'tiny' for the embedded model, so exported names say what they hold; 'export' otherwise."""
    comps = getattr(model, "components", model)
    identity = getattr(comps, "identity", None) or {}
    cfg = getattr(model, "model", model)
    tiny = str(identity.get("transformer", "")).startswith("tiny:") or getattr(getattr(cfg, "source", None), "value", "") == "tiny"
    return "tiny" if tiny or isinstance(model, tuple) else "export"


def export_comfyui(model: Any, root: str | Path, style: str = "fp32", label: str | None = None,
                   vae_layout: str = "wan") -> dict[str, str]:
    """Write ``model`` as ComfyUI keeps Qwen-Image under a models root; returns {slot: name} as configs use it.

    ``text_encoders/qwen_2.5_vl_<label>.safetensors``, ``diffusion_models/qwen_image_<label>.safetensors``
    and ``vae/qwen_image_vae_<label>.safetensors`` (label: ``tiny`` / ``export``, plus ``_<style>``
    unless fp32). ``style`` is the transformer's and text encoder's storage (``STYLES``); the VAE is
    kept in fp32, as ComfyUI ships it. Give the names as ``model.<slot>=<name>`` with ``model=files_comfyui``.
    """
    te, dit, vae, _ = _parts(model)
    label = (label or _label(model)) + ("" if style == "fp32" else f"_{style}")
    root = Path(root)
    names = {"text_encoder": f"text_encoders/qwen_2.5_vl_{label}.safetensors",
             "transformer": f"diffusion_models/qwen_image_{label}.safetensors",
             "vae": f"vae/qwen_image_vae_{label}.safetensors"}
    for name in names.values():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    write_text_encoder(te, root / names["text_encoder"], style)
    write_transformer(dit, root / names["transformer"], style, zero_cond_t_marker=bool(dit.config.get("zero_cond_t")))
    write_vae(vae, root / names["vae"], vae_layout)
    return names


def export_diffusers(model: Any, folder: str | Path) -> Path:
    """Write the folder diffusers' ``QwenImagePipeline.from_pretrained`` reads (model_index.json, transformer/,
    text_encoder/, tokenizer/, vae/, scheduler/), through diffusers' own ``save_pretrained``.

    The scheduler is diffusers' Qwen-Image default (``sampler=flow_euler``); our runs take theirs from
    the config. Under a models root the folder's name stands for each part (``model=files_diffusers``).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from workbench.models.arch import SCHEDULER_CONFIG

    te, dit, vae, tokenizer = _parts(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tokenizer, transformer=dit)
    pipe.save_pretrained(str(folder))
    return folder
