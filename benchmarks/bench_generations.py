"""GPU benchmark, part 4: the origin notes' table, re-measured on our hardware for our configurations.

configuration | peak VRAM | first generation (models built, load included) | second generation
(models resident), for bf16 and fp8 weight storage, each without LoRA and with an 8-step
Lightning-style LoRA (rank 64 on every linear layer of the 60 blocks, random values: speed does not
depend on them) applied through hooks or fused. Real sizes, random weights (model=random_full),
1328x1328, 8 steps, cfg 1.

Usage (GPU machine):  python benchmarks/bench_generations.py --out $OUT/generations.json
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

BASE = ["model=random_full", "device=cuda", "height=1328", "width=1328", "sampler=lightning",
        "prompts=[a red fox in the snow, photographed at dusk]"]


def write_random_lora(transformer, path: Path, rank: int = 64) -> int:
    """A diffusers-format LoRA on every nn.Linear of the transformer blocks; returns its pair count."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks."):
            tensors[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=g) * 0.01).bfloat16()
            tensors[f"transformer.{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=g) * 0.01).bfloat16()
    save_file(tensors, str(path))
    return len(tensors) // 2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--lora", default="/tmp/lightning_like_rank64.safetensors")
    p.add_argument("--dry-run-tiny", action="store_true", help="check the script on a CPU with the tiny model")
    args = p.parse_args()
    if args.dry_run_tiny:
        BASE[:] = ["height=64", "width=64", "sampler=lightning"]
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench, free_models

    res = Results.open(args.out, base=BASE)
    lora_written = False
    bench = out = None
    for precision in ("bf16", "fp8_e4m3fn"):
        bench = out = None  # drop our own references, or free_models() cannot release the weights
        free_models()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for lora in ("none", "hooks", "fused"):
            extra = [] if lora == "none" else [f"lora.items=[{{file: {args.lora}, strength: 1.0}}]",
                                               f"lora.fuse={'true' if lora == 'fused' else 'false'}"]
            if lora != "none" and not lora_written:
                pairs = write_random_lora(bench.components.transformer, Path(args.lora))
                res.put("lora_file", {"pairs": pairs, "rank": 64, "gb": Path(args.lora).stat().st_size / 1e9})
                lora_written = True
            cfg = to_run_config(compose(BASE + [f"precision={precision}"] + extra))
            for label in ("first", "second"):
                try:
                    sync()
                    t0 = time.perf_counter()
                    bench = Workbench.from_config(cfg)
                    bench.clear_conditioning_cache()
                    out = bench.generate(cfg, progress=False)[0]
                    sync()
                    res.put(f"{precision}/lora_{lora}/{label}_generation", {
                        "total_s": time.perf_counter() - t0, **{f"{k}_s": v for k, v in out.timings.items()},
                        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None})
                except Exception as err:  # record it and go on with the other rows
                    res.put(f"{precision}/lora_{lora}/{label}_generation", {"error": repr(err)[:800]})
    Path(args.lora).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
