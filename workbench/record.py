"""What a run writes: images with their config in a PNG text chunk, and ``record.json``.

Files are written atomically (temporary file in the same folder, then ``os.replace``) so an
interrupted run never leaves a half-written image or record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, PngImagePlugin

from workbench.errors import InputError

if TYPE_CHECKING:  # torch is imported where used: the CLI checks output folders before loading it
    import torch

PNG_KEY = "workbench"  # PNG tEXt/iTXt chunk holding the image's record
LIBRARIES = ("qwen-image-workbench", "torch", "transformers", "diffusers", "hydra-core", "omegaconf", "safetensors", "pillow")


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which races with other threads creating files): Linux reports it in /proc/self/status."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once, under a lock for this module's callers
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``mkstemp`` creates the file 0600; it gets the mode a plain ``open`` would give (0666 less the
    umask) before the rename, so colleagues can read outputs as they can read any other file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by the string JSON readers expect from JavaScript
    (``"NaN"``, ``"Infinity"``, ``"-Infinity"``; Python's ``float()`` reads them back): bare ``NaN``
    is not JSON, and most parsers refuse a file that holds it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` that always writes valid JSON (``allow_nan=False`` after ``json_safe``)."""
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps(obj, indent=2) + "\n").encode("utf-8"))


def _folder_error(path: Path, why: str, setting: str) -> InputError:
    return InputError(f"output folder {path} cannot be used: {why}; choose another with {setting}=PATH")


def check_output_dir(path: str | Path, setting: str = "hydra.run.dir", final: bool = True) -> None:
    """Refuse, before any model work, an output folder the run could not write its images and record
    into: a part of the path that is a file, a folder without write permission, ``images`` or
    ``record.json`` already there as the wrong kind of entry. Raises ``InputError`` naming the path
    and ``setting`` (the key that chooses the folder). Creates nothing (a probe file is removed).
    ``final=False``: ``path`` is a folder the run folder will be made in (``outputs`` of
    ``outputs/${now:...}``), so what it holds is not the run's."""
    path = Path(path)
    probe = path
    while True:  # the deepest part of the path that exists
        try:
            os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise _folder_error(path, f"{probe} does not exist", setting) from None
            probe = probe.parent
        except OSError as err:  # a symlink loop, a folder we may not search, ...
            raise _folder_error(path, f"{probe}: {err.strerror}", setting) from None
    if not probe.is_dir():
        raise _folder_error(path, f"{probe} is a file, not a folder", setting)
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "write into" if probe == path else "create folders in"
        raise _folder_error(path, f"no permission to {what} {probe}", setting)
    if probe != path:
        return  # created by the run; nothing in it yet
    for name, want_dir in (("images", True), ("record.json", False)) if final else ():
        entry = path / name
        if entry.exists() and entry.is_dir() != want_dir:
            kind = "a file" if want_dir else "a folder"
            raise _folder_error(path, f"{entry} exists as {kind}; the run writes its {name} there (move it away)", setting)
    try:  # permission bits do not tell everything (root, read-only mounts, ACLs): try it
        with tempfile.TemporaryFile(dir=path, prefix=".write-probe."):
            pass
    except OSError as err:
        raise _folder_error(path, f"cannot write into {path}: {err.strerror}", setting) from None


def png_bytes(image: Image.Image, record: dict | None = None, compress_level: int = 6) -> bytes:
    """PNG-encode ``image``; with ``record``, as JSON in the text chunk ``workbench``. Lossless at any
    ``compress_level`` (zlib: 1 fastest, 6 Pillow's default, 9 smallest)."""
    import io

    info = PngImagePlugin.PngInfo()
    if record is not None:
        info.add_itxt(PNG_KEY, dumps(record))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def save_png(path: Path, image: Image.Image, record: dict) -> None:
    """Save ``image`` with ``record`` (JSON) in the PNG text chunk ``workbench``, atomically."""
    atomic_write_bytes(path, png_bytes(image, record))


# ----------------------------------------------------------------------------- reading records back
# A record read back is data from outside (a file anyone may have edited): every reader here checks its
# shape and names the file and the key on failure; nothing read here is ever interpolated or resolved,
# and the image paths a record names are kept inside its own folder.
def _png_text(path: Path) -> dict:
    """The text chunks of the PNG at ``path``; the whole file is decoded, so a truncated one is refused."""
    import struct
    import zlib

    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise InputError(f"{path} is a {img.format} image, not a PNG written by the workbench")
            return dict(img.text)  # type: ignore[attr-defined]  # loads the image data too
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as err:
        raise InputError(f"{path} is not a readable PNG ({type(err).__name__}: {err}): truncated or corrupt; "
                         "use the file `workbench run` wrote") from None


def read_png_record(path: Path) -> dict:
    """The record (a JSON object) in the ``workbench`` text chunk of a PNG the workbench wrote."""
    path = Path(path)
    text = _png_text(path).get(PNG_KEY)
    if text is None:
        raise InputError(f"{path} has no '{PNG_KEY}' text chunk: it was not written by the workbench")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: its '{PNG_KEY}' chunk is not valid JSON ({err.msg} at character {err.pos}); "
                         "the file was damaged or edited") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: its '{PNG_KEY}' chunk is a JSON {_json_type(record)}, expected an object "
                         "(a workbench record with 'config' and 'image')")
    return record


def check_png(path: Path) -> None:
    """Refuse (naming the file) a PNG that cannot be decoded completely: truncated, corrupt, not a PNG."""
    _png_text(Path(path))


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def read_record_json(path: Path) -> dict:
    """A ``record.json`` as written by ``workbench run`` (a JSON object); InputError naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not a PNG and not UTF-8 text ({err.reason} at byte {err.start}): "
                         "give a record.json or a PNG written by `workbench run`") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not a PNG and not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
                         "give a record.json or a PNG written by `workbench run`") from None
    if not isinstance(record, dict):
        raise InputError(f"{path} is a JSON {_json_type(record)}, not a workbench record.json (an object with "
                         "'config' and 'images')")
    return record


def inside(folder: Path, name: Any, what: str) -> Path:
    """``folder / name`` for a relative path that stays inside ``folder`` once symlinks are resolved."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} must be a relative file name (a string), got {name!r}")
    if Path(name).is_absolute():
        raise InputError(f"{what} = {name!r} is an absolute path; a record's files must be inside its folder {folder}")
    root = Path(folder).resolve()
    target = (root / name).resolve()  # follows symlinks: a link pointing outside is caught too
    if not target.is_relative_to(root):
        raise InputError(f"{what} = {name!r} points outside the record's folder {folder} (to {target}); "
                         "a record's files must stay inside its folder")
    return Path(folder) / name  # as the record names it (messages and reports stay readable); checked above


def record_images(record: dict, path: Path) -> list[tuple[dict, Path]]:
    """[(image entry, its PNG)] of a ``record.json`` at ``path``; every entry an object whose ``file``
    stays inside the record's folder."""
    images = record.get("images")
    if not isinstance(images, list) or not images:
        got = "missing" if images is None else f"a JSON {_json_type(images)}" if not isinstance(images, list) else "empty"
        raise InputError(f"{path}: 'images' is {got}; a workbench record.json lists its images as "
                         "[{\"file\": \"images/...png\", \"prompt\": ..., \"seed\": ...}]")
    out = []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict):
            raise InputError(f"{path}: images[{i}] is a JSON {_json_type(entry)} ({entry!r:.60}), expected an object "
                             "with 'file', 'prompt' and 'seed' as `workbench run` writes")
        if "file" not in entry:
            raise InputError(f"{path}: images[{i}] has no 'file' key: it must name the image, "
                             "e.g. \"file\": \"images/000-seed0-a-fox.png\"")
        out.append((entry, inside(path.parent, entry["file"], f"{path}: images[{i}].file")))
    return out


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
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
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


def git_commit() -> str | None:
    """The project's commit when run from a checkout (None when installed elsewhere or git is absent)."""
    state = git_state()
    return state["commit"] if state else None


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


def cache_dir() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/qwen-image-workbench."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qwen-image-workbench"


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
    cache_file = cache_dir() / HASH_CACHE
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


def _find_model_file(name: str, roots: list[str]) -> Path | None:
    """A model name as the config gives it: a path, or a file / folder name under the model roots."""
    p = Path(name).expanduser()
    if p.exists():
        return p.resolve()
    if not roots:
        env = os.environ.get("WORKBENCH_MODELS")
        roots = env.split(os.pathsep) if env else ["models"]
    for root in map(Path, roots):
        if (root / name).exists():
            return (root / name).resolve()
        if root.is_dir():
            found = next((f for f in root.rglob(Path(name).name) if f.exists()), None)
            if found is not None:
                return found.resolve()
    return None


def _resolve_model_file(key: str, name: str, roots: list[str]) -> Path | None:
    """The file the loaders use for ``name`` (their resolvers when present), else a plain search."""
    try:
        if key.startswith("lora."):
            from workbench.lora import resolve_lora_file

            return resolve_lora_file(name, roots or None)
        from workbench.loading.discover import resolve

        return resolve(name, key.removeprefix("model."), roots or None).path
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - not resolvable (hf: not cached, not found): record it unhashed
        return None
    return None if name.startswith("hf:") else _find_model_file(name, roots)


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
    """sha256 of each reference image file, so a reproduction can tell when an input image changed."""
    assets = Path(__file__).resolve().parent / "assets"
    out = []
    for name in images:
        path = assets / name.removeprefix("asset:") if name.startswith("asset:") else Path(name)
        data = path.read_bytes() if path.is_file() else None
        out.append({"path": name, "sha256": hashlib.sha256(data).hexdigest() if data is not None else None})
    return out


def provenance(bench, cfg, resolved: dict) -> dict:
    """What a result depends on besides its config: models (identity and file hashes), device,
    library versions, git commit, input images. One place, for ``workbench run`` and sweep cells."""
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
