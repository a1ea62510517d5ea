"""Discovery: model roots, ComfyUI folders, diffusers folders anywhere below, the HF cache, `workbench models`."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from helpers.checkpoints import write_dit, write_hf_cache, write_pipeline_folder, write_te_comfy, write_te_hf_folder, write_vae
from workbench.loading.discover import model_roots, resolve, scan


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("roots") / "models"
    for sub in ("text_encoders", "clip", "diffusion_models", "unet", "vae", "loras"):
        (r / sub).mkdir(parents=True)
    write_te_comfy(r / "clip/qwen_2.5_vl_tiny_fp8_scaled.safetensors", "fp8_scaled_old")
    write_dit(r / "diffusion_models/qwen_image_edit_2509_bf16.safetensors", "bf16", prefix="model.diffusion_model.")
    write_dit(r / "unet/qwen_image_2512_fp8mixed.safetensors", "fp8_scaled_new", zero_cond_t_marker=True, variant="edit_2511")
    write_vae(r / "vae/qwen_image_vae.safetensors", "wan")
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64)}, str(r / "loras/lightning.safetensors"))
    write_pipeline_folder(r / "deep/below/Qwen-Image-tiny")
    (r / "unet/old.ckpt").write_bytes(b"pickle")
    return r


def by_name(entries):
    return {e.name: e for e in entries}


def test_scan_lists_every_layout_with_kind_variant_dtype(root):
    found = by_name(scan([str(root)], hf_cache=False))
    assert found["clip/qwen_2.5_vl_tiny_fp8_scaled.safetensors"].kind == "text_encoder"
    assert found["clip/qwen_2.5_vl_tiny_fp8_scaled.safetensors"].dtype == "fp8 scaled (scale_weight)"
    edit = found["diffusion_models/qwen_image_edit_2509_bf16.safetensors"]
    assert (edit.kind, edit.variant, edit.dtype) == ("transformer", "edit_2509", "bf16")
    assert edit.note == "variant from file name" and "model.diffusion_model." in edit.layout
    marked = found["unet/qwen_image_2512_fp8mixed.safetensors"]
    assert (marked.variant, marked.dtype) == ("edit_2511", "fp8 scaled (weight_scale)")  # the marker beats the name
    assert (found["vae/qwen_image_vae.safetensors"].kind, found["vae/qwen_image_vae.safetensors"].layout) == ("vae", "original Wan-2.1 names")
    assert found["loras/lightning.safetensors"].kind == "lora"
    for part in ("transformer", "text_encoder", "vae"):
        assert found[f"deep/below/Qwen-Image-tiny/{part}"].kind == part
    assert found["unet/old.ckpt"].kind == "refused" and "pickles" in found["unet/old.ckpt"].note
    assert found["vae/qwen_image_vae.safetensors"].size == (root / "vae/qwen_image_vae.safetensors").stat().st_size


def test_scan_reads_headers_only(root, monkeypatch):
    """Classifying a folder never opens tensor data: safetensors' reader is not called at all."""
    import safetensors

    def boom(*a, **k):
        raise AssertionError("tensor data read during discovery")

    monkeypatch.setattr(safetensors, "safe_open", boom)
    start = time.perf_counter()
    entries = scan([str(root)], hf_cache=False)
    assert len(entries) == 9 and time.perf_counter() - start < 2.0


def test_hf_cache_repos_are_listed_by_hf_names(root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    write_hf_cache(tmp_path / "hub", "Qwen/Qwen2.5-VL-tiny-Instruct", write_te_hf_folder)
    write_hf_cache(tmp_path / "hub", "Qwen/Qwen-Image-tiny", write_pipeline_folder)
    found = by_name(scan([str(root)]))
    assert found["hf:Qwen/Qwen2.5-VL-tiny-Instruct"].kind == "text_encoder"
    assert found["hf:Qwen/Qwen-Image-tiny/transformer"].kind == "transformer"
    entry = resolve("hf:Qwen/Qwen-Image-tiny", "vae", [str(root)])  # a pipeline repo stands for each part
    assert entry.name == "hf:Qwen/Qwen-Image-tiny/vae" and entry.kind == "vae"


def test_roots_from_config_then_env_then_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKBENCH_MODELS", raising=False)
    assert model_roots() == [tmp_path / "models"]
    monkeypatch.setenv("WORKBENCH_MODELS", f"/data/a{__import__('os').pathsep}/data/b")
    assert model_roots() == [tmp_path.joinpath("/data/a"), tmp_path.joinpath("/data/b")]
    assert model_roots(["cfg_root"]) == [tmp_path / "cfg_root"]


def test_resolve_by_unique_file_name_and_pipeline_folder(root):
    assert resolve("qwen_image_vae.safetensors", "vae", [str(root)]).name == "vae/qwen_image_vae.safetensors"
    assert resolve("deep/below/Qwen-Image-tiny", "text_encoder", [str(root)]).path == root / "deep/below/Qwen-Image-tiny/text_encoder"


def test_cli_models_json_and_table(root, capsys, monkeypatch, tmp_path):
    from workbench.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no_hub"))
    assert main(["models", "--json", "--root", str(root)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["roots"] == [str(root)]
    kinds = {m["name"]: m["kind"] for m in listing["models"]}
    assert kinds["vae/qwen_image_vae.safetensors"] == "vae" and kinds["loras/lightning.safetensors"] == "lora"
    assert main(["models", "--root", str(root)]) == 0
    table = capsys.readouterr().out
    assert "diffusion_models/qwen_image_edit_2509_bf16.safetensors" in table and "edit_2509" in table
    assert main(["models", "--root", str(root / "nowhere")]) == 0
    assert "no model files found" in capsys.readouterr().out
    (tmp_path / "a_file").write_text("x")  # a root that is a file, one that is missing: each named
    assert main(["models", "--no-hf-cache", "--root", str(tmp_path / "a_file"), "--root", str(root / "nowhere")]) == 0
    assert f"({tmp_path / 'a_file'} is a file, not a folder; {root / 'nowhere'} is missing)" in capsys.readouterr().out
