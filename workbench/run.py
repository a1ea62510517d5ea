"""``workbench run``: one config in, images + ``record.json`` out. A plain function tests import."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from workbench import record as rec
from workbench.config.compose import to_run_config
from workbench.errors import RunFailure
from workbench.pipeline import Workbench


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def import_model_libraries() -> None:
    """Import the model classes (diffusers / transformers load them lazily, ~1-3 s on first use) so
    that ``model_load_s`` measures building / loading the weights, not Python imports."""
    import diffusers
    import transformers

    diffusers.QwenImageTransformer2DModel, diffusers.AutoencoderKLQwenImage  # noqa: B018 - resolves the lazy imports
    transformers.Qwen2_5_VLForConditionalGeneration  # noqa: B018


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def image_entry(index: int, r, run_cfg, base: dict) -> dict:
    """The record entry of the ``index``-th image of a run (its file name is ``entry["file"]``);
    one naming rule for ``workbench run`` and ``workbench reproduce``."""
    return {
        "file": f"images/{index:03d}-seed{r.seed}-{_slug(r.prompt)}.png",
        "prompt": r.prompt,
        "negative_prompt": run_cfg.negative_prompt if run_cfg.sampler.cfg > 1 else None,
        "seed": r.seed,
        "reference_sha256": [x["sha256"] for x in base["reference_images"]],
        "width": r.image.width,
        "height": r.image.height,
        "timings_s": {k: round(v, 6) for k, v in r.timings.items()},
        "notes": r.notes,
    }


def run(cfg: DictConfig, output_dir: Path, progress: bool = True) -> Path:
    """Generate every image of ``cfg`` into ``output_dir``; returns the path of ``record.json``.

    The output folder is checked before any model work; every note the run made on its own (a snapped
    size, a cut prompt) is printed on stderr. A failed write raises ``RunFailure`` saying what was
    written, after leaving ``record.json`` with ``"status": "partial"`` when it can still be written.
    """
    run_cfg = to_run_config(cfg)  # typed + validated before anything heavy happens
    output_dir = Path(output_dir)
    rec.check_output_dir(output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    started = time.perf_counter()
    import_model_libraries()
    imported = time.perf_counter()
    bench = Workbench.from_config(run_cfg)
    load_s = time.perf_counter() - imported
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)

    results = bench.generate(run_cfg, progress=progress)
    for note in dict.fromkeys(n for r in results for n in r.notes):  # once each, in order
        _say(f"note: {note}")

    # after generation: the peak is the run's, and it goes into every PNG's record as well
    base = {"config": resolved, **rec.provenance(bench, run_cfg, resolved), "peak_memory": rec.peak_memory(bench.device)}
    entries, written = [], []
    failure: tuple[str, OSError] | None = None
    for i, r in enumerate(results):
        entry = image_entry(i, r, run_cfg, base)
        name = entry["file"]
        entries.append(entry)
        if failure is None:
            try:
                rec.save_png(output_dir / name, r.image, base | {"image": entry})
                written.append(entry)
            except OSError as err:  # disk full, quota, removed folder: the rest would fail alike
                failure = (name, err)

    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "complete" if failure is None else "partial",
        **base,
        "import_s": round(imported - started, 6),
        "model_load_s": round(load_s, 6),
        "total_s": round(time.perf_counter() - started, 6),
        "images": written,  # only images that exist on disk
    }
    if failure is not None:
        name, err = failure
        record["write_error"] = {"file": name, "error": f"{type(err).__name__}: {err.strerror or err}"}
        record["images_not_written"] = [e for e in entries if e not in written]
    path = output_dir / "record.json"
    try:
        rec.atomic_write_json(path, record)
        record_note = f"{path} records the partial run (status 'partial')"
    except OSError as err:
        record_note = f"record.json could not be written either ({err.strerror or err})"
        if failure is None:
            raise RunFailure(
                f"all {len(results)} images were written to {output_dir / 'images'}, but {path} could not be "
                f"written: {err.strerror or err}; free space or fix permissions and re-run"
            ) from err
    if failure is not None:
        name, err = failure
        done = ", ".join(Path(e["file"]).name for e in written) or "none"
        raise RunFailure(
            f"writing {output_dir / name} failed: {err.strerror or err}; wrote {len(written)} of {len(results)} "
            f"images ({done}); {record_note}; free space and re-run"
        ) from err
    return path
