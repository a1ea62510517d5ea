"""Qwen-Image-2.1 / 2.1-Turbo and Qwen-Image-2512 files: discovery (kind, family, variant), `workbench models`,
loading every layout into the 2.1 classes with the architecture read off the shapes, the same images as the
tiny model the files were written from, Turbo's sample_sigmas, and the refused quantised formats.

The tiny 2.1 model (model=tiny_qwen21) is written by ``helpers.checkpoints21`` in each layout, the 20B tiny
model (2512 naming) by ``helpers.checkpoints``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from helpers.checkpoints import reference, write_dit, write_te_comfy, write_vae
from helpers.checkpoints21 import (
    reference21, state, write_dit21, write_int8_convrot, write_pipeline21, write_te21, write_vae21,
)
from workbench.config import ConfigError, ModelConfig, ModelSource, Variant
from workbench.loading.errors import LoadError
from workbench.loading.load import load_component

CPU, F32 = torch.device("cpu"), torch.float32
TURBO_SIGMAS = [1.0, 0.9, 0.78, 0.64, 0.5, 0.36, 0.22, 0.1]  # = conf/sampler/qwen21_turbo.yaml (the tiny grid)
DIT = "diffusion_models/qwen_image_2.1_fp32.safetensors"  # ComfyUI layout: prefix + fused gate_up
TE = "text_encoders/qwen_3_vl_8b_tiny_fp32.safetensors"
VAE = "vae/qwen_image_2.1_vae_tiny.safetensors"
INT8 = "diffusion_models/qwen_image_2.1_int8_convrot.safetensors"
DIT_2512 = "diffusion_models/qwen_image_2512_bf16.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("models21")
    for sub in ("text_encoders", "diffusion_models", "unet", "vae"):
        (r / sub).mkdir()
    exp = {
        "dit_comfy": write_dit21(r / DIT, "fp32", prefix="model.diffusion_model.", fused=True),
        "dit_turbo_bf16": write_dit21(r / "diffusion_models/qwen_image_2.1_turbo_bf16.safetensors", "bf16"),
        "dit_fp8": write_dit21(r / "diffusion_models/qwen_image_2.1_fp8_scaled.safetensors", "fp8_scaled_new", fused=True),
        "te": write_te21(r / TE, "fp32"),
        "te_legacy_bf16": write_te21(r / "text_encoders/qwen_3_vl_8b_tiny_legacy_bf16.safetensors", "bf16", legacy=True),
        "vae": write_vae21(r / VAE),
        "dit_2512": write_dit(r / DIT_2512, "bf16"),  # the 20B tiny model under ComfyUI's 2512 name
    }
    write_int8_convrot(r / INT8)
    write_int8_convrot(r / "unet/qwen_image_2.1_int8_no_metadata.safetensors", metadata=False)
    write_te_comfy(r / "text_encoders/qwen_2.5_vl_tiny_bf16.safetensors", "bf16")
    write_vae(r / "vae/qwen_image_vae.safetensors", "wan")
    lm_only = {k: v.bfloat16() for k, v in state(reference21()[0]).items() if ".visual." not in k}
    save_file(lm_only, str(r / "text_encoders/qwen_3_4b.safetensors"))  # Z-Image's encoder: no vision tower
    save_file({"encoder.downsamples.0.downsamples.0.residual.0.gamma": torch.ones(16, 1, 1, 1),
               "encoder.conv1.weight": torch.zeros(16, 4, 3, 3, 3), "decoder.middle.0.residual.0.gamma": torch.ones(8, 1, 1, 1)},
              str(r / "vae/qwen_image_2.1_vae_original.safetensors"))
    write_pipeline21(r / "Qwen-Image-2.1-tiny")
    write_pipeline21(r / "Qwen-Image-2.1-Turbo-tiny", TURBO_SIGMAS, parts_of=r / "Qwen-Image-2.1-tiny")
    return SimpleNamespace(path=r, exp=exp)


def files_cfg(root, variant=Variant.qwen21, **names) -> ModelConfig:
    slots = {"transformer": DIT, "text_encoder": TE, "vae": VAE} | names
    return ModelConfig(source=ModelSource.files, variant=variant, roots=[str(root.path)], arch_rules="tiny", **slots)


def load(root, slot, name, variant=Variant.qwen21, dtype=F32):
    return load_component(slot, files_cfg(root, variant, **{slot: name}), CPU, dtype)


def arch(module) -> dict:
    """A diffusers model's architecture: its registered config without the bookkeeping keys."""
    return {k: v for k, v in module.config.items() if not k.startswith("_")}


def assert_equal_to(module, expected: dict):
    got = module.state_dict()
    assert set(got) == set(expected)
    unequal = [k for k, v in expected.items() if not torch.equal(got[k], v.to(got[k].dtype))]
    assert not unequal, unequal[:5]


# ----------------------------------------------------------------------------- discovery
def test_discovery_names_kind_family_variant_and_dtype(root):
    from workbench.loading.discover import scan

    found = {e.name: e for e in scan([str(root.path)], hf_cache=False)}
    want = {
        DIT: ("transformer", "qwen-image-2.1", "qwen21", "fp32"),
        "diffusion_models/qwen_image_2.1_turbo_bf16.safetensors": ("transformer", "qwen-image-2.1", "qwen21_turbo", "bf16"),
        "diffusion_models/qwen_image_2.1_fp8_scaled.safetensors": ("transformer", "qwen-image-2.1", "qwen21", "fp8 scaled (weight_scale)"),
        TE: ("text_encoder", "qwen-image-2.1", None, "fp32"),
        "text_encoders/qwen_3_vl_8b_tiny_legacy_bf16.safetensors": ("text_encoder", "qwen-image-2.1", None, "bf16"),
        VAE: ("vae", "qwen-image-2.1", None, "fp32"),
        "Qwen-Image-2.1-tiny/transformer": ("transformer", "qwen-image-2.1", "qwen21", "fp32"),
        "Qwen-Image-2.1-tiny/text_encoder": ("text_encoder", "qwen-image-2.1", None, "fp32"),
        "Qwen-Image-2.1-tiny/vae": ("vae", "qwen-image-2.1", None, "fp32"),
        "Qwen-Image-2.1-Turbo-tiny/transformer": ("transformer", "qwen-image-2.1", "qwen21_turbo", "fp32"),
        DIT_2512: ("transformer", "qwen-image", "t2i_2512", "bf16"),
        "text_encoders/qwen_2.5_vl_tiny_bf16.safetensors": ("text_encoder", "qwen-image", None, "bf16"),
        "vae/qwen_image_vae.safetensors": ("vae", "qwen-image", None, "fp32"),
        INT8: ("refused", "qwen-image-2.1", "qwen21", "int8_convrot"),
        "unet/qwen_image_2.1_int8_no_metadata.safetensors": ("refused", "qwen-image-2.1", "qwen21", "int8_convrot"),
    }
    assert {n: (found[n].kind, found[n].family, found[n].variant, found[n].dtype) for n in want} == want
    assert found[DIT].layout == "ComfyUI names (fused img_mlp.gate_up) under model.diffusion_model."
    assert found[TE].layout == "Qwen3-VL, transformers 5 names"
    turbo = found["Qwen-Image-2.1-Turbo-tiny/transformer"]
    assert turbo.detected.sample_sigmas == TURBO_SIGMAS and "give them as sampler.sigmas" in turbo.note
    assert found[DIT_2512].note == "variant from file name"
    lm = found["text_encoders/qwen_3_4b.safetensors"]
    assert lm.kind == "unknown" and "Qwen3 language model without the Qwen3-VL vision tower" in lm.note
    original = found["vae/qwen_image_2.1_vae_original.safetensors"]
    assert original.kind == "refused" and "use the vae/ folder of the diffusers release" in original.note


def test_workbench_models_shows_family_variant_and_refusals(root, capsys):
    from workbench.cli import main

    assert main(["models", "--no-hf-cache", "--root", str(root.path)]) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows[DIT][:5] == ["transformer", DIT, "qwen-image-2.1", "qwen21", "fp32"]
    assert rows[DIT_2512][:5] == ["transformer", DIT_2512, "qwen-image", "t2i_2512", "bf16"]
    assert rows[TE][:4] == ["text_encoder", TE, "qwen-image-2.1", "fp32"]
    assert rows["Qwen-Image-2.1-Turbo-tiny/transformer"][3] == "qwen21_turbo"
    refused = " ".join(rows[INT8])
    assert rows[INT8][0] == "refused" and "quantised as 'int8_convrot'" in refused and "use the bf16 (or fp8) file" in refused


def test_catalogue_pairs_each_transformer_with_its_familys_files(root):
    from workbench.models.catalogue import discovered_models

    models = discovered_models([str(root.path)], hf_cache=False)
    comfy = models[f"files:{DIT}"]
    assert "model.variant=qwen21" in comfy and "model.arch_rules=tiny" in comfy
    assert f"model.text_encoder={TE}" in comfy and f"model.vae={VAE}" in comfy
    old = models[f"files:{DIT_2512}"]
    assert "model.variant=t2i_2512" in old and "model.text_encoder=text_encoders/qwen_2.5_vl_tiny_bf16.safetensors" in old
    assert "model.vae=vae/qwen_image_vae.safetensors" in old
    assert "model.variant=qwen21_turbo" in models["files:Qwen-Image-2.1-Turbo-tiny"]
    assert f"files:{INT8}" not in models  # refused files are offered nowhere


# ----------------------------------------------------------------------------- each component
@pytest.mark.parametrize("slot, name, key", [
    ("transformer", DIT, "dit_comfy"),
    ("transformer", "diffusion_models/qwen_image_2.1_turbo_bf16.safetensors", "dit_turbo_bf16"),
    ("transformer", "diffusion_models/qwen_image_2.1_fp8_scaled.safetensors", "dit_fp8"),
    ("text_encoder", TE, "te"),
    ("text_encoder", "text_encoders/qwen_3_vl_8b_tiny_legacy_bf16.safetensors", "te_legacy_bf16"),
    ("vae", VAE, "vae"),
])
def test_single_files_load_what_they_hold(root, slot, name, key):
    loaded = load(root, slot, name)
    assert_equal_to(loaded.module, root.exp[key])  # bit-equal to the file, de-scaled and un-fused
    assert loaded.report["family"] == "qwen-image-2.1"
    inferred, ref = loaded.report["inferred"], {"transformer": 1, "text_encoder": 0, "vae": 2}[slot]
    if key in ("dit_comfy", "te", "vae"):  # fp32 files: the tiny model itself, config included
        assert_equal_to(loaded.module, state(reference21()[ref]))
    if slot == "transformer":
        assert (inferred["num_layers"], inferred["num_attention_heads"], inferred["context_in_dim"], inferred["mlp_ratio"]) == (2, 2, 64, 3)
        assert arch(loaded.module) == arch(reference21()[1])
    if slot == "text_encoder":
        assert (inferred["heads"], inferred["kv_heads"], inferred["head_dim"]) == (4, 2, "16 (q_norm)")
        assert loaded.tokenizer.convert_tokens_to_ids("<think>") == 151667 and loaded.report["tokenizer"].startswith("vendored (Qwen3")
        for part in ("text_config", "vision_config"):
            got, want = getattr(loaded.module.config, part).to_dict(), getattr(reference21()[0].config, part).to_dict()
            assert {k: v for k, v in got.items() if k != "dtype"} == {k: v for k, v in want.items() if k != "dtype"}, part
    if slot == "vae":
        assert inferred == {"base_dim": 16, "decoder_base_dim": 16, "z_dim": 64, "dim_mult": [1, 2, 4, 8, 8], "num_res_blocks": 1,
                            "temperal_downsample": [False, True, True, True], "in_channels": 4, "out_channels": 4}


@pytest.mark.parametrize("slot, index", [("text_encoder", 0), ("transformer", 1), ("vae", 2)])
def test_diffusers_folder_parts_load_with_their_tokenizer_and_sigmas(root, slot, index):
    loaded = load(root, slot, "Qwen-Image-2.1-Turbo-tiny", Variant.qwen21_turbo)
    assert loaded.entry.name == f"Qwen-Image-2.1-Turbo-tiny/{slot}" and loaded.report["architecture"] == "config.json"
    assert_equal_to(loaded.module, state(reference21()[index]))
    if slot == "text_encoder":
        assert loaded.report["tokenizer"].endswith("Qwen-Image-2.1-Turbo-tiny/processor")
        assert loaded.tokenizer("a red fox <think>").input_ids == reference_tokenizer()("a red fox <think>").input_ids
    if slot == "transformer":
        assert loaded.report["variant"] == "qwen21_turbo (from model_index.json sample_sigmas)"
        assert str(TURBO_SIGMAS) in loaded.report["sample_sigmas"]


def reference_tokenizer():
    from workbench.tokenizer import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", [INT8, "unet/qwen_image_2.1_int8_no_metadata.safetensors"])
def test_int8_convrot_is_refused_naming_the_format_and_the_fix(root, name):
    with pytest.raises(LoadError) as err:
        load(root, "transformer", name)
    msg = str(err.value)
    assert msg.startswith(str(root.path / name)) and "\n" not in msg
    assert "a diffusion transformer of Qwen-Image-2.1: quantised as 'int8_convrot'" in msg
    assert "use the bf16 (or fp8) file of this model" in msg


def test_files_of_the_other_family_are_refused_with_the_variant_to_set(root):
    with pytest.raises(LoadError, match=r"qwen_image_2.1_fp32.safetensors given as model.transformer is a diffusion "
                                        r"transformer of Qwen-Image-2.1, but model.variant=t2i builds Qwen-Image \(20B family\); "
                                        r"set model.variant=qwen21"):
        load(root, "transformer", DIT, Variant.t2i)
    with pytest.raises(LoadError, match=r"qwen_2.5_vl_tiny_bf16.safetensors given as model.text_encoder is a text encoder of "
                                        r"Qwen-Image \(20B family\), but model.variant=qwen21 builds Qwen-Image-2.1"):
        load(root, "text_encoder", "text_encoders/qwen_2.5_vl_tiny_bf16.safetensors")


def test_2512_file_loads_as_the_t2i_architecture(root):
    loaded = load(root, "transformer", DIT_2512, Variant.t2i_2512)
    assert loaded.module.config.zero_cond_t is False and loaded.report["variant"] == "t2i_2512 (from file name)"
    assert loaded.report["zero_cond_t"] == "False (model.variant=t2i_2512)"
    assert_equal_to(loaded.module, root.exp["dit_2512"])
    assert arch(loaded.module) == arch(reference()[1])
    from workbench.models import tiny

    assert tiny.build_transformer(ModelConfig(variant=Variant.t2i_2512)).config.zero_cond_t is False  # model.source=tiny too


# ----------------------------------------------------------------------------- same images
def _catalogued(root, key):
    from workbench.models.catalogue import discovered_models

    return discovered_models([str(root.path)], hf_cache=False)[key]


RUN = ("prompts=[a red fox in the snow]", "seeds=[3]", "height=64", "width=64", "device=cpu")


@pytest.mark.parametrize("key", [f"files:{DIT}", "files:Qwen-Image-2.1-tiny"])
def test_loaded_files_generate_the_tiny_models_image(root, make_cfg, key):
    """The catalogue's overrides for the files (ComfyUI single files; the diffusers folder) give a workbench
    whose latents equal model=tiny_qwen21's, bit for bit."""
    from workbench.pipeline import Workbench

    cfg = make_cfg(*_catalogued(root, key), "template=qwen21", "sampler=qwen21", "sampler.steps=2", *RUN)
    assert cfg.model.source == ModelSource.files and cfg.encoder_tap == "pre_norm"
    bench = Workbench.from_config(cfg)
    assert bench.components.family == "qwen-image-2.1" and "|" in bench.components.identity["transformer"]
    ours = bench.generate(cfg, progress=False)[0]
    ref_cfg = make_cfg("experiment=qwen21_t2i_tiny", "sampler.steps=2", *RUN)
    ref = Workbench.from_config(ref_cfg).generate(ref_cfg, progress=False)[0]
    assert ours.latents.shape == (1, 16, 64) and torch.equal(ours.latents, ref.latents)


def test_turbo_folder_wants_its_sample_sigmas_and_then_equals_tiny_turbo(root, make_cfg):
    from workbench.pipeline import Workbench

    overrides = (*_catalogued(root, "files:Qwen-Image-2.1-Turbo-tiny"), "template=qwen21", *RUN)
    with pytest.raises(ConfigError, match=r"is Qwen-Image-2.1-Turbo: its model_index.json ships sample_sigmas "
                                          r"\[1.0, 0.9, .*\] .*but sampler.sigmas is null; add sampler=qwen21_turbo "
                                          r"'sampler.sigmas=\[1.0, .*, 0.1\]' sampler.steps=8"):
        make_cfg(*overrides, "sampler=qwen21")
    cfg = make_cfg(*overrides, "sampler=qwen21_turbo")  # its grid is this folder's sample_sigmas
    assert cfg.sampler.sigmas == TURBO_SIGMAS and cfg.model.variant == Variant.qwen21_turbo
    ours = Workbench.from_config(cfg).generate(cfg, progress=False)[0]
    ref_cfg = make_cfg("experiment=qwen21_turbo_tiny", *RUN)
    ref = Workbench.from_config(ref_cfg).generate(ref_cfg, progress=False)[0]
    assert torch.equal(ours.latents, ref.latents)
