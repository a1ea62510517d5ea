"""fp8 attention at Qwen-Image's full size: one joint attention (1328x1328 image tokens + text, 24 heads of 128),
cuDNN's bf16 flash attention (the workbench's ``sdpa`` kernel) vs cuDNN's fp8 kernel (``fp8_cudnn``: per-tensor
quantisation + the fused kernel + dequantisation, eager and compiled as in the block), and their errors against a
float32 reference and against the torch emulation of the fp8 arithmetic (``fp8_emulated``).

Usage (GPU machine): python benchmarks/bench_fp8_attention.py --out $OUT/fp8_attention.json
CPU check of the script: python benchmarks/bench_fp8_attention.py --out /tmp/x.json --tiny
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import Results, cuda_time  # noqa: E402


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def reference(q, k, v) -> torch.Tensor:
    """float32 attention, one head at a time (the full score matrix of 7000 tokens is 200 MB a head)."""
    heads = [torch.nn.functional.scaled_dot_product_attention(*(t[:, :, h:h + 1].float().permute(0, 2, 1, 3) for t in (q, k, v)))
             for h in range(q.shape[2])]
    return torch.cat(heads, dim=1).permute(0, 2, 1, 3)


def inputs(tokens: int, heads: int, dim: int, device: str, seed: int = 0):
    """q / k / v shaped as the block's (B, S, H, D), with RMS-normed q / k as Qwen-Image's norm_q / norm_k give
    them, and a few large channels in k (the outliers that per-tensor scales must cover)."""
    g = torch.Generator(device).manual_seed(seed)
    q, k, v = (torch.randn(1, tokens, heads, dim, generator=g, device=device) for _ in range(3))
    k[..., :4] *= 8
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def main() -> None:
    from workbench.fp8_attention import fp8_joint_attention, quantize_per_tensor, sdpa_fp8_cudnn, sdpa_fp8_emulated
    from workbench.perf import joint_attention

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU check: small sizes, emulated kernel only")
    args = p.parse_args()
    res = Results.open(args.out)
    device = "cpu" if args.tiny else "cuda"
    heads, dim = (2, 32) if args.tiny else (24, 128)
    image_tokens = 64 if args.tiny else (1328 // 16) ** 2
    kernel = "fp8_emulated" if args.tiny else "fp8_cudnn"
    timer = (lambda fn: {"median_s": _cpu_time(fn)}) if args.tiny else (lambda fn: cuda_time(fn, warmup=3, repeat=20))

    compiled = torch.compile(lambda q, k, v: fp8_joint_attention(q, k, v, kernel), dynamic=False)
    for text in (128, 77, 205):  # three template lengths: one cuDNN graph each
        tokens = image_tokens + text
        q, k, v = inputs(tokens, heads, dim, device)
        ref = reference(q, k, v)
        row: dict = {"tokens": tokens, "heads": heads, "head_dim": dim}
        t0 = time.perf_counter()
        fp8 = fp8_joint_attention(q, k, v, kernel)
        _sync(device)
        row["first_call_s"] = time.perf_counter() - t0  # the cuDNN graph build for this shape
        bf16 = joint_attention(q, k, v)
        quantized = [quantize_per_tensor(t) for t in (q, k, v)]
        emulated = (sdpa_fp8_emulated(*(x for x, _ in quantized), *(d for _, d in quantized)).float() * quantized[2][1])
        row["rel_l2_vs_fp32"] = {"bf16_sdpa": rel_l2(bf16, ref), kernel: rel_l2(fp8, ref), "fp8_emulated": rel_l2(emulated, ref)}
        row["rel_l2_fp8_vs_emulated"] = rel_l2(fp8, emulated)
        row["time"] = {"bf16_sdpa": timer(lambda: joint_attention(q, k, v)),
                       f"{kernel}_eager": timer(lambda: fp8_joint_attention(q, k, v, kernel))}
        if not args.tiny:
            row["time"]["fp8_cudnn_kernel_only"] = timer(lambda: sdpa_fp8_cudnn(*(x for x, _ in quantized), *(d for _, d in quantized)))
        compiled(q, k, v)
        row["time"][f"{kernel}_compiled"] = timer(lambda: compiled(q, k, v))
        flops = 4 * tokens * tokens * heads * dim
        row["tflops"] = {name: flops / t["median_s"] / 1e12 for name, t in row["time"].items()}
        res.put(f"attention/text{text}", row)


def _cpu_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
