"""The tiny model in every layout users have, for the loading tests (and their own checks).

The writers themselves are the library's (``workbench.loading.export``: ComfyUI single files in every
fp8 convention, Wan VAE names, diffusers folders); here they are bound to the tiny reference modules
(``workbench.models.tiny``, default ``ModelConfig``), with what only tests need: a fake offline HF
cache and GGUF files (``gguf`` package, a test dependency).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

from workbench.config.schema import ModelConfig, Variant
from workbench.loading import export
from workbench.loading.export import _is_matrix, legacy_te_name, state, wan_name
from workbench.loading.keys import text_encoder_name, wan_vae_names


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


# ----------------------------------------------------------------------------- whole-model exports
def test_export_comfyui_writes_what_discovery_and_the_loader_read_back(tmp_path, make_cfg):
    """Tiny model -> ComfyUI layout -> discovery names -> the same image, bit for bit."""
    import numpy as np

    from workbench.config import compose, to_run_config
    from workbench.loading.discover import scan
    from workbench.pipeline import Workbench

    # model=tiny_random: a single-file VAE carries no latents_mean/std (the trained model keeps its own in trained.json)
    tiny_cfg = make_cfg("model=tiny_random", "sampler.steps=2", "height=32", "width=32", "device=cpu")
    names = export.export_comfyui(tiny_cfg, tmp_path)
    assert names == {"text_encoder": "text_encoders/qwen_2.5_vl_tiny.safetensors",
                     "transformer": "diffusion_models/qwen_image_tiny.safetensors", "vae": "vae/qwen_image_vae_tiny.safetensors"}
    found = {e.name: e for e in scan([str(tmp_path)], hf_cache=False)}
    assert {found[n].kind for n in names.values()} == {"text_encoder", "transformer", "vae"}
    assert found[names["transformer"]].variant == "t2i" and found[names["vae"]].layout == "original Wan-2.1 names"
    assert found[names["text_encoder"]].layout.startswith("legacy Qwen2.5-VL names")

    files_cfg = to_run_config(compose(["model=files_comfyui", f"model.roots=[{tmp_path}]", "model.arch_rules=tiny",
                                       *(f"model.{k}={v}" for k, v in names.items()), "sampler.steps=2", "height=32",
                                       "width=32", "device=cpu"]))
    ours = Workbench.from_config(files_cfg).generate(files_cfg, progress=False)[0]
    ref = Workbench.from_config(tiny_cfg).generate(tiny_cfg, progress=False)[0]
    assert torch.equal(ours.latents, ref.latents)
    assert np.array_equal(np.asarray(ours.image), np.asarray(ref.image))


def test_export_comfyui_fp8_and_the_2511_marker(tmp_path):
    from workbench.loading.discover import scan

    names = export.export_comfyui(reference("edit_2511"), tmp_path, style="fp8_scaled_old", label="edit")
    assert names["transformer"] == "diffusion_models/qwen_image_edit_fp8_scaled_old.safetensors"
    found = {e.name: e for e in scan([str(tmp_path)], hf_cache=False)}
    dit = found[names["transformer"]]
    assert dit.variant == "edit_2511" and "__index_timestep_zero__" in dit.detected.variant_from
    assert "fp8" in dit.dtype and "fp8" in found[names["text_encoder"]].dtype
    assert found[names["vae"]].dtype == "fp32"  # the VAE stays full precision, as ComfyUI ships it
    with pytest.raises(ValueError, match="style='int4'; choose one of fp32, bf16"):
        export.export_comfyui(reference(), tmp_path, style="int4")


def test_export_diffusers_folder_loads_in_diffusers(tmp_path):
    """diffusers' own from_pretrained reads the folder back (every part, the scheduler included)."""
    from diffusers import QwenImagePipeline

    folder = export.export_diffusers(reference(), tmp_path / "Qwen-Image-tiny")
    pipe = QwenImagePipeline.from_pretrained(str(folder))
    for name, module in zip(("text_encoder", "transformer", "vae"), reference()):
        got = getattr(pipe, name).state_dict()
        assert all(torch.equal(got[k], v) for k, v in state(module).items()), name
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.tokenizer("a cat").input_ids == reference_tokenizer()("a cat").input_ids


def reference_tokenizer():
    from workbench.tokenizer import load_tokenizer

    return load_tokenizer()
