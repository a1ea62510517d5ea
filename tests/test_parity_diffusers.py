"""The workbench's text-to-image equals diffusers 0.42.1 ``QwenImagePipeline`` on the tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from workbench.stages.schedule import make_scheduler
from helpers.random_model import bench, make_cfg  # noqa: F401 - fixtures: model=tiny_random in this module


def _diffusers_pipe(bench, sampler):
    from diffusers import QwenImagePipeline

    c = bench.components
    pipe = QwenImagePipeline(
        scheduler=make_scheduler(sampler),
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        transformer=c.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(bench, cfg):
    cond = bench.encode(cfg.prompts, cfg.template, max_sequence_length=cfg.max_sequence_length)
    uncond = bench.encode([cfg.negative_prompt], cfg.template) if cfg.sampler.cfg > 1 else None
    latents = bench.prepare_latents(cfg.seeds, cfg.height, cfg.width)
    return bench.denoise(latents, cond, cfg.sampler, cfg.height, cfg.width, uncond, progress=False)


@pytest.mark.parametrize("steps", [4, 7])
def test_t2i_latents_equal_diffusers(bench, make_cfg, steps):
    cfg = make_cfg(f"sampler.steps={steps}", "prompts=[a lighthouse on a cliff at dusk]", "seeds=[11]")
    ours = _ours(bench, cfg)
    ref = _diffusers_pipe(bench, cfg.sampler)(
        prompt=cfg.prompts[0],
        height=cfg.height,
        width=cfg.width,
        num_inference_steps=steps,
        true_cfg_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(11),
        output_type="latent",
        max_sequence_length=cfg.max_sequence_length,
    ).images
    assert ours.shape == ref.shape == (1, (128 // 16) ** 2, 64)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-5, diff
    assert ours.abs().max() > 0.1  # not a degenerate all-zero output


def test_true_cfg_equals_diffusers_and_batched_cfg_equals_two_forwards(bench, make_cfg):
    cfg = make_cfg("sampler.steps=5", "sampler.cfg=4.0", "prompts=[a red bicycle]", "seeds=[3]", "negative_prompt=blurry")
    two = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, cfg_batching="separate"))
    ours_two = _ours(bench, two)
    ours_batched = _ours(bench, dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, cfg_batching="padded")))
    assert (_ours(bench, cfg) - ours_two).abs().max().item() == 0  # auto: lengths differ -> two forwards
    ref = _diffusers_pipe(bench, cfg.sampler)(
        prompt=cfg.prompts[0],
        negative_prompt="blurry",
        height=cfg.height,
        width=cfg.width,
        num_inference_steps=5,
        true_cfg_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="latent",
    ).images
    assert (ours_two - ref).abs().max().item() <= 1e-5
    # cond (4 kept tokens + 5) and uncond have different lengths: the batch is padded and masked
    assert (ours_batched - ours_two).abs().max().item() <= 1e-5
    # guidance did something: cfg 4 differs from cfg 1
    off = _ours(bench, dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, cfg=1.0)))
    assert (off - ours_two).abs().max().item() > 1e-3


def test_decoded_image_equals_diffusers(bench, make_cfg):
    cfg = make_cfg("sampler.steps=3", "prompts=[a bowl of ramen]", "seeds=[5]")
    ours = bench.decode(_ours(bench, cfg), cfg.height, cfg.width)[0]
    ref = _diffusers_pipe(bench, cfg.sampler)(
        prompt=cfg.prompts[0], height=128, width=128, num_inference_steps=3, true_cfg_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    a, b = np.asarray(ours, dtype=np.int16), np.asarray(ref, dtype=np.int16)
    assert a.shape == b.shape == (128, 128, 3)
    assert np.abs(a - b).max() <= 1  # uint8 rounding of float noise at most


def test_to_pil_equals_diffusers_postprocess_bit_for_bit():
    """The uint8 conversion (run where the images are) rounds exactly as diffusers' VaeImageProcessor, at
    the .5 boundaries too."""
    from diffusers.image_processor import VaeImageProcessor

    from workbench.stages.decode import to_pil

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 37, 29, generator=g) * 0.8
    x[0, 0, 0, :20] = torch.tensor([(k + 0.5) / 255 * 2 - 1 for k in range(20)])  # halfway between two levels
    ours = np.stack([np.asarray(img) for img in to_pil(x)])
    ref = np.stack([np.asarray(img) for img in VaeImageProcessor().postprocess(x, output_type="pil")])
    assert ours.dtype == ref.dtype == np.uint8
    assert np.array_equal(ours, ref)
