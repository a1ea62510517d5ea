"""LoRA files: where a name points (the model roots' ``loras/``), reading a file once (cached), and
checking that it holds LoRA keys; every problem is a ``LoraError`` naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from workbench.errors import InputError


class LoraError(InputError):
    """A LoRA file does not fit the transformer; the message lists the offending keys and the fix."""


class LoraNotFound(LoraError, FileNotFoundError):
    """No usable file at any place a LoRA name can mean (nothing there, or a dangling link, a link loop,
    a directory); a ``FileNotFoundError`` too, for callers that catch that."""


def resolve_lora_file(file: str, roots: Optional[Sequence[str]] = None) -> Path:
    """A path as given, else ``<root>/loras/<file>`` (with or without ``.safetensors``) under the
    model roots of model discovery (model.roots, else $WORKBENCH_MODELS, else ./models).

    A candidate that exists but cannot be a LoRA file (a directory, a dangling link, a link loop)
    is named with the reason rather than reported as "not found"."""
    from workbench.loading.discover import model_roots
    from workbench.loading.header import os_error_reason

    candidates = [Path(file).expanduser()]
    for root in model_roots(list(roots) if roots else None):
        base = root / "loras" / file
        candidates += [base, base.with_name(base.name + ".safetensors")]
    broken = []
    for c in candidates:
        if c.is_file():
            return c.resolve()
        if c.is_symlink() or c.is_dir():  # there, but not a readable file: say why
            try:
                os.stat(c)
                reason = "is a directory where a LoRA .safetensors file is expected; give the file inside it"
            except OSError as err:
                reason = os_error_reason(c, err)
            broken.append(f"{c}: {reason}")
    if broken:  # a FileNotFoundError too: config-time checks report it as the key's error
        raise LoraNotFound(f"LoRA file {file!r}: " + "; ".join(broken))
    raise LoraNotFound(
        f"LoRA file {file!r} not found; looked at: {', '.join(str(c) for c in candidates)}. "
        "Give a path to the file, or put it in loras/ under a model root (model.roots, else $WORKBENCH_MODELS, "
        "else ./models) and give its name"
    )


_RAW_CACHE: dict[tuple, tuple[dict[str, torch.Tensor], dict[str, str]]] = {}
_RAW_CACHE_SIZE = 8


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors header metadata, cached by (path, mtime, size) so strength sweeps
    and swapping back and forth never re-read a file."""
    from workbench.loading.header import os_error_reason

    try:
        st = os.stat(path)
    except OSError as err:
        raise LoraError(f"LoRA file {path}: {os_error_reason(Path(path), err)}") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _RAW_CACHE:
        from workbench.loading.header import refuse_pickle

        refuse_pickle(path)  # the same rule as for model files: no pickles
        if path.suffix != ".safetensors":
            raise LoraError(f"LoRA file {path}: unknown suffix {path.suffix!r}; expected .safetensors")
        check_lora_header(path)  # a renamed pickle, a truncated or corrupt file: one line naming it
        from safetensors import safe_open

        from workbench.loading.stream import fresh

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                # fresh storage: safetensors' own may be only 8-byte aligned (see loading.stream.fresh)
                tensors = {k: fresh(f.get_tensor(k)) for k in f.keys()}
                metadata = dict(f.metadata() or {})
        except Exception as err:  # noqa: BLE001 - safetensors' own error type for damaged data, OSError
            raise LoraError(
                f"LoRA file {path}: could not read its tensors ({type(err).__name__}: {err}); the file is damaged, fetch it again"
            ) from None
        while len(_RAW_CACHE) >= _RAW_CACHE_SIZE:
            _RAW_CACHE.pop(next(iter(_RAW_CACHE)))
        _RAW_CACHE[key] = (tensors, metadata)
    return _RAW_CACHE[key]


def check_lora_header(path: Path):
    """The file's safetensors header, read and checked to hold LoRA keys (no tensor data is read).

    Every problem is a ``LoraError`` naming the file: a pickle renamed ``.safetensors``, a truncated
    or corrupt file, an unreadable one, or a model file given as a LoRA."""
    from workbench.loading.detect import KINDS, classify
    from workbench.loading.errors import LoadError
    from workbench.loading.header import read_header

    try:
        header = read_header(path)
    except LoadError as err:
        raise LoraError(f"LoRA file {err}") from None
    kind, layout, _ = classify(header.tensors)
    if kind in ("text_encoder", "transformer", "vae"):  # other key kinds: parse_lora lists them
        raise LoraError(f"LoRA file {path} is a {KINDS[kind]} ({layout}), not a LoRA; give it as model.{kind}")
    return header
