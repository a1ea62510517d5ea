"""GPU benchmark, part 2: fp8 compute, the 24 GB budget mode, single-file load speed, and the
stock-vs-workbench end-to-end latent check, in ONE process on the GPU machine.

Usage:  python benchmarks/bench_memory_load.py --out $OUT/bench_part2.json [--skip-load]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import E2E, Results, build_transformer, cuda_time, inputs, stock_forward, uncompile  # noqa: E402

SIZE = 1328


def free(*objs) -> None:
    for o in objs:
        del o
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--file", default="/tmp/qwen_image_bf16.safetensors")
    args = p.parse_args()
    res = Results.open(args.out)
    model = build_transformer()
    latents, embeds, shape = inputs(SIZE, SIZE)
    with torch.no_grad():
        ref = stock_forward(model, latents, embeds, shape).float()
        res.put(f"stock/forward/{SIZE}/cfg1", cuda_time(lambda: stock_forward(model, latents, embeds, shape), repeat=3))

    # end-to-end latents: stock pipeline vs workbench stages, 8 steps cfg 1 (noise drawn like diffusers)
    if not args.skip_e2e:
        e2e = E2E(model)
        e2e.CASES = (("8step_cfg1", 8, 1.0),)
        e2e.stock(res)
        e2e.ours(res, "eager", model)
        e2e = None
        free()

    # single-file checkpoint: write the bf16 weights as one .safetensors, drop the page cache, load it
    if not args.skip_load:
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.file)
        size_gb = os.path.getsize(args.file) / 1e9
        res.put("single_file/write", {"seconds": time.perf_counter() - t0, "size_gb": size_gb})
        model = None
        free()
        dropped = subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=False).returncode == 0
        from workbench.config import ModelConfig
        from workbench.loading.discover import entry_for
        from workbench.loading.load import load_transformer

        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loaded = load_transformer(entry_for(Path(args.file), Path(args.file).name), ModelConfig(),
                                  torch.device("cuda"), torch.bfloat16)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        model = loaded.module.eval().requires_grad_(False)
        with torch.no_grad():
            out = stock_forward(model, latents, embeds, shape).float()
        res.put("single_file/cold_load", {"seconds": secs, "size_gb": size_gb, "gb_per_s": size_gb / secs,
                                          "max_abs_diff_forward_vs_built": (out - ref).abs().max().item(),
                                          "page_cache_dropped": dropped,
                                          "report": {k: str(v) for k, v in loaded.report.items()}})
        os.remove(args.file)
        loaded = None

    # fp8 compute: torchao rowwise dynamic float8 on the fast attention processor + regional compile
    from workbench.config import CompileMode, PerfConfig
    from workbench.perf import apply_perf
    from workbench.precision import _quantize_fp8_torchao

    try:
        _quantize_fp8_torchao(model)
        fwd = apply_perf(model, PerfConfig(fast_attention=True, compile=CompileMode.regional))
        with torch.no_grad():
            t0 = time.perf_counter()
            out = stock_forward(fwd, latents, embeds, shape).float()
            first = time.perf_counter() - t0
            r = cuda_time(lambda: stock_forward(fwd, latents, embeds, shape), repeat=3)
        r.update(first_call_s=first, rel_l2_vs_bf16=((out - ref).norm() / ref.norm()).item(),
                 peak_gb=torch.cuda.max_memory_allocated() / 1e9)
        res.put(f"workbench/forward/{SIZE}/cfg1/fp8_torchao_fast_regional", r)
    except Exception as err:
        res.put("workbench/forward/error/fp8_torchao", {"error": repr(err)[:1500]})
    uncompile(model)
    model = fwd = None
    free()

    # 24 GB budget: fp8 weight storage (bf16 compute) + block-level group offload with CUDA streams
    from diffusers.hooks import apply_group_offloading

    model = build_transformer()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    model.to("cpu")
    free()
    apply_group_offloading(model, onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    torch.cuda.set_per_process_memory_fraction(22e9 / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = stock_forward(model, latents, embeds, shape).float()
        r = cuda_time(lambda: stock_forward(model, latents, embeds, shape), warmup=1, repeat=3)
    r.update(peak_gb=torch.cuda.max_memory_allocated() / 1e9, rel_l2_vs_bf16=((out - ref).norm() / ref.norm()).item(),
             budget_gb=22)
    res.put(f"workbench/forward/{SIZE}/cfg1/fp8_storage_group_offload_22GB", r)


if __name__ == "__main__":
    main()
