"""GPU benchmark: the headline grid of issue 16, a template ablation as researchers run it.

3 templates (qwen_t2i, chat, raw: three text lengths) x 3 seeds at 1328x1328, 8 steps, cfg 1
(``experiment=lightning_8step``), random full-size weights (``model=random_full``), ``perf=fast``,
through the sweep engine. One process measures, in order:

1. ``fresh_process``: from the script's start (imports, model build, compile) to the first grid's end;
   cold or warm compile cache (``--clear-cache`` empties ``workbench cache`` first);
2. ``resident``: the same grid again in a new sweep folder (nothing cached but the models and code);
3. compile counts per cell of both grids, read back from each cell's ``record.json`` (``compile``);
4. ``stock`` (``--stock``): a loop of ``QwenImagePipeline`` calls on the same grid in the same process
   (its template and drop index swapped per template; one warm-up call not counted);
5. the first grid's images, 4x mean-pooled, to ``--images`` (npz) so runs at two precisions can be compared.

Usage (GPU machine), cold then warm cache, one precision per process:
    python benchmarks/bench_headline.py --precision fp8_torchao --clear-cache --stock --out $OUT/a.json
    python benchmarks/bench_headline.py --precision fp8_torchao --out $OUT/b.json
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before torch: a fresh process's time includes its imports

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import Results, build_transformer, sync  # noqa: E402

TEMPLATES = ("qwen_t2i", "chat", "raw")
SEEDS = (0, 1, 2)
PROMPT = "a red fox in the snow, photographed at dusk"


def base(precision: str, tiny: bool, perf: str = "fast", extra: list[str] = ()) -> list[str]:
    if tiny:  # a CPU check of the script itself
        return ["height=64", "width=64", "experiment=lightning_8step", f"prompts=[{PROMPT!r}]", *extra]
    return ["model=random_full", "device=cuda", "height=1328", "width=1328", "experiment=lightning_8step",
            f"precision={precision}", f"perf={perf}", f"prompts=[{PROMPT!r}]", *extra]


def set_budget(overrides: list[str], gb: float) -> None:
    """Build the models first (random weights are drawn on the GPU in bf16, over any 24 GB budget), then cap
    this process's GPU memory at ``gb`` for the grids (issue 19: a 24 GB card's budget mode)."""
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench

    Workbench.from_config(to_run_config(compose(overrides)))  # resident in the process's model cache
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(gb * 1e9 / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.reset_peak_memory_stats()


def run_grid(overrides: list[str], folder: Path) -> tuple[float, dict]:
    from workbench.sweep import Sweep

    shutil.rmtree(folder, ignore_errors=True)
    sync()
    t0 = time.perf_counter()
    sweep = Sweep.plan([f"template={','.join(TEMPLATES)}", f"seeds={','.join(map(str, SEEDS))}"],
                       base=overrides, out_dir=folder)
    plan = time.perf_counter() - t0
    finished: list[float] = []  # when each cell was handed back (its write and the summary come after)
    result = sweep.run(progress=False, on_cell=lambda *_: finished.append(time.perf_counter()))
    sync()
    end = time.perf_counter()
    wall = end - t0
    cells = []
    for cell, res in zip(sweep.cells, result.cells):
        record = json.loads((sweep.cell_dir(cell) / "record.json").read_text())
        cells.append({"cell": cell.label(result.axes), "status": res.status, "total_s": round(res.timings.get("total", 0.0), 3),
                      "denoise_s": round(res.timings.get("denoise", 0.0), 3), "compile": record.get("compile"),
                      # every stage's seconds: what a cell spends besides its forwards (0.09 s in run37: not yet split)
                      "timings_s": {k: round(v, 4) for k, v in res.timings.items()}})
    in_cells = sum(c["total_s"] for c in cells)
    summary = {"wall_s": round(wall, 3), "plan_s": round(plan, 3), "cells_total_s": round(in_cells, 3),
               "outside_cells_s": round(wall - plan - in_cells, 3),
               # from the last cell's return to run()'s: its PNG write, the summary grid / table / sweep.json
               "after_last_cell_s": round(end - finished[-1], 3) if finished else None,
               "stats": result.stats, "cells": cells,
               "graphs_compiled": sum((c["compile"] or {}).get("graphs", 0) for c in cells),
               "cells_that_compiled": sum(1 for c in cells if (c["compile"] or {}).get("graphs", 0))}
    return wall, {"summary": summary, "result": result}


def pooled_images(result) -> np.ndarray:
    out = []
    for res in result.cells:
        a = torch.from_numpy(np.asarray(res.images[0], dtype=np.float32)).permute(2, 0, 1)[None]
        out.append(torch.nn.functional.avg_pool2d(a, 4)[0].permute(1, 2, 0).round().byte().numpy())
    return np.stack(out)


def template_configs(overrides: list[str]) -> dict:
    """Each template's run config, composed before the models are resident (the preflight checks free memory)."""
    from workbench.config import compose, to_run_config

    return {name: to_run_config(compose(overrides + [f"template={name}"])) for name in TEMPLATES}


def stock_loop(cfgs: dict, tiny: bool) -> dict:
    """QwenImagePipeline on the same grid: the workbench's encoder / tokenizer / VAE (back in diffusers' form), a
    stock transformer."""
    from diffusers import QwenImagePipeline

    from workbench.pipeline import Workbench
    from workbench.stages.schedule import make_scheduler
    from workbench.templates import render, tokenize
    from workbench.vae_frames import set_vae_single_frame

    cfg = cfgs[TEMPLATES[0]]
    comps = Workbench.from_config(cfg).components
    set_vae_single_frame(comps.vae, False)  # stock: diffusers' own 3-D convolutions (perf=fast set the 2-D form)
    transformer = comps.transformer if tiny else build_transformer()  # the workbench's is fused + compiled
    pipe = QwenImagePipeline(make_scheduler(cfg.sampler), comps.vae, comps.text_encoder, comps.tokenizer, transformer)
    pipe.set_progress_bar_config(disable=True)
    templates = {}  # name -> (stock template string, drop index), as diffusers' attributes hold them
    for name in TEMPLATES:
        template = cfgs[name].template
        drop = tokenize(comps.tokenizer, render(template, PROMPT, tokenizer=comps.tokenizer)).drop
        templates[name] = (template.text.replace("{prompt}", "{}"), drop)
    calls = [(name, seed) for name in TEMPLATES for seed in SEEDS]

    def call(name, seed):
        pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx = templates[name]
        return pipe(PROMPT, height=cfg.height, width=cfg.width, num_inference_steps=cfg.sampler.steps,
                    true_cfg_scale=1.0, generator=torch.Generator("cpu").manual_seed(seed)).images[0]

    call(*calls[0])  # warm-up (cuDNN plans, allocator), not counted
    sync()
    t0 = time.perf_counter()
    for c in calls:
        call(*c)
    sync()
    return {"wall_s": round(time.perf_counter() - t0, 3), "calls": len(calls)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--perf", default="fast")
    p.add_argument("--override", action="append", default=[], help="another config override (repeatable)")
    p.add_argument("--budget-gb", type=float, help="cap GPU memory at this many GB once the models are built")
    p.add_argument("--clear-cache", action="store_true", help="empty the compile cache first (a cold start)")
    p.add_argument("--stock", action="store_true", help="also time the stock QwenImagePipeline loop")
    p.add_argument("--images", help="write the first grid's images (4x pooled) to this .npz")
    p.add_argument("--sweep-dir", default="/tmp/wb-headline")
    p.add_argument("--dry-run-tiny", action="store_true", help="check the script on a CPU with the tiny model")
    args = p.parse_args()
    from workbench.compiling import cache_dir, cache_size_bytes, clear_cache

    if args.clear_cache:
        clear_cache()
    cache_before = cache_size_bytes()
    overrides = base(args.precision, args.dry_run_tiny, args.perf, args.override)
    res = Results.open(args.out, base=overrides, compile_cache=str(cache_dir()), cache_bytes_at_start=cache_before,
                       budget_gb=args.budget_gb)
    if args.budget_gb and torch.cuda.is_available():
        set_budget(overrides, args.budget_gb)
    imports = time.perf_counter() - START
    cfgs = template_configs(overrides) if args.stock else None
    wall, first = run_grid(overrides, Path(args.sweep_dir) / "first")
    res.put("fresh_process", {"wall_since_process_start_s": round(time.perf_counter() - START, 3),
                              "imports_s": round(imports, 3), "grid_wall_s": round(wall, 3),
                              "cache": "cold" if cache_before == 0 else "warm", **first["summary"]})
    if args.images:
        np.savez_compressed(args.images, images=pooled_images(first["result"]))
    _, second = run_grid(overrides, Path(args.sweep_dir) / "second")
    res.put("resident", second["summary"])
    if torch.cuda.is_available():
        res.put("peak_gb", torch.cuda.max_memory_allocated() / 1e9)
    if args.stock:
        res.put("stock", stock_loop(cfgs, args.dry_run_tiny))


if __name__ == "__main__":
    main()
