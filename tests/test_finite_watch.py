"""The denoise loop's NaN / Inf guard reads each step's answer one step late on CUDA (so the GPU never waits
for the CPU between steps), and still names the first non-finite step."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.stages.numerics import FiniteWatch, NonFiniteError

OK = torch.zeros(1, 4, 64)
BAD = torch.full((1, 4, 64), math.nan)


def test_read_at_once_off_cuda():
    watch = FiniteWatch(torch.device("cpu"), steps=4)
    watch.step(0, OK, OK)
    with pytest.raises(NonFiniteError, match=r"non-finite model prediction at denoise step 2 of 4"):
        watch.step(1, OK, BAD)


def test_read_one_step_late_names_the_first_bad_step():
    watch = FiniteWatch(torch.device("cpu"), steps=4, lag=1)
    watch.step(0, OK, OK)
    watch.step(1, BAD, OK)  # not read yet: the next step is being queued
    with pytest.raises(NonFiniteError, match=r"non-finite latents at denoise step 2 of 4"):
        watch.step(2, BAD, BAD)  # step 3 is bad too; the first one is named
    assert watch.pending == []


def test_flush_reads_the_last_step():
    watch = FiniteWatch(torch.device("cpu"), steps=2, lag=1, guidance=5.0)
    watch.step(0, OK, OK)
    watch.step(1, OK, BAD)
    with pytest.raises(NonFiniteError, match=r"step 2 of 2 .*sampler\.cfg=5"):
        watch.flush()


def test_interrupt_after_a_bad_step_reports_the_bad_step(make_cfg, monkeypatch):
    """A callback that stops the run at a non-finite step: the error is the NaN, not the interruption."""
    from workbench.pipeline import Workbench
    from workbench.stages import numerics

    cfg = make_cfg("sampler.steps=3", "height=64", "width=64")
    bench = Workbench.from_config(cfg)
    real = numerics.FiniteWatch.__init__
    monkeypatch.setattr(numerics.FiniteWatch, "__init__", lambda self, *a, **k: real(self, *a, **{**k, "lag": 1}))
    original = bench.components.transformer.forward

    def poisoned(*args, **kwargs):  # the second forward returns NaN
        out = original(*args, **kwargs)
        poisoned.calls += 1
        return (out[0] * math.nan,) + tuple(out[1:]) if poisoned.calls == 2 else out
    poisoned.calls = 0
    monkeypatch.setattr(bench.components.transformer, "forward", poisoned)
    with pytest.raises(NonFiniteError, match="step 2 of 3"):
        bench.generate(cfg, callback=lambda info: info.step == 1, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reads_through_pinned_memory():
    dev = torch.device("cuda")
    watch = FiniteWatch(dev, steps=3)
    ok, bad = OK.to(dev), BAD.to(dev)
    watch.step(0, ok, ok)
    assert len(watch.pending) == 1 and watch.pending[0][1].is_pinned()
    watch.step(1, ok, bad)
    with pytest.raises(NonFiniteError, match="step 2 of 3"):
        watch.flush()


@pytest.mark.parametrize("cfg_batching, reads", [("auto", 1), ("padded", 1), ("separate", 2)])
def test_padding_masks_are_read_once_per_conditioning_not_per_forward(bench, make_cfg, monkeypatch, cfg_batching, reads):
    """Reading a mask waits for the GPU; it used to happen before every forward (3 steps x 2 forwards here)."""
    from workbench.stages import denoise as denoise_module

    cfg = make_cfg("sampler.steps=3", "sampler.cfg=4", f"sampler.cfg_batching={cfg_batching}", "height=64", "width=64",
                   "prompts=[a red kite]", "negative_prompt=a blue kite")
    cond, uncond = bench.encode(cfg.prompts, cfg.template), bench.encode([cfg.negative_prompt], cfg.template)
    real, calls = denoise_module._mask_or_none, []
    monkeypatch.setattr(denoise_module, "_mask_or_none", lambda mask: calls.append(mask.shape) or real(mask))
    bench.denoise(bench.prepare_latents([0], 64, 64), cond, cfg.sampler, 64, 64, uncond, progress=False)
    assert len(calls) == reads
