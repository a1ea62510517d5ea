"""Careless calls of the stage methods from a notebook cell: each is refused before any model runs, with a
``StageInputError`` naming the argument and the fix (before: a prompt string was encoded letter by letter,
height=65 drew noise for 64, and wrong latents failed deep in torch)."""

from __future__ import annotations

import pytest
import torch

from workbench import Workbench, compose, to_run_config
from workbench.stages.arguments import StageInputError

SMALL = ["height=64", "width=64", "sampler.steps=2"]


@pytest.fixture(scope="module")
def bench():
    cfg = to_run_config(compose(SMALL))
    return Workbench.from_config(cfg), cfg


def test_one_prompt_string_is_one_prompt(bench):
    wb, cfg = bench
    one = wb.encode("a red fox", cfg.template)  # was five prompts: 'a', ' ', 'r', ...
    listed = wb.encode(["a red fox"], cfg.template)
    assert one.prompts == ["a red fox"] and torch.equal(one.embeds, listed.embeds)
    assert torch.equal(wb.prepare_latents(7, 64, 64), wb.prepare_latents([7], 64, 64))
    import numpy as np  # numpy's integers are integers (np.arange seeds, a size read from an array's shape)

    assert torch.equal(wb.prepare_latents(np.arange(7, 8), np.int64(64), 64), wb.prepare_latents([7], 64, 64))


def _image():
    from workbench.pipeline import load_image

    return load_image("asset:sample_reference.png")


def _init(wb):
    return wb.encode_init(_image(), 64, 64)


CASES = [
    ("encode", lambda wb, cfg, lat, cond: wb.encode([1], cfg.template), r"prompts\[0\] must be a string, got int 1"),
    ("encode", lambda wb, cfg, lat, cond: wb.encode([], cfg.template), r"prompts is empty: give at least one prompt"),
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a"], "chat"),
     r"template must be a TemplateConfig, got str 'chat'; pass cfg.template, workbench.config.build.load_template"),
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a"], cfg.template, ["ref.png"]),
     r"images\[0\] must be a PIL image, got str 'ref.png'; open it with workbench.pipeline.load_image\(path\)"),
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a cat"], cfg.template, max_sequence_length=0),
     r"max_sequence_length=0 must be an integer in 1..4096"),  # an empty conditioning before
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a cat"], cfg.template, max_sequence_length=-1),
     r"max_sequence_length=-1 must be an integer in 1..4096"),  # cut the last token before
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a cat"], cfg.template, resample="lanczos"),
     r"resample='lanczos': expected bicubic \(transformers' processor\) or bilinear"),
    ("encode", lambda wb, cfg, lat, cond: wb.encode(["a cat"], cfg.template, tap=None),
     r"tap=None: expected post_norm \(after the final norm"),
    ("latents", lambda wb, cfg, lat, cond: wb.prepare_latents([], 64, 64),
     r"seeds must be a non-empty list of integers, got an empty list"),
    ("latents", lambda wb, cfg, lat, cond: wb.prepare_latents(["0"], 64, 64), r"seeds\[0\] = '0' is not an integer"),
    ("latents", lambda wb, cfg, lat, cond: wb.prepare_latents([-1], 64, 64), r"seeds\[0\] = -1 is not an integer in 0..2\*\*64-1"),
    ("latents", lambda wb, cfg, lat, cond: wb.prepare_latents([0], 65, 64),
     r"height=65 is not a positive multiple of 16 pixels \(the latent grid of this model\); use 64 or 80"),
    ("latents", lambda wb, cfg, lat, cond: wb.prepare_latents([0], 64, 0), r"width=0 is not a positive multiple of 16"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 128, 128),
     r"latents has shape \(1, 16, 64\); expected \(batch, 64, 64\) for 128x128 .*pass the height and width they were made for"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat.long(), cond, cfg.sampler, 64, 64),
     r"latents must be floating point, got torch.int64"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(torch.cat([lat, lat]), cond, cfg.sampler, 64, 64),
     r"cond holds 1 prompt\(s\) but the latents are a batch of 2; .*cond.select\(\[...\]\) picks them \(e.g. \[0\] \* 2\)"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 64, 64, uncond=lat),
     r"uncond must be a Conditioning, got Tensor; pass what Workbench.encode returned"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 64, 64, start_step=2),
     r"start_step=2 must be in 0..1 \(sampler.steps=2\); image-to-image: pass the schedule"),  # returned the noise
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 64, 64, start_step=-1),
     r"start_step=-1 must be in 0..1"),  # ran the last step alone
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 64, 64, callback="print"),
     r"callback='print' is not callable"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, cfg.sampler, 64, 64, frames=0),
     r"frames=0 must be an integer >= 1"),
    ("denoise", lambda wb, cfg, lat, cond: wb.denoise(lat, cond, {"steps": 2}, 64, 64),
     r"sampler must be a SamplerConfig, got dict; pass cfg.sampler"),
    ("decode", lambda wb, cfg, lat, cond: wb.decode(torch.zeros(1, 16, 8, 8), 64, 64),
     r"latents has shape \(1, 16, 8, 8\); expected \(batch, 16, 64\) for 64x64"),
    ("decode", lambda wb, cfg, lat, cond: wb.decode(lat.cpu().numpy(), 64, 64),
     r"latents must be a Tensor, got ndarray; pass what prepare_latents / denoise returned"),
    ("img2img", lambda wb, cfg, lat, cond: wb.prepare_img2img_latents([0], _init(wb), cfg.sampler, 0.0),
     r"strength=0.0 must be in \(0, 1\]"),  # started at the end of the schedule: the init image back
    ("img2img", lambda wb, cfg, lat, cond: wb.prepare_img2img_latents([0], _init(wb), cfg.sampler, 2.0),
     r"strength=2.0 must be in \(0, 1\]"),  # read as 1
    ("img2img", lambda wb, cfg, lat, cond: wb.prepare_img2img_latents([0], _init(wb), cfg.sampler, 0.4),
     r"strength=0.4 of sampler.steps=2 runs no step \(int\(steps \* strength\) = 0\); raise strength to >= 0.5"),
    ("img2img", lambda wb, cfg, lat, cond: wb.prepare_img2img_latents([0], _image(), cfg.sampler, 0.5),
     r"init must be what Workbench.encode_init returned \(the VAE's latent distribution\), got Image"),
    ("references", lambda wb, cfg, lat, cond: wb.prepare_references(["asset:sample_reference.png"], cfg.reference),
     r"images\[0\] must be a PIL image, got str 'asset:sample_reference.png'; open it with"),
    ("generate", lambda wb, cfg, lat, cond: wb.generate(cfg.prompts),
     r"cfg must be a Config, got list; build one with to_run_config\(compose"),
    ("generate", lambda wb, cfg, lat, cond: wb.generate(cfg, only=[1]),  # returned [] without a word
     r"only=\[1\]: give indices of the prompt-major \(prompt, seed\) list, 0..0 here \(1 prompt\(s\) x 1 seed"),
    ("loras", lambda wb, cfg, lat, cond: wb.set_loras([{"path": "my.safetensors"}]),
     r"LoRA \[0\] \{'path': 'my.safetensors'\}: .*unexpected keyword argument 'path'; its keys are file, strength, alpha"),
    ("loras", lambda wb, cfg, lat, cond: wb.set_loras([3]),
     r"LoRA \[0\] must be a LoraItem, got int 3; pass a LoraItem, a path or"),
    ("accel", lambda wb, cfg, lat, cond: wb.set_accel("first_block"),
     r"accel must be an AccelConfig, got str 'first_block'; pass cfg.accel, or AccelConfig\(method=...\)"),
]


@pytest.mark.parametrize("stage, call, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_careless_stage_calls_are_refused_with_the_fix(bench, monkeypatch, stage, call, message):
    wb, cfg = bench
    lat = wb.prepare_latents([0], 64, 64)
    cond = wb.encode(cfg.prompts, cfg.template)

    def no_model(*args, **kwargs):
        raise AssertionError("a model ran before the arguments were checked")

    monkeypatch.setattr(wb.components.transformer, "forward", no_model)
    monkeypatch.setattr(wb.components.vae, "decode", no_model)
    wb.clear_conditioning_cache()
    monkeypatch.setattr(wb.components.text_encoder, "forward", no_model)
    with pytest.raises(StageInputError, match=message):
        call(wb, cfg, lat, cond)


def test_the_size_check_follows_the_family():
    """Qwen-Image-2.1's sides are multiples of 32: 48 passes the 20B family's check, not 2.1's."""
    wb21 = Workbench.from_config(to_run_config(compose(["model=tiny_qwen21", *SMALL])))
    assert wb21.size_multiple == 32
    with pytest.raises(StageInputError, match=r"height=48 is not a positive multiple of 32 pixels .*; use 32 or 64"):
        wb21.prepare_latents([0], 48, 64)
    lat = wb21.prepare_latents([0], 64, 64)
    side = wb21.components.vae_scale_factor * wb21.layout.patch
    assert lat.shape == (1, (64 // side) ** 2, wb21.layout.channels * wb21.layout.patch ** 2)
    assert wb21.decode(lat, 64, 64)[0].size == (64, 64)  # the check accepts what prepare_latents made


def test_a_lora_path_is_one_lora(bench):
    """set_loras('file') looked for the LoRAs 'f', 'i', ... (an AttributeError before)."""
    from workbench.errors import WorkbenchError

    wb, _ = bench
    with pytest.raises(WorkbenchError, match=r"LoRA file 'missing.safetensors' not found; looked at: missing.safetensors"):
        wb.set_loras("missing.safetensors")


def test_conditioning_select_and_from_config(bench):
    """select() with an index out of range failed in torch (``index out of range in self``); a composed config is
    validated by from_config / generate, anything else named."""
    from workbench.errors import InputError

    wb, cfg = bench
    cond = wb.encode(["a cat", "a dog"], cfg.template)
    assert cond.select([1, 1, 0]).prompts == ["a dog", "a dog", "a cat"]
    assert cond.select(torch.tensor([1, 0])).prompts == ["a dog", "a cat"]  # an index tensor / array is a list
    for bad in ([2], [], [-1], "0", [True]):
        with pytest.raises(InputError, match=r"give a non-empty list of item indices in 0..1 \(this conditioning holds 2"):
            cond.select(bad)
    with pytest.raises(StageInputError, match=r"cfg must be a Config, got dict; build one with to_run_config"):
        Workbench.from_config({"model": "tiny"})
    composed = compose(SMALL)
    assert Workbench.from_config(composed).components is wb.components  # validated, then the cached models
    (image,) = wb.generate(composed, progress=False)
    assert image.image.size == (64, 64)


def test_a_negative_prompt_without_guidance_is_noted(bench):
    """diffusers warns when a negative prompt meets true_cfg_scale <= 1; a run says it in every image's notes
    (``workbench.config.unused``, with the other settings a run ignores)."""
    wb, _ = bench
    (unused,) = wb.generate(compose([*SMALL, "negative_prompt='blurry, low quality'", "sampler.cfg=1"]), progress=False)
    assert "negative_prompt 'blurry, low quality' is not used: sampler.cfg=1 turns guidance off (set sampler.cfg " \
           "above 1 to use it)" in unused.notes
    (used,) = wb.generate(compose([*SMALL, "negative_prompt='blurry, low quality'", "sampler.cfg=2"]), progress=False)
    (default,) = wb.generate(compose(SMALL), progress=False)  # the official " " negative: nothing to say
    assert not any("negative_prompt" in n for n in used.notes + default.notes)



@pytest.mark.parametrize("overrides, note", [
    (["sampler.shift=3"], "sampler.shift=3 is not used: shift_mode=dynamic takes the shift from the image size "
                          "(set sampler.shift_mode=fixed to use it)"),
    (["sampler=lightning", "sampler.max_shift=1.2"],
     "sampler.max_shift=1.2 is not used: shift_mode=fixed uses sampler.shift (set sampler.shift_mode=dynamic to use it)"),
    (["sampler.cfg_norm_strength=0.5"], "sampler.cfg_norm_strength=0.5 is not used: it is the strength of "
                                        "guidance=cfg_norm and sampler.guidance=true_cfg (set sampler.guidance=cfg_norm"),
    (["sampler.cfg_batching=separate"], "sampler.cfg_batching=separate is not used: sampler.cfg=1 turns guidance off"),
    (["accel.threshold=0.2"], "accel.threshold=0.2 is not used: it is a knob of accel=first_block and this run's "
                              "accel.method is none"),
    (["layers=2"], "layers=2 is not used: it acts on Layered only and model.variant=t2i"),
    (["perf.prefix_kv_cache=false"], "perf.prefix_kv_cache=false is not used: it acts on Qwen-Image-2.1 only"),
])
def test_settings_the_run_ignores_are_noted_and_change_nothing(bench, overrides, note):
    """Each ignored setting is noted, and is truly ignored: the latents equal those of the run without it."""
    wb, _ = bench
    (noted,) = wb.generate(compose([*SMALL, *overrides]), progress=False)
    (plain,) = wb.generate(compose([*SMALL, *overrides[:-1]]), progress=False)
    assert any(n.startswith(note) for n in noted.notes), noted.notes
    assert torch.equal(noted.latents, plain.latents) and not plain.notes
    four = [*SMALL, "sampler.steps=4"]  # (two steps end at the terminal stretch's 0.02 whatever the shift)
    (used,) = wb.generate(compose([*four, "sampler.shift_mode=fixed", "sampler.shift=3"]), progress=False)
    (other,) = wb.generate(compose([*four, "sampler.shift_mode=fixed", "sampler.shift=1.5"]), progress=False)
    assert not used.notes and not torch.equal(used.latents, other.latents)  # where it is read, no note


@pytest.mark.parametrize("axis, base, message", [
    ("sampler.shift=1,2,3", [], r"axis X \(sampler.shift\) changes nothing: no cell uses sampler.shift, since "
                                r"shift_mode=dynamic takes the shift from the image size \(set sampler.shift_mode=fixed"),
    ("negative_prompt=blurry,ugly", [], r"axis X \(negative_prompt\) changes nothing: .*sampler.cfg=1 turns guidance off"),
    ("sampler.max_shift=0.9,1.2", ["sampler=lightning"], r"no cell uses sampler.max_shift, since shift_mode=fixed"),
    ("reference=comfy_edit,diffusers_edit", [], r"no cell uses reference, since it sizes reference images and images "
                                                r"is empty"),
    ("reference.vae_area=500000,1000000", [], r"no cell uses reference.vae_area, since it sizes reference images"),
    ("accel.threshold=0.05,0.2", [], r"no cell uses accel.threshold, since it is a knob of accel=first_block"),
    ("perf.prefix_kv_cache=true,false", [], r"no cell uses perf.prefix_kv_cache, since it acts on Qwen-Image-2.1 only"),
    ("sampler.guidance=cfg,true_cfg", [], r"no cell uses sampler.guidance, since sampler.cfg=1 turns guidance off"),
])
def test_a_sweep_axis_no_cell_reads_is_refused(tmp_path, axis, base, message):
    """Swept, an ignored setting gave identical cells; an axis where some cells read it still runs."""
    from workbench.sweep import Sweep
    from workbench.sweep.axes import SweepError

    with pytest.raises(SweepError, match=message):
        Sweep.plan([axis], base=[*SMALL, *base], out_dir=tmp_path)
    assert Sweep.plan(["sampler.shift_mode=fixed,dynamic", "sampler.shift=2,3"], base=SMALL, out_dir=tmp_path).shape == (2, 2)
    assert Sweep.plan(["negative_prompt=blurry,ugly"], base=[*SMALL, "sampler.cfg=2"], out_dir=tmp_path).shape == (2,)
    assert Sweep.plan(["accel.threshold=0.05,0.2"], base=[*SMALL, "accel=first_block"], out_dir=tmp_path).shape == (2,)
    assert Sweep.plan(["reference=comfy_edit,diffusers_edit"], base=["experiment=edit_tiny"], out_dir=tmp_path).shape == (2,)
