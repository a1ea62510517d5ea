"""Samplers, guidance rules, size snapping and debug tools (issue 5), on the tiny model and on constructed tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.conditioning import Conditioning
from workbench.config import SamplerConfig, SchedulerKind, ShiftMode
from workbench.debug import X0Previews, compare, latent_stats
from workbench.resolutions import PREFERRED, nearest_preferred, snap
from workbench.stages.denoise import Interrupted, denoise
from workbench.stages.guidance import cfg_norm, plain_cfg, true_cfg
from workbench.stages.schedule import make_scheduler
from helpers.random_model import bench, make_cfg  # noqa: F401 - fixtures: model=tiny_random in this module


def test_unipc_equals_diffusers_pipeline_and_shows_its_mu_trap(bench, make_cfg):
    """diffusers reads mu's line from the scheduler config; UniPC's config lacks those keys, so the
    stock pipeline silently falls back to (256, 0.5)-(4096, 1.15) instead of Qwen-Image's
    (256, 0.5)-(8192, 0.9). With those fallback values we match it exactly; by default we keep
    Qwen-Image's line, and the results differ."""
    from diffusers import QwenImagePipeline

    c = bench.components

    def run(*overrides):
        cfg = make_cfg("sampler=unipc", "sampler.steps=5", "prompts=[a teapot]", "seeds=[4]", *overrides)
        cond = bench.encode(cfg.prompts, cfg.template)
        ours = bench.denoise(bench.prepare_latents([4], 128, 128), cond, cfg.sampler, 128, 128, progress=False)
        pipe = QwenImagePipeline(make_scheduler(cfg.sampler), c.vae, c.text_encoder, c.tokenizer, c.transformer)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt="a teapot", height=128, width=128, num_inference_steps=5, true_cfg_scale=1.0,
                   generator=torch.Generator().manual_seed(4), output_type="latent").images
        return (ours - ref).abs().max().item()

    assert run("sampler.max_image_seq_len=4096", "sampler.max_shift=1.15") <= 1e-5
    assert run() > 1e-3


class LinearField(torch.nn.Module):
    """A stand-in transformer with a known flow: v(x) = c * x, so x(s) = x(1) * exp(c (s - 1))."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.calls = 0

    def forward(self, hidden_states, **kwargs):
        self.calls += 1
        return (self.c * hidden_states,)


def _solve(scheduler: SchedulerKind, steps: int, field: LinearField) -> torch.Tensor:
    s = SamplerConfig(scheduler=scheduler, steps=steps, shift_mode=ShiftMode.fixed, shift=1.0, shift_terminal=None)
    cond = Conditioning(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool), [[0]], [0], "t", ["p"])
    x = torch.ones(1, 4, 64, dtype=torch.float64)
    return denoise(field, x, cond, s, [(1, 2, 2)], progress=False)


def test_heun_is_second_order_and_beats_euler():
    c = 0.7
    exact = math.exp(-c)  # from sigma 1 to 0
    errs = {}
    for kind in (SchedulerKind.euler, SchedulerKind.heun):
        errs[kind] = [abs(_solve(kind, n, LinearField(c))[0, 0, 0].item() - exact) for n in (8, 16)]
    assert errs[SchedulerKind.heun][1] < errs[SchedulerKind.euler][1] / 5
    # Euler halves its error with twice the steps (first order), Heun quarters it (second order),
    # up to the final Euler step to sigma 0 that both share
    assert errs[SchedulerKind.euler][0] / errs[SchedulerKind.euler][1] == pytest.approx(2, rel=0.15)
    assert errs[SchedulerKind.heun][0] / errs[SchedulerKind.heun][1] > 2.5


def test_heun_calls_the_model_twice_per_step_except_the_last():
    field = LinearField(0.3)
    _solve(SchedulerKind.heun, 6, field)
    assert field.calls == 2 * 5 + 1


def test_true_cfg_rescales_each_token_to_the_conditional_norm():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    out = true_cfg(cond, uncond, 4.0)
    assert torch.allclose(out.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)
    direction = plain_cfg(cond, uncond, 4.0)
    assert torch.allclose(torch.nn.functional.cosine_similarity(out, direction, dim=-1), torch.ones(2, 5), atol=1e-5)


def test_cfg_norm_clamps_x0_norm_per_pixel_to_the_conditional():
    x = torch.zeros(1, 2, 64)  # x = 0 so x0 = -sigma * v and norms compare directly
    cond = torch.ones(1, 2, 64)
    uncond = torch.zeros(1, 2, 64)
    uncond[0, 1] = 2.0  # token 1: guided prediction smaller than cond -> left as is
    out = cfg_norm(cond, uncond, 3.0, x, sigma=0.5)
    guided = plain_cfg(cond, uncond, 3.0)
    # token 0: guided = 3 * cond, norm 3x -> rescaled back to the conditional norm (ratio 1/3)
    assert torch.allclose(out[0, 0], cond[0, 0], atol=1e-5)
    # token 1: guided = 2 + 3 * (1 - 2) = -1, |x0| equal to cond's -> ratio 1, unchanged
    assert torch.allclose(out[0, 1], guided[0, 1], atol=1e-5)
    half = cfg_norm(cond, uncond, 3.0, x, sigma=0.5, strength=0.5)
    assert torch.allclose(half[0, 0], 0.5 * cond[0, 0], atol=1e-5)


@pytest.mark.parametrize("sampler", ["flow_euler", "heun", "unipc", "comfy_euler", "comfy_euler_cfgnorm", "lightning"])
def test_every_sampler_runs_finite_on_the_tiny_model(bench, make_cfg, sampler):
    cfg = make_cfg(f"sampler={sampler}", "sampler.steps=3", "height=64", "width=64")
    (out,) = bench.generate(cfg, progress=False)
    assert torch.isfinite(out.latents).all() and out.latents.abs().mean() > 0.1


def test_guidance_rules_give_different_results(bench, make_cfg):
    outs = {}
    for rule in ("true_cfg", "cfg", "cfg_norm"):
        cfg = make_cfg("sampler.steps=3", "sampler.cfg=4", f"sampler.guidance={rule}", "height=64", "width=64")
        outs[rule] = bench.generate(cfg, progress=False)[0].latents
    assert (outs["true_cfg"] - outs["cfg"]).abs().max() > 1e-3
    assert (outs["cfg_norm"] - outs["cfg"]).abs().max() > 1e-3


def test_x0_previews_and_interruption(bench, make_cfg):
    cfg = make_cfg("sampler.steps=4", "height=64", "width=64")
    cond = bench.encode(cfg.prompts, cfg.template)
    previews = X0Previews(bench, 64, 64, every=2)
    bench.denoise(bench.prepare_latents([0], 64, 64), cond, cfg.sampler, 64, 64, callback=previews, progress=False)
    assert [s for s, _ in previews.images] == [0, 2] and previews.images[0][1].size == (64, 64)
    with pytest.raises(ValueError, match=r"every=0 must be an integer >= 1"):  # a ZeroDivisionError mid-run before
        X0Previews(bench, 64, 64, every=0)
    stopper = X0Previews(bench, 64, 64, every=10, stop_after=2)
    with pytest.raises(Interrupted, match="after step 2 of 4"):
        bench.denoise(bench.prepare_latents([0], 64, 64), cond, cfg.sampler, 64, 64, callback=stopper, progress=False)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_step_callback_gets_each_steps_timestep_as_a_float(bench, make_cfg, scheduler):
    """The loop reads the timesteps once (not one device read per step); each step still gets its own."""
    from workbench.stages.schedule import Schedule

    cfg = make_cfg("sampler.steps=3", f"sampler.scheduler={scheduler}", "height=64", "width=64")
    cond = bench.encode(cfg.prompts, cfg.template)
    seen = []
    bench.denoise(bench.prepare_latents([0], 64, 64), cond, cfg.sampler, 64, 64,
                  callback=lambda info: seen.append((info.step, info.timestep)), progress=False)
    expected = Schedule(cfg.sampler, 16, "cpu").scheduler.timesteps.tolist()
    assert [s for s, _ in seen] == [0, 1, 2] and all(type(t) is float for _, t in seen)
    assert [t for _, t in seen] == pytest.approx(expected)


def test_latent_stats_on_constructed_tensor():
    x = torch.zeros(1, 16, 4, 4)
    x[0, 3] = torch.arange(16.0).view(4, 4)
    x[0, 5, 0, 0] = float("nan")
    x[0, 6, 1, 1] = float("inf")
    s = latent_stats(x)
    assert s["channels"] == 16 and s["nan"] == 1 and s["inf"] == 1
    assert s["mean"][3] == pytest.approx(7.5) and s["min"][3] == 0 and s["max"][3] == 15
    assert s["std"][3] == pytest.approx(np.std(np.arange(16.0), ddof=1))
    from workbench.stages.latents import pack

    packed = latent_stats(pack(x.nan_to_num(0, 0, 0)))
    assert packed["mean"][3] == pytest.approx(7.5) and packed["max"][3] == 15  # per latent channel after packing


def test_compare_on_constructed_inputs():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10
    r = compare(Image.fromarray(a), Image.fromarray(b))
    assert r["mse"] == pytest.approx(100 / 192) and r["max_abs_diff"] == 10
    assert r["psnr"] == pytest.approx(10 * math.log10(255**2 / (100 / 192)))
    t = torch.tensor([1.0, 2.0, 3.0])
    same = compare(t, t)
    assert same["psnr"] == math.inf and same["cosine"] == pytest.approx(1.0)
    assert compare(t, -t)["cosine"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        compare(t, torch.zeros(2))


def test_size_snapping_is_noted(bench, make_cfg):
    assert snap(1140, 1472) == (1136, 1472, "size 1140x1472 snapped to 1136x1472 (sides multiple of 16)")
    assert snap(1024, 1024)[2] is None
    assert nearest_preferred(1920, 1080) == (1392, 752) and len(PREFERRED) == 17
    cfg = make_cfg("width=72", "height=64", "snap_size=true", "sampler.steps=2")
    (out,) = bench.generate(cfg, progress=False)
    assert out.image.size == (64, 64) and out.notes == ["size 72x64 snapped to 64x64 (sides multiple of 16)"]
