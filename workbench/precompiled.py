"""Compiled transformer blocks saved with Dynamo's trace (``perf.precompile``): a new process loads the block's
compiled code instead of tracing the block again.

Why: with the regional compile, Inductor's kernels come from the on-disk cache, but every new process still ran
Dynamo over the block (bytecode tracing, fake-tensor propagation, the AOTAutograd cache key): 3.3-3.9 s of a
6.0-6.7 s warm first generation on the H200 (benchmarks/results/h200_run40_*). torch's AOT compile
(``torch.compile(fn).aot_compile`` / ``torch.compiler.load_compiled_function``, experimental in torch 2.11) saves
the traced function with its guards; the workbench only decides where it lives and when it may be reused.

What the saved guards cannot carry, this module checks itself. Dynamo drops, when it saves, the guards on object
identity (the attention processor's class and settings: ``perf.attention_kernel`` is set per run) and on globals.
So each artefact is filed under a key of the library versions and device, the block's module classes, its
parameters' layout, the compile options, and the attention processors' classes and settings (read at every call),
and a loaded artefact is used only if every source line Dynamo traced is unchanged (an edit of the workbench or of
diffusers compiles again). The guards Dynamo keeps (shapes, dtypes, the dynamic text length's range, module
attributes) are checked at every call; a call that no saved variant accepts (a new resolution) compiles one more.
A loaded file whose first call fails where the block's eager forward does not (code this machine cannot run) is
removed and compiled again.
Loading a file runs code, so a file another user could have written (a shared or loose cache folder) is not
loaded, nor is anything saved there (workbench/trusted_files.py).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from enum import Enum
from importlib import metadata
from pathlib import Path

import torch

from workbench.errors import WorkbenchError
from workbench.trusted_files import PRIVATE_FOLDER, why_untrusted

log = logging.getLogger(__name__)
FOLDER = "precompiled"
FACTS = "facts.json"  # beside each key's variants: what they were compiled for (workbench cache shows it)
# process-wide counts, read by compiling.CompileCounts (a record holds the difference over its run)
COUNTS = {"loads": 0, "saves": 0, "compiles": 0, "fallbacks": 0, "seconds": 0.0}


class PrecompileError(WorkbenchError):
    pass


def serialisable_guards(entries) -> list[bool]:
    """Dynamo's ``guard_filter_fn``: keep the guards it can save (the rest is this module's key). Guards on a
    tensor subclass (torchao's fp8 weights) and on its inner tensors go too: saving them pickles an ``empty_like``
    of the subclass, which torchao's ``Float8Tensor`` does not implement (torch 2.11, torchao 0.17); their type,
    dtypes and shapes, inner tensors included, are in the key (``_layout``)."""
    from torch._dynamo.guards import CheckFunctionManager

    bad = CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES
    subclasses = tuple({e.name for e in entries if _is_subclass(e.value)})  # and guards on their inner tensors
    return [not (e.is_global or e.guard_type in bad or any(t in bad for t in e.derived_guard_types or ())
                 or e.name.startswith(subclasses)) for e in entries]


def _is_subclass(value) -> bool:
    return isinstance(value, torch.Tensor) and type(value) not in (torch.Tensor, torch.nn.Parameter)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device_facts(block) -> str:
    device = next(block.parameters()).device
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)} sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    return f"{device.type} {platform.machine()}"


def _layout(block) -> list[str]:
    """Each parameter / buffer: name, tensor type, dtype, shape, and the same for a subclass's inner tensors
    (torchao's fp8 weights: data and scales)."""
    out = []
    for name, t in [*block.named_parameters(), *block.named_buffers()]:
        inner = t.__tensor_flatten__()[0] if hasattr(t, "__tensor_flatten__") else []
        parts = [f"{n}:{getattr(t, n).dtype}{tuple(getattr(t, n).shape)}" for n in inner]
        out.append(f"{name} {type(t).__qualname__} {t.dtype}{tuple(t.shape)} {' '.join(parts)}".rstrip())
    return out


def _plain(value) -> str:
    if isinstance(value, Enum) or value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    return type(value).__qualname__


def processor_facts(attentions) -> tuple:
    """The attention processors' classes and plain settings: read at every call (cheap), since a run may
    change them on a resident model without any guard Dynamo could save noticing."""
    return tuple((type(a.processor), tuple((k, _plain(v)) for k, v in sorted(vars(a.processor).items())))
                 for a in attentions)


def static_versions() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": _version("diffusers"),
            "torchao": _version("torchao")}


def static_facts(block, options: dict) -> dict:
    return {
        **static_versions(), "device": _device_facts(block),
        "modules": sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in block.modules()}),
        "layout": _layout(block), "options": {k: _plain(v) for k, v in sorted(options.items())},
    }


def key_facts(static: dict, facts: tuple) -> dict:
    """Everything an artefact is filed under, as plain JSON values."""
    procs = [[f"{cls.__module__}.{cls.__qualname__}", list(settings)] for cls, settings in facts]
    return {**static, "processors": procs}


def artefact_key(static: dict, facts: tuple) -> str:
    return hashlib.sha256(json.dumps(key_facts(static, facts), sort_keys=True).encode()).hexdigest()[:32]


def facts_file(static: dict, facts: tuple) -> bytes:
    """``facts.json`` beside a key's variants: what they were compiled for, read by ``workbench cache`` (data only:
    the key is the hash, never this file). The parameter layout is counted, not listed."""
    shown = key_facts(static, facts)
    shown["layout"] = f"{len(static['layout'])} parameters and buffers"
    return json.dumps(shown, indent=1, sort_keys=True).encode()


def source_hash(module, first: int, last: int) -> str:
    """sha256 of lines [first, last) of ``module``'s current source (Dynamo's own checksum of a traced function)."""
    lines = inspect.getsourcelines(module)[0][first - 1:last - 1]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sources_unchanged(fn) -> bool:
    """Every function Dynamo traced still has the source it had (modules are looked up, never imported: the
    names come from a file)."""
    for src in fn.source_info().inlined_sources:
        module = sys.modules.get(src.module)
        if module is None or source_hash(module, src.firstlineno, src.lastlineno) != src.checksum:
            return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """Written beside, then renamed: a reader never sees half a file (two processes may compile at once)."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".part") as f:
        f.write(data)
    os.replace(f.name, path)


class Variants:
    """The compiled variants of one artefact key: loaded from its folder once, extended by compiles."""

    def __init__(self, folder: Path, root: Path, facts: bytes = b"{}"):
        self.folder, self.root, self.facts = folder, root, facts
        self.fns = []
        self.unrun: dict[int, Path] = {}  # loaded, not yet run in this process: id(fn) -> its file
        self.untrusted = why_untrusted(folder, root)
        if self.untrusted:
            log.warning("precompiled blocks in %s are neither loaded nor saved: %s, so another user could have "
                        "written code there. Point $WORKBENCH_CACHE (or $TORCHINDUCTOR_CACHE_DIR) at a folder of "
                        "your own", folder, self.untrusted)
            return
        for file in sorted(folder.glob("*.bin"), key=lambda p: p.lstat().st_mtime, reverse=True):
            self._load(file)

    def _load(self, file: Path) -> None:
        from torch.compiler import load_compiled_function

        untrusted = why_untrusted(file, self.root)
        if untrusted:
            log.warning("precompiled block %s not loaded: %s, so another user could have written it", file, untrusted)
            return
        start = time.perf_counter()
        try:
            fn = load_compiled_function(io.BytesIO(file.read_bytes()))
            fresh = sources_unchanged(fn)
        except Exception as err:  # noqa: BLE001  (a torch upgrade, a truncated copy: compile again)
            log.warning("precompiled block %s could not be loaded (%s): removed, the block compiles again", file, err)
            file.unlink(missing_ok=True)
            return
        if not fresh:
            log.info("precompiled block %s traced code that has changed since: removed", file)
            file.unlink(missing_ok=True)
            return
        fn.disable_guard_check()  # checked once, by ``find``
        self.fns.append(fn)
        self.unrun[id(fn)] = file
        COUNTS["loads"] += 1
        COUNTS["seconds"] += time.perf_counter() - start

    def find(self, block, args, kwargs):
        return next((fn for fn in self.fns if fn.guard_check(block, *args, **kwargs)), None)

    def discard(self, fn, err: Exception) -> None:
        """A loaded ``fn`` that failed to run here: forgotten, its file removed."""
        self.fns.remove(fn)
        file = self.unrun.pop(id(fn))
        log.warning("precompiled block %s failed to run here (%s: %s): removed, the block compiles again", file,
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        file.unlink(missing_ok=True)

    def add(self, fn) -> None:
        """Keep ``fn`` for this process and save it for the next ones (a failed save costs only the next warm
        start: it is logged, and this process runs on)."""
        fn.disable_guard_check()
        self.fns.insert(0, fn)
        if self.untrusted:
            return
        try:
            data = type(fn).serialize(fn).serialized_data
            self.root.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
            self.folder.mkdir(mode=PRIVATE_FOLDER, exist_ok=True)
            _atomic_write(self.folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin", data)
            _atomic_write(self.folder / FACTS, self.facts)
            COUNTS["saves"] += 1
        except Exception as err:  # noqa: BLE001
            log.warning("the compiled block could not be saved to %s (%s): the next process compiles it again",
                        self.folder, err)


def aot_compile(block, options: dict, args: tuple, kwargs: dict):
    """torch's AOT compile of the block's ``forward`` for these inputs (the block is an input: one compiled
    function serves every block of the same layout, its parameters read per call)."""
    # torch 2.11 attaches ``aot_compile`` to the compiled function only under this switch (2.13 always does)
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(type(block).forward, fullgraph=True, dynamic=False, options=dict(options))
    with _without_instance_reprs(block):
        return compiled.aot_compile(((block, *args), kwargs))


@contextmanager
def _without_instance_reprs(block):
    """torchao's ``quantize_`` gives each quantised Linear an ``extra_repr`` bound to a ``functools.partial``,
    which Dynamo's guard pickler cannot save (torch 2.11: "'functools.partial' object has no attribute
    '__name__'"). Only ``print(model)`` reads it: it is set aside while the guards are saved, then put back."""
    kept = {m: vars(m).pop("extra_repr") for m in block.modules() if "extra_repr" in vars(m)}
    try:
        yield
    finally:
        for m, method in kept.items():
            m.extra_repr = method


class PrecompiledBlocks:
    """One per transformer: its repeated block's compiled variants, by attention-processor settings."""

    def __init__(self, block, options: dict, root: Path, before_compile, regional):
        self.inductor = dict(options)
        self.regional = regional  # () -> Dynamo's regional compile of the block class, for a fallback
        self.static = static_facts(block, options)
        self.root = root
        self.before_compile = before_compile  # marks the text dimension dynamic on the example inputs
        self.by_facts: dict[tuple, Variants] = {}
        self.fallback = None  # Dynamo's regional compile, once torch could not compile for saving

    def __call__(self, block, attentions, args, kwargs):
        if self.fallback is not None:
            self.before_compile(kwargs)
            return self.fallback(block, *args, **kwargs)
        facts = processor_facts(attentions)
        variants = self.by_facts.get(facts)
        if variants is None:
            variants = self.by_facts[facts] = Variants(self.root / artefact_key(self.static, facts), self.root,
                                                       facts_file(self.static, facts))
        fn = variants.find(block, args, kwargs)
        if fn is None:
            fn = self._compile(variants, block, args, kwargs)
        elif id(fn) in variants.unrun:
            return self._first_run(variants, fn, block, args, kwargs)
        return fn(block, *args, **kwargs)

    def _first_run(self, variants: Variants, fn, block, args, kwargs):
        """A loaded file's first call. Code that cannot run here (a kernel this driver or card cannot load, a copy
        from a machine the key could not tell apart) is removed and compiled again; an error of the block itself
        (its eager forward fails too) is the user's to see; running out of memory is not the file's fault."""
        try:
            out = fn(block, *args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            type(block).forward(block, *args, **kwargs)
            variants.discard(fn, err)
            return self._compile(variants, block, args, kwargs)(block, *args, **kwargs)
        variants.unrun.pop(id(fn))
        return out

    def _compile(self, variants: Variants, block, args, kwargs):
        start = time.perf_counter()
        self.before_compile(kwargs)
        try:
            fn = aot_compile(block, {**self.inductor, "guard_filter_fn": serialisable_guards}, args, kwargs)
        except Exception as err:  # noqa: BLE001
            # an error of the block itself (a workbench check) is the user's to see, not Dynamo's wrapping of it
            type(block).forward(block, *args, **kwargs)
            return self._fall_back(block, err)
        COUNTS["compiles"] += 1
        COUNTS["seconds"] += time.perf_counter() - start
        variants.add(fn)
        return fn

    def _fall_back(self, block, err: Exception):
        """What torch cannot compile for saving still runs as the regional compile does (traced in each process):
        a slower warm start, never a failed run. Logged, and counted in the run's record."""
        first = str(err).splitlines()[0] if str(err) else ""
        log.warning("perf.precompile: torch could not compile %s for saving (%s: %s); this process runs Dynamo's "
                    "regional compile instead, as perf.precompile=false does", type(block).__name__,
                    type(err).__name__, first)
        COUNTS["fallbacks"] += 1
        self.fallback = self.regional()
        return self.fallback


class PrecompiledCall:
    """A block's ``_compiled_call_impl`` (what ``nn.Module.__call__`` runs instead of ``forward``)."""

    def __init__(self, store: PrecompiledBlocks, block):
        self.store = store
        self.block = block
        self.attentions = [m for m in block.modules() if hasattr(m, "processor")]

    def __call__(self, *args, **kwargs):
        from torch.nn.modules import module

        if (self.block._forward_hooks or self.block._forward_pre_hooks or module._global_forward_hooks
                or module._global_forward_pre_hooks):
            raise PrecompileError(
                f"a forward hook on a compiled {type(self.block).__name__} (or a global one): the saved compiled "
                "block cannot run it. Fuse LoRAs (lora.fuse=true), or use perf.compile=none for hooks")
        return self.store(self.block, self.attentions, args, kwargs)
