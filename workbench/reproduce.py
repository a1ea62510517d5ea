"""``workbench reproduce RECORD_OR_PNG``: re-run what a record says and compare with the stored image(s).

A record (``record.json``, or the ``workbench`` text chunk of one image) holds the resolved config,
so the run can be repeated exactly; the comparison says whether the result is bit-identical, and if
not, how far it is (PSNR, max abs pixel difference) and which recorded inputs changed (library
versions, model identity and file hashes, device, git commit, reference image hashes) to explain it.
Exit code: 0 all identical, 1 some image differs, 2 bad input.
"""

from __future__ import annotations

from workbench.errors import InputError
import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReproduceError(InputError):
    """The input cannot be reproduced (not a record, no config, a missing file)."""


def load_source(path: Path) -> tuple[dict, list[tuple[dict, Path]]]:
    """The record and [(image entry, stored PNG)] to compare against."""
    from workbench.record import read_png_record

    path = Path(path)
    if not path.is_file():
        raise ReproduceError(f"{path} not found: give a record.json or a PNG written by `workbench run`")
    with open(path, "rb") as f:
        is_png = f.read(8) == PNG_MAGIC
    if is_png:
        try:
            record = read_png_record(path)
        except ValueError as err:  # no chunk, or a chunk that is not JSON
            raise ReproduceError(str(err)) from None
        if not isinstance(record.get("image"), dict):
            raise ReproduceError(f"{path}: its 'workbench' chunk has no 'image' entry")
        stored = [(record["image"], path)]
    else:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ReproduceError(f"{path} is neither a PNG nor a JSON record: {err}") from None
        if not isinstance(record, dict) or not isinstance(record.get("images"), list):
            raise ReproduceError(f"{path} is JSON but not a workbench record.json (no 'images' list)")
        stored = [(e, path.parent / e["file"]) for e in record["images"]]
    if not isinstance(record.get("config"), dict):
        raise ReproduceError(f"{path}: the record has no resolved 'config' to re-run")
    return record, stored


def rerun(record: dict, output_dir: Path) -> dict:
    """Run the record's resolved config again into ``output_dir``; returns the new record."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from workbench.config.schema import Config, ConfigError
    from workbench.run import run

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), record["config"])
    except OmegaConfBaseException as err:
        raise ConfigError(f"the recorded config does not fit this version's schema: {err}") from None
    path = run(cfg, output_dir, progress=False)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def compare_images(old_path: Path, new_path: Path) -> dict[str, Any]:
    """Pixel comparison: identical, or PSNR (dB, 8-bit) and max abs difference."""
    import numpy as np
    from PIL import Image

    with Image.open(old_path) as a, Image.open(new_path) as b:
        x, y = np.asarray(a.convert("RGB"), dtype=np.int16), np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"identical": False, "size_stored": [x.shape[1], x.shape[0]], "size_new": [y.shape[1], y.shape[0]]}
    d = np.abs(x - y)
    mse = float((d.astype(np.float64) ** 2).mean())
    return {
        "identical": bool(not d.any()),
        "psnr_db": math.inf if mse == 0 else round(10 * math.log10(255.0**2 / mse), 3),
        "max_abs_diff": int(d.max()),
        "pixels_differing": int(d.any(axis=-1).sum()),
    }


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


CHANGE_FIELDS = ("versions", "models", "model_files", "device", "git_commit", "reference_images", "init_image")


def changed_inputs(old: dict, new: dict) -> list[dict]:
    """Recorded inputs that differ between two records: [{field, old, new}]."""
    changes = []
    for name in CHANGE_FIELDS:
        if name not in old:
            changes.append({"field": name, "old": "(not in the stored record)", "new": new.get(name)})
            continue
        a, b = _flat(old.get(name), name), _flat(new.get(name), name)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append({"field": key, "old": a.get(key), "new": b.get(key)})
    return changes


def _match(entry: dict, new_entries: list[dict]) -> dict | None:
    """The new image made from the same (prompt, seed) as ``entry`` (same file name first)."""
    for e in new_entries:
        if e.get("file") == entry.get("file") and e.get("prompt") == entry.get("prompt") and e.get("seed") == entry.get("seed"):
            return e
    return next((e for e in new_entries if e.get("prompt") == entry.get("prompt") and e.get("seed") == entry.get("seed")), None)


def reproduce(path: Path, output_dir: Path) -> dict[str, Any]:
    record, stored = load_source(path)
    for _, png in stored:
        if not png.is_file():
            raise ReproduceError(f"stored image {png} is missing: nothing to compare against")
    new = rerun(record, output_dir)
    images = []
    for entry, png in stored:
        match = _match(entry, new["images"])
        if match is None:
            images.append({"file": str(png), "identical": False, "error": "the re-run made no image for this prompt/seed"})
            continue
        images.append({"file": str(png), "new_file": str(Path(output_dir) / match["file"]), "prompt": entry.get("prompt"),
                       "seed": entry.get("seed"), **compare_images(png, Path(output_dir) / match["file"])})
    return {
        "source": str(path),
        "output_dir": str(output_dir),
        "identical": all(i["identical"] for i in images),
        "images": images,
        "changed_inputs": changed_inputs(record, new),
    }


def _print(report: dict) -> None:
    print(f"reproduced {report['source']} into {report['output_dir']}")
    for img in report["images"]:
        if img.get("error"):
            print(f"  DIFFERS  {img['file']}: {img['error']}")
        elif img["identical"]:
            print(f"  IDENTICAL  {img['file']} (bit for bit)")
        elif "psnr_db" not in img:
            print(f"  DIFFERS  {img['file']}: size {img['size_stored']} stored vs {img['size_new']} now")
        else:
            print(f"  DIFFERS  {img['file']}: PSNR {img['psnr_db']} dB, max abs pixel diff {img['max_abs_diff']}, "
                  f"{img['pixels_differing']} pixels differ")
    if report["changed_inputs"]:
        print("inputs that changed since the stored run:")
        for c in report["changed_inputs"]:
            print(f"  {c['field']}: {c['old']!r} -> {c['new']!r}")
    else:
        print("no recorded input changed (versions, models, model files, device, git commit, reference images)")
    print("result: " + ("identical" if report["identical"] else "differs"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench reproduce",
                                description="Re-run a record.json or a workbench PNG and compare with the stored image(s).")
    p.add_argument("source", help="record.json of a run, or one PNG it wrote")
    p.add_argument("-o", "--output", help="folder for the re-run (default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    from workbench.config.schema import ConfigError

    out = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="workbench-reproduce-"))
    try:
        report = reproduce(Path(args.source), out)
    except (ReproduceError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return 0 if report["identical"] else 1
