"""The cell cache: ``<out_dir>/cells/<config hash>/``, so a re-run reads finished cells back instead of running them.

A cell's folder is named by the hash of its resolved config (``workbench.sweep.keys.config_hash``) and
holds what ``workbench run`` writes (``record.json``, ``images/``); it is complete once its
``record.json`` exists (written last, atomically): an interrupted sweep resumes, and either executor
reuses the other's cells.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from PIL import Image

from workbench.sweep.result import CellResult

if TYPE_CHECKING:
    from workbench.sweep.plan import Cell, SweepPlan
    from workbench.sweep.runner import CellOutput


def cell_result(sweep: SweepPlan, cell: Cell, out: CellOutput) -> CellResult:
    """The result of a cell that just ran, with the paths ``write_output`` writes its images to."""
    if out.status != "ok":
        return CellResult(cell, "failed", error=out.error, record=out.record, worker=out.worker)
    files = [sweep.cell_dir(cell) / entry["file"] for entry in out.record["images"]]
    hit = out.record.get("conditioning_cached", False)
    return CellResult(cell, "ok", out.images, files, out.record, conditioning_cached=hit, worker=out.worker,
                      latents=out.latents)


def write_output(sweep: SweepPlan, cell: Cell, out: CellOutput) -> None:
    """Write one cell's output to the cache (``record.json`` last: its presence marks the cell done)."""
    from workbench import record as rec

    folder = sweep.cell_dir(cell)
    if out.status != "ok":
        rec.atomic_write_json(folder / "error.json", {"error": out.error, "overrides": cell.overrides})
        return
    for entry, image in zip(out.record["images"], out.images):
        rec.save_png(folder / entry["file"], image, rec.png_chunk(out.record, entry))
    (folder / "error.json").unlink(missing_ok=True)
    if out.latents is not None:  # small (tokens x 64 floats per image): what latent_rel_l2 compares
        _write_latents(folder / LATENTS, out.latents)
    rec.atomic_write_json(folder / "record.json", out.record)


LATENTS = "latents.npy"


def _write_latents(path: Path, latents) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(latents, dtype=np.float32), allow_pickle=False)
    tmp.replace(path)


def _read_latents(path: Path):
    """The cell's final latents, or None (a cell stored before they were kept, or an unreadable file)."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError):
        return None


class CorruptCellWarning(UserWarning):
    """A cached cell could not be read back (truncated PNG, invalid record.json): it is computed again."""


def _image_files(folder: Path, record: Any) -> list[Path]:
    """The image files a cell's record names; every name must be a relative path that stays inside the
    folder once links are resolved (a record is data: never a path elsewhere)."""
    if not isinstance(record, dict) or not isinstance(record.get("images"), list):
        raise ValueError("record.json is not an object with an 'images' list")
    root = folder.resolve()
    files = []
    for entry in record["images"]:
        name = entry.get("file") if isinstance(entry, dict) else None
        if (not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts
                or name in (".", "") or not (root / name).resolve().is_relative_to(root)):
            raise ValueError(f"image entry 'file': {str(name)[:80]!r} does not name a file of this folder")
        files.append(folder / name)
    return files


def read_back(sweep: SweepPlan, cell: Cell) -> Optional[CellResult]:
    """The cached result of a finished cell, or None when it has to run.

    A cell whose files cannot be read back (a truncated PNG, an invalid or truncated record.json: a
    disk problem or a hand edit) is run again, with a ``CorruptCellWarning`` naming the cell and its
    folder, instead of stopping the sweep."""
    folder = sweep.cell_dir(cell)
    path = folder / "record.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = _image_files(folder, record)
        if not files or not all(f.is_file() for f in files):
            return None  # a partial cell (images removed by hand): run it again
        images = []
        for f in files:
            with Image.open(f) as img:
                images.append(img.convert("RGB"))  # decodes every byte: a truncated PNG raises here
    except Exception as err:  # noqa: BLE001 - whatever the damage, the cell is computed again
        warnings.warn(
            f"sweep cell {cell.index} ({cell.label(sweep.axes)}) in {folder}: the cached result cannot be read "
            f"({type(err).__name__}: {err}); computing the cell again",
            CorruptCellWarning,
            stacklevel=2,
        )
        return None
    return CellResult(cell, "cached", images, files, record, conditioning_cached=record.get("conditioning_cached", False),
                      latents=_read_latents(folder / LATENTS))
