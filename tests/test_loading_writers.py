"""The library's checkpoint writers (``workbench.loading.export``) on the tiny model: names round-trip,
exports load back in discovery, our loader and diffusers. The writers bound to the tiny model live in
``tests/helpers/checkpoints.py`` (shared with the loading tests).
"""

from __future__ import annotations

import pytest
import torch

from helpers.checkpoints import reference, reference_tokenizer
from workbench.loading import export
from workbench.loading.export import legacy_te_name, state, wan_name
from workbench.loading.keys import text_encoder_name, wan_vae_names


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
