"""Vision preprocessing parity, 3-D mRoPE positions, and the edit path on the tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.stages.encode import encode_prompts
from workbench.templates import render, tokenize
from workbench.tokenizer import IMAGE_PAD_ID
from workbench.vision import preprocess, smart_resize


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("size", [(100, 150), (300, 77), (28, 28), (1000, 1300)])
def test_preprocess_equals_transformers_slow_processor(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    img = _image(*size)
    ref = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)(images=[img], return_tensors="pt")
    ours = preprocess([img])
    assert [list(g) for g in ours.grids] == ref["image_grid_thw"].tolist()
    assert torch.equal(ours.pixel_values, ref["pixel_values"])


def test_smart_resize_bounds():
    assert smart_resize(1000, 1300) == (1008, 1288)
    assert smart_resize(10, 10) == (56, 56)  # up to min_pixels
    h, w = smart_resize(8000, 8000)
    assert h * w <= 12845056 and h % 28 == w % 28 == 0
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)


def _edit_inputs(bench, make_cfg, image):
    cfg = make_cfg("template=qwen_edit_plus", "images=[asset:sample_reference.png]", "height=64", "width=64")
    vision = preprocess([image])
    tok = bench.components.tokenizer
    t = tokenize(tok, render(cfg.template, "make it blue", 1, tok), vision.grids)
    return cfg, vision, torch.tensor([t.input_ids]), t


def test_mrope_positions_are_3d_and_match_hand_computation(bench, make_cfg):
    image = _image(56, 84)  # grid (1, 4, 6) -> merged 2 x 3 = 6 vision tokens
    _, vision, ids, t = _edit_inputs(bench, make_cfg, image)
    te = bench.components.text_encoder
    pos, _ = te.model.get_rope_index(
        ids, mm_token_type_ids=(ids == IMAGE_PAD_ID).int(), image_grid_thw=torch.tensor(vision.grids)
    )
    first = t.input_ids.index(IMAGE_PAD_ID)
    expected = []
    for i in range(first):
        expected.append((i, i, i))
    for r in range(2):
        for c in range(3):
            expected.append((first, first + r, first + c))
    nxt = first + 3  # text resumes after max(h, w) of the merged grid
    for k in range(len(t.input_ids) - first - 6):
        expected.append((nxt + k,) * 3)
    assert pos[:, 0].T.tolist() == [list(e) for e in expected]


def test_edit_hidden_states_use_3d_positions_not_1d(bench, make_cfg):
    image = _image(56, 84)
    cfg, vision, ids, t = _edit_inputs(bench, make_cfg, image)
    te = bench.components.text_encoder
    ours = encode_prompts(bench.components.tokenizer, te, cfg.template, ["make it blue"], [image])
    kwargs = dict(pixel_values=vision.pixel_values, image_grid_thw=torch.tensor(vision.grids), output_hidden_states=True)
    with torch.no_grad():
        pos, _ = te.model.get_rope_index(ids, mm_token_type_ids=(ids == IMAGE_PAD_ID).int(), image_grid_thw=torch.tensor(vision.grids))
        right = te(input_ids=ids, position_ids=pos, **kwargs).hidden_states[-1][0, t.drop :]
        one_d = te(input_ids=ids, **kwargs).hidden_states[-1][0, t.drop :]  # what diffusers 0.42.1 computes
    assert torch.allclose(ours.embeds[0], right, atol=1e-6)
    assert (ours.embeds[0] - one_d).abs().max() > 1e-4


def test_edit_conditioning_depends_on_the_image(bench, make_cfg):
    cfg = make_cfg("template=qwen_edit_plus", "images=[asset:sample_reference.png]", "height=64", "width=64")
    c = bench.components
    a1 = encode_prompts(c.tokenizer, c.text_encoder, cfg.template, ["x"], [_image(64, 64, 1)])
    a2 = encode_prompts(c.tokenizer, c.text_encoder, cfg.template, ["x"], [_image(64, 64, 1)])
    b = encode_prompts(c.tokenizer, c.text_encoder, cfg.template, ["x"], [_image(64, 64, 2)])
    assert torch.equal(a1.embeds, a2.embeds)
    assert (a1.embeds - b.embeds).abs().max() > 1e-4
    assert a1.image_grids == [(1, 4, 4)] and a1.token_ids[0].count(IMAGE_PAD_ID) == 4


def test_edit_generate_runs_and_uses_reference(bench, make_cfg):
    # the 160x120 sample at a 128x128 VAE area (edit_tiny itself uses a 64x64 world image)
    cfg = make_cfg("experiment=edit_tiny", "sampler.steps=2", "images=[asset:sample_reference.png]", "reference.vae_area=16384")
    (out,) = bench.generate(cfg, progress=False)
    assert out.image.size == (160, 96)  # from the reference's aspect at the VAE area
    refs = bench.prepare_references([Image.new("RGB", (160, 120), (0, 0, 0))], cfg.reference)
    assert refs.shapes == [(1, 6, 10)] and refs.latents.shape == (1, 60, 64)


def test_zero_cond_t_variant_builds(make_cfg):
    from workbench.pipeline import Workbench

    cfg = make_cfg("model=tiny_edit_2511", "experiment=edit_tiny", "sampler.steps=2")
    bench = Workbench.from_config(cfg)
    assert bench.components.transformer.config.zero_cond_t is True
    (out,) = bench.generate(cfg, progress=False)
    assert np.asarray(out.image).std() > 0


def test_batch_equals_one_by_one(bench, make_cfg):
    cfg = make_cfg("sampler.steps=3", "prompts=[a cat,a much longer prompt about a dog]", "seeds=[1,2]", "sampler.cfg=2.0")
    batched = bench.generate(dataclasses.replace(cfg, batch_size=4), progress=False)
    single = bench.generate(cfg, progress=False)
    assert [(r.prompt, r.seed) for r in batched] == [(r.prompt, r.seed) for r in single]
    for a, b in zip(batched, single):
        assert (a.latents - b.latents).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- reference sizing policies
def _ref(policy="diffusers", **kw):
    from workbench.config import ReferenceConfig

    return ReferenceConfig(name=f"t_{policy}", policy=policy, **kw)


REFS = {
    "diffusers_edit": dict(vlm_area=1024 * 1024),
    "diffusers_edit_plus": dict(),
    "comfy_edit": dict(policy="comfy", vlm_area=1024 * 1024, multiple_of=8, vae_fit="crop", vlm_resample="bilinear"),
    "comfy_edit_plus": dict(policy="comfy", multiple_of=8, vae_fit="round", vlm_resample="bilinear"),
}


@pytest.mark.parametrize(
    ("name", "size", "vlm", "vae_resize", "vae"),
    [
        # diffusers: aspect-kept ~area, both sides rounded to 32
        ("diffusers_edit", (1000, 750), (1184, 896), (1184, 896), (1184, 896)),
        ("diffusers_edit_plus", (1000, 750), (448, 320), (1184, 896), (1184, 896)),
        ("diffusers_edit_plus", (333, 1000), (224, 672), (576, 1760), (576, 1760)),
        # comfy Edit: round(side * sqrt(1 MP / area)) for both; the VAE copy centre-cropped to 8
        ("comfy_edit", (1000, 750), (1182, 887), (1182, 887), (1176, 880)),
        ("comfy_edit", (1920, 1080), (1365, 768), (1365, 768), (1360, 768)),
        # comfy Edit-Plus: 384x384 area with plain rounding for the VLM, 1 MP multiple of 8 for the VAE
        ("comfy_edit_plus", (1000, 750), (443, 333), (1184, 888), (1184, 888)),
        ("comfy_edit_plus", (333, 1000), (222, 665), (592, 1776), (592, 1776)),
    ],
)
def test_reference_sizes_per_policy(name, size, vlm, vae_resize, vae):
    from workbench.stages.reference import reference_sizes

    plan = reference_sizes(*size, _ref(**REFS[name]))
    assert (plan.vlm, plan.vae_resize, plan.vae) == (vlm, vae_resize, vae)


def test_comfy_rounding_and_crop_rules():
    from workbench.stages.reference import centre_crop_box, comfy_area_size

    assert comfy_area_size(5, 4, 5) == (2, 2)  # scale 0.5: 2.5 -> 2 (Python rounds halves to even)
    assert comfy_area_size(7, 4, 7) == (4, 2)  # 3.5 -> 4
    assert centre_crop_box(1182, 887) == (3, 3, 1179, 883)  # offset (side % 8) // 2
    assert centre_crop_box(1365, 768) == (2, 0, 1362, 768)


def test_reference_config_checks_multiple_of_per_policy():
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match=r"reference.multiple_of must be a multiple of 16 with reference.policy=diffusers"):
        _ref(multiple_of=8)
    with pytest.raises(ConfigError, match=r"multiple of 8 with reference.policy=comfy"):
        _ref("comfy", multiple_of=12)


def test_comfy_reference_latents_are_padded_to_even(bench, make_cfg):
    cfg = make_cfg("experiment=edit_tiny", "reference=comfy_edit", "sampler.steps=2",
                   "images=[asset:sample_reference.png]", "reference.vae_area=16384")
    assert cfg.reference.vlm_resample.value == "bilinear" and cfg.reference.policy.value == "comfy"
    refs = bench.prepare_references([Image.new("RGB", (160, 120), (10, 20, 30))], cfg.reference)
    # 16384 px area: 148x111 plain-rounded, centre-cropped to 144x104 -> latents 18x13 -> padded to 18x14
    assert refs.vae_sizes == [(144, 104)] and refs.vlm_images[0].size == (65, 48)
    assert refs.shapes == [(1, 7, 9)] and refs.latents.shape == (1, 63, 64)
    (out,) = bench.generate(cfg, progress=False)
    assert out.image.size == (144, 96) and "snapped" in out.notes[0]


def test_vlm_resample_is_plumbed_from_config(bench, make_cfg, monkeypatch):
    from workbench.conditioning_cache import ConditioningCache
    from workbench.pipeline import Workbench
    from workbench.stages import encode as encode_stage

    seen = []
    real = encode_stage.preprocess
    monkeypatch.setattr(encode_stage, "preprocess", lambda images, resample="bicubic", **kw: seen.append(resample) or real(images, resample=resample, **kw))
    fresh = Workbench(bench.components, conditioning_cache=ConditioningCache())
    fresh.generate(make_cfg("experiment=edit_tiny", "reference.vlm_resample=bilinear", "sampler.steps=1", "sampler=lightning"), progress=False)
    fresh.generate(make_cfg("experiment=edit_tiny", "sampler.steps=1", "sampler=lightning"), progress=False)
    assert seen == ["bilinear", "bicubic"]


def test_bilinear_preprocessing_is_pil_bilinear_and_differs():
    from workbench.vision import CLIP_MEAN, CLIP_STD, patchify

    img = _image(100, 150)
    bil, bic = preprocess([img], resample="bilinear"), preprocess([img], resample="bicubic")
    assert bil.grids == bic.grids == [(1, 8, 10)]
    x = torch.from_numpy(np.asarray(img.resize((140, 112), Image.Resampling.BILINEAR), dtype=np.float32).copy())
    x = (x.permute(2, 0, 1) / 255.0 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.equal(bil.pixel_values, patchify(x))
    assert (bil.pixel_values - bic.pixel_values).abs().max() > 0.05


# ----------------------------------------------------------------------------- batches
def test_edit_batch_of_prompts_equals_one_by_one(bench, make_cfg):
    cfg = make_cfg("template=qwen_edit_plus", "images=[asset:sample_reference.png]", "height=64", "width=64")
    c = bench.components
    images = [_image(56, 84, 3), _image(84, 56, 4)]  # two references, shared by both prompts
    prompts = ["make it blue", "turn the second picture into a much longer painting of a harbour at night"]
    batched = encode_prompts(c.tokenizer, c.text_encoder, cfg.template, prompts, images)
    assert batched.lengths[0] < batched.lengths[1]  # different lengths: the first row is padded
    for i, p in enumerate(prompts):
        one = encode_prompts(c.tokenizer, c.text_encoder, cfg.template, [p], images)
        n = one.lengths[0]
        assert batched.token_ids[i] == one.token_ids[0] and batched.lengths[i] == n
        assert (batched.embeds[i, :n] - one.embeds[0, :n]).abs().max() <= 1e-5
        assert batched.embeds[i, n:].abs().max() == 0 if n < batched.embeds.shape[1] else True
