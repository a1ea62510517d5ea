"""Weights into a model tensor by tensor, straight to the target device and dtype.

The model is built with empty (meta) parameters, names and shapes are checked against the file
headers before any data is read, then each tensor is read (memory-mapped by safetensors), de-scaled
if it is scaled fp8, cast, moved, and assigned in place of the empty parameter: no full extra copy
of the model is held in RAM. A tqdm bar shows progress for big files.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from workbench.loading import quant
from workbench.loading.errors import LoadError, few
from workbench.loading.header import Header
from workbench.loading.keys import Chunk

PROGRESS_BYTES = 512 * 2**20  # show a bar when the component is larger than this
ALIGNMENT = 64  # bytes: what PyTorch's CPU allocator gives every fresh tensor


def fresh(tensor: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A copy of ``tensor`` in new, allocator-aligned storage (cast / moved on the way), never a view.

    Why: safetensors (0.8 on some machines) hands back float32 tensors that are views into the file's
    bytes, only 8-byte aligned; ``.to()`` keeps such storage when nothing changes, and CPU kernels take
    another (vectorised vs scalar) path on it, so loaded weights gave latents differing in the last
    bits from the same weights built in memory. Copying every loaded tensor makes results bit-identical
    on any machine, and lets the file's mapping go.
    """
    out = torch.empty(tensor.shape, dtype=dtype or tensor.dtype, device=device or tensor.device)
    out.copy_(tensor)
    return out


def is_aligned(tensor: torch.Tensor, alignment: int = ALIGNMENT) -> bool:
    return tensor.numel() == 0 or tensor.data_ptr() % alignment == 0


def realign(model: torch.nn.Module) -> torch.nn.Module:
    """Give every CPU parameter and buffer of ``model`` fresh storage (see ``fresh``), in place.

    For models a library loaded (diffusers' GGUF reader keeps tensors in the file's memory map, 32-byte
    aligned); ``param.data`` is swapped so tensor subclasses (GGUFParameter) keep their attributes.
    """
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if p.device.type == "cpu":
                    p.data = fresh(p.data)
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and buf.device.type == "cpu":
                    module._buffers[name] = fresh(buf)
    return model


def _file_name(ref: str | Chunk) -> str:
    return ref.name if isinstance(ref, Chunk) else ref


def _shape(header: Header, ref: str | Chunk) -> tuple[int, ...]:
    shape = header.tensors[_file_name(ref)].shape
    if not isinstance(ref, Chunk):
        return shape
    rows = shape[0] / ref.chunks if shape else 0  # a fraction never equals a model shape: check_names says so
    return (int(rows) if rows == int(rows) else rows, *shape[1:])


@dataclass
class TensorSource:
    """Where each model tensor lives: ``names[model name] = (header, file name)``; the file name is a
    ``keys.Chunk`` where the model tensor is one part of a fused file tensor."""

    names: dict[str, tuple[Header, str | Chunk]]

    @classmethod
    def single(cls, header: Header, name_map: dict[str, str | Chunk]) -> "TensorSource":
        return cls({model: (header, file) for model, file in name_map.items()})

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {model: _shape(h, file) for model, (h, file) in self.names.items()}

    @property
    def where(self) -> str:
        return ", ".join(sorted({str(h.path) for h, _ in self.names.values()}))


def empty_model(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build with parameters on the meta device (no memory), buffers real (RoPE tables etc.)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def check_names(model: torch.nn.Module, source: TensorSource, what: str, optional: tuple[str, ...] = ()) -> None:
    """Every parameter present with its shape, nothing left over: fail before reading anything."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in optional}
    found = source.shapes
    missing = expected.keys() - found.keys()
    extra = found.keys() - expected.keys() - set(optional)
    wrong = {k: (found[k], expected[k]) for k in expected.keys() & found.keys() if tuple(found[k]) != expected[k]}
    where = source.where
    if missing:
        raise LoadError(
            f"{where}: {what} is missing {len(missing)} of {len(expected)} tensors, e.g. {few(missing)}; "
            "the file is incomplete (truncated conversion?) or of another model"
        )
    if wrong:
        eg = "; ".join(f"{k}: file {list(f)}, model {list(e)}" for k, (f, e) in sorted(wrong.items())[:3])
        raise LoadError(
            f"{where}: shape mismatch in {len(wrong)} tensors of the {what} ({eg}); the tensors do not "
            "fit one model of this architecture (mixed or damaged file?)"
        )
    if extra:
        raise LoadError(
            f"{where}: {len(extra)} tensors the {what} does not have, e.g. {few(extra)}; "
            "this file holds more than (or something other than) this model"
        )


def _nbytes(header: Header, ref: str | Chunk) -> int:
    return header.tensors[_file_name(ref)].nbytes // (ref.chunks if isinstance(ref, Chunk) else 1)


def _read(f, ref: str | Chunk, header: Header, path: Path) -> torch.Tensor:
    """One model tensor from an open file: de-scaled if scaled fp8, then its part if it is a ``Chunk``."""
    file_name = _file_name(ref)
    tensor = f.get_tensor(file_name)
    quant.check_format(f.get_tensor, file_name, header.tensors, path)
    scale = quant.scale_name(file_name, header.tensors)
    if scale is not None:
        tensor = quant.descale(tensor, f.get_tensor(scale), file_name, path)
    return tensor.chunk(ref.chunks, dim=0)[ref.index] if isinstance(ref, Chunk) else tensor


def fill(model: torch.nn.Module, source: TensorSource, device: torch.device, dtype: torch.dtype, what: str,
         finish: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """Read, de-scale, cast and assign every tensor; cast floating buffers like ``Module.to`` would.

    ``finish`` runs after assignment (e.g. tying lm_head to the embeddings when the file has none).
    """
    from safetensors import safe_open
    from tqdm.auto import tqdm

    by_file: dict[Path, list[tuple[str, str | Chunk, Header]]] = defaultdict(list)
    for model_name, (header, ref) in source.names.items():
        by_file[header.path].append((model_name, ref, header))
    total = sum(_nbytes(h, ref) for h, ref in source.names.values())
    state = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {what}", disable=total < PROGRESS_BYTES) as bar:
        for path, items in by_file.items():
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    for model_name, ref, header in items:
                        state[model_name] = fresh(_read(f, ref, header, path), device, dtype)  # never the file's storage
                        bar.update(_nbytes(header, ref))
            except LoadError:
                raise
            except Exception as err:  # safetensors raises its own error type for damaged data
                raise LoadError(f"{path}: could not read tensors ({type(err).__name__}: {err}); the file is damaged") from None
    model.load_state_dict(state, strict=False, assign=True)
    if finish is not None:
        finish(model)
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None:
                # as _place does for built models: cast only when the run's dtype is not the build dtype
                cast = buf.is_floating_point() and dtype != torch.get_default_dtype()
                module._buffers[name] = buf.to(device=device, dtype=dtype if cast else buf.dtype)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # pragma: no cover - check_names guarantees this; kept as the invariant's guard
        raise LoadError(f"{source.where}: {what} parameters left empty after loading: {few(leftover)}")
    return model.eval()
