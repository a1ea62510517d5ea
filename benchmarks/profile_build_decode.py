"""Two parts of a generation no stage timing explains: where ``Workbench.from_config`` spends its seconds
(cProfile; random full-size weights drawn on the GPU), and how fast the VAE decodes a 1328x1328 latent
with cuDNN's default algorithm choice, as 2-D convolutions (``perf.vae_single_frame``), with ``cudnn.benchmark``
and with a compiled decoder.

Usage (GPU machine):  python benchmarks/profile_build_decode.py --out $OUT/build_decode
Writes ``<out>.json`` and ``<out>.txt`` (the build's cProfile).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import sync  # noqa: E402


def timed(fn, repeat: int = 5) -> dict:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t)
    return {"first_s": round(first, 4), "median_s": round(sorted(runs)[len(runs) // 2], 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--precision", default="fp8_torchao")
    p.add_argument("--size", type=int, default=1328)
    p.add_argument("--dry-run-tiny", action="store_true")
    args = p.parse_args()
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench
    from workbench.stages.decode import decode, to_pil, to_uint8
    from workbench.vae_frames import set_vae_single_frame

    size = 64 if args.dry_run_tiny else args.size
    overrides = ([] if args.dry_run_tiny else ["model=random_full", "device=cuda", f"precision={args.precision}"])
    cfg = to_run_config(compose(overrides + [f"height={size}", f"width={size}"]))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    bench = Workbench.from_config(cfg)
    sync()
    prof.disable()
    out = {"command": " ".join(sys.argv), "build_s": round(time.perf_counter() - t, 3)}
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(70)
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    Path(args.out + ".txt").write_text(buf.getvalue())

    vae = bench.components.vae
    device = next(vae.parameters()).device
    h = w = size // 8
    tokens = torch.randn(1, (h // 2) * (w // 2), 64, generator=torch.Generator().manual_seed(0)).to(device)
    set_vae_single_frame(vae, False)  # stock diffusers' 3-D convolutions first
    images = decode(vae, tokens, h, w)
    decodes = {"default": timed(lambda: decode(vae, tokens, h, w))}
    decodes["to_pil_cpu"] = timed(lambda: to_pil(images))
    set_vae_single_frame(vae, True)
    decodes["single_frame"] = timed(lambda: decode(vae, tokens, h, w))
    single = decode(vae, tokens, h, w)
    decodes["single_frame_max_abs_diff"] = float((single - images).abs().max())
    decodes["single_frame_rel_l2"] = float((single - images).norm() / images.norm())

    def levels(x: torch.Tensor) -> torch.Tensor:  # what to_pil writes, signed for differences
        return to_uint8(x).to(torch.int16)

    decodes["single_frame_uint8_max_diff"] = int((levels(single) - levels(images)).abs().max())
    # which of the two bf16 decodes is nearer the float32 one (the 3-D form, as diffusers runs it)
    vae32 = copy.deepcopy(vae).float()
    set_vae_single_frame(vae32, False)
    exact = decode(vae32, tokens.float(), h, w)
    del vae32
    for name, out_ in (("default", images), ("single_frame", single)):
        decodes[f"{name}_rel_l2_vs_float32"] = float((out_ - exact).norm() / exact.norm())
        decodes[f"{name}_uint8_max_diff_vs_float32"] = int((levels(out_) - levels(exact)).abs().max())
    set_vae_single_frame(vae, False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        decodes["cudnn_benchmark"] = timed(lambda: decode(vae, tokens, h, w))
        set_vae_single_frame(vae, True)
        decodes["cudnn_benchmark_single_frame"] = timed(lambda: decode(vae, tokens, h, w))
        set_vae_single_frame(vae, False)
        torch.backends.cudnn.benchmark = False
        vae.decoder.compile(fullgraph=False, dynamic=False)
        reference = images
        decodes["compiled_decoder"] = timed(lambda: decode(vae, tokens, h, w))
        compiled = decode(vae, tokens, h, w)
        decodes["compiled_max_abs_diff"] = float((compiled - reference).abs().max())
    out["decode"] = decodes
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
