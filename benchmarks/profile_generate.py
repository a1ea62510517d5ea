"""Where the wall time of one ``Workbench.generate`` goes (cProfile), models resident, conditioning
re-encoded: finds work that none of the stage timings covers.

Usage (GPU machine):  python benchmarks/profile_generate.py [overrides...] > profile.txt
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import sync  # noqa: E402


def main() -> None:
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench

    overrides = sys.argv[1:] or ["model=random_full", "precision=bf16", "device=cuda", "height=1024", "width=1024",
                                 "sampler=lightning", 'prompts=["a red fox in the snow, photographed at dusk"]']  # quoted: one prompt, not two
    cfg = to_run_config(compose(overrides))
    bench = Workbench.from_config(cfg)
    bench.generate(cfg, progress=False)
    bench.clear_conditioning_cache()
    sync()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    out = bench.generate(cfg, progress=False)[0]
    sync()
    prof.disable()
    print(f"generate wall {time.perf_counter() - t0:.3f} s; stages {out.timings}")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
