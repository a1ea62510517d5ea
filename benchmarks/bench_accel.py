"""GPU benchmark of issue 16.4: the ``accel`` cache hooks at full size, through the sweep engine.

One sweep over ``accel=none,first_block,taylorseer,pyramid_attention`` (plus TaylorSeer's interval
and FirstBlockCache's threshold, with ``--knobs``) at 1328x1328, 20 steps, cfg 1, ``model=random_full``
(real sizes, random weights), bf16 (or ``--precision``), fused attention without compile. ``--compiled`` adds the methods whose
hooks wrap whole blocks (``first_block``, ``taylorseer`` at ``accel.granularity=block``) under
``perf.compile=regional``, where the compiled blocks run beneath the hooks, and TaylorSeer's two granularities
uncompiled. A warm-up cell runs first. Per cell: denoise seconds, speed-up, PSNR / SSIM and
latent rel. L2 vs ``accel=none``.

Random weights show the real speed of the schedule-based methods only (``taylorseer``,
``pyramid_attention``): ``first_block`` skips when the first block's residual barely moves, which
depends on the trained weights; its speed here is NOT what a trained checkpoint gives (the JSON says
so per method). Quality numbers on random weights mean nothing; the trained tiny model's are in
notebooks/07_acceleration_frontier.ipynb.

Usage (GPU machine):  python benchmarks/bench_accel.py --out $OUT/accel.json [--knobs] [--compiled]
CPU check of the script itself:  python benchmarks/bench_accel.py --tiny --out /tmp/accel.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEIGHT_DEPENDENT = {"none": False, "first_block": True, "taylorseer": False, "pyramid_attention": False}
PROMPT = "a red fox in the snow, photographed at dusk"


def base(tiny: bool, steps: int, precision: str) -> list[str]:
    if tiny:
        return ["sampler.steps=8", f"prompts=[{PROMPT!r}]"]
    return ["model=random_full", "device=cuda", "height=1328", "width=1328", f"precision={precision}",
            "perf.fast_attention=true", f"sampler.steps={steps}", f"prompts=[{PROMPT!r}]"]


def sweep_rows(axes: list[str], overrides: list[str], folder: Path) -> list[dict]:
    from workbench.sweep import Sweep

    result = Sweep.plan(axes, base=overrides, out_dir=folder, metrics=["psnr", "ssim"]).run(progress=False)
    rows = []
    for row in result.table.reset_index().to_dict("records"):
        method = row.get("accel") or overrides[-1].split("=", 1)[1]
        rows.append({k: row.get(k) for k in ("cell", "accel", "accel.threshold", "accel.cache_interval",
                                              "accel.granularity", "status",
                                              "denoise_s", "speedup_vs_0", "work_speedup", "psnr_vs_0", "ssim_vs_0",
                                              "latent_rel_l2_vs_0", "peak_mem_mb", "error") if k in row}
                    | {"skips_depend_on_weights": WEIGHT_DEPENDENT.get(str(method))})
    return rows


def meta() -> dict:
    """Where and how this file was made (the command, the device, the versions)."""
    import time

    import diffusers
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"command": " ".join(["python", *sys.argv]), "device": device, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precision", default="bf16", help="e.g. fp8_torchao: the methods on fp8 compute")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model: checks the script, not the speed")
    parser.add_argument("--knobs", action="store_true", help="also sweep taylorseer intervals / first_block thresholds")
    parser.add_argument("--compiled", action="store_true",
                        help="also the block-level methods under perf.compile=regional, and TaylorSeer's granularities")
    args = parser.parse_args()
    overrides = base(args.tiny, args.steps, args.precision)
    folder = Path(tempfile.mkdtemp(prefix="bench-accel-"))
    sweep_rows(["sampler.steps=2"], overrides[:-2] + overrides[-1:], folder / "warm-up")
    report = {"base": overrides, "methods": sweep_rows(
        ["accel=none,first_block,taylorseer,pyramid_attention"], overrides, folder / "methods")}
    if args.knobs:  # each knob sweep has its own accel=none-free cells: compare them to the methods' none cell by hand
        report["first_block"] = sweep_rows(["accel.threshold=0.05,0.1,0.2,0.3"], overrides + ["accel=first_block"],
                                           folder / "first_block")
        report["taylorseer"] = sweep_rows(["accel.cache_interval=2,3,4,6"], overrides + ["accel=taylorseer"],
                                          folder / "taylorseer")
    if args.compiled:  # the compiled none cell is this sweep's own reference (compile changes the numbers slightly)
        report["taylorseer_granularity"] = sweep_rows(["accel.granularity=attention,block"],
                                                      overrides + ["accel=taylorseer"], folder / "granularity")
        compiled = overrides + ["perf.compile=regional", "accel.granularity=block"]
        warm = [o for o in compiled if not o.startswith("sampler.steps=")]  # compiles once, before the timed cells
        # the compiled build is another 53 GiB: on an 80 GB card building it releases the eager one (models.build)
        sweep_rows(["sampler.steps=2"], warm, folder / "warm-up-compiled")
        report["compiled"] = sweep_rows(["accel=none,first_block,taylorseer"], compiled, folder / "compiled")
    args.out.write_text(json.dumps({"meta": meta(), "results": report}, indent=1, default=str) + "\n")
    print(json.dumps(report["methods"], indent=1, default=str))


if __name__ == "__main__":
    main()
