"""The workbench's edit path equals diffusers 0.42.1 ``QwenImageEditPlusPipeline`` on the tiny model.

Same reference image, seed and steps; the text conditioning our encode stage made (vision tokens
included) is injected as ``prompt_embeds`` / ``prompt_embeds_mask``, so the comparison covers what
follows the text encoder: the reference's VAE latents (``_encode_vae_image``: argmax of the posterior,
normalised by latents_mean / latents_std, packed and appended after the target tokens), the RoPE
``img_shapes`` [(1, h/16, w/16) target, (1, h'/16, w'/16) per reference], the schedule (mu from the
target tokens only), true CFG with its norm rescale, and the decode.

diffusers sizes references for a 1 MP VAE copy and a 384x384 VLM copy (module constants
``VAE_IMAGE_SIZE`` / ``CONDITION_IMAGE_SIZE``); the test sets both to the tiny model's 64x64, the
sizes of ``experiment=edit_tiny`` (``reference.vae_area=4096``), so a CPU runs it in seconds.

Tolerance: the final packed latents agree to 1e-5 relative (max abs difference over max abs value;
measured 0, bit-identical, on x86 CPU: both sides run the same modules on the same inputs in the
same order), the decoded images within 1 level of 255 (measured 0-1: the two decodes round float
noise to uint8 on slightly different paths).
"""

from __future__ import annotations

import pytest
import torch

from helpers.parity import diffusers_pipe, max_pixel_difference, text_states

REL_TOL = 1e-5
EDIT = ("experiment=edit_tiny", "device=cpu", "prompts=['make the circle green']")


@pytest.fixture
def small_references(monkeypatch):
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", 64 * 64)  # our reference.vae_area
    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", 64 * 64)  # unused: the text states are injected
    return edit_plus.QwenImageEditPlusPipeline


def _ours_and_diffusers(make_cfg, pipeline_class, *overrides):
    from workbench.pipeline import Workbench, load_image

    cfg = make_cfg(*EDIT, *overrides)
    bench = Workbench.from_config(cfg)
    with text_states(bench.components.transformer) as seen:
        ours = bench.generate(cfg, progress=False)[0]
    guided = cfg.sampler.cfg > 1
    cond, uncond = seen[0], (seen[1] if guided else None)  # cond / uncond forwards of the first step
    kwargs = dict(
        image=[load_image(cfg.images[0])], height=ours.image.height, width=ours.image.width,
        num_inference_steps=cfg.sampler.steps, true_cfg_scale=cfg.sampler.cfg,
        prompt_embeds=cond[0], prompt_embeds_mask=cond[1],
        negative_prompt_embeds=uncond[0] if guided else None, negative_prompt_embeds_mask=uncond[1] if guided else None,
        generator=torch.Generator("cpu").manual_seed(cfg.seeds[0]),
    )
    pipe = diffusers_pipe(pipeline_class, bench, cfg.sampler, processor=None)  # the VLM processor: text injected
    latents = pipe(**kwargs, output_type="latent").images
    kwargs["generator"] = torch.Generator("cpu").manual_seed(cfg.seeds[0])
    image = pipe(**kwargs, output_type="pil").images[0]
    return cfg, ours, latents, image


@pytest.mark.parametrize("model", ["tiny_random", "tiny", "tiny_edit_2511"])
def test_edit_latents_and_image_equal_diffusers(make_cfg, small_references, model):
    """tiny_random: seeded weights; tiny: the trained model (its VAE's own latents statistics);
    tiny_edit_2511: reference tokens at timestep 0 (zero_cond_t)."""
    cfg, ours, ref_latents, ref_image = _ours_and_diffusers(make_cfg, small_references, f"model={model}",
                                                            "sampler.steps=4", "seeds=[11]")
    assert ours.image.size == ref_image.size == (64, 64)
    assert ours.latents.shape == ref_latents.shape == (1, (64 // 16) ** 2, 64)
    relative = ((ours.latents - ref_latents).abs().max() / ref_latents.abs().max()).item()
    pixels = max_pixel_difference(ours.image, ref_image)
    print(f"edit parity ({model}): latents max relative difference {relative:.3g}, pixels {pixels}/255")
    assert relative <= REL_TOL, relative
    assert pixels <= 1


def test_guided_edit_equals_diffusers_true_cfg(make_cfg, small_references):
    """True CFG with a negative prompt (the uncond forward sees the same reference tokens)."""
    cfg, ours, ref_latents, ref_image = _ours_and_diffusers(
        make_cfg, small_references, "model=tiny", "sampler.steps=3", "sampler.cfg=3.0",
        "sampler.cfg_batching=separate",  # two forwards, as diffusers (batched: tests/test_parity_diffusers.py)
        "negative_prompt=make the circle red", "seeds=[4]")
    relative = ((ours.latents - ref_latents).abs().max() / ref_latents.abs().max()).item()
    pixels = max_pixel_difference(ours.image, ref_image)
    print(f"edit parity (tiny, true CFG 3): latents max relative difference {relative:.3g}, pixels {pixels}/255")
    assert relative <= REL_TOL, relative
    assert pixels <= 1
