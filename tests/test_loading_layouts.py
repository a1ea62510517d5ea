"""Every layout users have loads into the tiny model's classes with equal weights and images.

The tiny model (``workbench.models.tiny``, default ``ModelConfig``) is written in each layout by
``test_loading_writers`` and loaded back through discovery names, as a config would name it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers.checkpoints import (
    reference, state, write_dit, write_dit_gguf, write_hf_cache, write_pipeline_folder, write_te_comfy,
    write_te_hf_folder, write_vae,
)
from workbench.config import ModelConfig, ModelSource
from workbench.loading.load import load_component

F32 = torch.float32
CPU = torch.device("cpu")
# fp8 e4m3: 3 mantissa bits -> relative rounding <= 2^-4; subnormal spacing 2^-9 (times the scale).
FP8_REL, FP8_ABS = 2.0**-4, 2.0**-10


@pytest.fixture(scope="module")
def make_cfg(make_cfg):
    """These tests compare against exact references: the seeded random model (model=tiny_random)."""
    return lambda *overrides: make_cfg("model=tiny_random", *overrides)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A ComfyUI-style model root holding the tiny model in every layout (written once per module)."""
    r = tmp_path_factory.mktemp("models")
    for sub in ("text_encoders", "clip", "diffusion_models", "unet", "vae"):
        (r / sub).mkdir()
    exp = {}
    for style in ("fp32", "bf16", "fp16", "fp8", "fp8_scaled_old", "fp8_scaled_new"):
        exp[f"te_{style}"] = write_te_comfy(r / f"text_encoders/qwen_2.5_vl_tiny_{style}.safetensors", style)
    exp["te_no_lm_head"] = write_te_comfy(r / "clip/qwen_2.5_vl_tiny_no_lm_head.safetensors", "bf16", drop_lm_head=True)
    write_te_hf_folder(r / "Qwen2.5-VL-tiny-Instruct")
    exp["dit_fp32"] = write_dit(r / "diffusion_models/qwen_image_tiny_fp32.safetensors", "fp32")
    exp["dit_bf16_prefixed"] = write_dit(r / "diffusion_models/qwen_image_tiny_bf16.safetensors", "bf16", prefix="model.diffusion_model.")
    exp["dit_fp8"] = write_dit(r / "unet/qwen_image_tiny_fp8_e4m3fn.safetensors", "fp8", prefix="model.diffusion_model.")
    exp["dit_fp8_scaled_old"] = write_dit(r / "diffusion_models/qwen_image_tiny_fp8_scaled.safetensors", "fp8_scaled_old")
    exp["dit_fp8_scaled_new"] = write_dit(r / "diffusion_models/qwen_image_tiny_fp8mixed.safetensors", "fp8_scaled_new", prefix="model.diffusion_model.")
    exp["dit_2511"] = write_dit(r / "diffusion_models/qwen_image_tiny_edit_bf16.safetensors", "bf16", zero_cond_t_marker=True, variant="edit_2511")
    exp["dit_gguf"] = write_dit_gguf(r / "diffusion_models/qwen_image_tiny-Q8_0.gguf")
    exp["vae_wan"] = write_vae(r / "vae/qwen_image_vae.safetensors", "wan")
    exp["vae_diffusers"] = write_vae(r / "vae/qwen_image_vae_diffusers.safetensors", "diffusers")
    write_pipeline_folder(r / "pipelines" / "Qwen-Image-tiny")
    return SimpleNamespace(path=r, exp=exp)


def cfg_for(root, **names) -> ModelConfig:
    slots = {"transformer": "x", "text_encoder": "x", "vae": "x"} | names
    return ModelConfig(source=ModelSource.files, roots=[str(root.path)], arch_rules="tiny", **slots)


def load(root, slot, name, dtype=F32, **extra):
    return load_component(slot, cfg_for(root, **{slot: name}, **extra), CPU, dtype)


def assert_equal_to(module, expected: dict):
    got = module.state_dict()
    assert set(got) >= set(expected)
    unequal = [k for k, v in expected.items() if not torch.equal(got[k], v.to(got[k].dtype))]
    assert not unequal, unequal[:5]


def assert_within_fp8(module, ref_module):
    got, ref = module.state_dict(), state(ref_module)
    for k, r in ref.items():
        err = (got[k].float() - r).abs()
        bound = FP8_REL * r.abs() + FP8_ABS * max(1.0, r.abs().max().item() / 448 * 2**9)
        assert (err <= bound).all(), (k, err.max().item())


# ----------------------------------------------------------------------------- text encoder
@pytest.mark.parametrize("style", ["fp32", "bf16", "fp16", "fp8", "fp8_scaled_old", "fp8_scaled_new"])
def test_text_encoder_comfy_single_file(root, style):
    loaded = load(root, "text_encoder", f"text_encoders/qwen_2.5_vl_tiny_{style}.safetensors")
    assert loaded.report["layout"].startswith("legacy Qwen2.5-VL names")
    assert loaded.report["inferred"]["heads"] == 4 and loaded.report["inferred"]["kv_heads"] == 2
    assert loaded.report["tokenizer"].startswith("vendored")
    assert_equal_to(loaded.module, root.exp[f"te_{style}"])  # bit-equal to what the file holds, de-scaled
    if style == "fp32":
        assert_equal_to(loaded.module, state(reference()[0]))
    if style.startswith("fp8"):
        assert_within_fp8(loaded.module, reference()[0])


def test_text_encoder_scaled_fp8_loads_straight_to_bf16(root):
    loaded = load(root, "text_encoder", "text_encoders/qwen_2.5_vl_tiny_fp8_scaled_old.safetensors", torch.bfloat16)
    assert loaded.module.dtype == torch.bfloat16
    assert_equal_to(loaded.module, {k: v.bfloat16() for k, v in root.exp["te_fp8_scaled_old"].items()})


def test_text_encoder_without_lm_head_ties_it_to_the_embeddings(root):
    loaded = load(root, "text_encoder", "clip/qwen_2.5_vl_tiny_no_lm_head.safetensors")
    m = loaded.module
    assert m.lm_head.weight.data_ptr() == m.model.language_model.embed_tokens.weight.data_ptr()
    assert "tied" in loaded.report["inferred"]["lm_head"]
    assert_equal_to(m, {k: v for k, v in root.exp["te_no_lm_head"].items()})


def test_text_encoder_hf_folder_brings_its_tokenizer(root):
    loaded = load(root, "text_encoder", "Qwen2.5-VL-tiny-Instruct")
    assert loaded.report["architecture"] == "config.json"
    assert loaded.report["tokenizer"].endswith("Qwen2.5-VL-tiny-Instruct")
    assert loaded.tokenizer("a cat").input_ids == reference_tokenizer()("a cat").input_ids
    assert_equal_to(loaded.module, state(reference()[0]))


def test_text_encoder_from_hf_cache_offline(root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    write_hf_cache(tmp_path / "hub", "Qwen/Qwen2.5-VL-tiny-Instruct", write_te_hf_folder)
    loaded = load(root, "text_encoder", "hf:Qwen/Qwen2.5-VL-tiny-Instruct")
    assert loaded.entry.name == "hf:Qwen/Qwen2.5-VL-tiny-Instruct"
    assert_equal_to(loaded.module, state(reference()[0]))


def reference_tokenizer():
    from workbench.tokenizer import load_tokenizer

    return load_tokenizer()


# ----------------------------------------------------------------------------- transformer
@pytest.mark.parametrize(
    "name, key, fp8",
    [
        ("diffusion_models/qwen_image_tiny_fp32.safetensors", "dit_fp32", False),
        ("diffusion_models/qwen_image_tiny_bf16.safetensors", "dit_bf16_prefixed", False),
        ("unet/qwen_image_tiny_fp8_e4m3fn.safetensors", "dit_fp8", True),
        ("diffusion_models/qwen_image_tiny_fp8_scaled.safetensors", "dit_fp8_scaled_old", True),
        ("diffusion_models/qwen_image_tiny_fp8mixed.safetensors", "dit_fp8_scaled_new", True),
    ],
)
def test_transformer_single_file(root, name, key, fp8):
    loaded = load(root, "transformer", name)
    assert loaded.module.config.zero_cond_t is False
    assert loaded.report["inferred"]["num_layers"] == 2 and loaded.report["inferred"]["num_attention_heads"] == 2
    assert_equal_to(loaded.module, root.exp[key])
    if key == "dit_fp32":
        assert_equal_to(loaded.module, state(reference()[1]))
    if fp8:
        assert_within_fp8(loaded.module, reference()[1])


def test_transformer_2511_marker_sets_zero_cond_t_and_variant(root):
    loaded = load(root, "transformer", "diffusion_models/qwen_image_tiny_edit_bf16.safetensors")
    assert loaded.module.config.zero_cond_t is True
    assert loaded.report["variant"] == "edit_2511 (from marker tensor __index_timestep_zero__)"
    assert_equal_to(loaded.module, root.exp["dit_2511"])


def test_transformer_gguf_q8_0_via_diffusers(root):
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    loaded = load(root, "transformer", "diffusion_models/qwen_image_tiny-Q8_0.gguf")
    q = loaded.module.transformer_blocks[0].attn.to_q.weight
    assert type(q).__name__ == "GGUFParameter"  # stays quantised: diffusers dequantises per forward
    exp = root.exp["dit_gguf"]["transformer_blocks.0.attn.to_q.weight"]
    assert torch.allclose(dequantize_gguf_tensor(q).float(), exp, atol=1e-4)
    ref = reference()[1].transformer_blocks[0].attn.to_q.weight.detach()
    assert (exp - ref).abs().max() <= ref.abs().max() / 127  # Q8_0: 8-bit blocks with their own scale


# ----------------------------------------------------------------------------- VAE
@pytest.mark.parametrize("name, key", [("vae/qwen_image_vae.safetensors", "vae_wan"), ("vae/qwen_image_vae_diffusers.safetensors", "vae_diffusers")])
def test_vae_single_file(root, name, key):
    loaded = load(root, "vae", name)
    assert loaded.report["inferred"]["num_res_blocks"] == 1 and loaded.report["inferred"]["base_dim"] == 16
    assert_equal_to(loaded.module, state(reference()[2]))


# ----------------------------------------------------------------------------- whole folders
@pytest.mark.parametrize("slot, index", [("text_encoder", 0), ("transformer", 1), ("vae", 2)])
def test_diffusers_pipeline_folder_parts(root, slot, index):
    loaded = load(root, slot, "pipelines/Qwen-Image-tiny")
    assert loaded.entry.name == f"pipelines/Qwen-Image-tiny/{slot}"
    assert_equal_to(loaded.module, state(reference()[index]))
    if slot == "text_encoder":
        assert loaded.report["tokenizer"].endswith("Qwen-Image-tiny/tokenizer")


# ----------------------------------------------------------------------------- same images
def _generate(components, make_cfg, *overrides):
    from workbench.pipeline import Workbench

    cfg = make_cfg("sampler.steps=2", "seeds=[5]", "prompts=[a red fox]", *overrides)
    return Workbench(components).generate(cfg, progress=False)[0]


def _tiny(make_cfg, *overrides):
    from workbench.pipeline import Workbench

    cfg = make_cfg("sampler.steps=2", "seeds=[5]", "prompts=[a red fox]", *overrides)
    return Workbench.from_config(cfg).generate(cfg, progress=False)[0]


@pytest.mark.parametrize(
    "names, precision",
    [
        (dict(text_encoder="text_encoders/qwen_2.5_vl_tiny_fp32.safetensors", transformer="qwen_image_tiny_fp32.safetensors",
              vae="vae/qwen_image_vae.safetensors"), "fp32"),
        (dict(text_encoder="pipelines/Qwen-Image-tiny", transformer="pipelines/Qwen-Image-tiny", vae="pipelines/Qwen-Image-tiny"), "fp32"),
        (dict(text_encoder="text_encoders/qwen_2.5_vl_tiny_bf16.safetensors", transformer="diffusion_models/qwen_image_tiny_bf16.safetensors",
              vae="vae/qwen_image_vae_diffusers.safetensors"), "bf16"),
    ],
    ids=["comfy_files", "diffusers_folder", "comfy_bf16"],
)
def test_loaded_components_generate_the_tiny_models_image(root, make_cfg, names, precision):
    from workbench.models.components import build_components

    files = cfg_for(root, **names)
    components = build_components(files, make_cfg(f"precision={precision}").precision, "cpu")
    name, size, mtime = components.identity["transformer"].split("|")  # what records and caches key on
    assert names["transformer"] in name and int(size) > 0 and int(mtime) > 0
    ours = _generate(components, make_cfg, f"precision={precision}")
    ref = _tiny(make_cfg, f"precision={precision}", "device=cpu")
    assert torch.equal(ours.latents, ref.latents)
    assert np.array_equal(np.asarray(ours.image), np.asarray(ref.image))


def test_gguf_transformer_generates_close_to_the_tiny_model(root, make_cfg):
    from workbench.models.components import Components
    from workbench.models.build import cached_components

    tiny = cached_components(make_cfg().model, make_cfg().precision, "cpu")
    gguf = load(root, "transformer", "diffusion_models/qwen_image_tiny-Q8_0.gguf").module
    mixed = Components(tiny.tokenizer, tiny.text_encoder, gguf, tiny.vae, tiny.device)
    ours = _generate(mixed, make_cfg).latents
    ref = _tiny(make_cfg, "device=cpu").latents
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.02, rel  # quantised, so not equal; Q8_0 keeps it within 2 %


def test_inferred_text_encoder_config_equals_the_tiny_models(root):
    """Shapes + arch_rules=tiny give the tiny config, vision tower included (edit prompts use it)."""
    loaded = load(root, "text_encoder", "text_encoders/qwen_2.5_vl_tiny_fp32.safetensors").module.config
    ref = reference()[0].config
    for part in ("vision_config", "text_config"):
        got, want = getattr(loaded, part).to_dict(), getattr(ref, part).to_dict()
        keys = ("depth", "hidden_size", "num_heads", "intermediate_size", "fullatt_block_indexes", "out_hidden_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rope_parameters", "vocab_size")
        assert {k: got.get(k) for k in keys} == {k: want.get(k) for k in keys}, part


def test_big_files_show_a_progress_bar(root, monkeypatch, capsys):
    from workbench.loading import stream

    monkeypatch.setattr(stream, "PROGRESS_BYTES", 0)  # the tiny file counts as big
    load(root, "vae", "vae/qwen_image_vae.safetensors")
    assert "loading VAE" in capsys.readouterr().err


def test_loaded_components_generate_the_tiny_models_edit_image(root, make_cfg):
    """Edit path: vision tower (inferred from shapes) + reference latents through the Wan-layout VAE."""
    from workbench.models.components import build_components

    edit = ("experiment=edit_tiny",)  # 4 vision tokens, 64x64 reference
    files = cfg_for(root, text_encoder="text_encoders/qwen_2.5_vl_tiny_fp32.safetensors",
                    transformer="diffusion_models/qwen_image_tiny_fp32.safetensors", vae="vae/qwen_image_vae.safetensors")
    components = build_components(files, make_cfg().precision, "cpu")
    ours = _generate(components, make_cfg, *edit)
    ref = _tiny(make_cfg, *edit, "device=cpu")
    assert torch.equal(ours.latents, ref.latents)


@pytest.mark.parametrize("memory", ["model_offload", "group_offload"])
def test_offload_modes_load_files_into_host_memory(root, make_cfg, monkeypatch, memory):
    """A 24 GB card cannot hold the 41 GB bf16 DiT even for a moment: with an offload memory mode the
    files are read into host memory and the offload hooks stream them; all_on_device loads to the GPU."""
    from workbench.loading import load as load_module
    from workbench.models import components as comp

    seen = []
    real = load_module.load_all
    cpu = {slot: torch.device("cpu") for slot in ("text_encoder", "transformer", "vae")}
    monkeypatch.setattr(load_module, "load_all", lambda model, dtypes, devices, **kw: seen.append(
        sorted({d.type for d in devices.values()})) or real(model, dtypes, cpu, **kw))
    monkeypatch.setattr(comp, "resolve_device", lambda name: torch.device(name))  # "cuda" without a GPU: placement only
    files = cfg_for(root, transformer="diffusion_models/qwen_image_tiny_bf16.safetensors",
                    text_encoder="text_encoders/qwen_2.5_vl_tiny_bf16.safetensors", vae="vae/qwen_image_vae.safetensors")
    comp.build_components(files, make_cfg(f"precision.memory={memory}").precision, "cuda")
    comp.build_components(files, make_cfg().precision, "cuda")
    comp.build_components(files, make_cfg("precision.encoder_memory=cpu").precision, "cuda")
    assert seen == [["cpu"], ["cuda"], ["cpu", "cuda"]]  # an encoder on the CPU is loaded there, the rest on the GPU
