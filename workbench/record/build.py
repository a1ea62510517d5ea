"""The one record of generated images, for ``workbench run``, a sweep cell and ``workbench reproduce``.

    record.json  = {"created", "status", **head, **after, "images": [entry, ...]}
    each PNG     = head | {"image": entry}          (``png_chunk``)
    head         = {"config", provenance..., "peak_memory", **extra}

``extra`` is what a producer knows before it writes (a sweep cell: ``sweep``, ``timings_s``,
``conditioning_cached``); ``after`` what it knows only once the images are written (a run:
``import_s``, ``model_load_s``, ``total_s``). Images are named by one rule (``image_file``) and
their entries built by one function (``image_entry``), so a cell folder reads like a run folder.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from workbench.record.provenance import peak_memory, provenance

if TYPE_CHECKING:
    from workbench.config import Config
    from workbench.pipeline import GeneratedImage

# keys of record.json that its PNG chunks leave out: known once every image is written
RECORD_ONLY = ("created", "status", "import_s", "model_load_s", "total_s", "images", "write_error", "images_not_written")


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


def image_file(index: int, seed: int, prompt: str) -> str:
    """The one naming rule: ``images/NNN-seedS-slug.png``, NNN the image's place in the prompt-major
    (prompt, seed) list (``workbench reproduce`` reads it back to tell apart a repeated prompt and seed)."""
    return f"images/{index:03d}-seed{seed}-{slug(prompt)}.png"


def layer_files(index: int, seed: int, prompt: str, layers: int) -> list[str]:
    """Qwen-Image-Layered's RGBA layers beside the image: ``images/NNN-seedS-slug-layerK.png``, K from 1."""
    stem = image_file(index, seed, prompt).removesuffix(".png")
    return [f"{stem}-layer{k}.png" for k in range(1, layers + 1)]


def record_head(bench, cfg: Config, resolved: dict, **extra: Any) -> dict:
    """Config, provenance and the peak memory so far: read after generation, so the peak is the run's.
    A compiled transformer adds ``compile``: graphs compiled, compile-cache hits / misses and seconds; an accel
    method adds ``accel_work``: its hooked modules' calls in the run and how many computed (workbench/accel_work.py)."""
    from workbench.accel import work

    compiled = {"compile": bench.last_compile} if getattr(bench, "last_compile", None) else {}
    done = work(bench.components.transformer) if hasattr(bench, "components") else None
    compiled |= {"accel_work": done} if done else {}
    if resolved.get("encoder_tap") is None:  # null means the family's default: record the tap that ran
        resolved = {**resolved, "encoder_tap": cfg.encoder_tap}
    return {"config": resolved, **provenance(bench, cfg, resolved), "peak_memory": peak_memory(bench.device),
            **compiled, **extra}


def image_entry(index: int, generated: GeneratedImage, cfg: Config, head: dict) -> dict:
    """The record entry of the ``index``-th image of ``cfg`` (its file is ``entry["file"]``)."""
    return {
        "file": image_file(index, generated.seed, generated.prompt),
        "prompt": generated.prompt,
        "negative_prompt": cfg.negative_prompt if cfg.sampler.cfg > 1 else None,
        "seed": generated.seed,
        "reference_sha256": [x["sha256"] for x in head["reference_images"]],
        "width": generated.image.width,
        "height": generated.image.height,
        "timings_s": {k: round(v, 6) for k, v in generated.timings.items()},
        "notes": list(generated.notes),
    } | ({"layers": layer_files(index, generated.seed, generated.prompt, len(generated.layers))}
         if generated.layers else {}) | ({"caption": generated.caption} if generated.caption is not None else {})


def png_chunk(record: dict, entry: dict) -> dict:
    """What the PNG of ``entry`` holds: the record's head (a head or a whole record) and its entry."""
    return {k: v for k, v in record.items() if k not in RECORD_ONLY} | {"image": entry}


def finish(head: dict, images: list[dict], status: str = "complete", **after: Any) -> dict:
    """record.json: when, whether every image was written, the head, ``after`` and the image entries."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"created": created, "status": status, **head, **after, "images": images}
