"""One image on two GPUs: diffusers' context parallelism (Ulysses) for the Qwen-Image transformer.

Run on a 2-GPU machine:  torchrun --nproc_per_node=2 benchmarks/bench_context_parallel.py --out cp.json
Rank 0 first times the plain single-GPU forward (the baseline, same process, same card), then both
ranks enable ``ContextParallelConfig(ulysses_degree=2)`` and time the split forward; rank 0 writes
the times and the max difference between the two outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import Results, build_transformer, cuda_time, inputs, stock_forward  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="1024,1328")
    args = p.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    from diffusers import ContextParallelConfig

    res = Results.open(args.out, gpus=world)
    model = build_transformer()  # same seed on every rank -> identical weights
    model.set_attention_backend("_native_cudnn")  # a backend with context-parallel support
    sizes = [int(s) for s in args.sizes.split(",")]
    refs = {}
    with torch.no_grad():
        for size in sizes:
            lat, emb, shape = inputs(size, size)
            refs[size] = stock_forward(model, lat, emb, shape).float()
            if rank == 0:
                res.put(f"single_gpu/forward/{size}", cuda_time(lambda: stock_forward(model, lat, emb, shape), repeat=3))
        dist.barrier()
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
        for size in sizes:
            lat, emb, shape = inputs(size, size)
            try:
                out = stock_forward(model, lat, emb, shape).float()
                r = cuda_time(lambda: stock_forward(model, lat, emb, shape), repeat=3)
                r["max_abs_diff_vs_single"] = (out - refs[size]).abs().max().item()
                r["rel_l2_vs_single"] = ((out - refs[size]).norm() / refs[size].norm()).item()
            except Exception as err:  # e.g. a sequence length not divisible by the degree
                r = {"error": repr(err)[:800]}
            if rank == 0:
                res.put(f"ulysses{world}/forward/{size}", r)
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    main()
