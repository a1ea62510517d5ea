"""What a run writes: images with their config in a PNG text chunk, and ``record.json``.

Files are written atomically (temporary file in the same folder, then ``os.replace``) so an
interrupted run never leaves a half-written image or record.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

PNG_KEY = "workbench"  # PNG tEXt/iTXt chunk holding the image's record
LIBRARIES = ("qwen-image-workbench", "torch", "transformers", "diffusers", "hydra-core", "omegaconf", "safetensors", "pillow")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_png(path: Path, image: Image.Image, record: dict) -> None:
    """Save ``image`` with ``record`` (JSON) in the PNG text chunk ``workbench``."""
    import io

    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(record, ensure_ascii=False))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())


def read_png_record(path: Path) -> dict:
    with Image.open(path) as img:
        text = img.text.get(PNG_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise ValueError(f"{path} has no '{PNG_KEY}' text chunk: it was not written by the workbench")
    return json.loads(text)


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(), "cpu": platform.processor()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


def git_commit() -> str | None:
    """The project's commit when run from a checkout (None when installed elsewhere or git is absent)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak memory: allocated bytes on a CUDA device, else the process's peak resident set size."""
    if device.type == "cuda":
        return {"cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
    import resource

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"process_max_rss_bytes": int(rss_kb) * 1024}
