"""The record inside each image (the PNG text chunk ``workbench``), and reading records back.

A record read back is data from outside (a file anyone may have edited): every reader here checks its
shape and names the file and the key on failure; nothing read here is ever interpolated or resolved,
and the image paths a record names are kept inside its own folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from workbench.errors import InputError
from workbench.record.files import atomic_write_bytes, dumps
from workbench.record.png_encode import encode_png

PNG_KEY = "workbench"  # PNG tEXt/iTXt chunk holding the image's record


def png_bytes(image: Image.Image, record: dict | None = None, compress_level: int = 6) -> bytes:
    """PNG-encode ``image``; with ``record``, as JSON in the text chunk ``workbench``. Lossless at any
    ``compress_level`` (zlib: 1 fastest, 6 Pillow's default, 9 smallest). Encoded on several threads
    (``png_encode``: a large sweep grid is written after the last cell, on the critical path); the file
    is a standard PNG, read back here with Pillow."""
    return encode_png(image, None if record is None else {PNG_KEY: dumps(record)}, compress_level)


def save_png(path: Path, image: Image.Image, record: dict) -> None:
    """Save ``image`` with ``record`` (JSON) in the PNG text chunk ``workbench``, atomically."""
    atomic_write_bytes(path, png_bytes(image, record))


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


def record_source(path: str | Path) -> Path:
    """The file to read a record from: ``path`` (a record.json or a PNG), or the ``record.json`` of a run
    folder (the folder ``workbench run`` prints as its last line). InputError naming what is missing."""
    path = Path(path)
    if path.is_dir():
        if (path / "record.json").is_file():
            return path / "record.json"
        raise InputError(f"{path} is a folder without a record.json: give a run's folder (the one `workbench run` "
                         "printed), its record.json or one of its images")
    if not path.is_file():
        raise InputError(f"{path} not found: give a record.json, a run folder or a PNG written by `workbench run`")
    return path


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
