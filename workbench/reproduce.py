"""``workbench reproduce RECORD_OR_PNG`` (a record.json, a run folder or an image): re-run what a record says and compare with the stored image(s).

A record (``record.json``, or the ``workbench`` text chunk of one image) holds the resolved config,
so the run can be repeated exactly; the comparison says whether the result is bit-identical, and if
not, how far it is (PSNR, max abs pixel difference) and which recorded inputs changed (library
versions, model identity and file hashes, device, git commit, reference image hashes) to explain it.
``record.json`` re-runs every image; a PNG re-runs only that image (its forward batch, as batched and
conditioned in the original run, so its bits can match).

A record is data: its strings are never interpolated (``${...}`` stays literal text), the image files it
names must stay inside its folder, a config missing a group or key is refused rather than filled with
defaults, and the output folder may not hold the inputs. The re-run is written to a hidden folder next
to the output and moved into place only when complete.
Exit code: 0 all identical, 1 some image differs, 2 bad input (one line, no traceback), 3 the re-run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from workbench.errors import EXIT_DIFFERS, EXIT_OK, InputError, WorkbenchError, exit_code
from workbench.record import flatten

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReproduceError(InputError):
    """The input cannot be reproduced (not a record, no config, a missing file)."""


def _is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def load_source(path: Path) -> tuple[dict, list[tuple[dict, Path]]]:
    """The record and [(image entry, stored PNG)] to compare against, every file checked readable.
    ``path``: a record.json or a PNG (``reproduce`` resolves a run folder to its record.json first)."""
    from workbench.record import check_png, read_png_record, read_record_json, record_images

    if _is_png(path):
        record = read_png_record(path)
        entry = record.get("image")
        if not isinstance(entry, dict):
            raise ReproduceError(f"{path}: its 'workbench' chunk has no 'image' entry (an object with prompt and seed)")
        stored = [(entry, path)]
    else:
        record = read_record_json(path)
        if not isinstance(record.get("images"), list) and not isinstance(record.get("config"), dict):
            raise ReproduceError(f"{path} is JSON but not a workbench record.json (no 'images' list)")
        stored = record_images(record, path)
        for _, png in stored:
            if not png.is_file():
                raise ReproduceError(f"stored image {png} is missing: nothing to compare against")
            check_png(png)
    if not isinstance(record.get("config"), dict):
        raise ReproduceError(f"{path}: the record has no resolved 'config' to re-run")
    return record, stored


# ----------------------------------------------------------------------------- the recorded config
def recorded_config(record: dict, source: Path):
    """(OmegaConf config, typed ``Config``, [{key, default}] of nested keys the record lacks).

    A missing config group or top-level key is refused: filling it with the schema's defaults would
    re-run something else and call it a reproduction. A nested key the record lacks (a record of an
    older schema) gets its default and is reported as "not recorded, default used"; the merge itself is
    the build door's (``workbench.config.build.record_config``: strings stay literal text).
    """
    from workbench.config import Config
    from workbench.config.build import record_config

    recorded = record["config"]
    # executor: never recorded by cells; accel: records older than the group ran without cache hooks,
    # which is exactly its default (none), so its absence is filled and reported like a nested key;
    # layers / layered_resolution / layered_caption act only with model.variant=layered, which no older record can hold
    optional = ("executor", "accel", "layers", "layered_resolution", "layered_caption")
    required = [f.name for f in dataclasses.fields(Config) if f.name not in optional]
    missing = [k for k in required if k not in recorded]
    if missing:
        raise ReproduceError(
            f"{source}: the recorded config lacks {', '.join(missing)}; a record written by `workbench run` has "
            "every config group and key, and filling them with defaults would re-run something else"
        )
    return record_config(recorded, source)


def job_index(run_cfg, entry: dict, source: Path) -> int:
    """The position of ``entry`` (prompt, seed) in the run's prompt-major (prompt, seed) list."""
    jobs = [(p, s) for p in run_cfg.prompts for s in run_cfg.seeds]
    want = (entry.get("prompt"), entry.get("seed"))
    m = re.match(r"(?:.*/)?(\d+)-", str(entry.get("file", "")))  # run names images NNN-seedS-slug.png
    if m and int(m.group(1)) < len(jobs) and jobs[int(m.group(1))] == want:
        return int(m.group(1))  # the same prompt and seed twice in a run: the file name says which
    if want in jobs:
        return jobs.index(want)
    raise ReproduceError(f"{source}: its image (prompt {want[0]!r:.80}, seed {want[1]!r}) is not one of the recorded "
                         "config's prompts x seeds; the chunk was edited")


# ----------------------------------------------------------------------------- re-running
def rerun(cfg, output_dir: Path) -> dict:
    """Run the whole recorded config again into ``output_dir``; returns the new record."""
    from workbench.run import run

    return json.loads(run(cfg, output_dir, progress=False).read_text(encoding="utf-8"))


def rerun_image(cfg, job: int, output_dir: Path) -> dict:
    """Re-make image ``job`` into ``output_dir`` as ``workbench run`` does (same name, same record);
    returns the new record. Its forward batch runs, as batched and conditioned in the full run, since
    both change the bits (``Workbench.generate(only=...)``)."""
    from workbench.run import run

    return json.loads(run(cfg, output_dir, progress=False, job=job).read_text(encoding="utf-8"))


def check_output(output_dir: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that holds an input (the re-run would overwrite what it compares with)
    or that already has files in it."""
    out = Path(output_dir).resolve()
    for p in inputs:
        r = Path(p).resolve()
        if r == out or out in r.parents:
            raise ReproduceError(f"output folder {output_dir} holds the input {p}: the re-run would overwrite what it "
                                 "compares against; give -o a new folder outside it")
    if output_dir.exists() and not output_dir.is_dir():
        raise ReproduceError(f"output folder {output_dir} is a file; give -o a new folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ReproduceError(f"output folder {output_dir} is not empty; give -o a new or empty folder")


# ----------------------------------------------------------------------------- comparing
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


CHANGE_FIELDS = ("versions", "models", "model_files", "device", "git_commit", "git_dirty", "reference_images", "init_image")


def changed_inputs(old: dict, new: dict) -> list[dict]:
    """Recorded inputs that differ between two records: [{field, old, new}]."""
    changes = []
    for name in CHANGE_FIELDS:
        if name not in old:
            changes.append({"field": name, "old": "(not in the stored record)", "new": new.get(name)})
            continue
        a, b = flatten(old.get(name), name), flatten(new.get(name), name)
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


def _created_dirs(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def reproduce(path: Path, output_dir: Optional[Path] = None) -> dict[str, Any]:
    """Re-run ``path`` (record.json: every image; PNG: that image) into ``output_dir`` and compare.

    Everything is checked before anything is written; the re-run goes to a hidden folder beside
    ``output_dir`` and is renamed into place when complete, so a failure leaves nothing behind.
    ``output_dir`` None: a new temporary folder.
    """
    from workbench.record import record_source

    path = record_source(path)  # a run folder reads its record.json
    record, stored = load_source(path)
    cfg, run_cfg, defaults = recorded_config(record, path)
    job = job_index(run_cfg, stored[0][0], path) if _is_png(path) else None
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="workbench-reproduce-"))
        made = [output_dir]  # ours: removed again on failure
    else:
        output_dir = Path(output_dir)
        check_output(output_dir, [path, *(png for _, png in stored)])
        made = _created_dirs(output_dir.parent)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    try:
        new = rerun(cfg, stage) if job is None else rerun_image(cfg, job, stage)
        if output_dir.is_dir():
            output_dir.rmdir()  # empty (checked above): replaced by the complete re-run
        os.rename(stage, output_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise

    images = []
    for entry, png in stored:
        match = _match(entry, new["images"])
        if match is None:
            images.append({"file": str(png), "identical": False, "error": "the re-run made no image for this prompt/seed"})
            continue
        new_file = output_dir / match["file"]
        images.append({"file": str(png), "new_file": str(new_file), "prompt": entry.get("prompt"),
                       "seed": entry.get("seed"), **compare_images(png, new_file)})
    return {
        "source": str(path),
        "output_dir": str(output_dir),
        "rerun": "image" if job is not None else "record",
        "identical": all(i["identical"] for i in images),
        "images": images,
        "changed_inputs": changed_inputs(record, new),
        "not_recorded": defaults,
    }


def _print(report: dict) -> None:
    print(f"reproduced {report['source']} into {report['output_dir']}")
    if report.get("rerun") == "image":
        print("  (re-ran this image only: its prompt and seed, batched as in the original run)")
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
    not_recorded = report.get("not_recorded") or []
    if not_recorded:
        print("not recorded in the stored config, default used:")
        for d in not_recorded:
            print(f"  {d['key']} = {d['default']!r}")
    if report["changed_inputs"]:
        print("inputs that changed since the stored run:")
        for c in report["changed_inputs"]:
            print(f"  {c['field']}: {c['old']!r} -> {c['new']!r}")
    elif not_recorded:
        print(f"no recorded input changed, but {len(not_recorded)} config value(s) were not recorded (defaults above)")
    else:
        print("no recorded input changed (versions, models, model files, device, git commit and dirty flag, reference images)")
    print("result: " + ("identical" if report["identical"] else "differs"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench reproduce",
                                description="Re-run a record.json (every image) or a workbench PNG (that image) "
                                            "and compare with the stored image(s).")
    p.add_argument("source", help="record.json of a run (or the run's folder), or one PNG it wrote")
    p.add_argument("-o", "--output", help="new folder for the re-run, outside the run's folder "
                                          "(default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)

    try:
        report = reproduce(Path(args.source), Path(args.output) if args.output else None)
    except WorkbenchError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return exit_code(err)
    except FileNotFoundError as err:  # a reference image or model file the record names is gone
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return EXIT_OK if report["identical"] else EXIT_DIFFERS
