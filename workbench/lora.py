"""LoRAs on the resident transformer: read any common key style, apply through forward hooks.

Why hand-written rather than diffusers' ``load_lora_weights`` (0.42.1):
- it silently loads NOTHING for bare ``X.lora_A/B`` keys and for bare ``X.lora_down/up`` keys
  without ``.alpha`` (checked on the tiny model; ``tests/test_lora.py`` pins it), and errors on
  ``transformer.X.lora_A`` + ``transformer.X.alpha`` (it prefixes ``transformer.`` twice);
- it needs PEFT and injects adapter modules into the model, while a researcher sweeps strengths and
  swaps LoRAs per run: here a strength change is a float update and a swap replaces small hook
  tables; the transformer is never rebuilt or reloaded.

Key styles (``style`` in ``LoraWeights.styles``; ``X`` = a dotted module name of the transformer):
    diffusers  transformer.X.lora_A.weight / lora_B.weight     (diffusers / PEFT)
    bare       X.lora_A.weight / lora_B.weight                  (PEFT state dicts, musubi, DiffSynth)
    down_up    X.lora_down.weight / lora_up.weight + X.alpha    (lightx2v, DiffSynth, older trainers)
    comfyui    diffusion_model.X.<A/B or down/up> (+ .alpha)    (ComfyUI saves / loads)
    kohya      lora_unet_<X with . -> _>.lora_down/up + .alpha  (kohya sd-scripts; mapped back to X
                                                                by matching the model's module names)

Alpha (``LoraAlpha``): ``apply`` scales each pair by ``alpha / rank`` where the file has ``X.alpha``
(ComfyUI for every style; diffusers 0.42.1's Qwen converter does too, and applies
``lora_alpha / r`` from a diffusers file's ``lora_adapter_metadata``), ``ignore`` never does
(DiffSynth-Studio's ``GeneralLoRALoader`` adds ``strength * B @ A`` and never reads ``.alpha``).

Every key must be used: keys that match no ``nn.Linear``, shapes that do not fit, half pairs and
unknown LoRA kinds (LoKr, LoHa, ``diff_b``, DoRA) raise ``LoraError`` listing them.
"""

from __future__ import annotations

from workbench.errors import InputError
import json
import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.config.schema import LoraAlpha, LoraItem


class LoraError(InputError):
    """A LoRA file does not fit the transformer; the message lists the offending keys and the fix."""


class LoraNotFound(LoraError, FileNotFoundError):
    """No usable file at any place a LoRA name can mean (nothing there, or a dangling link, a link loop,
    a directory); a ``FileNotFoundError`` too, for callers that catch that."""


# ----------------------------------------------------------------------------- file resolution
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


# ----------------------------------------------------------------------------- parsing
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


def parse_lora(
    state_dict: dict[str, torch.Tensor],
    linear_shapes: dict[str, tuple[int, int]],
    source: str = "<state dict>",
    alpha: LoraAlpha = LoraAlpha.apply,
    metadata: Optional[dict[str, str]] = None,
) -> LoraWeights:
    """Map every key of ``state_dict`` to a Linear of ``linear_shapes`` ({name: (out, in)}) or raise."""
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
        down, up = roles["down"][1], roles["up"][1]
        down, up = (w.flatten(1) if w.dim() == 4 else w for w in (down, up))  # 1x1-conv layout (r, in, 1, 1)
        fused = _fused_target(module, linear_shapes)
        target = fused[0] if fused else module
        out_f, in_f = linear_shapes[target]
        out_f = out_f // 3 if fused else out_f
        rank = down.shape[0]
        if down.dim() != 2 or up.dim() != 2 or down.shape[1] != in_f or up.shape != (out_f, rank):
            bad_shapes.append(
                f"{module}: expected down (r, {in_f}) and up ({out_f}, r), found {tuple(down.shape)} and {tuple(up.shape)}"
            )
            continue
        scale = 1.0
        if alpha == LoraAlpha.apply and "alpha" in roles:
            scale = float(roles["alpha"][1]) / rank
        elif alpha == LoraAlpha.apply and peft_scale is not None:
            scale = peft_scale
        up = up.float()
        if fused:  # zero rows for the other two thirds of the fused projection
            up = torch.cat([up if i == fused[1] else torch.zeros_like(up) for i in range(3)])
        pairs.append(LoraPair(target, down.float(), up, scale))
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


# ----------------------------------------------------------------------------- applying
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


def _is_compiled(model: nn.Module) -> bool:
    """perf.compile=full wraps the model; regional compile sets each block's ``_compiled_call_impl``."""
    return hasattr(model, "_orig_mod") or any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def apply_loras(model: nn.Module, items: Sequence[LoraItem], fuse: bool = False, roots: Optional[Sequence[str]] = None) -> LoraSet:
    """Make exactly ``items`` active on ``model``; every file is checked before anything changes."""
    for item in items:
        if not math.isfinite(item.strength):
            raise LoraError(f"LoRA {item.file!r}: strength must be a finite number, got {item.strength}")
    paths = [resolve_lora_file(i.file, roots) for i in items]
    key = (tuple((str(p), os.stat(p).st_mtime_ns, i.strength, LoraAlpha(i.alpha)) for p, i in zip(paths, items)), fuse)
    hooks = not fuse and any(i.strength != 0.0 for i in items)
    if hooks and _is_compiled(model):  # checked only when hooks would be added: generate calls this every run
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
