"""Qwen-Image-Layered (model.variant=layered) through the workbench's stages equals diffusers 0.42.1's
``QwenImageLayeredPipeline`` on the tiny layered model, and a run writes the whole image plus N RGBA layers."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.stages.schedule import make_scheduler


@pytest.fixture(scope="module")
def make_cfg(make_cfg):
    return lambda *overrides: make_cfg("experiment=layered_tiny", "layers=1", "sampler.steps=2", *overrides)


@pytest.fixture(scope="module")
def bench(make_cfg):
    from workbench.pipeline import Workbench

    return Workbench.from_config(make_cfg())


def _qwen2vl_processor(tokenizer):
    """transformers' Qwen2VLProcessor (diffusers' ``vl_processor`` for captions) with its PIL image processor; its
    video processor needs torchvision (absent beside the CPU torch wheel) and is never used for images."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class NoVideoProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return NoVideoProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, video_processor=None)


def _diffusers_latents(bench, cfg, spy: dict | None = None) -> torch.Tensor:
    """diffusers' final latents, taken from the step callback: ``output_type="latent"`` fails in 0.42.1
    (``images`` is unbound at the end of ``__call__``). ``spy``: receives the caption diffusers made, if any."""
    from diffusers import QwenImageLayeredPipeline

    from workbench.pipeline import load_image

    c = bench.components
    pipe = QwenImageLayeredPipeline(scheduler=make_scheduler(cfg.sampler), vae=c.vae, text_encoder=c.text_encoder,
                                    tokenizer=c.tokenizer, processor=_qwen2vl_processor(c.tokenizer),
                                    transformer=c.transformer)
    if spy is not None:  # the real get_image_caption, its result kept
        caption = pipe.get_image_caption
        pipe.get_image_caption = lambda *a, **k: spy.setdefault("caption", caption(*a, **k))
        spy["instructions"] = {"en": pipe.image_caption_prompt_en, "cn": pipe.image_caption_prompt_cn}
    pipe.set_progress_bar_config(disable=True)
    seen = {}

    def keep(_pipe, step, _t, kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return {}

    pipe(image=load_image(cfg.images[0], mode="RGBA"), prompt=cfg.prompts[0], layers=cfg.layers,
         num_inference_steps=cfg.sampler.steps, resolution=cfg.layered_resolution,
         use_en_prompt=cfg.layered_caption == "en",
         generator=torch.Generator("cpu").manual_seed(cfg.seeds[0]), callback_on_step_end=keep,
         output_type="np")
    return seen["latents"]


def test_layered_latents_equal_diffusers(bench, make_cfg):
    cfg = make_cfg("seeds=[3]")
    (ours,) = bench.generate(cfg, progress=False)
    ref = _diffusers_latents(bench, cfg)
    tokens = (640 // 16) ** 2  # the 64 px image sized to the 640 bucket: 40 x 40 tokens per frame
    assert ours.latents.shape == ref.shape == (1, (cfg.layers + 1) * tokens, 64)
    assert (ours.latents - ref).abs().max().item() <= 1e-5
    assert ours.image.mode == "RGBA" and [im.mode for im in ours.layers] == ["RGBA"] * cfg.layers


def test_a_transparent_input_keeps_its_alpha_as_in_diffusers(bench, make_cfg, tmp_path):
    """The RGBA VAE encodes the input's alpha: a PNG with transparency gives diffusers' latents (it takes the
    RGBA image as is), and differs from the same pixels made opaque (the alpha was dropped before)."""
    import numpy as np
    from PIL import Image

    from workbench.pipeline import load_image

    rgb = np.asarray(load_image("asset:sample_reference.png"))
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))  # clear to opaque, left to right
    path = tmp_path / "transparent.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    assert load_image(str(path), mode="RGBA").getchannel("A").getextrema() == (0, 255)
    cfg = make_cfg(f"images=[{path}]", "seeds=[4]")
    (ours,) = bench.generate(cfg, progress=False)
    assert (ours.latents - _diffusers_latents(bench, cfg)).abs().max().item() <= 1e-5
    opaque = tmp_path / "opaque.png"
    Image.fromarray(rgb).save(opaque)
    (flat,) = bench.generate(make_cfg(f"images=[{opaque}]", "seeds=[4]"), progress=False)
    assert (flat.latents - ours.latents).abs().max().item() > 1e-2


def test_an_empty_prompt_is_the_encoders_caption_as_in_diffusers(bench, make_cfg):
    """prompts=[""]: the encoder captions the sized image with diffusers' instruction (copied as data, still
    equal to diffusers'), the same caption word for word, and the layers are generated from it: same latents."""
    from workbench.stages.caption import instruction

    # the random encoder's caption runs to 512 tokens: diffusers' __call__ keeps 512 (max_sequence_length), ours 1024
    cfg = make_cfg("prompts=['']", "layered_caption=en", "seeds=[1]", "max_sequence_length=512")
    (ours,) = bench.generate(cfg, progress=False)
    spy: dict = {}
    ref = _diffusers_latents(bench, cfg, spy)
    assert spy["instructions"] == {"en": instruction("en"), "cn": instruction("cn")}
    assert ours.caption == spy["caption"] and len(ours.caption) > 20  # the tiny random encoder's 512 tokens
    assert (ours.latents - ref).abs().max().item() <= 1e-5
    assert ours.prompt == "" and any("generated from the encoder's caption" in n for n in ours.notes)


def test_a_run_writes_the_image_and_its_layers(make_cfg, tmp_path):
    from PIL import Image

    from workbench.config import compose
    from workbench.run import run

    record = json.loads(run(compose(["experiment=layered_tiny", "layers=2", "sampler.steps=2", "device=cpu",
                                     "prompts=['']"]), tmp_path, progress=False).read_text())
    (entry,) = record["images"]
    assert entry["prompt"] == "" and entry["caption"] and entry["file"].endswith("-image.png")  # the caption is kept
    assert len(entry["layers"]) == 2 and entry["layers"][0].endswith("-layer1.png")
    for file in [entry["file"], *entry["layers"]]:
        image = Image.open(tmp_path / file)
        assert image.mode == "RGBA" and image.size == (640, 640)
    assert record["config"]["layers"] == 2 and record["config"]["model"]["variant"] == "layered"


@pytest.mark.parametrize("overrides, message", [
    (["images=[asset:world_red_circle.png,asset:sample_reference.png]"],
     "model.variant=layered splits one image into layers; images has 2"),
    (["layers=0"], r"layers=0: expected 1\.\.16"),
    (["layered_resolution=512"], "layered_resolution=512: expected 640 .* or 1024"),
    (["layered_caption=fr"], "layered_caption='fr': expected cn \\(diffusers' default\\) or en"),
    (["height=64", "width=64"], "model.variant=layered takes its size from images\\[0\\]"),
])
def test_bad_layered_configs_are_refused_by_name(make_cfg, overrides, message):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_cfg(*overrides)


def test_a_layered_sweep_previews_its_whole_image(tmp_path):
    """A sweep's step previews of a Layered cell decode its first frame (the whole image); they failed every cell
    before (the preview decoded all frames' tokens as one image)."""
    import numpy as np

    from workbench.sweep import Sweep
    from workbench.sweep.control import SweepControl

    shown = []
    sweep = Sweep.plan(["seeds=0"], base=["experiment=layered_tiny", "layers=1", "sampler.steps=2"], out_dir=tmp_path)
    result = sweep.run(progress=False, control=SweepControl(shown.append, preview_every_s=0))
    (cell,) = result.cells
    assert cell.status == "ok", cell.error
    previews = [p.preview for p in shown if p.phase == "denoise"]
    assert len(previews) == 2 and all(p.mode == "RGBA" and p.size == cell.images[0].size for p in previews)
    # the last step's prediction is the final latent: its preview is the cell's whole image
    last, final = np.asarray(previews[-1], dtype=np.int16), np.asarray(cell.images[0].convert("RGBA"), dtype=np.int16)
    assert np.abs(last - final).max() == 0


def test_layered_ignores_the_dynamic_shift_keys_and_says_so(bench, make_cfg):
    """Layered's mu comes from the input image (diffusers' QwenImageLayeredPipeline), not from base / max shift:
    a changed max_shift is noted and changes nothing; the 20B text-to-image path reads it (no note; its effect there:
    tests/test_sampling.py)."""
    from workbench.config.unused import unused_notes

    (noted,) = bench.generate(make_cfg("sampler.max_shift=1.2"), progress=False)
    (plain,) = bench.generate(make_cfg(), progress=False)
    assert "sampler.max_shift=1.2 is not used: Layered takes its shift from the input image's size" in noted.notes[-1]
    assert torch.equal(noted.latents, plain.latents)
    from workbench.config import compose, to_run_config

    assert unused_notes(to_run_config(compose(["sampler.max_shift=1.2"]))) == []  # the 20B t2i path reads it


def test_x0_previews_of_a_layered_run_show_its_whole_image(bench, make_cfg):
    """workbench.debug.X0Previews decoded all frames' tokens as one image (a RuntimeError on Layered)."""
    import numpy as np

    from workbench.debug import X0Previews

    cfg = make_cfg()
    (plain,) = bench.generate(cfg, progress=False)  # the size is the run's, known once the input image is sized
    width, height = plain.image.size
    probe = X0Previews(bench, height, width)
    (image,) = bench.generate(cfg, callback=probe, progress=False)
    assert [s for s, _ in probe.images] == list(range(cfg.sampler.steps))
    last = np.asarray(probe.images[-1][1].convert("RGBA"), dtype=np.int16)
    assert np.array_equal(last, np.asarray(image.image.convert("RGBA"), dtype=np.int16))
