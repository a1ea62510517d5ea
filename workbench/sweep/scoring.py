"""Metric columns of a sweep table: adherence to the caption (pixels only) and, against a reference
cell, PSNR / SSIM of the images, the relative L2 distance of the final latents and the denoise speed-up.

The numbers come from ``workbench.metrics``; this module only decides which images each cell is
scored on and names the columns, so the table, ``table.csv`` and the panel show the same values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from workbench.sweep.axes import SweepError
from workbench.values import string_list

if TYPE_CHECKING:
    from workbench.sweep.plan import Cell
    from workbench.sweep.result import CellResult

METRICS = ("adherence", "psnr", "ssim")
ATTRIBUTE_COLUMNS = ("background", "colour", "shape", "position", "size")


def check_metrics(metrics: Sequence[str], cells: Sequence[Cell], reference: int) -> tuple[str, ...]:
    """Validate metric names, the reference cell and (for adherence) that every prompt is a world caption."""
    from workbench.metrics import CaptionError, parse_caption

    metrics = string_list(metrics, "metrics", SweepError, "['psnr', 'ssim']")  # one string is one metric
    metrics = tuple(dict.fromkeys(m.strip() for m in metrics if m.strip()))
    for m in metrics:
        if m not in METRICS:
            raise SweepError(f"metric {m!r} is not known; choose from {', '.join(METRICS)}")
    if any(m in ("psnr", "ssim") for m in metrics) and not 0 <= reference < len(cells):
        raise SweepError(f"metric reference cell {reference} is outside the sweep's cells 0..{len(cells) - 1}")
    if "adherence" in metrics:
        for cell in cells:
            for prompt in cell.config.prompts if cell.config is not None else ():
                try:
                    parse_caption(prompt)
                except CaptionError as err:
                    raise SweepError(
                        f"metric 'adherence' scores captions of the tiny model's world; cell {cell.index}: {err}"
                    ) from None
    return metrics


def columns(metrics: Sequence[str], reference: int) -> list[str]:
    out: list[str] = []
    if "adherence" in metrics:
        out += ["adherence"] + [f"{a}_ok" for a in ATTRIBUTE_COLUMNS]
    out += [f"{m}_vs_{reference}" for m in ("psnr", "ssim") if m in metrics]
    if any(m in ("psnr", "ssim") for m in metrics):  # the reference-cell metrics: also latents and speed
        out += [f"latent_rel_l2_vs_{reference}", f"speedup_vs_{reference}"]
    return out


def latent_rel_l2(res: CellResult, ref: CellResult) -> Optional[float]:
    """||a - b|| / ||b|| of the final latents (all images of the cell), None when either has none or shapes differ."""
    import numpy as np

    if res.latents is None or ref.latents is None or np.shape(res.latents) != np.shape(ref.latents):
        return None
    a, b = np.asarray(res.latents, dtype=np.float64), np.asarray(ref.latents, dtype=np.float64)
    norm = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / norm if norm > 0 else None


def speedup(res: CellResult, ref: CellResult) -> Optional[float]:
    """Reference denoise time / this cell's (2.0: twice as fast); None without both timings."""
    mine, theirs = res.timings.get("denoise"), ref.timings.get("denoise")
    return theirs / mine if mine and theirs else None


def work_speedup(res: Optional[CellResult]) -> Optional[float]:
    """Hooked-module calls / those that computed (2.0: the method ran half the work; workbench/accel_work.py);
    1.0 for a cell without an accel method, None where unknown (a failed cell, a record from before the count)."""
    if res is None or res.status not in ("ok", "cached"):
        return None
    done = res.record.get("accel_work")
    if isinstance(done, dict):  # read back from a record: data, checked
        calls, computed = done.get("calls"), done.get("computed")
        ok = all(isinstance(n, int) and not isinstance(n, bool) for n in (calls, computed)) and computed > 0
        return calls / computed if ok else None
    config = res.cell.config
    return 1.0 if config is not None and config.accel.method.value == "none" else None


def cell_scores(
    res: Optional[CellResult], ref: Optional[CellResult], metrics: Sequence[str], reference: int
) -> dict[str, Any]:
    """One row's metric values; None where the cell (or the reference) has no images."""
    from workbench import metrics as M

    row: dict[str, Any] = dict.fromkeys(columns(metrics, reference))
    if res is None or not res.images:
        return row
    if "adherence" in metrics and res.cell.config is not None:
        prompts = res.cell.config.prompts
        per_prompt = len(res.images) // max(1, len(prompts))  # images are prompt-major: seeds of prompt 0 first
        scores = [M.score(img, prompts[i // max(1, per_prompt)]) for i, img in enumerate(res.images)]
        row["adherence"] = M.adherence(scores)
        row.update({f"{a}_ok": v for a, v in M.accuracy(scores).items()})
    if ref is not None and ref.images and len(ref.images) == len(res.images):
        for name, fn in (("psnr", M.psnr), ("ssim", M.ssim)):
            if name in metrics and all(a.size == b.size for a, b in zip(res.images, ref.images)):
                values = [fn(a, b) for a, b in zip(res.images, ref.images)]
                row[f"{name}_vs_{reference}"] = sum(values) / len(values)
    if ref is not None and ref.images and any(m in ("psnr", "ssim") for m in metrics):
        row[f"latent_rel_l2_vs_{reference}"] = latent_rel_l2(res, ref)
        row[f"speedup_vs_{reference}"] = speedup(res, ref)
    return row
