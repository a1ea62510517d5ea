"""Applying LoRAs to a resident transformer: forward hooks (strength changes are float updates) or a
fused merge into the weights with an exact unfuse; one ``LoraSet`` per model."""

from __future__ import annotations

import math
import os
import weakref
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.compiling import is_compiled
from workbench.config.lora import LoraAlpha, LoraItem
from workbench.lora.files import LoraError, resolve_lora_file
from workbench.lora.parse import LoraPair, LoraWeights, load_lora


class LoraSet:
    """The LoRAs applied to one transformer: one forward hook per targeted Linear adds
    ``sum_i strength_i * scale_i * up_i(down_i(x))`` to its output; ``fuse`` merges them into the
    weights instead (faster) and ``unfuse`` restores the exact original tensors."""

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)
        self._linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._table: dict[str, list[tuple[LoraPair, float]]] = {}  # module -> [(pair, strength)]
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._originals: dict[str, torch.Tensor] = {}  # module -> weight before fuse (same tensor)
        self.active: list[tuple[LoraWeights, float]] = []
        self.key: tuple = ()  # what was applied, to skip re-applying identical settings

    @property
    def fused(self) -> bool:
        return bool(self._originals)

    def set(self, loras: list[tuple[LoraWeights, float]], fuse: bool = False) -> None:
        """Replace the applied LoRAs; strength 0 entries are skipped (bit-for-bit no LoRA)."""
        self.unfuse()
        table: dict[str, list[tuple[LoraPair, float]]] = {}
        for weights, strength in loras:
            if strength == 0.0:
                continue
            for pair in weights.pairs:
                table.setdefault(pair.module, []).append((pair, strength))
        for name in list(self._handles):
            if name not in table:
                self._handles.pop(name).remove()
        for name in table:
            if name not in self._handles:
                self._handles[name] = self._linears[name].register_forward_hook(self._hook(name))
        self._table, self.active = table, list(loras)
        if fuse:
            self.fuse()

    def _hook(self, name: str):
        def hook(module: nn.Module, args, output: torch.Tensor):
            if self._originals:  # fused: the weights already hold the update
                return None
            x = args[0]
            for pair, strength in self._table.get(name, ()):
                down, up = pair.tensors(x.device, x.dtype)
                output = output + F.linear(F.linear(x, down), up) * (strength * pair.scale)
            return output

        return hook

    def fuse(self) -> None:
        """Merge the update into each weight (float32 sum, cast back), keeping the original tensors
        in host memory (a device copy would double the transformer's memory: 41 GB more for the 20 B
        model, measured as an out-of-memory on an 80 GB H100)."""
        if self.fused:
            return
        try:
            self._fuse()
        except BaseException:
            self.unfuse()  # all or nothing: never leave part of the weights fused
            raise

    def _fuse(self) -> None:
        for name, entries in self._table.items():
            weight = self._linears[name].weight
            if weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                self.unfuse()
                raise LoraError(
                    f"lora.fuse=true on {name}, whose weight is stored as {weight.dtype} (fp8 storage): fusing "
                    "would round the LoRA into fp8. Use lora.fuse=false (hooks) with fp8 storage"
                )
            if type(weight.data) is not torch.Tensor:  # a torchao fp8 tensor (precision=fp8_torchao)
                raise LoraError(
                    f"lora.fuse=true on {name}, whose weight is a {type(weight.data).__name__} (quantised for fp8 "
                    "compute): fusing would drop or re-round the quantisation. Use lora.fuse=false (hooks) with "
                    "perf.compile=none, or precision=bf16 to fuse"
                )
            delta = sum(strength * pair.delta(weight.device) for pair, strength in entries)
            original = weight.data
            fused = (original.float() + delta).to(weight.dtype)
            self._originals[name] = original.to("cpu") if original.device.type != "cpu" else original
            weight.data = fused

    def unfuse(self) -> None:
        """Put the original weight tensors back (the same bits, not a subtraction)."""
        for name, original in self._originals.items():
            weight = self._linears[name].weight
            weight.data = original.to(weight.device)
        self._originals.clear()

    def clear(self) -> None:
        self.set([])


_SETS: "weakref.WeakKeyDictionary[nn.Module, LoraSet]" = weakref.WeakKeyDictionary()


def lora_set(model: nn.Module) -> LoraSet:
    """The one ``LoraSet`` of ``model`` (components are cached and shared between workbenches)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper (perf.compile=full): the real modules
    if model not in _SETS:
        _SETS[model] = LoraSet(model)
    return _SETS[model]


def apply_loras(model: nn.Module, items: Sequence[LoraItem], fuse: bool = False, roots: Optional[Sequence[str]] = None) -> LoraSet:
    """Make exactly ``items`` active on ``model``; every file is checked before anything changes."""
    for item in items:
        if not math.isfinite(item.strength):
            raise LoraError(f"LoRA {item.file!r}: strength must be a finite number, got {item.strength}")
    paths = [resolve_lora_file(i.file, roots) for i in items]
    key = (tuple((str(p), os.stat(p).st_mtime_ns, i.strength, LoraAlpha(i.alpha)) for p, i in zip(paths, items)), fuse)
    hooks = not fuse and any(i.strength != 0.0 for i in items)
    if hooks and is_compiled(model):  # checked only when hooks would be added: generate calls this every run
        raise LoraError(
            "LoRAs as hooks (lora.fuse=false) cannot run inside a compiled transformer (perf.compile=regional / "
            "full): torch.compile would need a graph per hooked block (60) and stops at its recompile limit. "
            "Use lora.fuse=true (the update is merged into the weights, which the compiled graph reads as "
            "inputs: no recompile), or perf.compile=none for hooks"
        )
    model = getattr(model, "_orig_mod", model)
    lset = lora_set(model)
    if key != lset.key:
        parsed = [(load_lora(i, model, roots), i.strength) for i in items]  # raises before any change
        lset.set(parsed, fuse=fuse)
        lset.key = key
    return lset
