"""Cheap facts about a weights file from its header only: tensor names, dtypes, shapes, metadata.

A 40 GB safetensors file has a JSON header of a few hundred KB at its start; reading only that lets
``workbench models`` classify a whole models folder in milliseconds and lets the loaders check
names and shapes against the model before a single weight is read. GGUF headers are read with the
``gguf`` package (memory-mapped, no tensor data touched).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from workbench.loading.errors import LoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name (BF16, F8_E4M3, F32...) or GGUF type name (Q8_0, F16...)
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "safetensors"  # or "gguf"

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoadError(
            f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code when loaded; "
            "the workbench loads only .safetensors and .gguf. Convert it once in a trusted environment "
            "(safetensors.torch.save_file) or download the .safetensors release"
        )


def read_header(path: str | Path) -> Header:
    """Parse and validate the header of a .safetensors or .gguf file (no tensor data is read)."""
    path = Path(path)
    refuse_pickle(path)
    if path.suffix.lower() == ".gguf":
        return _read_gguf_header(path)
    if path.suffix.lower() != ".safetensors":
        raise LoadError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or .gguf")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoadError(f"{path}: {size} bytes, too short to be a safetensors file (truncated or empty)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise LoadError(
                f"{path}: corrupt safetensors: header claims {n} bytes but the file has {size}; "
                "the file is truncated or not a safetensors file (re-download it)"
            )
        raw = f.read(n)
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoadError(f"{path}: corrupt safetensors: header is not valid JSON ({err}); re-download the file") from None
    metadata = entries.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, e in entries.items():
        begin, stop = e["data_offsets"]
        tensors[name] = TensorInfo(e["dtype"], tuple(e["shape"]), stop - begin)
        end = max(end, stop)
    if 8 + n + end > size:
        raise LoadError(
            f"{path}: truncated safetensors: tensors need {8 + n + end} bytes but the file has {size} "
            f"({(8 + n + end - size) / 2**20:.1f} MiB missing); the download or copy was cut short, fetch it again"
        )
    return Header(path, tensors, metadata)


def _read_gguf_header(path: Path) -> Header:
    try:
        import gguf
    except ImportError:
        raise LoadError(f"{path}: reading GGUF files needs the 'gguf' package: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError / struct.error / OSError on bad files
        raise LoadError(f"{path}: corrupt or truncated GGUF file ({type(err).__name__}: {err}); re-download it") from None
    tensors = {
        t.name: TensorInfo(t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.n_bytes))
        for t in reader.tensors
    }
    arch = reader.fields.get("general.architecture")
    meta = {"general.architecture": bytes(arch.parts[-1]).decode()} if arch is not None else {}
    return Header(path, tensors, meta, format="gguf")
