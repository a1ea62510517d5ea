"""Reading a ComfyUI workflow file (UI JSON, API JSON, or a PNG's text chunks) into one flat graph.

The file is untrusted: its size (MAX_BYTES) and JSON nesting (MAX_DEPTH) are checked before it is
parsed, non-UTF-8 text and non-finite numbers are refused, and every error names the file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from workbench.comfy.flatten import flatten_api, flatten_ui
from workbench.comfy.graph import Node, WorkflowError

# Limits on what a workflow file may hold, checked before it is read (real ComfyUI workflows are
# ~50 KB and nest ~9 levels deep): a hostile or broken file is refused with a message naming the
# limit instead of exhausting memory or the stack. The node limits are workbench.comfy.flatten's.
MAX_BYTES = 8 * 1024 * 1024  # a .json file, or a PNG's workflow text chunk
MAX_DEPTH = 64  # JSON nesting ({} and [] levels)

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal (brackets in it do not nest)


def read_workflow(path: Path) -> tuple[dict[str, Node], str]:
    """Flat nodes of a workflow file (UI JSON, API JSON, or PNG with ComfyUI's text chunks) + a description."""
    path = Path(path)
    if path.is_dir():
        raise WorkflowError(f"{path} is a folder: give a workflow .json (UI or API format) or a ComfyUI .png")
    if not path.exists():
        raise WorkflowError(f"workflow file {str(path)!r} not found")
    if not path.is_file():  # a pipe or a device would block or never end
        raise WorkflowError(f"{path} is not a regular file: give a workflow .json (UI or API format) or a ComfyUI .png")
    try:
        with path.open("rb") as f:
            is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        size = path.stat().st_size
    except OSError as err:
        raise WorkflowError(f"cannot read workflow file {path}: {err.strerror or err}") from None
    if is_png:
        return _read_png(path)
    if size > MAX_BYTES:  # checked before reading: a huge file is refused without loading it
        raise WorkflowError(f"{path} is {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB limit for a "
                            "workflow file (MAX_BYTES): is it a ComfyUI workflow export?")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise WorkflowError(f"cannot read workflow file {path}: {err.strerror or err}") from None
    data = _parse_json(raw, str(path))
    nodes, kind = _parse(data, str(path))
    return nodes, f"{path.name} ({kind})"


def _read_png(path: Path) -> tuple[dict[str, Node], str]:
    import zlib

    from PIL import Image, UnidentifiedImageError

    try:  # Image.open parses the chunks up to the image data, where ComfyUI puts its text chunks
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError, zlib.error, EOFError) as err:
        # PIL: SyntaxError "broken PNG file" (bad CRC), ValueError for chunks over its safety limits
        raise WorkflowError(f"{path}: the PNG is corrupt or truncated, its text chunks cannot be read "
                            f"({type(err).__name__}: {err}); export the workflow from ComfyUI as .json "
                            "instead") from None
    # `prompt` (API) is what ComfyUI actually executed; `workflow` (UI) is the editable graph.
    for key in ("prompt", "workflow"):
        if key in text:
            where = f"{path} (PNG text chunk {key!r})"
            if not isinstance(text[key], str):
                raise WorkflowError(f"{where} is not text")
            raw = text[key].encode("utf-8", "surrogatepass")
            if len(raw) > MAX_BYTES:
                raise WorkflowError(f"{where} is {len(raw) / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB "
                                    "limit for a workflow (MAX_BYTES)")
            nodes, kind = _parse(_parse_json(raw, where), where)
            return nodes, f"{path.name} (PNG text chunk '{key}', {kind})"
    hint = " (it is a workbench image: use `workbench reproduce`)" if "workbench" in text else ""
    raise WorkflowError(f"{path} has no ComfyUI 'prompt' or 'workflow' text chunk{hint}")


def _refuse_constant(name: str) -> Any:
    raise WorkflowError(f"non-finite number {name} (not JSON; ComfyUI never writes it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WorkflowError(f"number {text} overflows a float (not a value ComfyUI writes)")
    return value


def json_depth(raw: bytes) -> int:
    """Deepest {} / [] nesting of a JSON text, without parsing it (strings do not count)."""
    import numpy as np

    b = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (b == ord("[")).astype(np.int32) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def _parse_json(raw: bytes, where: str) -> Any:
    """JSON from UTF-8 bytes, refusing non-UTF-8 text, nesting over MAX_DEPTH and non-finite numbers."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise WorkflowError(f"{where} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}): "
                            "ComfyUI saves workflows as UTF-8 JSON; re-export or re-save it as UTF-8") from None
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise WorkflowError(f"{where} nests {depth} levels deep, over the limit of {MAX_DEPTH} (MAX_DEPTH; "
                            "ComfyUI workflows nest about 9): not a ComfyUI workflow")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{where} is not valid JSON: {err}") from None
    except WorkflowError as err:
        raise WorkflowError(f"{where}: {err}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer over Python's 4300-digit conversion limit
        raise WorkflowError(f"{where} cannot be read as JSON: {err}") from None


def _parse(data: Any, where: str) -> tuple[dict[str, Node], str]:
    try:
        return parse_workflow(data)
    except WorkflowError as err:
        raise WorkflowError(f"{where}: {err}") from None


def parse_workflow(data: Any) -> tuple[dict[str, Node], str]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return flatten_ui(data), f"ComfyUI UI workflow, version {data.get('version', '?')}"
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a /prompt request body
        data = data["prompt"]
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return flatten_api(data), "ComfyUI API workflow"
    raise WorkflowError("not a ComfyUI workflow: expected UI format (a 'nodes' list) or API format "
                        "({id: {class_type, inputs}})")
