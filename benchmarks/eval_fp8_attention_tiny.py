"""The quality cost of fp8 attention on the trained tiny model (CPU): the evaluation's held-out prompts drawn with
``perf.attention_kernel=sdpa`` and ``fp8_emulated`` (cuDNN's fp8 arithmetic in torch ops: the same per-tensor
scales, P at 448, O in fp8), scored from pixels (caption adherence) and against each other (PSNR).

Usage: python benchmarks/eval_fp8_attention_tiny.py --out benchmarks/results/tiny_fp8_attention_quality.json [--n 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from workbench import metrics
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench
    from workbench.training import world
    from workbench.training.evaluate import eval_scenes

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=64, help="eval prompts (a quarter of them held-out pairs)")
    args = p.parse_args()
    scenes = eval_scenes(args.n - args.n // 4, args.n // 4)
    prompts = [world.caption_long(s) for s in scenes]
    images: dict[str, list[np.ndarray]] = {}
    t0 = time.time()
    for kernel in ("sdpa", "fp8_emulated"):
        images[kernel] = []
        for i, prompt in enumerate(prompts):  # one prompt per run: the fp8 kernels take no padding mask
            cfg = to_run_config(compose(["model=tiny", "device=cpu", "perf=fast", "perf.compile=none",
                                         f"perf.attention_kernel={kernel}", f"seeds=[{i}]"]))
            cfg.prompts = [prompt]
            images[kernel].append(np.asarray(Workbench.from_config(cfg).generate(cfg, progress=False)[0].image))
    result = {"command": " ".join(sys.argv), "python": platform.python_version(), "prompts": len(prompts),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - t0, 1), "kernels": {}}
    for kernel, imgs in images.items():
        scores = [metrics.score(img, cap) for img, cap in zip(imgs, prompts)]
        result["kernels"][kernel] = {"adherence": metrics.adherence(scores), "per_attribute": metrics.accuracy(scores)}
    psnr = [metrics.psnr(a, b) for a, b in zip(images["sdpa"], images["fp8_emulated"])]
    finite = [x for x in psnr if np.isfinite(x)]
    result["fp8_vs_sdpa"] = {"psnr_db_median": float(np.median(finite)) if finite else None,
                             "psnr_db_min": float(min(finite)) if finite else None,
                             "identical_images": len(psnr) - len(finite),
                             "max_abs_pixel_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max()
                                                       for a, b in zip(images["sdpa"], images["fp8_emulated"])))}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
