"""Where the fp8 forward's non-GEMM time goes: the activation quantisation kernels, alone.

The fp8 forward's profile (results/h200_run34_fp8_autotune.json) spends ~17 ms per forward in one Inductor
kernel (GELU of fc1's output + per-row amax + fp8 cast, 60 blocks: ~0.29 ms each for a 6889 x 12288 bf16
tensor, a third of the memory bandwidth) and ~20 ms more in the LayerNorm / QK-norm kernels. This script
times those kernels in isolation against memory-bandwidth references (one read, one read + write) under
Inductor's reduction options, and keeps the generated Triton code, so the slow ones can be read.

    python benchmarks/bench_fp8_quant_kernels.py --out results/x.json --code-dir $OUT/code
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

M, D, H = 6889, 3072, 12288  # image tokens at 1328x1328, model width, MLP width
F8 = torch.float8_e4m3fn
F8_MAX = torch.finfo(F8).max


def gelu(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t, approximate="tanh")


def quant_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's per-row dynamic quantisation (quant_primitives._choose_scale_float8 + _quantize_affine_float8)."""
    scale = (x.abs().amax(dim=-1, keepdim=True) / F8_MAX).to(torch.float32)
    q = (x.to(torch.float32) / scale).clamp(-F8_MAX, F8_MAX).to(F8)
    return q, scale


def quant_rows_f32amax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same with the amax taken in float32 (one conversion of x, reused)."""
    xf = x.to(torch.float32)
    scale = xf.abs().amax(dim=-1, keepdim=True) / F8_MAX
    return (xf / scale).clamp(-F8_MAX, F8_MAX).to(F8), scale


def single_pass_gelu_quant():
    """GELU (sigmoid form) + per-row amax + fp8 cast in ONE read of each row, written by hand in Triton.

    Inductor splits this into a two-pass looped reduction (each row read twice, the GELU evaluated twice)
    because a 12288-wide row is over its persistent-reduction limit; a row of 12288 fp32 values fits in the
    registers of one 16-warp program. Here to be measured against Inductor's kernel (same math as
    ``workbench.precision.gelu_tanh`` compiled, and the scale as Inductor computes it: amax * (1/448) in fp32).
    """
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(y_ptr, q_ptr, s_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(y_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        g = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        scale = tl.max(tl.where(mask, tl.abs(g), 0.0), axis=0) * 0.002232142857142857
        q = tl.clamp(g / scale, -448.0, 448.0)
        tl.store(q_ptr + row * n_cols + cols, q.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + row, scale)

    def run(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = y.shape
        q = torch.empty(rows, cols, device=y.device, dtype=F8)
        scale = torch.empty(rows, 1, device=y.device, dtype=torch.float32)
        kernel[(rows,)](y, q, scale, cols, BLOCK=triton.next_power_of_2(cols), num_warps=16)
        return q, scale

    return run


def persistent_reductions_up_to(numel: int):
    """An Inductor choices handler that makes row reductions up to ``numel`` persistent (one read of each row).

    Inductor's own limit for an inner reduction is 1024 (16x that with multi_kernel, which then picks a
    variant by timing at run time: not reproducible across processes). A fixed, larger limit is deterministic.
    """
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class Choices(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction: bool) -> bool:
            if (features.get_reduction_hint() == ReductionHint.INNER and not cooperative_reduction
                    and V.graph.sizevars.statically_known_leq(features.reduction_numel, numel)):
                return True
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    return Choices()


def kernel_times(fn, *args, iters: int = 20) -> dict:
    """GPU time per call, by kernel (torch.profiler), after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn(*args)
        torch.cuda.synchronize()
    by_name: dict[str, float] = {}
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA:  # CPU-side ops (their device time repeats the kernels')
            continue
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        by_name[evt.key] = by_name.get(evt.key, 0.0) + t / iters / 1e3  # us -> ms per call
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return {"wall_ms": start.elapsed_time(end) / iters, "kernels_ms": dict(sorted(by_name.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--code-dir", default="")
    args = p.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="inductor-quant-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # this script's generated code only
    torch.manual_seed(0)
    dev = "cuda"
    y = torch.randn(M, H, device=dev, dtype=torch.bfloat16)  # fc1's output
    x = torch.randn(M, D, device=dev, dtype=torch.bfloat16)  # a LayerNorm input
    shift, scale = (torch.randn(1, D, device=dev, dtype=torch.bfloat16) * 0.1 for _ in range(2))
    meta = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    res: dict = {"shapes": {"fc1_out": [M, H], "norm_in": [M, D]}}

    def save() -> None:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": res}, indent=2))

    from workbench.perf import _cos_sin, rope_real
    from workbench.precision import gelu_tanh

    qkv = torch.randn(1, M, 3 * D, device=dev, dtype=torch.bfloat16)  # the fused projection's output
    norm_w = torch.rand(128, device=dev, dtype=torch.bfloat16) + 0.5
    freqs = torch.polar(torch.ones(M, 64, device=dev), torch.rand(M, 64, device=dev) * 6)
    cos, sin = _cos_sin(freqs)
    cos_old, sin_old = freqs.real.repeat_interleave(2, -1).float(), freqs.imag.repeat_interleave(2, -1).float()

    def rope_stacked(x, c, s_):  # the form before run36
        xf = x.float()
        re, im = xf.unflatten(-1, (-1, 2)).unbind(-1)
        return (xf * c[None, :, None] + torch.stack([-im, re], -1).flatten(3) * s_[None, :, None]).to(x.dtype)

    def qk_norm_rope(t, rope, c, s_):
        q, k, _ = t.unflatten(-1, (3, -1, 128)).unbind(2)
        q, k = (F.rms_norm(u, (128,), norm_w, eps=1e-6) for u in (q, k))
        return rope(q, c, s_), rope(k, c, s_)

    def ln_mod_quant(t):
        n = F.layer_norm(t, (D,), eps=1e-6)
        return quant_rows(n * (1 + scale) + shift)

    cases = {
        # bandwidth references
        "read_amax_fc1": (lambda t: t.abs().amax(-1), y),
        "read_write_bf16_fc1": (lambda t: t * 2, y),
        "read_write_fp8_fc1": (lambda t: (t * 2).to(F8), y),
        # what the fp8 block runs
        "gelu_quant_rows": (lambda t: quant_rows(gelu(t)), y),
        "gelu_quant_rows_f32amax": (lambda t: quant_rows_f32amax(gelu(t)), y),
        "quant_rows_no_gelu": (quant_rows, y),
        "gelu_sigmoid_quant_rows": (lambda t: quant_rows(gelu_tanh(t)), y),
        "ln_mod_quant_rows": (ln_mod_quant, x),
        "qk_norm_rope_stacked": (lambda t: qk_norm_rope(t, rope_stacked, cos_old, sin_old), qkv),
        "qk_norm_rope_swapped": (lambda t: qk_norm_rope(t, rope_real, cos, sin), qkv),
    }
    option_sets = {
        "default": {},
        "multi_kernel": {"triton.multi_kernel": 1},
        "persistent_forced": {"triton.multi_kernel": 2},
        "coordinate_descent": {"coordinate_descent_tuning": True},
    }
    for opt_name, options in option_sets.items():
        for name, (fn, arg) in cases.items():
            if opt_name != "default" and not name.startswith(("gelu_quant_rows", "ln_mod")):
                continue
            key = f"{name}/{opt_name}"
            torch._dynamo.reset()
            try:
                compiled = torch.compile(fn, fullgraph=True, dynamic=False, options=dict(options))
                t0 = time.perf_counter()
                compiled(arg)
                torch.cuda.synchronize()
                r = kernel_times(compiled, arg)
                r["compile_s"] = round(time.perf_counter() - t0, 2)
                nbytes = arg.numel() * arg.element_size()
                r["input_gb_per_s_at_wall"] = round(nbytes / (r["wall_ms"] / 1e3) / 1e9, 1)
            except Exception as err:  # noqa: BLE001 - a failing option is a result
                r = {"error": f"{type(err).__name__}: {err}"[:500]}
            res[key] = r
            print(key, json.dumps(r)[:400], flush=True)
            save()
    # Inductor with persistent row reductions up to 16384 (a choices handler, not a config option: set per run here)
    from torch._inductor.virtualized import V

    for name in ("gelu_sigmoid_quant_rows", "ln_mod_quant_rows"):
        fn, arg = cases[name]
        torch._dynamo.reset()
        key = f"{name}/persistent_up_to_16384"
        try:
            with V.set_choices_handler(persistent_reductions_up_to(16384)):
                compiled = torch.compile(fn, fullgraph=True, dynamic=False,
                                         options={"fx_graph_cache": False})  # the handler is not in 2.11's cache key
                compiled(arg)
            res[key] = kernel_times(compiled, arg)
            q_ref, s_ref = torch.compile(fn, fullgraph=True, dynamic=False)(arg)
            q_new, s_new = compiled(arg)
            res[key]["q_differ_fraction"] = (q_new.float() != q_ref.float()).float().mean().item()
            res[key]["scale_max_rel_diff"] = ((s_new - s_ref).abs() / s_ref.abs()).max().item()
        except Exception as err:  # noqa: BLE001 - a failing variant is a result
            res[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(key, json.dumps(res[key])[:400], flush=True)
        save()
    # the hand-written single-pass kernel, against Inductor's two-pass one (same math)
    try:
        kernel = single_pass_gelu_quant()
        r = kernel_times(kernel, y)
        torch._dynamo.reset()
        q_ref, s_ref = torch.compile(cases["gelu_sigmoid_quant_rows"][0], fullgraph=True, dynamic=False)(y)
        q_new, s_new = kernel(y)
        r["q_differ_fraction"] = (q_new.float() != q_ref.float()).float().mean().item()
        r["scale_max_rel_diff"] = ((s_new - s_ref).abs() / s_ref.abs()).max().item()
        res["gelu_sigmoid_quant_rows/triton_single_pass"] = r
    except Exception as err:  # noqa: BLE001
        res["gelu_sigmoid_quant_rows/triton_single_pass"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    print("triton_single_pass", json.dumps(res["gelu_sigmoid_quant_rows/triton_single_pass"])[:400], flush=True)
    save()
    # the torchao path itself: fc2(gelu(y)) with a per-row fp8 fc2 (quantisation + GEMM), and its output layout
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        fc1 = torch.nn.Linear(D, H, device=dev, dtype=torch.bfloat16)
        fc2 = torch.nn.Linear(H, D, device=dev, dtype=torch.bfloat16)
        cfg = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
        quantize_(fc1, cfg)
        quantize_(fc2, cfg)
        with torch.no_grad():
            out1 = fc1(x)
            res["torchao_fc1_out"] = {"dtype": str(out1.dtype), "stride": list(out1.stride())}
            torch._dynamo.reset()
            mlp = torch.compile(lambda t: fc2(gelu(fc1(t))), fullgraph=True, dynamic=False)
            r = kernel_times(mlp, x)
            res["torchao_mlp/default"] = r
            print("torchao_mlp", json.dumps(r)[:600], flush=True)
    except Exception as err:  # noqa: BLE001
        res["torchao_mlp/default"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    save()
    if args.code_dir:
        dest = Path(args.code_dir)
        dest.mkdir(parents=True, exist_ok=True)
        codes = sorted(cache.rglob("*.py"))
        with tarfile.open(dest / "inductor_code.tar.gz", "w:gz") as tar:  # the generated Python / Triton only
            for f in codes:
                tar.add(f, arcname=str(f.relative_to(cache)))
        print(f"{len(codes)} generated modules archived", flush=True)


if __name__ == "__main__":
    main()
