"""``workbench run``: one config in, images + ``record.json`` out. A plain function tests import.

The record and the image names come from ``workbench.record.build``, shared with sweep cells and
``workbench reproduce`` (which re-makes one image with ``run(..., job=N)``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from workbench import record as rec
from workbench.config import build
from workbench.config.build import to_run_config
from workbench.errors import RunFailure
from workbench.pipeline import GeneratedImage, Workbench
from workbench.user_cache import check_cache_dir


def import_model_libraries() -> None:
    """Import the model classes (diffusers / transformers load them lazily, ~1-3 s on first use) so
    that ``model_load_s`` measures building / loading the weights, not Python imports."""
    import diffusers
    import transformers

    diffusers.QwenImageTransformer2DModel, diffusers.AutoencoderKLQwenImage  # noqa: B018 - resolves the lazy imports
    transformers.Qwen2_5_VLForConditionalGeneration  # noqa: B018


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(cfg: DictConfig, output_dir: Path, progress: bool = True, job: Optional[int] = None) -> Path:
    """Generate every image of ``cfg`` into ``output_dir``; returns the path of ``record.json``.

    The output folder is checked before any model work; every note the run made on its own (a snapped
    size, a cut prompt) is printed on stderr. A failed write raises ``RunFailure`` saying what was
    written, after leaving ``record.json`` with ``"status": "partial"`` when it can still be written.
    ``job``: make only that image (an index into the prompt-major (prompt, seed) list), its forward
    batch cut and conditioned as in the full run (``workbench reproduce IMAGE``).
    """
    run_cfg = to_run_config(cfg)  # typed + validated before anything heavy happens
    output_dir = Path(output_dir)
    rec.check_output_dir(output_dir)
    check_cache_dir(run_cfg.perf)
    resolved = build.resolved(cfg)
    started = time.perf_counter()
    import_model_libraries()
    imported = time.perf_counter()
    bench = Workbench.from_config(run_cfg)
    load_s = time.perf_counter() - imported

    images = _generate(bench, run_cfg, progress, job)
    head = rec.record_head(bench, run_cfg, resolved)
    entries = [rec.image_entry(i, g, run_cfg, head) for i, g in images]
    written, failure = _write_images(output_dir, head, entries, [g for _, g in images])
    record = rec.finish(  # "images": only those on disk
        head, written, "complete" if failure is None else "partial",
        import_s=round(imported - started, 6), model_load_s=round(load_s, 6), total_s=round(time.perf_counter() - started, 6),
    )
    if failure is not None:
        name, err = failure
        record["write_error"] = {"file": name, "error": f"{type(err).__name__}: {err.strerror or err}"}
        record["images_not_written"] = [e for e in entries if e not in written]
    return _write_record(output_dir, record, len(entries), failure)


def _generate(bench: Workbench, run_cfg, progress: bool, job: Optional[int]) -> list[tuple[int, GeneratedImage]]:
    """[(index in the prompt-major list, GeneratedImage)]; the notes printed once each, in order."""
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    if job is None:
        images = list(enumerate(bench.generate(run_cfg, progress=progress)))
    else:  # generate(only=) returns the forward batch holding the job
        batch = bench.generate(run_cfg, progress=progress, only=[job])
        images = [(job, batch[job % run_cfg.batch_size])]
    for note in dict.fromkeys(n for _, g in images for n in g.notes):
        _say(f"note: {note}")
    return images


def _write_images(output_dir: Path, head: dict, entries: list[dict], images: list[GeneratedImage]
                  ) -> tuple[list[dict], Optional[tuple[str, OSError]]]:
    """Write each image with its record chunk, up to the first failed write: (entries written, (file, error) or None)."""
    written: list[dict] = []
    for entry, image in zip(entries, images):
        try:
            rec.save_png(output_dir / entry["file"], image.image, rec.png_chunk(head, entry))
            for file, layer in zip(entry.get("layers", []), image.layers):  # Layered: each RGBA layer
                rec.save_png(output_dir / file, layer, rec.png_chunk(head, entry))
        except OSError as err:  # disk full, quota, removed folder: the rest would fail alike
            return written, (entry["file"], err)
        written.append(entry)
    return written, None


def _write_record(output_dir: Path, record: dict, total: int, failure: Optional[tuple]) -> Path:
    """Write ``record.json``; raise ``RunFailure`` naming what was written when an image or the record failed."""
    path = output_dir / "record.json"
    try:
        rec.atomic_write_json(path, record)
        record_note = f"{path} records the partial run (status 'partial')"
    except OSError as err:
        record_note = f"record.json could not be written either ({err.strerror or err})"
        if failure is None:
            raise RunFailure(
                f"all {total} images were written to {output_dir / 'images'}, but {path} could not be "
                f"written: {err.strerror or err}; free space or fix permissions and re-run"
            ) from err
    if failure is not None:
        name, err = failure
        written = record["images"]
        done = ", ".join(Path(e["file"]).name for e in written) or "none"
        raise RunFailure(
            f"writing {output_dir / name} failed: {err.strerror or err}; wrote {len(written)} of {total} "
            f"images ({done}); {record_note}; free space and re-run"
        ) from err
    return path
