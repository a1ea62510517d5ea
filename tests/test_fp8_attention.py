"""fp8 attention (workbench/fp8_attention.py): the per-tensor scales, the emulated arithmetic against float32
attention, the switch in the fast processor, and its refusals. The cuDNN kernel itself runs only on a Hopper GPU
(the last test; measured in benchmarks/results/h200_run27_*)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from workbench.config import AttentionKernel, ConfigError, ModelConfig, PerfConfig
from workbench.fp8_attention import (E4M3_MAX, check_fp8_cudnn, fp8_joint_attention, quantize_per_tensor,
                                     sdpa_fp8_emulated)
from workbench.models.tiny import build_transformer
from workbench.perf import PerfError, apply_perf


def _qkv(tokens=96, heads=3, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, tokens, heads, dim, generator=g) for _ in range(3))


def _attention_fp32(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(*(t.permute(0, 2, 1, 3) for t in (q, k, v))).permute(0, 2, 1, 3)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_maps_amax_to_e4m3_max_and_round_trips():
    x = torch.randn(4, 50, 2, 8) * 37.0
    x8, descale = quantize_per_tensor(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert x8.float().abs().max().item() == E4M3_MAX
    back = x8.float() * descale
    # e4m3 keeps 3 mantissa bits: each normal value within half a step (2^-4 relative) of the original
    normal = x.abs() > x.abs().max() * 2 ** -6 / E4M3_MAX * 4
    assert ((back - x).abs()[normal] <= x.abs()[normal] * 2 ** -4 + 1e-6).all()
    assert not torch.isnan(back).any()


def test_quantize_all_zero_tensor_is_finite():
    x8, descale = quantize_per_tensor(torch.zeros(1, 4, 1, 8))
    assert descale.item() == 1.0 and (x8.float() == 0).all()


def test_emulated_fp8_attention_is_close_to_fp32_but_not_equal():
    q, k, v = _qkv()
    ref = _attention_fp32(q, k, v)
    fp8 = fp8_joint_attention(q, k, v, "fp8_emulated")
    error = _rel(fp8, ref)
    # random q / k / v: fp8's 3-bit mantissas on q, k, v, P and O give a few percent; bf16 gives ~0.2 %
    assert 0.005 < error < 0.2, error
    bf16 = _attention_fp32(*(t.bfloat16() for t in (q, k, v)))
    assert _rel(bf16, ref) < error / 5


def test_emulated_kernel_matches_the_math_without_p_and_o_quantisation_steps():
    """Each fp8 step of the emulation is where cuDNN puts it: with P and O left in float32, the kernel equals
    float32 attention on the dequantised q / k / v exactly (up to float32 rounding)."""
    q, k, v = _qkv(tokens=40)
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in (q, k, v))
    dequant = [x.float() * d for x, d in ((q8, dq), (k8, dk), (v8, dv))]
    expected = _attention_fp32(*dequant)
    got = sdpa_fp8_emulated(q8, k8, v8, dq, dk, dv).float() * dv
    # only P (at 448) and O (at v's scale) are quantised beyond q / k / v: O's rounding bounds the difference
    assert _rel(got, expected) < 0.05
    assert _rel(got, expected) > 0  # P and O are quantised: not the float32 result


def test_scaled_inputs_give_scaled_outputs():
    """Per-tensor scales: attention of (q, k, 3v) is 3x attention of (q, k, v) bit for bit once dequantised
    (the scale moves into v's descale; the fp8 values are the same)."""
    q, k, v = _qkv(tokens=32)
    a = fp8_joint_attention(q, k, v, "fp8_emulated")
    b = fp8_joint_attention(q, k, v * 4.0, "fp8_emulated")
    assert torch.allclose(b, a * 4.0, rtol=1e-6, atol=1e-7)


def test_fast_processor_runs_fp8_attention_on_the_tiny_model():
    stock = build_transformer(ModelConfig())
    sdpa = apply_perf(copy.deepcopy(stock), PerfConfig(fast_attention=True))
    fp8 = apply_perf(copy.deepcopy(stock), PerfConfig(fast_attention=True, attention_kernel=AttentionKernel.fp8_emulated))
    assert all(b.attn.processor.kernel == AttentionKernel.fp8_emulated for b in fp8.transformer_blocks)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 64, 64, generator=g), encoder_hidden_states=torch.randn(1, 7, 64, generator=g),
                  encoder_hidden_states_mask=None, timestep=torch.tensor([0.5]), img_shapes=[[(1, 8, 8)]], return_dict=False)
    with torch.no_grad():
        a, b = sdpa(**inputs)[0], fp8(**inputs)[0]
    assert 0 < _rel(b, a) < 0.1


def test_fp8_kernel_refuses_a_padding_mask_at_the_forward():
    t = apply_perf(build_transformer(ModelConfig()), PerfConfig(fast_attention=True, attention_kernel="fp8_emulated"))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    inputs = dict(hidden_states=torch.randn(2, 64, 64), encoder_hidden_states=torch.randn(2, 7, 64),
                  encoder_hidden_states_mask=mask, timestep=torch.tensor([0.5, 0.5]), img_shapes=[[(1, 8, 8)]] * 2,
                  return_dict=False)
    with pytest.raises(PerfError, match="padding mask.*separate cells.*attention_kernel=sdpa"):
        with torch.no_grad():
            t(**inputs)


def test_fp8_kernel_refuses_context_parallelism_at_the_forward():
    t = apply_perf(build_transformer(ModelConfig()), PerfConfig(fast_attention=True, attention_kernel="fp8_emulated"))
    t.transformer_blocks[0].attn.processor._parallel_config = object()  # what diffusers' enable_parallelism sets
    inputs = dict(hidden_states=torch.randn(1, 64, 64), encoder_hidden_states=torch.randn(1, 7, 64),
                  encoder_hidden_states_mask=None, timestep=torch.tensor([0.5]), img_shapes=[[(1, 8, 8)]],
                  return_dict=False)
    with pytest.raises(PerfError, match="unmasked, single-device attention; this forward has context parallelism"):
        with torch.no_grad():
            t(**inputs)


def test_the_per_run_switch_refuses_the_cudnn_kernel_on_a_cpu_transformer():
    """A transformer built with sdpa and handed fp8_cudnn later (programmatic use, past the config's preflight):
    refused where the kernel is set, before any forward, and the blocks keep their kernel."""
    from workbench.perf import set_attention_kernel

    t = apply_perf(build_transformer(ModelConfig()), PerfConfig(fast_attention=True))
    with pytest.raises(PerfError, match="runs on an NVIDIA GPU.*device is 'cpu'"):
        set_attention_kernel(t, AttentionKernel.fp8_cudnn)
    assert {b.attn.processor.kernel for b in t.transformer_blocks} == {AttentionKernel.sdpa}


def test_switching_the_kernel_on_a_fast_model_updates_every_block():
    t = apply_perf(build_transformer(ModelConfig()), PerfConfig(fast_attention=True))
    apply_perf(t, PerfConfig(fast_attention=True, attention_kernel="fp8_emulated"))
    assert {b.attn.processor.kernel for b in t.transformer_blocks} == {AttentionKernel.fp8_emulated}


@pytest.mark.parametrize("overrides, message", [
    (["perf.attention_kernel=fp8_emulated"], "needs perf.fast_attention=true"),
    (["perf=fast", "perf.attention_kernel=fp8_emulated", "perf.attention_backend=_native_cudnn"], "attention_backend=null"),
    (["perf=fast", "perf.attention_kernel=fp8_emulated", "sampler.cfg=4", "sampler.cfg_batching=padded"],
     "takes no padding mask; use sampler.cfg_batching=auto"),
    (["perf=fast", "perf.attention_kernel=fp8_cudnn", "device=cpu"], "runs on an NVIDIA GPU.*fp8_emulated"),
    (["perf=fast", "perf.attention_kernel=fp8_emulated", "prompts=[a cat,a red fox in the snow]", "batch_size=2"],
     "batch_size=2 and 2 prompts.*takes no padding mask; use batch_size=1"),
    (["perf=fast", "perf.attention_kernel=fp8"], "attention_kernel"),
])
def test_refusals_before_any_model_loads(overrides, message):
    from workbench.config import compose, to_run_config

    with pytest.raises(ConfigError, match=message):
        to_run_config(compose(["height=64", "width=64", *overrides]))


def test_cuda_check_names_the_device():
    assert "device is 'cpu'" in check_fp8_cudnn("cpu")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="cuDNN's fp8 attention needs a Hopper (or newer) GPU")
def test_cudnn_kernel_matches_the_emulation():
    pytest.importorskip("cudnn")
    q, k, v = (t.cuda().bfloat16() for t in _qkv(tokens=1000, heads=4, dim=128))
    ref = _attention_fp32(q.float(), k.float(), v.float())
    cudnn = fp8_joint_attention(q, k, v, "fp8_cudnn")
    emulated = fp8_joint_attention(q, k, v, "fp8_emulated")
    # The emulation predicts cuDNN's error against float32 attention (H200: 13.78 % vs 13.81 % at 7017 tokens), but
    # not its bits: where the two differ slightly before O's fp8 rounding, that rounding flips by a step (cuDNN's
    # online softmax rescales P per tile), so cuDNN vs emulation is a few percent too (3.0-3.4 % measured).
    error_cudnn, error_emulated = _rel(cudnn, ref), _rel(emulated, ref)
    assert abs(error_cudnn - error_emulated) < 0.2 * error_emulated, (error_cudnn, error_emulated)
    assert _rel(cudnn, emulated) < error_emulated, (_rel(cudnn, emulated), error_emulated)
    assert math.isfinite(error_cudnn) and error_cudnn > _rel(_attention_fp32(q, k, v), ref)  # fp8, not bf16


def test_the_kernel_is_a_per_run_switch_on_one_resident_model(make_cfg):
    """A sweep over perf.attention_kernel keeps one transformer (the kernel is set per generate, as LoRAs and
    accel are): switching back gives the first image bit for bit."""
    import numpy as np

    from workbench.models.build import free_model, resident_models
    from workbench.pipeline import Workbench

    before = {m["key"] for m in resident_models()}
    base = ("perf=fast", "perf.compile=none", "prompts=['a red circle on a blue square']", "seeds=[0]")
    images = []
    for kernel in ("sdpa", "fp8_emulated", "sdpa"):
        cfg = make_cfg(*base, f"perf.attention_kernel={kernel}")
        images.append(np.asarray(Workbench.from_config(cfg).generate(cfg, progress=False)[0].image, dtype=np.int16))
    built = [m["key"] for m in resident_models() if m["key"] not in before]
    try:
        assert len(built) == 1
        assert np.array_equal(images[0], images[2])
        assert np.abs(images[0] - images[1]).max() > 0  # fp8 attention changed some pixels
    finally:
        for key in built:
            free_model(key)
