"""The tiny model in every layout users have, for the loading tests (and their own checks).

The writers themselves are the library's (``workbench.loading.export``: ComfyUI single files in every
fp8 convention, Wan VAE names, diffusers folders); here they are bound to the tiny reference modules
(``workbench.models.tiny``, default ``ModelConfig``), with what only tests need: a fake offline HF
cache and GGUF files (``gguf`` package, a test dependency).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from workbench.config import ModelConfig, Variant
from workbench.loading import export
from workbench.loading.export import _is_matrix, state


@lru_cache(maxsize=2)
def reference(variant: str = "t2i"):
    """(text encoder, transformer, vae) of the tiny model, fp32, as build_components makes them."""
    from workbench.models import tiny

    cfg = ModelConfig(variant=Variant(variant))
    return tiny.build_text_encoder(cfg), tiny.build_transformer(cfg), tiny.build_vae(cfg)


# ----------------------------------------------------------------------------- the library's writers, on the tiny model
def write_te_comfy(path: Path, style: str = "bf16", drop_lm_head: bool = False) -> dict:
    return export.write_text_encoder(reference()[0], path, style, drop_lm_head)


def write_te_hf_folder(folder: Path, tokenizer: bool = True) -> Path:
    return export.write_text_encoder_folder(reference()[0], folder, tokenizer)


def write_dit(path: Path, style: str = "bf16", prefix: str = "", zero_cond_t_marker: bool = False, variant: str = "t2i") -> dict:
    return export.write_transformer(reference(variant)[1], path, style, prefix, zero_cond_t_marker)


def write_vae(path: Path, layout: str = "wan", vae=None, style: str = "fp32") -> dict:
    return export.write_vae(vae if vae is not None else reference()[2], path, layout, style)


def write_pipeline_folder(folder: Path) -> Path:
    """A diffusers Qwen-Image folder: model_index.json + transformer/ text_encoder/ tokenizer/ vae/ scheduler/."""
    return export.export_diffusers(reference(), folder)


# ----------------------------------------------------------------------------- test-only layouts
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


def reference_tokenizer():
    """The tokenizer the tiny model ships with (what a written pipeline folder must hold)."""
    from workbench.tokenizer import load_tokenizer

    return load_tokenizer()
