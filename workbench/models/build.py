"""The model cache and the build order: load -> attention prep -> precision -> compile -> LoRA.

Each (model, precision, device, perf) is built once per process; ``free_models()`` releases them,
``free_model(key)`` one of them (``resident_models()`` names the keys). A new build that does not fit beside the
resident ones on its device releases the least recently used of them first (a sweep over precision or perf on one
card), with a log line; the weights check before any load counts their memory as available (``reclaimable_bytes``).
LoRAs are not part of that key: they go on the built transformer through hooks (or fused), so a
LoRA swap never rebuilds or reloads a model (``components_for``). Nor are ``perf.attention_kernel`` and
``perf.vae_single_frame``: both are set per run on the resident models (``Workbench.generate``).
"""

from __future__ import annotations

import gc
import hashlib
import logging
from dataclasses import replace
import sys
from typing import Optional, Sequence

import torch

from workbench.config import AttentionKernel, Config, MemoryMode, ModelConfig, ModelSource, PerfConfig, PrecisionConfig
from workbench.config import limits
from workbench.lora import apply_loras
from workbench.models.components import Components, build_components, resolve_device
from workbench.compiling import compile_transformer
from workbench.perf import check_perf, prepare_attention, set_run_perf
from workbench.precision import apply_precision, check_device
from workbench.user_cache import check_cache_dir

log = logging.getLogger(__name__)
_CACHE: dict[tuple, Components] = {}  # in order of last use: the first is released first
_ABOUT: dict[tuple, dict[str, str]] = {}  # cache key -> the names a memory view shows (model, precision, perf)
SLOTS = ("text_encoder", "transformer", "vae")


def build(model: ModelConfig, precision: PrecisionConfig, device: str, perf: Optional[PerfConfig] = None,
          loras: Sequence = ()) -> Components:
    """Build one component set in the order the levers need, every setting checked before any load."""
    perf = perf or PerfConfig()
    check_cache_dir(perf)  # a compile cache Inductor could not write fails before any load, not mid-build
    check_device(precision, resolve_device(device))  # an impossible precision fails before any load
    check_perf(perf, precision)
    components = build_components(model, precision, device, loras=loras)
    prepare_attention(components.transformer, perf)  # fuses bf16 weights: before fp8 storage / quantisation
    components = apply_precision(components, precision)
    components.transformer = compile_transformer(components.transformer, perf)
    set_run_perf(components, perf)  # the per-run switches, as built (a run sets them again)
    return components


def cached_components(
    model: ModelConfig, precision: PrecisionConfig, device: str, perf: Optional[PerfConfig] = None, loras=()
) -> Components:
    """``build`` each (model, precision, device, perf) once per process.

    ``loras`` (the run's ``LoraItem``s) are not part of the key: when the models are built, their files
    are checked with the model files before any weight loads (``loading.load.preflight``)."""
    perf = perf or PerfConfig()
    key = _cache_key(model, precision, device, perf)
    if key not in _CACHE:
        _make_room(key, model, precision)
        _CACHE[key] = build(model, precision, device, perf, loras)
        _ABOUT[key] = {"model": model.name, "description": model.description, "precision": precision.name,
                       "perf": perf.name}
    _CACHE[key] = _CACHE.pop(key)  # the most recently used goes last
    return _CACHE[key]


def _same_device(key: tuple, device: str) -> bool:
    return str(resolve_device(key[3])) == str(resolve_device(device))


def _others_on(key: tuple, device: str, precision: PrecisionConfig) -> list[tuple]:
    """The resident builds whose weights hold ``device``'s memory, besides ``key``'s, least recently used first.
    Nothing for a streamed (offload) build: its weights sit in host memory, what it needs on the card is not their size."""
    if precision.memory != MemoryMode.all_on_device:
        return []
    return [k for k in _CACHE if k != key and _same_device(k, device)]


def reclaimable_bytes(cfg: Config) -> int:
    """What the resident builds other than ``cfg``'s hold on its device: building ``cfg`` releases them if needed."""
    key = _cache_key(cfg.model, cfg.precision, cfg.device, cfg.perf)
    return sum(_nbytes_of(_CACHE[k]) for k in _others_on(key, cfg.device, cfg.precision))


def resident_bytes_on(device: str, precision: PrecisionConfig) -> int:
    """What every build resident on ``device`` holds, which a new build at ``precision`` there would release if
    needed (the model panel, before a config exists)."""
    return sum(_nbytes_of(_CACHE[k]) for k in _others_on((), device, precision))


def _make_room(key: tuple, model: ModelConfig, precision: PrecisionConfig) -> None:
    """Release resident builds, least recently used first, until the new one's weights fit beside the rest."""
    device = key[3]
    others = _others_on(key, device, precision)
    if not others:
        return
    need = weights_need(model, precision)
    free, where = limits.available_memory(str(resolve_device(device)))
    while others and need > free:
        old = others.pop(0)
        about = _ABOUT.get(old, {})
        log.warning("releasing the resident build %s (model=%s precision=%s perf=%s, %s) to make room for the %s "
                    "of model=%s precision=%s on %s", _key_id(old), about.get("model"), about.get("precision"),
                    about.get("perf"), limits.fmt_bytes(_nbytes_of(_CACHE[old])), limits.fmt_bytes(need), model.name,
                    precision.name, where)
        del _CACHE[old]
        _ABOUT.pop(old, None)
        _release()
        free, where = limits.available_memory(str(resolve_device(device)))


def weights_need(model: ModelConfig, precision: PrecisionConfig) -> int:
    """The bytes a build's weights take: seeded models from their sizes, files from their headers (no weight read)."""
    from workbench.config.preflight import seeded_parameters, weight_width

    if model.source == ModelSource.tiny:
        return seeded_parameters(model.tiny) * weight_width(precision)
    from workbench.loading.load import preflight

    modules = [prepared.model for prepared in preflight(model).values()]
    return sum(p.numel() for m in modules for p in m.parameters()) * weight_width(precision)


def _cache_key(model: ModelConfig, precision: PrecisionConfig, device: str, perf: PerfConfig) -> tuple:
    # dataclass reprs hold every field, recursively; the attention kernel and the VAE's convolutions are set per
    # run (Workbench.generate)
    per_run = replace(perf, attention_kernel=AttentionKernel.sdpa, vae_single_frame=False)
    return (repr(model), repr(precision), repr(per_run), device)


def is_resident(cfg: Config) -> bool:
    """Whether ``cfg``'s components are already built in this process (a run of it draws no new weights)."""
    return _cache_key(cfg.model, cfg.precision, cfg.device, cfg.perf) in _CACHE


def components_for(cfg: Config) -> Components:
    """The run's components, built (or reused), with exactly ``cfg.lora``'s LoRAs on the transformer."""
    components = cached_components(cfg.model, cfg.precision, cfg.device, cfg.perf, loras=cfg.lora.items)
    apply_loras(components.transformer, list(cfg.lora.items), fuse=cfg.lora.fuse, roots=cfg.model.roots or None)
    return components


def free_models() -> int:
    """Drop every resident model; returns how many component sets were released."""
    n = len(_CACHE)
    _CACHE.clear()
    _ABOUT.clear()
    _release()
    return n


def free_model(key: str) -> bool:
    """Drop one resident component set, named by its ``resident_models()`` ``key``; the others stay.
    False when no set has that key (already freed, or freed by ``free_models``)."""
    found = [k for k in _CACHE if _key_id(k) == key]
    for k in found:
        del _CACHE[k]
        _ABOUT.pop(k, None)
    if found:
        _release()
    return bool(found)


def _release() -> None:
    """Give the memory of dropped component sets back now, not whenever Python's GC runs."""
    # LoRA hooks (and compiled graphs) hold modules in reference cycles: without a collection the
    # weights stay allocated until Python's GC happens to run (an out-of-memory on the H100, run7)
    gc.collect()
    if "torch._dynamo" in sys.modules:  # compiled graphs of the released models (the others recompile once)
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _key_id(key: tuple) -> str:
    """A short stable name of one cache key (the key itself is the settings' full reprs)."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:12]


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _nbytes_of(components: Components) -> int:
    return sum(_nbytes(getattr(components, s)) for s in SLOTS)


def _dtype(module: torch.nn.Module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


def resident_models() -> list[dict]:
    """One entry per cached component set (key for ``free_model``, model / precision / perf names, identity,
    device, dtypes, weight bytes), for memory views (the model panel) without reaching into the cache;
    bytes count parameters and buffers."""
    return [
        {"key": _key_id(k), **_ABOUT.get(k, {}), "identity": dict(c.identity), "device": str(c.device),
         "dtypes": {s: _dtype(getattr(c, s)) for s in SLOTS}, "bytes": {s: _nbytes(getattr(c, s)) for s in SLOTS}}
        for k, c in list(_CACHE.items())
    ]
