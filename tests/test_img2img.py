"""Image-to-image (init image + strength) equals diffusers 0.42.1 ``QwenImageImg2ImgPipeline``."""

from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError, compose, to_run_config
from workbench.pipeline import load_image
from workbench.stages.schedule import img2img_start, make_scheduler
from helpers.random_model import bench, make_cfg  # noqa: F401 - fixtures: model=tiny_random in this module


@pytest.mark.parametrize(("steps", "strength"), [(5, 0.6), (4, 1.0), (6, 0.34)])
def test_img2img_latents_equal_diffusers(bench, make_cfg, steps, strength):
    from diffusers import QwenImageImg2ImgPipeline

    cfg = make_cfg(f"sampler.steps={steps}", "prompts=[a green hill]", "seeds=[7]",
                   "init_image=asset:sample_reference.png", f"strength={strength}")
    image = load_image(cfg.init_image)
    cond = bench.encode(cfg.prompts, cfg.template)
    latents, schedule = bench.prepare_img2img_latents([7], bench.encode_init(image, 128, 128), cfg.sampler, strength)
    assert schedule.start_step == img2img_start(steps, strength)
    ours = bench.denoise(latents, cond, cfg.sampler, 128, 128, progress=False, schedule=schedule)
    c = bench.components
    pipe = QwenImageImg2ImgPipeline(make_scheduler(cfg.sampler), c.vae, c.text_encoder, c.tokenizer, c.transformer)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt="a green hill", image=image, height=128, width=128, strength=strength,
               num_inference_steps=steps, true_cfg_scale=1.0, generator=torch.Generator().manual_seed(7),
               output_type="latent").images
    assert (ours - ref).abs().max().item() <= 1e-5


def test_generate_runs_img2img_from_config(bench, make_cfg):
    """``init_image`` / ``strength`` in the config take the image-to-image path of ``generate``."""
    cfg = make_cfg("sampler.steps=6", "seeds=[1]", "init_image=asset:sample_reference.png", "strength=0.5")
    (out,) = bench.generate(cfg, progress=False)
    cond = bench.encode(cfg.prompts, cfg.template)
    init = bench.encode_init(load_image(cfg.init_image), 128, 128)
    latents, schedule = bench.prepare_img2img_latents([1], init, cfg.sampler, 0.5)
    manual = bench.denoise(latents, cond, cfg.sampler, 128, 128, progress=False, schedule=schedule)
    assert schedule.start_step == 3 and torch.equal(out.latents, manual.float())
    restarted = bench.denoise(latents, cond, cfg.sampler, 128, 128, progress=False, start_step=3)
    assert torch.equal(restarted, manual)  # the same schedule, rebuilt from its start step
    t2i = bench.generate(make_cfg("sampler.steps=6", "seeds=[1]"), progress=False)[0]
    assert (t2i.latents - out.latents).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strength=0.5"], "strength=0.5 needs init_image"),
        (["strength=0"], r"strength must be in \(0, 1\]"),
        (["init_image=x.png", "strength=0.1", "sampler.steps=4"], "leaves no step to run"),
    ],
)
def test_img2img_bad_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_run_config(compose(overrides))
