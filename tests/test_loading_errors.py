"""Every bad input gets one clear error naming the file, what was found and what was expected."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from helpers.checkpoints import reference, state, write_dit, write_te_comfy, write_vae
from workbench.config import ConfigError, ModelConfig, ModelSource
from workbench.loading.errors import LoadError
from workbench.loading.load import load_all, load_component

CPU, F32 = torch.device("cpu"), torch.float32
FILES = {"text_encoder": "te.safetensors", "transformer": "dit.safetensors", "vae": "vae.safetensors"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("bad")
    write_te_comfy(r / FILES["text_encoder"], "bf16")
    write_dit(r / FILES["transformer"], "bf16")
    write_vae(r / FILES["vae"], "wan")
    return r


def cfg(root, **names) -> ModelConfig:
    return ModelConfig(**({"source": ModelSource.files, "roots": [str(root)], "arch_rules": "tiny"} | FILES | names))


def load(root, slot, name, **kw):
    return load_component(slot, cfg(root, **{slot: name}, **kw), CPU, F32)


WHAT = {"text_encoder": "a text encoder", "transformer": "a diffusion transformer", "vae": "a VAE"}


@pytest.mark.parametrize("slot, given", [(s, g) for s in FILES for g in FILES if s != g])
def test_file_in_the_wrong_slot(root, slot, given):
    with pytest.raises(LoadError) as err:
        load(root, slot, FILES[given])
    msg = str(err.value)
    assert FILES[given] in msg and f"given as model.{slot} is {WHAT[given]}" in msg
    assert f"give it as model.{given} instead" in msg


def test_lora_in_a_model_slot(root):
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64)}, str(root / "lora.safetensors"))
    with pytest.raises(LoadError, match=r"is a LoRA .*LoRA files go in lora.items"):
        load(root, "transformer", "lora.safetensors")


def test_truncated_safetensors(root):
    data = (root / FILES["transformer"]).read_bytes()
    (root / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"cut.safetensors: truncated safetensors: .* MiB missing"):
        load(root, "transformer", "cut.safetensors")


def test_corrupt_safetensors_header(root):
    (root / "junk.safetensors").write_bytes((40).to_bytes(8, "little") + b"{not json at all, just bytes...}" + b"\0" * 64)
    with pytest.raises(LoadError, match=r"junk.safetensors: corrupt safetensors: header is not valid JSON"):
        load(root, "vae", "junk.safetensors")


def test_folder_without_config_json(root):
    folder = root / "half_folder"
    folder.mkdir()
    write_vae(folder / "diffusion_pytorch_model.safetensors", "diffusers")
    with pytest.raises(LoadError, match=r"half_folder: a model folder needs config.json \(found: diffusion_pytorch_model.safetensors\)"):
        load(root, "vae", "half_folder")


def test_unknown_architecture_wan_14b_like_dit(root):
    """A Wan 2.1 14B DiT's names (at toy shapes): recognised as what it is, refused as Qwen-Image."""
    wan = {f"model.diffusion_model.blocks.{i}.self_attn.{p}.weight": torch.zeros(8, 8) for i in range(2) for p in "qkvo"}
    wan["model.diffusion_model.head.modulation"] = torch.zeros(1, 2, 8)
    save_file(wan, str(root / "wan2.1_t2v_14B_bf16.safetensors"))
    with pytest.raises(LoadError, match=r"wan2.1_t2v_14B_bf16.safetensors given as model.transformer is not a Qwen-Image "
                                        r"component \(a Wan 2.x video diffusion transformer .*unknown architecture"):
        load(root, "transformer", "wan2.1_t2v_14B_bf16.safetensors")


def test_missing_tensors_are_listed(root):
    sd = state(reference()[1])
    for name in ("transformer_blocks.1.attn.to_q.weight", "transformer_blocks.1.attn.to_k.weight"):
        del sd[name]
    save_file(sd, str(root / "dit_partial.safetensors"))
    with pytest.raises(LoadError, match=r"dit_partial.safetensors: diffusion transformer is missing 2 of 77 tensors, e.g. "
                                        r"transformer_blocks.1.attn.to_k.weight, transformer_blocks.1.attn.to_q.weight"):
        load(root, "transformer", "dit_partial.safetensors")


def test_shape_mismatch_inside_a_file(root):
    sd = state(reference()[1])
    sd["transformer_blocks.1.attn.to_q.weight"] = torch.zeros(128, 64)
    save_file(sd, str(root / "dit_mixed.safetensors"))
    with pytest.raises(LoadError, match=r"dit_mixed.safetensors: shape mismatch in 1 tensors .*to_q.weight: file \[128, 64\], model \[64, 64\]"):
        load(root, "transformer", "dit_mixed.safetensors")


def test_shape_mismatch_wan22_vae_with_48_channels(root):
    from diffusers import AutoencoderKLQwenImage

    write_vae(root / "wan2.2_vae.safetensors", "wan", vae=AutoencoderKLQwenImage(base_dim=16, z_dim=48, num_res_blocks=1))
    with pytest.raises(LoadError, match=r"wan2.2_vae.safetensors: shape mismatch: the VAE has 48 latent channels .*Qwen-Image uses 16"):
        load(root, "vae", "wan2.2_vae.safetensors")


def test_shape_mismatch_between_text_encoder_and_transformer(root):
    from diffusers import QwenImageTransformer2DModel

    wide = QwenImageTransformer2DModel(num_layers=1, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=128, axes_dims_rope=(8, 12, 12))
    save_file(state(wide), str(root / "dit_joint128.safetensors"))
    with pytest.raises(LoadError, match=r"text encoder .*te.safetensors gives 64-wide hidden states but transformer .*dit_joint128.safetensors expects 128"):
        load_all(cfg(root, transformer="dit_joint128.safetensors"), {k: F32 for k in FILES}, {k: CPU for k in FILES})


def test_real_rules_on_a_tiny_file_say_what_to_set(root):
    with pytest.raises(LoadError, match=r"te.safetensors: cannot split the text attention width 64 into heads of 128 .*model.arch_rules=tiny"):
        load(root, "text_encoder", FILES["text_encoder"], arch_rules="real")


def test_name_not_found_suggests_close_names(root):
    with pytest.raises(LoadError, match=r"model.transformer='dti.safetensors' not found under .*did you mean 'dit.safetensors'"):
        load(root, "transformer", "dti.safetensors")


def test_path_escaping_the_roots_is_refused(root):
    inner = root / "inner"
    inner.mkdir(exist_ok=True)
    with pytest.raises(LoadError, match=r"'../dit.safetensors' resolves to .*, outside the model root .*inner"):
        load_component("transformer", ModelConfig(source=ModelSource.files, roots=[str(inner)], arch_rules="tiny",
                                                  **(FILES | {"transformer": "../dit.safetensors"})), CPU, F32)
    with pytest.raises(LoadError, match=r"outside the model root"):
        load_component("vae", ModelConfig(source=ModelSource.files, roots=[str(inner)], **(FILES | {"vae": os.fspath(root / FILES["vae"])})), CPU, F32)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused_with_the_reason(root, suffix):
    (root / f"model{suffix}").write_bytes(b"\x80\x04not really")
    with pytest.raises(LoadError, match=rf"model\{suffix}: \{suffix} files are Python pickles, which can run arbitrary code"):
        load(root, "transformer", f"model{suffix}")


def test_unsupported_comfy_quant_format(root):
    import json

    sd = state(reference()[1])
    sd["img_in.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    sd["img_in.weight_scale"] = torch.ones(())
    save_file(sd, str(root / "dit_nvfp4.safetensors"))
    # named from the header's comfy_quant blob, before any weight is read
    with pytest.raises(LoadError, match=r"dit_nvfp4.safetensors: a diffusion transformer .*: quantised as 'nvfp4' .*use the bf16"):
        load(root, "transformer", "dit_nvfp4.safetensors")


def test_hf_id_not_in_cache(root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(LoadError, match=r"hf:Qwen/Nope: not in the local HF cache"):
        load(root, "text_encoder", "hf:Qwen/Nope")


def test_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match=r"model.source=files but model.vae not set"):
        ModelConfig(source=ModelSource.files, transformer="a", text_encoder="b")
    with pytest.raises(ConfigError, match=r"model.transformer set but model.source=tiny"):
        ModelConfig(transformer="a")
    with pytest.raises(ConfigError, match=r"model.arch_rules must be 'real' or 'tiny'"):
        ModelConfig(arch_rules="huge")
