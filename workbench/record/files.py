"""Records as files: valid JSON, atomic writes, and the check that an output folder can take a run.

Files are written atomically (temporary file in the same folder, then ``os.replace``) so an
interrupted run never leaves a half-written image or record.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from workbench.errors import InputError


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




def _folder_error(path: Path, why: str, setting: str, what: str) -> InputError:
    return InputError(f"{what} {path} cannot be used: {why}; choose another with {setting}=PATH")


def check_output_dir(path: str | Path, setting: str = "hydra.run.dir", final: bool = True,
                     what: str = "output folder") -> None:
    """Refuse, before any model work, an output folder the run could not write its images and record
    into: a part of the path that is a file, a folder without write permission, ``images`` or
    ``record.json`` already there as the wrong kind of entry, a place where no folder can be made. Raises
    ``InputError`` naming the path and ``setting`` (the key that chooses the folder). Creates nothing (the
    probe file or folder is removed).
    ``final=False``: ``path`` is a folder the run folder will be made in (``outputs`` of
    ``outputs/${now:...}``), so what it holds is not the run's. ``what`` names the folder in the message
    (the compile cache is checked the same way)."""
    path = Path(path)
    probe = path
    while True:  # the deepest part of the path that exists
        try:
            os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise _folder_error(path, f"{probe} does not exist", setting, what) from None
            probe = probe.parent
        except OSError as err:  # a symlink loop, a folder we may not search, ...
            raise _folder_error(path, f"{probe}: {err.strerror}", setting, what) from None
    if not probe.is_dir():
        raise _folder_error(path, f"{probe} is a file, not a folder", setting, what)
    if not os.access(probe, os.W_OK | os.X_OK):
        action = "write into" if probe == path else "create folders in"
        raise _folder_error(path, f"no permission to {action} {probe}", setting, what)
    if probe != path:  # created by the run: prove a folder can be made there (root passes os.access
        try:           # everywhere; /proc, /sys and some mounts refuse mkdir whatever the bits say)
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".write-probe."))
        except OSError as err:
            raise _folder_error(path, f"cannot create folders in {probe} (mkdir refused: {err.strerror})", setting, what) from None
        return
    for name, want_dir in (("images", True), ("record.json", False)) if final else ():
        entry = path / name
        if entry.exists() and entry.is_dir() != want_dir:
            kind = "a file" if want_dir else "a folder"
            raise _folder_error(path, f"{entry} exists as {kind}; the run writes its {name} there (move it away)", setting, what)
    try:  # permission bits do not tell everything (root, read-only mounts, ACLs): try it
        with tempfile.TemporaryFile(dir=path, prefix=".write-probe."):
            pass
    except OSError as err:
        raise _folder_error(path, f"cannot write into {path}: {err.strerror}", setting, what) from None
