"""Qwen-Image-2.1 / 2.1-Turbo through the workbench's stages equal diffusers 0.42.1's
``QwenImage21Pipeline`` on the tiny 2.1 model (model=tiny_qwen21): text-to-image, three condition
images, guidance, Turbo's fixed sigmas, with and without the prefix KV cache; and the pieces that
make it so (Qwen3 tokenizer, drop count, vision patches, the encoder's pre-norm tap)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.stages.schedule import make_scheduler
from helpers.parity import qwen3_processor as _processor



@pytest.fixture(scope="module")
def make_cfg(make_cfg):
    return lambda *overrides: make_cfg("experiment=qwen21_t2i_tiny", *overrides)


@pytest.fixture(scope="module")
def bench(make_cfg):
    from workbench.pipeline import Workbench

    return Workbench.from_config(make_cfg())


def _pipe(bench, sampler, sample_sigmas=None):
    from diffusers import QwenImage21Pipeline

    c = bench.components
    pipe = QwenImage21Pipeline(scheduler=make_scheduler(sampler), vae=c.vae, text_encoder=c.text_encoder,
                               processor=_processor(c.tokenizer), transformer=c.transformer, sample_sigmas=sample_sigmas)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(bench, cfg, images=None, kv=True, **kwargs):
    """diffusers' final latents (B, tokens, 64) for ``cfg`` (one prompt, one seed)."""
    area = int(cfg.reference.vae_area ** 0.5)
    guided = cfg.sampler.cfg > 1
    return _pipe(bench, cfg.sampler, cfg.sampler.sigmas)(
        prompt=cfg.prompts[0], image=images, negative_prompt=cfg.negative_prompt if guided else None,
        true_cfg_scale=cfg.sampler.cfg, height=cfg.height, width=cfg.width,
        num_inference_steps=cfg.sampler.steps, output_resolution=area if images else 1024,
        generator=torch.Generator("cpu").manual_seed(cfg.seeds[0]), output_type="latent", use_kv_cache=kv, **kwargs,
    ).images


def _ours(bench, cfg):
    (image,) = bench.generate(cfg, progress=False)
    return image


def test_qwen3_tokenizer_and_drop_count_match_diffusers(bench, make_cfg):
    from workbench.tokenizer import QWEN3_EXTRA_TOKENS

    tok = bench.components.tokenizer
    assert tok.convert_tokens_to_ids(list(QWEN3_EXTRA_TOKENS)) == [151665, 151666, 151667, 151668]
    assert len(tok) == 151669
    cfg = make_cfg()
    cond = bench.encode(cfg.prompts, cfg.template, tap="pre_norm")
    assert cond.drop[0] == _pipe(bench, cfg.sampler)._drop_idx == 14  # the system message, computed both ways


@pytest.mark.parametrize("kv", [True, False])
def test_t2i_latents_equal_diffusers(bench, make_cfg, kv):
    cfg = make_cfg("seeds=[7]", "sampler.cfg=1.0", f"perf.prefix_kv_cache={str(kv).lower()}")
    ours = _ours(bench, cfg)
    ref = _reference(bench, cfg, kv=kv)
    assert ours.latents.shape == ref.shape == (1, (128 // 16) ** 2, 64)
    assert (ours.latents - ref).abs().max().item() <= 1e-5
    assert ours.latents.abs().max() > 0.1
    assert ours.image.mode == "RGBA" and ours.image.size == (128, 128)


def test_guided_with_negative_prompt_equals_diffusers(bench, make_cfg):
    cfg = make_cfg("seeds=[3]", "sampler.cfg=4.0", "negative_prompt='blurry, low quality'", "sampler.steps=3")
    ours = _ours(bench, cfg)
    assert (ours.latents - _reference(bench, cfg)).abs().max().item() <= 1e-5
    off = _ours(bench, dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, cfg=1.0)))
    assert (off.latents - ours.latents).abs().max().item() > 1e-3  # guidance did something


def test_three_condition_images_equal_diffusers(bench, make_cfg):
    from workbench.pipeline import load_image

    cfg = make_cfg("experiment=qwen21_edit_tiny", "seeds=[5]", "sampler.cfg=1.0")
    ours = _ours(bench, cfg)
    images = [load_image(p) for p in cfg.images]
    ref = _reference(bench, cfg, images=images)
    assert ours.latents.shape == ref.shape
    assert (ours.latents - ref).abs().max().item() <= 1e-5
    # the conditioning holds 3 images' slots: one <|image_pad|> per 2x2 latent tokens of each
    refs = bench.prepare_references(images, cfg.reference)
    cond = bench.encode(cfg.prompts, cfg.template, refs.vlm_images, tap="pre_norm")
    assert [w * h for w, h in refs.vae_sizes] == [128 * 128, 160 * 96, 128 * 128]  # ~vae_area, sides of 32
    assert sum(1 for t in cond.token_ids[0] if t == 151655) == sum(w * h // 32**2 for w, h in refs.vae_sizes)


def test_turbo_fixed_sigmas_equal_diffusers_sample_sigmas(make_cfg):
    from workbench.pipeline import Workbench

    cfg = make_cfg("experiment=qwen21_turbo_tiny", "seeds=[2]")
    assert cfg.sampler.steps == 8 and cfg.sampler.cfg == 1.0 and len(cfg.sampler.sigmas) == 8
    turbo = Workbench.from_config(cfg)
    ours = _ours(turbo, cfg)
    assert (ours.latents - _reference(turbo, cfg)).abs().max().item() <= 1e-5
    # the grid is used: linspace sigmas over the same 8 steps give other latents
    plain = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, sigmas=None))
    assert (_ours(turbo, plain).latents - ours.latents).abs().max().item() > 1e-3


def test_prefix_kv_cache_changes_bits_not_content(bench, make_cfg):
    """diffusers: toggling the cache changes rounding only; in float32 on the tiny model it is ~1e-6."""
    on = _ours(bench, make_cfg("seeds=[1]"))
    off = _ours(bench, make_cfg("seeds=[1]", "perf.prefix_kv_cache=false"))
    assert (on.latents - off.latents).abs().max().item() <= 1e-4


def test_pre_norm_is_the_family_default_and_differs_from_post_norm(bench, make_cfg):
    cfg = make_cfg()
    assert cfg.encoder_tap == "pre_norm"
    assert make_cfg("model=tiny_random", "template=qwen_t2i", "sampler=flow_euler").encoder_tap == "post_norm"
    pre = bench.encode(cfg.prompts, cfg.template, tap="pre_norm")
    post = bench.encode(cfg.prompts, cfg.template, tap="post_norm")
    # post = RMSNorm(pre) with the encoder's final norm: a hand computation
    norm = bench.components.text_encoder.model.language_model.norm
    x = pre.embeds.float()
    by_hand = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
    assert (post.embeds - by_hand).abs().max().item() <= 1e-5
    assert (post.embeds - pre.embeds).abs().max().item() > 1e-2


def test_qwen3_vision_patches_equal_transformers_processor(bench):
    from workbench.vision import QWEN3_VL, preprocess

    rng = np.random.RandomState(0)
    img = Image.fromarray((rng.rand(96, 160, 3) * 255).astype("uint8"))
    ours = preprocess([img], spec=QWEN3_VL)
    ref = _processor(bench.components.tokenizer).image_processor(images=[img], return_tensors="pt")
    assert ours.grids == [tuple(ref["image_grid_thw"][0].tolist())] == [(1, 6, 10)]
    assert torch.equal(ours.pixel_values, ref["pixel_values"].float())


@pytest.mark.parametrize("overrides, message", [
    (["height=144"], "height=144 with model.variant=qwen21: sides must be multiples of 32"),
    (["init_image=asset:sample_reference.png"], "image-to-image is built for the 20B family only"),
    (["images=[" + ",".join(["asset:sample_reference.png"] * 11) + "]", "height=null", "width=null"],
     "at most 10 condition images"),
    (["sampler.sigmas=[1.0,0.5]"], "sampler.sigmas has 2 values but sampler.steps=4"),
    (["sampler=comfy_euler_cfgnorm"], "sampler.guidance=cfg_norm with model.variant=qwen21"),
    (["sampler.steps=2", "sampler.sigmas=[0.5,0.9]"], "must be strictly decreasing"),
    (["perf=fast"], "perf.fast_attention=true with model.variant=qwen21: built for the 20B family's transformer only"),
    (["precision=fp8_torchao"], "precision.quantization=fp8_torchao with model.variant=qwen21"),
    (["accel=taylorseer"], "accel=taylorseer with model.variant=qwen21"),
    (["model.source=files", "model.variant=qwen21_turbo", "model.transformer=x", "model.text_encoder=y", "model.vae=z"],
     "model.variant=qwen21_turbo with sampler.sigmas null: Turbo samples on a fixed sigma grid"),
])
def test_bad_qwen21_configs_are_refused_by_name(make_cfg, overrides, message):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_cfg(*overrides)


def test_family_members_on_one_sweep_axis_build_once_each(tmp_path):
    """model=tiny_random,tiny_qwen21 on X: cells grouped by model (one switch), RGB and RGBA tiles in one grid."""
    from workbench.sweep import Sweep

    sweep = Sweep.plan(["model=tiny_random,tiny_qwen21", "seeds=0,1"],
                       base=["height=32", "width=32", "sampler.steps=2", "device=cpu", "prompts=[a red fox]"],
                       out_dir=tmp_path)
    result = sweep.run(progress=False)
    assert result.stats["ran"] == 4 and result.stats["failed"] == 0 and result.stats["model_switches"] == 1
    modes = {cell.cell.values[0]: cell.images[0].mode for cell in result.cells}
    assert modes == {"tiny_random": "RGB", "tiny_qwen21": "RGBA"}
    taps = {c.cell.values[0]: json.loads((sweep.cell_dir(c.cell) / "record.json").read_text())["config"]["encoder_tap"]
            for c in result.cells}
    assert taps == {"tiny_random": "post_norm", "tiny_qwen21": "pre_norm"}  # each family's default, recorded
    assert result.grid.width > 2 * 32 and (tmp_path / "grid.png").is_file()
    cmp = result.compare(0, 1)  # across families: A/B still renders (the tiles are RGB)
    assert cmp.mean_abs_diff is not None and cmp.mean_abs_diff > 0


def test_token_report_of_a_21_template_is_what_the_encoder_reads(bench, make_cfg):
    """``workbench tokens --template qwen21 --area A --image ...`` shows exactly the ids a 2.1 run encodes."""
    from workbench.pipeline import load_image
    from workbench.token_report import token_report

    cfg = make_cfg("experiment=qwen21_edit_tiny")
    images = [load_image(p) for p in cfg.images]
    report = token_report(cfg.template, cfg.prompts[0], images, area=cfg.reference.vae_area)
    cond = bench.encode(cfg.prompts, cfg.template, bench.prepare_references(images, cfg.reference).vlm_images,
                        tap="pre_norm")
    assert report.ids[report.drop:] == cond.token_ids[0] and report.drop == cond.drop[0] == 14
    assert report.vision_tokens == [16, 15, 16]  # 128x128 -> 4x4 slots, 160x96 -> 5x3


@pytest.mark.parametrize("overrides, expected", [
    (["model=tiny_qwen21"], ("qwen21", "qwen21")),  # the model alone brings its family's template and sampler
    (["model=tiny_qwen21_turbo"], ("qwen21", "qwen21_turbo")),
    (["model=tiny_qwen21", "template=raw", "sampler=flow_euler"], ("raw", "flow_euler")),  # named ones win
    (["sampler=heun", "model=tiny_qwen21"], ("qwen21", "heun")),  # whatever the order on the command line
    (["experiment=qwen21_turbo_tiny"], ("qwen21", "qwen21_turbo")),
    (["model=tiny"], ("qwen_t2i", "flow_euler")),
])
def test_a_model_of_the_21_family_brings_its_template_and_sampler(overrides, expected):
    from workbench.config import compose, to_run_config

    cfg = to_run_config(compose(overrides))
    assert (cfg.template.name, cfg.sampler.name) == expected


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny_qwen21", "template=qwen_t2i"], "template=qwen_t2i was written for qwen-image, but model.variant=qwen21 "
     "is qwen-image-2.1: use template=qwen21, a template of no family (raw, chat), or run it across families on purpose "
     "with template.family=qwen-image-2.1"),
    (["template=qwen21"], "template=qwen21 was written for qwen-image-2.1, but model.variant=t2i is qwen-image: use "
     "template=qwen_t2i"),
    (["template.family=qwen-image-3"], "family='qwen-image-3'; expected qwen-image (the 20B family), qwen-image-2.1 or any"),
])
def test_another_familys_template_is_refused_unless_asked_for(overrides, message):
    from workbench.config import ConfigError, compose, to_run_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        to_run_config(compose(overrides))
    if "template.family" not in " ".join(overrides) and "model=tiny_qwen21" in overrides:  # the opt-in runs it
        cfg = to_run_config(compose(overrides + ["template.family=qwen-image-2.1"]))
        assert cfg.template.name == "qwen_t2i" and cfg.model.variant.family == "qwen-image-2.1"
