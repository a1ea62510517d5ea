"""GPU benchmark, part 4: the origin notes' table, re-measured on our hardware for our configurations.

configuration | peak VRAM | first generation (models built, load included) | second generation
(models resident), for bf16, fp8 weight storage and fp8 compute (torchao + perf=fast), each without
LoRA and with an 8-step Lightning-style LoRA (rank 64 on every linear layer of the 60 blocks, random
values: speed does not depend on them) applied through hooks (uncompiled) or fused (perf=fast), on
the whole GPU and under a 22 GB budget (``set_per_process_memory_fraction``, set after the random
weights are drawn on the GPU, so the budget rows' peak is the generation's). Real sizes, random
weights (model=random_full), 1328x1328, 8 steps, cfg 1. No LoRA row for fp8 compute + perf=fast:
hooks cannot run compiled and fusing would drop the quantisation; fusing is also refused on
fp8-stored weights.

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
        'prompts=["a red fox in the snow, photographed at dusk"]']  # quoted: one prompt, not two


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


# label -> (overrides, LoRA mode, GPU memory budget in GB or None). Rows run in this order; the model
# cache keeps a precision's models between its rows, and free_models() releases them at a change.
ROWS = {
    "bf16": (["precision=bf16"], "none", None),
    "bf16_lora_hooks": (["precision=bf16"], "hooks", None),
    "bf16_fast": (["precision=bf16", "perf=fast"], "none", None),
    "bf16_fast_lora_fused": (["precision=bf16", "perf=fast"], "fused", None),  # hooks cannot run compiled
    "fp8_storage": (["precision=fp8_e4m3fn"], "none", None),
    "fp8_storage_lora_hooks": (["precision=fp8_e4m3fn"], "hooks", None),
    "fp8_compute_fast": (["precision=fp8_torchao", "perf=fast"], "none", None),
    "fp8_storage_group_offload_22GB": (["precision=fp8_e4m3fn", "precision.memory=group_offload"], "none", 22),
    "fp8_storage_group_offload_22GB_lora_hooks": (["precision=fp8_e4m3fn", "precision.memory=group_offload"], "hooks", 22),
    "bf16_group_offload_22GB": (["precision=bf16", "precision.memory=group_offload"], "none", 22),
    # issue 19: the text encoder's placement / storage under the same 22 GB budget (the DiT streamed in fp8)
    "fp8_storage_group_offload_22GB_encoder_fp8": (
        ["precision=fp8_e4m3fn", "precision.memory=group_offload", "precision.text_encoder_storage=float8_e4m3fn"],
        "none", 22),
    "fp8_storage_group_offload_22GB_encoder_fp8_resident": (
        ["precision=fp8_e4m3fn", "precision.memory=group_offload", "precision.text_encoder_storage=float8_e4m3fn",
         "precision.encoder_memory=resident"], "none", 22),
    "fp8_storage_group_offload_22GB_encode_on_cpu": (
        ["precision=fp8_e4m3fn", "precision.memory=group_offload", "precision.encoder_memory=cpu"], "none", 22),
}


def encoder_bytes(text_encoder) -> int:
    """Bytes of the encoder's weights as stored (fp8 storage: one byte each), the LM head left out (never run)."""
    from workbench.encoder_memory import inner_model

    return sum(p.numel() * p.element_size() for p in inner_model(text_encoder).parameters())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated row labels: " + ", ".join(ROWS))
    p.add_argument("--lora", default="/tmp/lightning_like_rank64.safetensors")
    p.add_argument("--dry-run-tiny", action="store_true", help="check the script on a CPU with the tiny model")
    args = p.parse_args()
    if args.dry_run_tiny:
        BASE[:] = ["height=64", "width=64", "sampler=lightning"]
    from workbench.config import compose, to_run_config
    from workbench.models.tiny import build_transformer
    from workbench.models.build import free_models
    from workbench.pipeline import Workbench

    res = Results.open(args.out, base=BASE)
    cuda = torch.cuda.is_available()
    previous = None
    for label in args.rows.split(","):
        overrides, lora, budget = ROWS[label]
        if not Path(args.lora).is_file() and lora != "none":
            cfg = to_run_config(compose(BASE + overrides))
            with torch.device("meta"):  # only the linear layers' shapes are needed
                shapes = build_transformer(cfg.model)
            pairs = write_random_lora(shapes, Path(args.lora))
            res.put("lora_file", {"pairs": pairs, "rank": 64, "gb": Path(args.lora).stat().st_size / 1e9})
        extra = [] if lora == "none" else [f"lora.items=[{{file: {args.lora}, strength: 1.0}}]",
                                           f"lora.fuse={'true' if lora == 'fused' else 'false'}"]
        cfg = to_run_config(compose(BASE + overrides + extra))
        if (cfg.precision, cfg.perf) != previous:  # a new model set: the old one must not count in this row's peak
            free_models()
            previous = (cfg.precision, cfg.perf)
        for run in ("first", "second"):
            try:
                sync()
                t0 = time.perf_counter()
                bench = Workbench.from_config(cfg)
                sync()
                build = time.perf_counter() - t0
                if cuda:
                    if budget is not None:  # random weights are drawn on the GPU: the budget starts after that
                        total = torch.cuda.get_device_properties(0).total_memory
                        torch.cuda.set_per_process_memory_fraction(budget * 1e9 / total)
                    torch.cuda.reset_peak_memory_stats()
                bench.clear_conditioning_cache()
                sync()
                tg = time.perf_counter()
                out = bench.generate(cfg, progress=False)[0]
                sync()
                encoder_gb = encoder_bytes(bench.components.text_encoder) / 1e9
                res.put(f"{label}/{run}_generation", {
                    "total_s": time.perf_counter() - t0, "build_or_lookup_s": build,
                    "generate_wall_s": time.perf_counter() - tg,
                    **{f"{k}_s": v for k, v in out.timings.items()}, "budget_gb": budget,
                    "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                    "encoder_placement": cfg.precision.encoder_placement.value, "encoder_weights_gb": encoder_gb,
                    # a streamed encoder moves all its weights per prompt: the host-to-device rate it reached
                    "encoder_h2d_gb_s": (encoder_gb / out.timings["encode"]
                                         if cfg.precision.encoder_placement.value == "stream" else None)})
            except Exception as err:  # record it and go on with the other rows
                res.put(f"{label}/{run}_generation", {"error": repr(err)[:800]})
            finally:
                bench = out = None
                if cuda:
                    torch.cuda.set_per_process_memory_fraction(1.0)
    Path(args.lora).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
