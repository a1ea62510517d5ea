"""Finding model files: the model roots, ComfyUI sub-folders, diffusers / HF folders, the HF cache.

A component is named by its path relative to the root it was found in (``diffusion_models/x.safetensors``,
``Qwen-Image/transformer``) or ``hf:org/name`` for the HF cache; configs use the names
``workbench models`` prints. Kinds come from headers only, so listing a folder of 60 GB is instant.
"""

from __future__ import annotations

import difflib
import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.loading.detect import Detected, detect_folder, detect_header
from workbench.loading.errors import LoadError
from workbench.loading.header import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, os_error_reason, read_header, unreadable

ENV = "WORKBENCH_MODELS"
# ComfyUI's folder names -> the kind of file users keep there (detection decides; this is a hint).
COMFY_FOLDERS = {"text_encoders": "text_encoder", "clip": "text_encoder", "diffusion_models": "transformer",
                 "unet": "transformer", "vae": "vae", "loras": "lora"}
PIPELINE_PARTS = ("transformer", "text_encoder", "vae")


@dataclass
class Entry:
    name: str  # what configs refer to
    path: Path
    kind: str  # text_encoder | transformer | vae | lora | unknown | unreadable
    layout: str = ""
    dtype: str = ""
    size: int = 0  # bytes on disk
    variant: str | None = None
    note: str = ""  # detection evidence or the reason it cannot be used
    detected: Detected | None = None
    family: str = ""  # qwen-image | qwen-image-2.1 (Variant.family): which architecture the file is

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("detected")
        d["path"] = str(self.path)
        return d


def model_roots(roots: list[str] | None = None) -> list[Path]:
    """Config roots if given, else $WORKBENCH_MODELS (os.pathsep-separated), else ./models."""
    if not roots:
        env = os.environ.get(ENV, "")
        roots = [r for r in env.split(os.pathsep) if r] or ["models"]
    return [Path(r).expanduser().resolve() for r in roots]


def _size(path: Path) -> int:
    """Bytes on disk; 0 for what cannot be stat'ed (a dangling link, a loop): listing never fails on it."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def entry_for(path: Path, name: str) -> Entry:
    """Detect one file or folder; a broken one becomes an entry that says why (listing never fails)."""
    try:
        if path.is_dir() and path.suffix.lower() in WEIGHT_SUFFIXES + PICKLE_SUFFIXES and not (path / "config.json").is_file():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))  # named like a file
        if path.is_dir():
            det = detect_folder(path)
        else:
            det = detect_header(read_header(path), name)
    except (LoadError, OSError) as err:  # OSError: a folder whose config / files cannot be read
        note = str(unreadable(path, err) if isinstance(err, OSError) else err).removeprefix(f"{path}: ")
        pickle = path.suffix.lower() in PICKLE_SUFFIXES or "Python pickle" in note
        return Entry(name, path, "refused" if pickle else "unreadable", size=_size(path), note=note)
    if det.refused:  # a component in a form the loaders do not read (int8_convrot ...): listed with the reason
        return Entry(name, path, "refused", det.layout, det.dtype, _size(path), det.variant,
                     f"{det.what()}: {det.refused}", det, det.family)
    note = det.looks_like or (f"variant from {det.variant_from}" if det.variant else "")
    if det.sample_sigmas:
        note += f" ({len(det.sample_sigmas)} fixed sigmas {det.sample_sigmas}: give them as sampler.sigmas)"
    return Entry(name, path, det.kind, det.layout, det.dtype, _size(path), det.variant, note, det, det.family)


def _scan_root(root: Path) -> list[Entry]:
    out: list[Entry] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: a link to an ancestor is walked once

    def unlistable(err: OSError) -> None:  # a folder os.walk cannot list: say so instead of skipping it silently
        if err.filename:
            bad = Path(err.filename)
            out.append(Entry(_rel(bad, root), bad, "unreadable", note=os_error_reason(bad, err)))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlistable):
        here = Path(dirpath)
        rel = lambda p: _rel(p, root)  # noqa: E731
        try:
            st = here.stat()
        except OSError:
            dirnames.clear()
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        if "model_index.json" in filenames:  # diffusers pipeline: list its parts, stop descending
            out += [entry_for(here / part, rel(here / part)) for part in PIPELINE_PARTS if (here / part / "config.json").is_file()]
            dirnames.clear()
            continue
        if "config.json" in filenames and any(f.endswith(".safetensors") for f in filenames):
            out.append(entry_for(here, rel(here)))
            dirnames.clear()
            continue
        dirnames.sort()
        for d in [d for d in dirnames if d.lower().endswith(WEIGHT_SUFFIXES + PICKLE_SUFFIXES)]:
            if not (here / d / "config.json").is_file():  # a folder named like a weights file: list why it is unusable
                dirnames.remove(d)
                out.append(entry_for(here / d, rel(here / d)))
        for f in sorted(filenames):
            if f.lower().endswith(WEIGHT_SUFFIXES + PICKLE_SUFFIXES):
                out.append(entry_for(here / f, rel(here / f)))
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def hf_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def _scan_hf_cache() -> list[Entry]:
    """Model repos in the local HF cache (HF_HUB_CACHE / HF_HOME), newest snapshot of each."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(hf_cache_dir())
    except Exception:  # no cache folder yet
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        snap = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path
        if (snap / "model_index.json").is_file():
            out += [entry_for(snap / p, f"hf:{repo.repo_id}/{p}") for p in PIPELINE_PARTS if (snap / p / "config.json").is_file()]
        elif (snap / "config.json").is_file():
            out.append(entry_for(snap, f"hf:{repo.repo_id}"))
    return out


def scan(roots: list[str] | None = None, hf_cache: bool = True) -> list[Entry]:
    """Everything usable (and everything not, with the reason) under the roots and in the HF cache."""
    out = []
    for root in model_roots(roots):
        if root.is_dir():
            out += _scan_root(root)
    return out + (_scan_hf_cache() if hf_cache else [])


# ----------------------------------------------------------------------------- resolving a name
def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hf_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hf_cache_dir()))
    except Exception:
        known = [e.name for e in _scan_hf_cache()]
        close = difflib.get_close_matches(f"hf:{repo_id}", known, n=3, cutoff=0.5)
        raise LoadError(
            f"hf:{repo_id}: not in the local HF cache {hf_cache_dir()}"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (download it once with `hf download` on a machine that has the network)"
        ) from None


def resolve(name: str, slot: str, roots: list[str] | None = None) -> Entry:
    """The file or folder that ``name`` means for ``slot``, confined to the model roots."""
    if name.startswith("hf:"):
        parts = name[3:].split("/", 2)  # org / repo [/ sub-folder]
        repo_id = "/".join(parts[:2])
        path = _hf_snapshot(repo_id).joinpath(*parts[2:])
        if (path / "model_index.json").is_file():
            path, name = path / slot, f"hf:{repo_id}/{slot}"
        return entry_for(path, name)
    bases = model_roots(roots)
    for root in bases:
        given = root / name
        try:
            path = given.resolve()
        except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a symlink loop
            path = None
        if path is None or (given.is_symlink() and not given.exists()):  # a loop or a dangling link
            if _inside(Path(os.path.abspath(given)), root):
                return entry_for(given, name)  # kind "unreadable" with the reason; the loaders raise it
            continue
        if not _inside(path, root):
            raise LoadError(
                f"{name!r} resolves to {path}, outside the model root {root}; names are relative to the model "
                f"roots (model.roots, ${ENV}); add that folder as a root instead of reaching it through '..' or an absolute path"
            )
        if path.exists():
            if path.is_dir() and (path / "model_index.json").is_file():
                path, name = path / slot, f"{name.rstrip('/')}/{slot}"
            return entry_for(path, name)
    entries = scan(roots)
    by_base = [e for e in entries if e.path.name == name]
    if len(by_base) == 1:
        return by_base[0]
    names = [e.name for e in entries]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or difflib.get_close_matches(
        name, [Path(n).name for n in names], n=3, cutoff=0.5)
    raise LoadError(
        f"model.{slot}={name!r} not found under {', '.join(map(str, bases))}"
        + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "")
        + " (`workbench models` lists the names)"
    )
