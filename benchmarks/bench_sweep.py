"""GPU benchmark, part 3: the whole workbench path at full size (model=random_full, bf16).

- first generation (models built, load included) vs second generation (models resident);
- a 3x3 sweep (steps x cfg) through the sweep engine: wall time vs the sum of its cells' compute
  (references + encode + latents + denoise + decode, synchronised), i.e. the engine's overhead.

Usage (GPU machine):  python benchmarks/bench_sweep.py --out $OUT/bench_sweep.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import Results, sync  # noqa: E402

BASE = ["model=random_full", "precision=bf16", "device=cuda", "height=1024", "width=1024",
        'prompts=["a red fox in the snow, photographed at dusk"]']  # quoted: one prompt, not two
STAGES = ("references", "encode", "latents", "denoise", "decode")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--sweep-dir", default="/tmp/wb-sweep")
    p.add_argument("--dry-run-tiny", action="store_true", help="check the script on a CPU with the tiny model")
    args = p.parse_args()
    if args.dry_run_tiny:
        BASE[:] = ["height=64", "width=64"]
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench
    from workbench.sweep import Sweep

    res = Results.open(args.out, base=BASE)
    cfg = to_run_config(compose(BASE + ["sampler.steps=8"]))
    for label in ("first_generation_load_included", "second_generation_models_resident"):
        sync()
        t0 = time.perf_counter()
        bench = Workbench.from_config(cfg)
        sync()
        load = time.perf_counter() - t0
        bench.clear_conditioning_cache()  # the second generation re-encodes: only the models stay resident
        sync()
        tg = time.perf_counter()
        out = bench.generate(cfg, progress=False)[0]
        sync()
        total = time.perf_counter() - t0
        out.timings["generate_wall"] = time.perf_counter() - tg  # vs the sum of its stages: untimed work
        res.put(f"workbench/{label}/1024/8step_cfg1", {"total_s": total, "build_or_lookup_s": load,
                                                       **{f"{k}_s": v for k, v in out.timings.items()},
                                                       "peak_gb": torch.cuda.max_memory_allocated() / 1e9
                                                       if torch.cuda.is_available() else None})

    import shutil

    shutil.rmtree(args.sweep_dir, ignore_errors=True)  # a cold cache: every cell runs
    t0 = time.perf_counter()
    sweep = Sweep.plan(["sampler.steps=4,6,8", "sampler.cfg=1.0,2.0,3.0"], base=BASE, out_dir=args.sweep_dir)
    plan = time.perf_counter() - t0
    result = sweep.run(progress=False)
    wall = time.perf_counter() - t0  # planning (composition + validation) included
    done = [r for r in result.cells if r is not None and r.status == "ok"]
    compute = sum(sum(r.timings.get(k, 0.0) for k in STAGES) for r in done)
    res.put("workbench/sweep_3x3/1024", {
        "wall_s": wall, "plan_s": plan, "cells_compute_s": compute, "overhead_ratio": wall / compute,
        "cells_ok": len(done), "stats": result.stats,
        "per_cell_total_s": [round(r.timings.get("total", 0.0), 3) for r in done],
    })


if __name__ == "__main__":
    main()
