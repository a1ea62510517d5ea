"""Where a fresh process's first generation goes: imports, model build, the first ``generate`` (compile,
Triton, autotuning, with a cold or warm compile cache) under cProfile, and a second ``generate`` for
comparison. Issue 16's warm-start and cold-fp8 targets are read from these phases.

Usage (GPU machine), one process per line:
    python benchmarks/profile_first_call.py --precision fp8_torchao --clear-cache --out $OUT/fp8_cold
    python benchmarks/profile_first_call.py --precision fp8_torchao --out $OUT/fp8_warm
Writes ``<out>.json`` (phases, Dynamo / Inductor counters) and ``<out>.txt`` (cProfile of the first generate).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import sync  # noqa: E402

PROMPT = "a red fox in the snow, photographed at dusk"


def counters() -> dict:
    from torch._dynamo.utils import counters as c

    return {group: {k: int(v) for k, v in values.items()} for group, values in c.items() if values}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, help="path prefix: writes <out>.json and <out>.txt")
    p.add_argument("--precision", default="fp8_torchao")
    p.add_argument("--perf", default="fast")
    p.add_argument("--size", type=int, default=1328)
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--clear-cache", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="time only (cProfile slows Python-bound compile)")
    p.add_argument("--dry-run-tiny", action="store_true")
    args = p.parse_args()
    from workbench.compiling import cache_dir, clear_cache
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench

    imports = time.perf_counter() - START
    if args.clear_cache:
        clear_cache()
    if args.dry_run_tiny:
        overrides = ["height=64", "width=64", "experiment=lightning_8step", f"prompts=[{PROMPT!r}]", *args.override]
    else:
        overrides = ["model=random_full", "device=cuda", f"height={args.size}", f"width={args.size}",
                     "experiment=lightning_8step", f"precision={args.precision}", f"perf={args.perf}",
                     f"prompts=[{PROMPT!r}]", *args.override]
    phases = {"imports_s": imports}
    t = time.perf_counter()
    cfg = to_run_config(compose(overrides))
    phases["compose_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bench = Workbench.from_config(cfg)
    sync()
    phases["build_s"] = time.perf_counter() - t
    prof = None if args.no_profile else cProfile.Profile()
    t = time.perf_counter()
    if prof:
        prof.enable()
    first = bench.generate(cfg, progress=False)[0]
    sync()
    if prof:
        prof.disable()
    phases["first_generate_s"] = time.perf_counter() - t
    phases["first_stages"] = first.timings
    phases["first_compile"] = bench.last_compile
    phases["first_latents_abs_sum"] = float(first.latents.double().abs().sum())  # same code path, same numbers
    bench.clear_conditioning_cache()
    t = time.perf_counter()
    second = bench.generate(cfg, progress=False)[0]
    sync()
    phases["second_generate_s"] = time.perf_counter() - t
    phases["second_stages"] = second.timings
    phases["since_start_s"] = time.perf_counter() - START
    from torch._dynamo.utils import compile_times

    out = {"command": " ".join(sys.argv), "overrides": overrides, "torch": torch.__version__,
           "cache_dir": str(cache_dir()), "phases": phases, "counters": counters(),
           "compile_times": compile_times(repr="str", aggregate=True)}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2, default=str))
    if prof:
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("cumulative").print_stats(90)
        stats.sort_stats("tottime").print_stats(50)
        Path(args.out + ".txt").write_text(buf.getvalue())
    print(json.dumps(phases, default=str))


if __name__ == "__main__":
    main()
