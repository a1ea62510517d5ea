"""perf.precompile on the CPU (tiny model, Inductor's C++ backend): a new process's first forward with the saved
trace vs Dynamo's regional compile (cold and warm compile cache), and the per-forward time of both once compiled.

Usage (any machine; ~2 min on 2 cores):
    python benchmarks/bench_precompile_cpu.py --out benchmarks/results/cpu_precompile.json
Each measurement of a first forward is its own process (``--child``), so imports and caches are a new process's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(precompile: bool) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import test_precompiled as t  # its tiny-model builder and inputs (the tests' own)

    from workbench.compiling import CompileCounts
    from workbench.config import CompileMode, PerfConfig

    torch.set_num_threads(1)
    perf = PerfConfig(fast_attention=True, compile=CompileMode.regional, precompile=precompile)
    model = t._build(perf)
    start = time.perf_counter()
    t._forward(model, 9)
    first = time.perf_counter() - start
    inputs = t._inputs(9)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(200):
            model(**inputs)
    steady_ms = (time.perf_counter() - start) / 200 * 1e3
    counts = CompileCounts.now().as_record()
    return {"first_forward_s": round(first, 3), "forward_ms": round(steady_ms, 3), "compile": counts}


def run_child(precompile: bool, cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--child"] + (["--precompile"] if precompile else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--child", action="store_true")
    p.add_argument("--precompile", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.precompile)))
        return
    import torch

    results = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    for name, precompile in (("regional", False), ("precompile", True)):
        with tempfile.TemporaryDirectory() as cache:
            results[name] = {"cold": run_child(precompile, cache), "warm": run_child(precompile, cache),
                             "warm_2": run_child(precompile, cache)}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
