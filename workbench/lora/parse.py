"""LoRA key mapping: every key of a file to a ``nn.Linear`` of the transformer, in any common key style
(see the package docstring), with alpha and fused q / k / v projections; a key that fits nothing fails."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from workbench.config.lora import LoraAlpha, LoraItem
from workbench.lora.files import LoraError, check_lora_header, read_lora_file, resolve_lora_file

_PAIR_SUFFIXES = {  # key ending -> role
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_A.default.weight": "down",  # PEFT adapter named "default"
    ".lora_B.default.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}
_PREFIXES = (  # (prefix, style) tried in order; the first that matches is stripped
    ("model.diffusion_model.", "comfyui"),
    ("diffusion_model.", "comfyui"),
    ("transformer.", "diffusers"),
    ("base_model.model.", "bare"),
    ("lora_unet_", "kohya"),
)


@dataclass
class LoraPair:
    """One low-rank update of one ``nn.Linear``: ``delta W = scale * up @ down``."""

    module: str  # dotted module name in the transformer
    down: torch.Tensor  # (rank, in_features)
    up: torch.Tensor  # (out_features, rank)
    scale: float  # alpha / rank, or 1
    _cast: dict = field(default_factory=dict, repr=False)  # (device, dtype) -> (down, up)

    def tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cast:
            self._cast.clear()  # keep one copy: the device / dtype of the run
            self._cast[key] = (self.down.to(device, dtype), self.up.to(device, dtype))
        return self._cast[key]

    def delta(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``scale * up @ down`` in float32, (out_features, in_features), computed on ``device`` (the
        weight's: on the CPU, fusing 840 rank-64 pairs into the 20 B model took a minute, run7)."""
        return self.scale * (self.up.to(device, torch.float32) @ self.down.to(device, torch.float32))


@dataclass
class LoraWeights:
    """A parsed LoRA file, checked against one transformer's Linear shapes."""

    source: str
    pairs: list[LoraPair]
    styles: set[str]  # key styles seen in the file
    alpha: LoraAlpha


def _split_key(key: str) -> tuple[str, str, str]:
    """``key`` -> (style, module path as in the file, role) or raises KeyError for unknown kinds."""
    style = "bare"
    for prefix, name in _PREFIXES:
        if key.startswith(prefix):
            style, key = name, key[len(prefix) :]
            break
    for suffix, role in _PAIR_SUFFIXES.items():
        if key.endswith(suffix):
            base = key[: -len(suffix)]
            if style == "bare" and ("lora_down" in suffix or "lora_up" in suffix):
                style = "down_up"
            return style, base, role
    raise KeyError(key)


def _peft_scale(metadata: dict[str, str]) -> Optional[float]:
    """``lora_alpha / r`` from a diffusers file's ``lora_adapter_metadata`` (as PEFT applies it)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise LoraError("lora_adapter_metadata in the file's header is not a JSON object; the file is damaged")
    r, alpha = meta.get("transformer.r"), meta.get("transformer.lora_alpha")
    if meta.get("transformer.rank_pattern") or meta.get("transformer.alpha_pattern"):
        raise LoraError("lora_adapter_metadata has rank_pattern / alpha_pattern, which the workbench does not read")
    return None if r is None or alpha is None else float(alpha) / float(r)


# perf.fast_attention fuses q / k / v into one Linear (diffusers ``fuse_projections``) and drops the
# separate ones: a LoRA on X.to_k then targets rows [out, 2 out) of X.to_qkv.
_FUSED_QKV = {
    "to_q": ("to_qkv", 0), "to_k": ("to_qkv", 1), "to_v": ("to_qkv", 2),
    "add_q_proj": ("to_added_qkv", 0), "add_k_proj": ("to_added_qkv", 1), "add_v_proj": ("to_added_qkv", 2),
}


def _fused_away_names(linear_shapes: dict[str, tuple[int, int]]) -> list[str]:
    """The separate q / k / v module names that fused projections in ``linear_shapes`` stand for."""
    out = []
    for name in linear_shapes:
        parent, _, leaf = name.rpartition(".")
        out += [f"{parent}.{k}" for k, (fused, _) in _FUSED_QKV.items() if fused == leaf]
    return out


def _fused_target(module: str, linear_shapes: dict[str, tuple[int, int]]) -> Optional[tuple[str, int]]:
    """(fused module, which third) when ``module`` was fused away, else None."""
    parent, _, leaf = module.rpartition(".")
    if leaf in _FUSED_QKV and module not in linear_shapes:
        fused = f"{parent}.{_FUSED_QKV[leaf][0]}"
        if fused in linear_shapes:
            return fused, _FUSED_QKV[leaf][1]
    return None


def _few(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _group_keys(state_dict: dict[str, torch.Tensor], linear_shapes: dict[str, tuple[int, int]]):
    """Sort the file's keys by target module: ({module: {role: (key, tensor)}}, styles seen, keys of an
    unknown kind, keys that match no Linear)."""
    # kohya flattens dots to underscores; map back through the model's own names (and the q / k / v
    # names a fused projection replaced)
    flat: dict[str, Optional[str]] = {}
    for name in linear_shapes:
        flat[name.replace(".", "_")] = None if name.replace(".", "_") in flat else name  # None: ambiguous

    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # module -> role -> (key, tensor)
    styles: set[str] = set()
    unknown, unmatched = [], []
    for key, tensor in state_dict.items():
        try:
            style, path, role = _split_key(key)
        except KeyError:
            unknown.append(key)
            continue
        module = flat.get(path) if style == "kohya" else path
        if module is None and style == "kohya":  # a fused-away projection has no flat name left
            module = next((m for m in _fused_away_names(linear_shapes) if m.replace(".", "_") == path), None)
        if module not in linear_shapes and (module is None or _fused_target(module, linear_shapes) is None):
            unmatched.append(key)
            continue
        if role != "alpha":  # an .alpha key carries no style of its own
            styles.add(style)
        groups.setdefault(module, {})[role] = (key, tensor)
    return groups, styles, unknown, unmatched


def _make_pair(module: str, roles: dict, linear_shapes: dict[str, tuple[int, int]], alpha: LoraAlpha,
               peft_scale: Optional[float]) -> LoraPair | str:
    """The ``LoraPair`` of one module's down / up (/ alpha) tensors, or why its shapes do not fit."""
    down, up = roles["down"][1], roles["up"][1]
    down, up = (w.flatten(1) if w.dim() == 4 else w for w in (down, up))  # 1x1-conv layout (r, in, 1, 1)
    fused = _fused_target(module, linear_shapes)
    target = fused[0] if fused else module
    out_f, in_f = linear_shapes[target]
    out_f = out_f // 3 if fused else out_f
    rank = down.shape[0]
    if down.dim() != 2 or up.dim() != 2 or down.shape[1] != in_f or up.shape != (out_f, rank):
        return f"{module}: expected down (r, {in_f}) and up ({out_f}, r), found {tuple(down.shape)} and {tuple(up.shape)}"
    scale = 1.0
    if alpha == LoraAlpha.apply and "alpha" in roles:
        scale = float(roles["alpha"][1]) / rank
    elif alpha == LoraAlpha.apply and peft_scale is not None:
        scale = peft_scale
    up = up.float()
    if fused:  # zero rows for the other two thirds of the fused projection
        up = torch.cat([up if i == fused[1] else torch.zeros_like(up) for i in range(3)])
    return LoraPair(target, down.float(), up, scale)


def parse_lora(
    state_dict: dict[str, torch.Tensor],
    linear_shapes: dict[str, tuple[int, int]],
    source: str = "<state dict>",
    alpha: LoraAlpha = LoraAlpha.apply,
    metadata: Optional[dict[str, str]] = None,
) -> LoraWeights:
    """Map every key of ``state_dict`` to a Linear of ``linear_shapes`` ({name: (out, in)}) or raise
    one ``LoraError`` listing every key that does not fit."""
    groups, styles, unknown, unmatched = _group_keys(state_dict, linear_shapes)
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} key(s) of a kind the workbench does not apply (only LoRA down/up pairs and "
            f".alpha; LoKr / LoHa / diff / dora_scale are not supported): {_few(unknown)}"
        )
    if unmatched:
        problems.append(
            f"{len(unmatched)} key(s) match no nn.Linear of the transformer (wrong model family or a "
            f"text-encoder LoRA?): {_few(unmatched)}; the transformer has e.g. {_few(list(linear_shapes), 3)}"
        )

    peft_scale = _peft_scale(metadata or {}) if alpha == LoraAlpha.apply else None
    pairs, bad_shapes, half = [], [], []
    for module, roles in groups.items():
        if "down" not in roles or "up" not in roles:
            half.append(f"{module} has only {sorted(roles)}")
            continue
        pair = _make_pair(module, roles, linear_shapes, alpha, peft_scale)
        (pairs if isinstance(pair, LoraPair) else bad_shapes).append(pair)
    if half:
        problems.append(f"{len(half)} incomplete pair(s): {_few(half)}")
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatch(es) (a LoRA for another model size?): {_few(bad_shapes, 3)}")
    if not problems and not pairs:
        problems.append("no LoRA pairs found (empty file?)")
    if problems:
        raise LoraError(f"LoRA {source}: " + "; ".join(problems) + ". Nothing was applied")
    return LoraWeights(source, pairs, styles, alpha)


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def load_lora(item: LoraItem, model: nn.Module, roots: Optional[Sequence[str]] = None) -> LoraWeights:
    path = resolve_lora_file(item.file, roots)
    tensors, metadata = read_lora_file(path)
    return parse_lora(tensors, linear_shapes(model), str(path), item.alpha, metadata)


def check_lora_files(items: Sequence[LoraItem], roots: Optional[Sequence[str]] = None, transformer: Optional[nn.Module] = None) -> None:
    """Pre-flight for a run's LoRAs, before any model loads: each file found, readable, holding LoRA keys;
    with ``transformer`` (may have empty meta weights) its keys and shapes are checked against its layers."""
    shapes = linear_shapes(transformer) if transformer is not None else None
    for item in items:
        path = resolve_lora_file(item.file, roots)  # where the config check and set_loras look (model.roots)
        check_lora_header(path)
        if shapes is not None:
            tensors, metadata = read_lora_file(path)  # cached: applying it later reads nothing again
            parse_lora(tensors, shapes, str(path), item.alpha, metadata)
