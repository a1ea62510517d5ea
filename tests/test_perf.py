"""Speed switches keep the math: the fast attention processor equals the stock one (tiny model)."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.config import ModelConfig, PerfConfig
from workbench.models.tiny import build_transformer
from workbench.perf import FastQwenAttnProcessor, RealRope, apply_perf, rope_real


def _inputs(mask: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 64, generator=g)
    e = torch.randn(2, 7, 64, generator=g)
    m = None
    if mask:
        m = torch.ones(2, 7, dtype=torch.bool)
        m[1, 4:] = False
    return dict(hidden_states=x, encoder_hidden_states=e, encoder_hidden_states_mask=m,
                timestep=torch.tensor([0.5, 0.2]), img_shapes=[[(1, 8, 8)]] * 2, return_dict=False)


def test_rope_real_equals_complex():
    from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

    from workbench.perf import _cos_sin

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 8, generator=g)
    freqs = torch.polar(torch.ones(5, 4), torch.randn(5, 4, generator=g))
    cos, sin = _cos_sin(freqs)
    assert torch.allclose(rope_real(x, cos, sin), apply_rotary_emb_qwen(x, freqs, use_real=False), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_real_is_bit_equal_to_the_stacked_rotation(dtype):
    """The pair swap with a signed sin gives the same bits as rotating by stacking (-im, re) (the form
    before run35's kernel measurements): x * (-s) is exactly -(x * s)."""
    from workbench.perf import _cos_sin

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 33, 4, 128, generator=g) * 3).to(dtype)
    freqs = torch.polar(torch.ones(33, 64), torch.randn(33, 64, generator=g) * 10)
    cos, sin = freqs.real.repeat_interleave(2, -1).float(), freqs.imag.repeat_interleave(2, -1).float()
    xf = x.float()
    re, im = xf.unflatten(-1, (-1, 2)).unbind(-1)
    stacked = (xf * cos[None, :, None] + torch.stack([-im, re], -1).flatten(3) * sin[None, :, None]).to(dtype)
    assert torch.equal(rope_real(x, *_cos_sin(freqs)), stacked)


@pytest.mark.parametrize("mask", [False, True])
def test_fast_attention_equals_stock(mask):
    stock = build_transformer(ModelConfig())
    fast = apply_perf(copy.deepcopy(stock), PerfConfig(fast_attention=True))
    assert isinstance(fast.pos_embed, RealRope)
    assert all(isinstance(b.attn.processor, FastQwenAttnProcessor) for b in fast.transformer_blocks)
    assert not hasattr(fast.transformer_blocks[0].attn, "to_q")  # unfused copies dropped
    with torch.no_grad():
        a = stock(**_inputs(mask))[0]
        b = fast(**_inputs(mask))[0]
    assert (a - b).abs().max().item() <= 1e-5
    assert a.abs().max() > 0.1


def test_fast_attention_is_idempotent():
    t = build_transformer(ModelConfig())
    apply_perf(t, PerfConfig(fast_attention=True))
    apply_perf(t, PerfConfig(fast_attention=True))
    assert isinstance(t.pos_embed, RealRope) and not isinstance(t.pos_embed.inner, RealRope)


def test_fast_perf_config_runs_end_to_end(make_cfg):
    from workbench.pipeline import Workbench

    base = make_cfg("sampler.steps=2", "height=64", "width=64")
    fast = make_cfg("perf.fast_attention=true", "sampler.steps=2", "height=64", "width=64")
    a = Workbench.from_config(base).generate(base, progress=False)[0].latents
    b = Workbench.from_config(fast).generate(fast, progress=False)[0].latents
    assert (a - b).abs().max().item() <= 1e-5


def test_fast_attention_fuses_before_fp8_storage(make_cfg):
    """Fusing q / k / v concatenates bf16 weights; with fp8 storage it must happen before the cast
    (it used to crash: "check_uniform_bounds" not implemented for 'Float8_e4m3fn')."""
    from workbench.pipeline import Workbench

    args = ("precision=fp8_e4m3fn", "sampler.steps=2", "height=64", "width=64")
    base, fast = make_cfg(*args), make_cfg(*args, "perf.fast_attention=true")
    a = Workbench.from_config(base).generate(base, progress=False)[0].latents
    wb = Workbench.from_config(fast)
    qkv = wb.components.transformer.transformer_blocks[0].attn.to_qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn  # the fused weight is what is stored in fp8
    b = wb.generate(fast, progress=False)[0].latents
    # same fp8 weights (fusing is a concatenation), bf16 compute: equal up to bf16 GEMM rounding
    assert ((a.float() - b.float()).norm() / a.float().norm()).item() < 2e-2
