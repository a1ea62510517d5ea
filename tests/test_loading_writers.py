"""Writers of the tiny model in every layout users have, for the loading tests (and their own checks).

Each writer takes the tiny reference modules (``workbench.models.tiny``, default ``ModelConfig``) and
writes them the way the wild writes them: ComfyUI single files (legacy names, prefixes, fp8 plain,
scaled fp8 old / new, markers), diffusers / HF folders via the libraries' own ``save_pretrained``,
a fake offline HF cache, the original Wan-2.1 VAE layout, and GGUF (``gguf`` package).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workbench.config.schema import ModelConfig, Variant
from workbench.loading.keys import text_encoder_name, wan_vae_names

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


@lru_cache(maxsize=2)
def reference(variant: str = "t2i"):
    """(text encoder, transformer, vae) of the tiny model, fp32, as build_components makes them."""
    from workbench.models import tiny

    cfg = ModelConfig(variant=Variant(variant))
    return tiny.build_text_encoder(cfg), tiny.build_transformer(cfg), tiny.build_vae(cfg)


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- dtype / fp8 styles
def _is_matrix(name: str, t: torch.Tensor) -> bool:
    return name.endswith(".weight") and t.dim() >= 2


def quantize(sd: dict, style: str) -> tuple[dict, dict, dict]:
    """(tensors to write, metadata, expected de-quantised fp32 weights) for one storage style.

    styles: fp32, bf16, fp16, fp8 (plain cast of matrices, rest bf16), fp8_scaled_old
    (`scale_weight` + `scaled_fp8` marker), fp8_scaled_new (`weight_scale` + `comfy_quant` JSON +
    `input_scale` + header `_quantization_metadata`).
    """
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
    """transformers 5 -> legacy (ComfyUI) names; the loader's text_encoder_name must undo it."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def write_te_comfy(path: Path, style: str = "bf16", drop_lm_head: bool = False) -> dict:
    sd = state(reference()[0])
    if drop_lm_head:
        sd.pop("lm_head.weight")
    out, meta, expected = quantize({legacy_te_name(k): v for k, v in sd.items()}, style)
    save_file(out, str(path), metadata=meta or None)
    return {text_encoder_name(k): v for k, v in expected.items()}


def write_te_hf_folder(folder: Path, tokenizer: bool = True) -> Path:
    from workbench.tokenizer import load_tokenizer

    reference()[0].save_pretrained(str(folder))
    if tokenizer:
        load_tokenizer().save_pretrained(str(folder))
    return folder


def write_hf_cache(cache: Path, repo_id: str, write) -> Path:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<hash>/...} (offline lookups read it)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    write(snap)
    return snap


# ----------------------------------------------------------------------------- transformer
def write_dit(path: Path, style: str = "bf16", prefix: str = "", zero_cond_t_marker: bool = False, variant: str = "t2i") -> dict:
    sd = state(reference(variant)[1])
    out, meta, expected = quantize(sd, style)
    if zero_cond_t_marker:
        out["__index_timestep_zero__"] = torch.tensor([])
    save_file({prefix + k: v for k, v in out.items()}, str(path), metadata=meta or None)
    return expected


def write_dit_gguf(path: Path, qtype: str = "Q8_0") -> dict:
    """Matrices in ``qtype`` (rows a multiple of the block size), the rest F32; returns de-quantised values."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "qwen_image")
    expected = {}
    q = gguf.GGMLQuantizationType[qtype]
    for name, t in state(reference()[1]).items():
        data = t.float().numpy()
        if _is_matrix(name, t) and data.shape[-1] % gguf.GGML_QUANT_SIZES[q][0] == 0:
            packed = gguf.quants.quantize(data, q)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=q)
            expected[name] = torch.from_numpy(gguf.quants.dequantize(packed, q).reshape(data.shape).astype(np.float32))
        else:
            writer.add_tensor(name, data)
            expected[name] = t.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
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
    [norm, SiLU, conv]. Checked in ``test_wan_inverse_roundtrips_through_diffusers``.
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
    raise AssertionError(f"no Wan name for {name}")


def write_vae(path: Path, layout: str = "wan", vae=None, style: str = "fp32") -> dict:
    vae = vae if vae is not None else reference()[2]
    sd = state(vae)
    out, meta, expected = quantize(sd, style)
    if layout == "wan":
        nrb = vae.config.num_res_blocks
        out = {wan_name(k, nrb): v for k, v in out.items()}
    save_file(out, str(path), metadata=meta or None)
    return expected


def write_pipeline_folder(folder: Path) -> Path:
    """A diffusers Qwen-Image folder: model_index.json + transformer/ text_encoder/ tokenizer/ vae/."""
    from workbench.tokenizer import load_tokenizer

    te, dit, vae = reference()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    dit.save_pretrained(str(folder / "transformer"))
    vae.save_pretrained(str(folder / "vae"))
    te.save_pretrained(str(folder / "text_encoder"))
    load_tokenizer().save_pretrained(str(folder / "tokenizer"))
    return folder


# ----------------------------------------------------------------------------- the writers' own checks
@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_wan_inverse_roundtrips_through_diffusers(num_res_blocks):
    """Our inverse Wan names, mapped forward (diffusers' converter; renumbered for nrb=1), give every name back."""
    from diffusers import AutoencoderKLQwenImage

    names = AutoencoderKLQwenImage(base_dim=8, num_res_blocks=num_res_blocks).state_dict().keys()
    wan = {wan_name(n, num_res_blocks): n for n in names}
    assert "decoder.middle.0.residual.0.gamma" in wan  # the key diffusers detects Wan VAEs by
    forward = wan_vae_names(list(wan))
    assert {k: wan[v] for k, v in forward.items()} == {n: n for n in names}


def test_legacy_text_encoder_names_roundtrip():
    names = state(reference()[0]).keys()
    assert any(legacy_te_name(n).startswith("visual.") for n in names)
    assert any(legacy_te_name(n).startswith("model.layers.") for n in names)
    assert {text_encoder_name(legacy_te_name(n)) for n in names} == set(names)
