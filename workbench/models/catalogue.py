"""The catalogue of models a run can use: the configured tiny models (``conf/model/``) and the complete
models discovery finds on disk, each as the overrides that load it; plus the other choices and the
memory view the model panel shows. Library side of ``widgets/model_panel.py``: tested without a browser.
"""

from __future__ import annotations

import os
from typing import Optional

from workbench.config.overrides import override_value

SLOTS = ("text_encoder", "transformer", "vae")


def configured_models() -> dict[str, list[str]]:
    """The embedded tiny models of ``conf/model/``, name -> ``[model=<name>]``."""
    from workbench.config.build import option_data, options

    return {name: [f"model={name}"] for name in options("model")
            if option_data("model", name).get("source", "tiny") == "tiny"}


def arch_rules(transformer) -> str:
    """``model.arch_rules`` for a discovered transformer: folders bring config.json (either works), single
    files carry no config, so their head size decides (``loading.infer.arch_rules_for``)."""
    from workbench.loading.header import read_header
    from workbench.loading.infer import arch_rules_for
    from workbench.loading.keys import strip_dit_prefix

    if transformer.path.is_dir():
        return "real"
    return arch_rules_for({strip_dit_prefix(n): t.shape for n, t in read_header(transformer.path).tensors.items()})


def _diffusers_folder(dit, entries, base: list[str], variant: list[str]) -> Optional[tuple[str, list[str]]]:
    folder = dit.name.removesuffix("/transformer")
    if not {f"{folder}/text_encoder", f"{folder}/vae"} <= {e.name for e in entries}:
        return None
    parts = (f"model.{s}={override_value(folder)}" for s in ("transformer", "text_encoder", "vae"))
    return f"files:{folder}", ["model=files_diffusers", *base, *variant, *parts]


def _paired_files(dit, by_kind: dict, base: list[str], variant: list[str]) -> Optional[tuple[str, list[str]]]:
    # nearest on disk first; on a tie, a standalone file before a part of some diffusers folder
    def near(e):
        return -len(os.path.commonpath([e.path, dit.path])), (e.path.parent / "model_index.json").is_file()

    te = min(by_kind["text_encoder"], key=near, default=None)
    vae = min(by_kind["vae"], key=near, default=None)
    if te is None or vae is None:  # not a complete model: nothing to load it with
        return None
    return f"files:{dit.name}", ["model=files_comfyui", *base, *variant, f"model.arch_rules={arch_rules(dit)}",
                                 f"model.transformer={override_value(dit.name)}", f"model.text_encoder={override_value(te.name)}",
                                 f"model.vae={override_value(vae.name)}"]


def discovered_models(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, list[str]]:
    """Complete models that discovery finds (``workbench.loading.discover.scan``), label -> the overrides
    that load them.

    A diffusers folder is one model (``files:<folder>``). Each other transformer is paired with the text
    encoder and the VAE nearest to it on disk (same ComfyUI tree first), since ComfyUI keeps them in
    sibling folders; other pairings are a ``model.text_encoder=`` / ``model.vae=`` override away.
    """
    from workbench.config import Variant
    from workbench.loading.discover import scan

    entries = scan(roots, hf_cache=hf_cache)
    by_kind = {k: [e for e in entries if e.kind == k] for k in SLOTS}
    base = [f"model.roots=[{', '.join(override_value(str(r)) for r in roots)}]"] if roots else []
    out: dict[str, list[str]] = {}
    for dit in by_kind["transformer"]:
        variant = [f"model.variant={dit.variant}"] if dit.variant in {v.value for v in Variant} else []
        if dit.path.name == "transformer" and (dit.path.parent / "model_index.json").is_file():
            found = _diffusers_folder(dit, entries, base, variant)
        else:
            found = _paired_files(dit, by_kind, base, variant)
        if found:
            out[found[0]] = found[1]
    return out


def catalogue(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, list[str]]:
    """Every model the panel offers, label -> overrides: the configured tiny models (``model=<name>``),
    then the ``files:...`` models discovery finds under the model roots (default ``$WORKBENCH_MODELS``,
    else ./models) and in the HF cache."""
    return configured_models() | discovered_models(roots, hf_cache)


def available_models(roots: Optional[list[str]] = None, hf_cache: bool = True) -> list[str]:
    """The catalogue's labels, in order (the panel's model dropdown)."""
    return list(catalogue(roots, hf_cache))


def available_precisions() -> list[str]:
    from workbench.config.build import options

    return options("precision")


def available_memory_modes() -> list[str]:
    from workbench.config import MemoryMode

    return [m.value for m in MemoryMode]


def available_devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def memory_report() -> dict:
    """Resident component sets (``models.build.resident_models()``), plus CUDA and process memory now."""
    import torch

    from workbench.models.build import resident_models

    report: dict = {"resident": resident_models(), "process_rss_bytes": _rss_bytes()}
    if torch.cuda.is_available():
        report["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated())
        report["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return report


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
