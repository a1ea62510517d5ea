"""Provenance: what a result depends on besides its config (models and their file hashes, device,
library versions, git state, input images, peak memory), recorded so ``workbench reproduce`` can say
why a re-run differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.user_cache import user_cache_dir
from workbench.record.files import atomic_write_json

if TYPE_CHECKING:  # torch is imported where used: the CLI checks output folders before loading it
    import torch

LIBRARIES = ("qwen-image-workbench", "torch", "transformers", "diffusers", "hydra-core", "omegaconf", "safetensors", "pillow")


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    # read once per process (~20-100 ms of metadata scans): every sweep cell records them, and the
    # libraries a process has imported cannot change under it
    out = [("python", sys.version.split()[0])]
    for name in LIBRARIES:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def library_versions() -> dict[str, str]:
    return dict(_installed_versions())


def device_info(device: torch.device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(), "cpu": platform.processor()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["torch_threads"] = torch.get_num_threads()
    return info


def git_state(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout ``root`` (default: the project's), ``dirty``
    when ``git status --porcelain`` lists any change (tracked or untracked, not ignored); None when
    ``root`` is not a git checkout, git is absent or refuses (e.g. a repository owned by another user)."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    if not (root / ".git").exists():
        return None
    try:  # one call gives both: "# branch.oid <sha>" and one line per change
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain=v2", "--branch"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    lines = out.stdout.splitlines()
    oid = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if oid is None or oid == "(initial)":  # no commit yet
        return None
    return {"commit": oid, "dirty": any(not ln.startswith("#") for ln in lines)}


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak memory: allocated bytes on a CUDA device, else the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return {"cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}
    import resource

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"process_max_rss_bytes": int(rss_kb) * 1024}


# ----------------------------------------------------------------------------- input hashes
HASH_CACHE = "file_sha256.json"  # {absolute path: {size, mtime_ns, sha256}}


def _read_hash_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or corrupt: rebuilt as files are hashed


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so a 40 GB checkpoint is read once, not per run."""
    p = Path(path).resolve()
    st = p.stat()
    cache_file = user_cache_dir() / HASH_CACHE
    hit = _read_hash_cache(cache_file).get(str(p))
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cache = _read_hash_cache(cache_file)  # re-read: another run may have added entries meanwhile
    cache[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        atomic_write_json(cache_file, cache)
    except OSError:
        pass  # a read-only home must not fail the run; the hash is still recorded
    return digest


def path_sha256(path: Path) -> str:
    """A file's sha256, or for a folder (diffusers layout) the sha256 of its sorted "name digest" lines."""
    if path.is_file():
        return file_sha256(path)
    lines = [f"{f.relative_to(path).as_posix()} {file_sha256(f)}" for f in sorted(path.rglob("*")) if f.is_file()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _resolve_model_file(key: str, name: str, roots: list[str]) -> Path | None:
    """The file the loaders use for ``name`` (their resolvers, confined to the model roots), or None
    when it is not found locally (``hf:`` not cached, a typo): the record keeps it unhashed."""
    from workbench.loading.discover import resolve
    from workbench.lora import resolve_lora_file

    try:
        if key.startswith("lora."):
            return resolve_lora_file(name, roots or None)
        return resolve(name, key.removeprefix("model."), roots or None).path
    except Exception:  # noqa: BLE001 - not resolvable: recorded with sha256 null
        return None


def model_file_hashes(config: dict) -> dict[str, dict]:
    """sha256 of every model / LoRA file a resolved config names: {config key: {name, path, size, sha256}}.

    The embedded tiny model has no files (its identity is in ``models``), so this is empty for it.
    Names that are not local files (``hf:org/name``, or not found) are recorded with ``sha256: null``.
    """
    model = config.get("model") or {}
    if model.get("source", "tiny") == "tiny":
        return {}
    names = {f"model.{k}": model.get(k) for k in ("transformer", "text_encoder", "vae") if model.get(k)}
    for i, item in enumerate((config.get("lora") or {}).get("items") or []):
        if isinstance(item, dict) and item.get("file"):
            names[f"lora.items.{i}"] = item["file"]
    roots = list(model.get("roots") or [])
    out = {}
    for key, name in names.items():
        path = _resolve_model_file(key, str(name), roots)
        out[key] = {
            "name": name,
            "path": str(path) if path else None,
            "size": path.stat().st_size if path and path.is_file() else None,
            "sha256": path_sha256(path) if path else None,
        }
    return out


def reference_image_hashes(images: list[str]) -> list[dict]:
    """sha256 of each reference image file, so a reproduction can tell when an input image changed;
    ``asset:`` names are resolved as the pipeline opens them."""
    from workbench.config.limits import resolve_asset

    out = []
    for name in images:
        path = resolve_asset(name)
        data = path.read_bytes() if path.is_file() else None
        out.append({"path": name, "sha256": hashlib.sha256(data).hexdigest() if data is not None else None})
    return out


def provenance(bench, cfg, resolved: dict) -> dict:
    """What a result depends on besides its config: models (identity and file hashes), device,
    library versions, git commit, input images (each file read once here, for every image's entry)."""
    git = git_state()
    return {
        "models": bench.components.identity,
        "device": device_info(bench.device),
        "versions": library_versions(),
        "git_commit": git["commit"] if git else None,
        "git_dirty": git["dirty"] if git else None,  # uncommitted changes: the commit alone does not pin the code
        "model_files": model_file_hashes(resolved),  # sha256 per file; empty for the tiny model
        "reference_images": reference_image_hashes(list(cfg.images)),
        "init_image": reference_image_hashes([cfg.init_image] if cfg.init_image else []),
    }
