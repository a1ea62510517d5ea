"""What both families' preparers share: the ``Prepared`` component and folder tensor sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench.loading.detect import weight_files
from workbench.loading.discover import Entry
from workbench.loading.errors import LoadError, few
from workbench.loading.header import read_header
from workbench.loading.stream import TensorSource


@dataclass
class Prepared:
    """A component checked from its headers, weights not read yet: ``load(device, dtype)`` reads them."""

    slot: str
    entry: Entry
    model: Any  # the module with empty (meta) parameters: its config and Linear shapes are known
    report: dict
    load: Callable[[Any, Any], Any]  # (torch.device, torch.dtype) -> the module
    tokenizer: Any = None


def folder_source(folder: Path, rename) -> TensorSource:
    files = weight_files(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth"))
        why = f" (only pickle files {few(others)}, which are refused: they can run code when loaded)" if others else ""
        raise LoadError(f"{folder}: no .safetensors weights in this folder{why}")
    names: dict = {}
    for file in files:
        header = read_header(file)
        for model_name, file_name in rename(header.tensors).items():
            if model_name in names:
                raise LoadError(f"{folder}: tensor {model_name} is in both {names[model_name][0].path.name} and {file.name}")
            names[model_name] = (header, file_name)
    return TensorSource(names)


def prepare_vl_encoder(entry: Entry, model_class, config, source: TensorSource, report: dict, tokenizer) -> Prepared:
    """A Qwen VL text encoder of either family, checked against ``source``; a file without ``lm_head`` gets
    the embeddings tied in (the head is never run for conditioning)."""
    from workbench.loading.stream import check_names, empty_model, fill

    tied = "lm_head.weight" not in source.names
    model = empty_model(lambda: model_class(config))
    check_names(model, source, "text encoder", optional=("lm_head.weight",) if tied else ())

    def tie(m):
        m.lm_head.weight = m.model.language_model.embed_tokens.weight

    def load(device, dtype):
        return fill(model, source, device, dtype, "text encoder", finish=tie if tied else None)

    return Prepared("text_encoder", entry, model, report, load, tokenizer)


def prepare_module(slot: str, entry: Entry, model_class, config: dict, source: TensorSource, report: dict,
                   label: str, load: Callable[[Any, Any], Any] | None = None) -> Prepared:
    """A diffusers model (transformer, VAE) of either family built empty from ``config`` and checked against
    ``source``; ``load``: how its weights are read (default: streamed from ``source``)."""
    from workbench.loading.stream import check_names, empty_model, fill

    model = empty_model(lambda: model_class.from_config(config))
    check_names(model, source, label)
    return Prepared(slot, entry, model, report, load or (lambda device, dtype: fill(model, source, device, dtype, label)))
