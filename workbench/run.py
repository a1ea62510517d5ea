"""``workbench run``: one config in, images + ``record.json`` out. A plain function tests import."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from workbench import record as rec
from workbench.config.compose import to_run_config
from workbench.pipeline import Workbench


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def run(cfg: DictConfig, output_dir: Path, progress: bool = True) -> Path:
    """Generate every image of ``cfg`` into ``output_dir``; returns the path of ``record.json``."""
    run_cfg = to_run_config(cfg)  # typed + validated before anything heavy happens
    resolved = OmegaConf.to_container(cfg, resolve=True)
    started = time.perf_counter()
    bench = Workbench.from_config(run_cfg)
    load_s = time.perf_counter() - started
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)

    results = bench.generate(run_cfg, progress=progress)

    output_dir = Path(output_dir)
    base = {"config": resolved, **rec.provenance(bench, run_cfg, resolved)}
    entries = []
    for i, r in enumerate(results):
        name = f"images/{i:03d}-seed{r.seed}-{_slug(r.prompt)}.png"
        entry = {
            "file": name,
            "prompt": r.prompt,
            "negative_prompt": run_cfg.negative_prompt if run_cfg.sampler.cfg > 1 else None,
            "seed": r.seed,
            "reference_sha256": [x["sha256"] for x in base["reference_images"]],
            "width": r.image.width,
            "height": r.image.height,
            "timings_s": {k: round(v, 6) for k, v in r.timings.items()},
            "notes": r.notes,
        }
        rec.save_png(output_dir / name, r.image, base | {"image": entry})
        entries.append(entry)

    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **base,
        "model_load_s": round(load_s, 6),
        "total_s": round(time.perf_counter() - started, 6),
        "peak_memory": rec.peak_memory(bench.device),
        "images": entries,
    }
    path = output_dir / "record.json"
    rec.atomic_write_json(path, record)
    return path
