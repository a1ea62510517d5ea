"""torch.compile of the diffusion transformer: one graph for every text length, a cache that outlives the
process, and counts of what each run compiled (written into its record).

- **Text length is dynamic from the first call.** A template ablation changes the prompt's token count in
  every cell; compiled static, each new length was a new graph (H200: +2 s in bf16, +60 s with fp8 per
  new template). The block's text inputs are marked dynamic before each compiled call
  (``torch._dynamo.mark_dynamic``), so the first graph serves every length; the image dimension stays
  static (``dynamic=False``), since a resolution change is rare and static shapes give the best kernels.
- **Persistent cache.** Inductor's FX-graph and AOTAutograd caches (on by default in torch) are written
  under ``cache_dir()``: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else ``torch-compile`` in the workbench's
  cache folder (``~/.cache/qwen-image-workbench``) instead of torch's default under /tmp, which a reboot clears.
  ``workbench cache`` shows its size; ``workbench cache --clear`` empties it.
- **Saved trace** (``perf.precompile=true``): the compiled block is saved with Dynamo's trace in
  the same folder (``precompiled/``) and a new process loads it instead of tracing the block again
  (workbench/precompiled.py).
- **Beneath cache hooks** (``accel`` methods whose hooks wrap whole blocks): the compiled call becomes the block's
  ``forward`` while the hooks are on (workbench/hooked_compile.py).
- **Counts.** ``CompileCounts.now()`` reads torch's own counters (graphs captured, cache hits / misses,
  seconds spent compiling); a generation records the difference (``record["compile"]``).
"""

from __future__ import annotations

import os
import shutil
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench.config import CompileMode, InductorMode, PerfConfig
from workbench.errors import InputError
from workbench.precompiled import FOLDER as PRECOMPILED
from workbench.user_cache import ENV, default_cache_dir


def _user_setting() -> str | None:
    """``$TORCHINDUCTOR_CACHE_DIR`` as the user set it. Inductor writes its own /tmp default into the variable
    the first time anything asks for its cache folder (model loading can), so that value means "unset"."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    value = os.environ.get(ENV)
    return None if not value or os.path.abspath(value) == os.path.abspath(torch_default()) else value


def cache_dir() -> Path:
    """Where compiled artefacts go: ``$TORCHINDUCTOR_CACHE_DIR`` if the user set it, else our default."""
    return Path(_user_setting() or default_cache_dir())


def use_persistent_cache() -> Path:
    """Point Inductor's caches (FX graphs, AOTAutograd, Triton kernels) at ``cache_dir()``."""
    path = cache_dir()
    os.environ[ENV] = str(path)
    return path


def cache_size_bytes(path: Path | None = None) -> int:
    path = path or cache_dir()
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def clear_cache(path: Path | None = None) -> int:
    """Delete the compile cache; returns the bytes freed. Refuses a folder that is not a compile cache
    (a mistyped ``$TORCHINDUCTOR_CACHE_DIR`` must not cost the user their home folder)."""
    path = (path or cache_dir()).expanduser()
    if not path.exists():
        return 0
    known = {"fxgraph", "aotautograd", "triton", "locks", PRECOMPILED}
    if path != default_cache_dir() and not any((path / name).exists() for name in known):
        raise InputError(
            f"{path} (from ${ENV}) does not look like a torch compile cache (none of {sorted(known)} in it): "
            "not deleting it. Delete it yourself if you are sure, or unset the variable."
        )
    size = cache_size_bytes(path)
    shutil.rmtree(path)
    return size


@dataclass(frozen=True)
class CompileCounts:
    """torch's process-wide compile counters (and the saved blocks', workbench/precompiled.py) at one moment;
    ``b - a`` is what happened in between."""

    graphs: int = 0  # graphs Dynamo captured, for saving too (a recompile for a new shape is one more)
    fx_cache_hits: int = 0  # Inductor FX-graph cache: compiled code found on disk
    fx_cache_misses: int = 0  # ... or compiled now (then written for the next process)
    aot_cache_hits: int = 0  # AOTAutograd cache
    precompiled_loads: int = 0  # saved compiled blocks loaded (perf.precompile: no Dynamo tracing)
    precompiled_saves: int = 0  # ... or compiled and saved now
    precompile_fallbacks: int = 0  # torch could not compile for saving: Dynamo's regional compile ran instead
    compile_s: float = 0.0  # seconds inside Dynamo + Inductor, or loading saved blocks

    @staticmethod
    def now() -> "CompileCounts":
        from torch._dynamo.utils import compilation_time_metrics, counters

        from workbench.precompiled import COUNTS

        return CompileCounts(
            graphs=int(counters["stats"]["unique_graphs"]),  # the saved blocks' compiles included
            fx_cache_hits=int(counters["inductor"]["fxgraph_cache_hit"]),
            fx_cache_misses=int(counters["inductor"]["fxgraph_cache_miss"]),
            aot_cache_hits=int(counters["aot_autograd"]["autograd_cache_hit"]),
            precompiled_loads=COUNTS["loads"],
            precompiled_saves=COUNTS["saves"],
            precompile_fallbacks=COUNTS["fallbacks"],
            compile_s=float(sum(compilation_time_metrics.get("_compile.compile_inner", []))) + COUNTS["seconds"],
        )

    def __sub__(self, other: "CompileCounts") -> "CompileCounts":
        return CompileCounts(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def as_record(self) -> dict:
        out = asdict(self)
        out["compile_s"] = round(self.compile_s, 3)
        out["cache_dir"] = str(cache_dir())
        return out


STASH = "_workbench_compiled_call"  # a block's compiled call while it runs beneath cache hooks (hooked_compile)
_REGIONAL: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()  # torch.compile options


def compiled_blocks(model) -> list:
    """The regionally compiled blocks: ``_compiled_call_impl`` set, or moved beneath cache hooks."""
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None or STASH in vars(m)]


def is_compiled(model) -> bool:
    """perf.compile=full wraps the model; regional compile sets each block's ``_compiled_call_impl``."""
    return hasattr(model, "_orig_mod") or bool(compiled_blocks(model))


def regional_options(transformer) -> dict:
    """The torch.compile options of ``transformer``'s regional compile (hooked_compile compiles the same way)."""
    return dict(_REGIONAL[transformer])


def compile_block_forward(block_type: type, options: dict):
    """The repeated block class's ``forward`` compiled once for all its blocks (the block is an argument), with the
    regional compile's torch.compile ``options``: what runs beneath cache hooks (hooked_compile), and what a block
    torch could not compile for saving falls back to (precompiled)."""
    return torch.compile(block_type.forward, **options)


def _mark_text_dynamic(kwargs: dict) -> None:
    """Mark the text-token dimension of a block's inputs dynamic (diffusers calls blocks by keyword)."""
    mark = torch._dynamo.mark_dynamic
    text = kwargs.get("encoder_hidden_states")
    if text is None or text.shape[1] < 2:  # sizes 0 / 1 are always specialised by Dynamo
        return
    mark(text, 1)
    mask = kwargs.get("encoder_hidden_states_mask")
    if isinstance(mask, torch.Tensor):
        mark(mask, 1)
    rotary = kwargs.get("image_rotary_emb")
    if rotary is not None:  # (image, text): complex freqs (stock) or (cos, sin) pairs (fast attention)
        txt = rotary[1]
        for t in (txt if isinstance(txt, (tuple, list)) else (txt,)):
            mark(t, 0)


class TextDynamicCall:
    """Wraps a block's compiled call: marks the text dimension, then calls the compiled code."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        _mark_text_dynamic(kwargs)
        return self.compiled(*args, **kwargs)


_NO_CUDA_GRAPHS = (InductorMode.default, InductorMode.max_autotune_no_cudagraphs)


def precompile_applies(perf: PerfConfig) -> bool:
    """perf.precompile saves the regional compile's trace; CUDA-graph modes keep Dynamo's own path."""
    return perf.precompile and perf.compile == CompileMode.regional and perf.inductor_mode in _NO_CUDA_GRAPHS


def _install_precompiled(transformer, options: dict) -> None:
    """Each repeated block runs the saved compiled block (workbench/precompiled.py), one store per transformer."""
    from workbench.precompiled import PrecompiledBlocks, PrecompiledCall

    inductor = options.get("options") or torch._inductor.list_mode_options(options.get("mode", "default"))
    blocks = [m for m in transformer.modules() if type(m).__name__ in transformer._repeated_blocks]
    store = PrecompiledBlocks(blocks[0], inductor, cache_dir() / PRECOMPILED, before_compile=_mark_text_dynamic,
                              regional=lambda: compile_block_forward(type(blocks[0]), options))
    for block in blocks:
        block._compiled_call_impl = PrecompiledCall(store, block)


def compile_transformer(transformer, perf: PerfConfig, backend=None):
    """Compile switch; runs AFTER precision (the compiled graph then holds the quantised GEMMs).
    Returns the callable to use for forwards. ``backend``: torch.compile's (None: Inductor; tests pass a
    counting backend)."""
    if perf.compile == CompileMode.none:
        return transformer
    use_persistent_cache()
    # By default Dynamo does not guard on module hooks: a hook added after the first compiled call
    # (e.g. a LoRA) was silently ignored. With hook guards, such a change recompiles or fails loudly;
    # workbench.lora refuses hooks on compiled blocks outright and fuses instead (tests/test_lora.py).
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    options = {"fullgraph": True, "dynamic": False}
    if perf.inductor_mode != InductorMode.default:
        options["mode"] = perf.inductor_mode.value
    elif backend is None:  # Inductor's option, per compile: a process-wide setting leaks into later compiles
        options["options"] = {"coordinate_descent_tuning": perf.coordinate_descent}  # (see precision.py)
    if backend is not None:
        options["backend"] = backend
    _REGIONAL[transformer] = dict(options)
    if precompile_applies(perf):
        if backend is not None:
            raise ValueError("perf.precompile saves Inductor's code: it takes no other backend")
        _install_precompiled(transformer, options)
        return transformer
    if perf.compile == CompileMode.regional:
        transformer.compile_repeated_blocks(**options)
        for block in transformer.modules():
            # nn.Module.compile stores torch.compile(self._call_impl) here; __call__ uses it
            if getattr(block, "_compiled_call_impl", None) is not None:
                block._compiled_call_impl = TextDynamicCall(block._compiled_call_impl)
        return transformer
    options.pop("fullgraph")  # whole model: its eager-only parts (RoPE tables) break the graph
    return torch.compile(transformer, **options)

