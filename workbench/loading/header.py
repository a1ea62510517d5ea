"""Cheap facts about a weights file from its header only: tensor names, dtypes, shapes, metadata.

A 40 GB safetensors file has a JSON header of a few hundred KB at its start; reading only that lets
``workbench models`` classify a whole models folder in milliseconds and lets the loaders check
names and shapes against the model before a single weight is read. GGUF headers are read with the
``gguf`` package (memory-mapped, no tensor data touched).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from workbench.loading.errors import LoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# first bytes of torch.save's zip archives and of raw pickles (protocol 2-5): a checkpoint renamed .safetensors
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name (BF16, F8_E4M3, F32...) or GGUF type name (Q8_0, F16...)
    shape: tuple[int, ...]
    nbytes: int
    begin: int = -1  # safetensors: offset of the data from Header.data_start (small companions are read from it)


@dataclass
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "safetensors"  # or "gguf"
    data_start: int = 0  # safetensors: where the tensor data begins (8 + header length)

    def read_bytes(self, name: str, limit: int = 4096) -> bytes:
        """The raw bytes of a small tensor (a ``comfy_quant`` JSON blob), without a tensor library."""
        t = self.tensors[name]
        if self.format != "safetensors" or t.begin < 0 or t.nbytes > limit:
            return b""
        with open(self.path, "rb") as f:
            f.seek(self.data_start + t.begin)
            return f.read(t.nbytes)

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


def os_error_reason(path: Path, err: OSError) -> str:
    """One line saying why ``path`` could not be opened and what to do (no errno jargon alone)."""
    code = err.errno
    if code == errno.ELOOP:
        return "symbolic link loop (the link points, directly or through others, back at itself); point it at the real file or remove it"
    if code == errno.ENOENT and path.is_symlink():
        return f"dangling symbolic link to {os.readlink(path)!r}, which does not exist; fix the link or remove it"
    if code == errno.ENOENT:
        return "no such file (removed while the workbench was reading the folder?)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: the workbench cannot read it; make it readable (chmod a+r) or copy it to a readable folder"
    if code == errno.EISDIR:
        return "is a directory where a weights file is expected; give the .safetensors / .gguf file inside it, or a model folder with config.json"
    return f"cannot be read ({err.strerror or err}); check the file and its disk"


def unreadable(path: Path, err: OSError) -> LoadError:
    return LoadError(f"{path}: {os_error_reason(path, err)}")


def read_header(path: str | Path) -> Header:
    """Parse and validate the header of a .safetensors or .gguf file (no tensor data is read)."""
    path = Path(path)
    refuse_pickle(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise LoadError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or .gguf")
    try:  # an unreadable file, a directory, a dangling link or a link loop: one line, not an OSError
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if path.suffix.lower() == ".gguf":
            with open(path, "rb"):
                pass
            return _read_gguf_header(path)
        return _read_safetensors_header(path)
    except OSError as err:
        raise unreadable(path, err) from None


def _read_safetensors_header(path: Path) -> Header:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoadError(f"{path}: {size} bytes, too short to be a safetensors file (truncated or empty)")
        (n,) = struct.unpack("<Q", head)
        if head.startswith(_PICKLE_MAGIC):
            raise LoadError(
                f"{path}: not a safetensors file but a Python pickle / PyTorch checkpoint (named .safetensors); "
                "pickles can run arbitrary code when loaded and are refused. Get the real .safetensors release, or "
                "convert it once in a trusted environment (safetensors.torch.save_file)"
            )
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
    if not isinstance(entries, dict):
        raise LoadError(f"{path}: corrupt safetensors: the header is JSON but not an object of tensors; re-download the file")
    metadata = entries.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, e in entries.items():
        try:
            begin, stop = (int(x) for x in e["data_offsets"])
            tensors[name] = TensorInfo(str(e["dtype"]), tuple(int(d) for d in e["shape"]), stop - begin, begin)
        except (KeyError, TypeError, ValueError):
            raise LoadError(
                f"{path}: corrupt safetensors: header entry {name!r} lacks a valid dtype / shape / data_offsets; re-download the file"
            ) from None
        end = max(end, stop)
    if 8 + n + end > size:
        raise LoadError(
            f"{path}: truncated safetensors: tensors need {8 + n + end} bytes but the file has {size} "
            f"({(8 + n + end - size) / 2**20:.1f} MiB missing); the download or copy was cut short, fetch it again"
        )
    return Header(path, tensors, metadata, data_start=8 + n)


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
