"""The catalogue of models a run can use: the configured tiny models (``conf/model/``) and the complete
models discovery finds on disk, each as the overrides that load it; plus the other choices, the
readable labels and fit warnings, and the memory view the model panel shows. Library side of
``widgets/model_panel.py``: tested without a browser.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def _diffusers_folder(dit, entries, base: list[str], variant: list[str]) -> Optional[tuple[str, list[str], list]]:
    folder = dit.name.removesuffix("/transformer")
    found = {e.name: e for e in entries}
    if not {f"{folder}/text_encoder", f"{folder}/vae"} <= set(found):
        return None
    parts = (f"model.{s}={override_value(folder)}" for s in ("transformer", "text_encoder", "vae"))
    files = [dit, found[f"{folder}/text_encoder"], found[f"{folder}/vae"]]
    return f"files:{folder}", ["model=files_diffusers", *base, *variant, *parts], files


def _paired_files(dit, by_kind: dict, base: list[str], variant: list[str]) -> Optional[tuple[str, list[str], list]]:
    # of the transformer's family; nearest on disk first; on a tie, a standalone file before a part of some diffusers folder
    def near(e):
        return -len(os.path.commonpath([e.path, dit.path])), (e.path.parent / "model_index.json").is_file()

    same = lambda kind: [e for e in by_kind[kind] if e.family == dit.family]  # noqa: E731 - the families share nothing
    te = min(same("text_encoder"), key=near, default=None)
    vae = min(same("vae"), key=near, default=None)
    if te is None or vae is None:  # not a complete model: nothing to load it with
        return None
    return f"files:{dit.name}", ["model=files_comfyui", *base, *variant, f"model.arch_rules={arch_rules(dit)}",
                                 f"model.transformer={override_value(dit.name)}", f"model.text_encoder={override_value(te.name)}",
                                 f"model.vae={override_value(vae.name)}"], [dit, te, vae]


def discovered_models(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, list[str]]:
    """Complete models that discovery finds (``workbench.loading.discover.scan``), label -> the overrides
    that load them.

    A diffusers folder is one model (``files:<folder>``). Each other transformer is paired with the text
    encoder and the VAE nearest to it on disk (same ComfyUI tree first), since ComfyUI keeps them in
    sibling folders; other pairings are a ``model.text_encoder=`` / ``model.vae=`` override away.
    """
    return {key: overrides for key, (overrides, _files) in _discovered(roots, hf_cache).items()}


def _discovered(roots: Optional[list[str]], hf_cache: bool) -> dict[str, tuple[list[str], list]]:
    """``discovered_models`` with the discovery entries (transformer, text encoder, VAE) of each model."""
    from workbench.config import Variant
    from workbench.loading.discover import scan

    entries = scan(roots, hf_cache=hf_cache)
    by_kind = {k: [e for e in entries if e.kind == k] for k in SLOTS}
    base = [f"model.roots=[{', '.join(override_value(str(r)) for r in roots)}]"] if roots else []
    out: dict[str, tuple[list[str], list]] = {}
    for dit in by_kind["transformer"]:
        variant = [f"model.variant={dit.variant}"] if dit.variant in {v.value for v in Variant} else []
        if dit.path.name == "transformer" and (dit.path.parent / "model_index.json").is_file():
            found = _diffusers_folder(dit, entries, base, variant)
        else:
            found = _paired_files(dit, by_kind, base, variant)
        if found:
            out[found[0]] = (found[1], found[2])
    return out


def catalogue(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, list[str]]:
    """Every model the panel offers, label -> overrides: the configured tiny models (``model=<name>``),
    then the ``files:...`` models discovery finds under the model roots (default ``$WORKBENCH_MODELS``,
    else ./models) and in the HF cache."""
    return configured_models() | discovered_models(roots, hf_cache)


# ----------------------------------------------------------------------------- labels and fit
VARIANT_WORDS = {"t2i": "text-to-image", "t2i_2512": "2512 text-to-image", "edit": "edit", "edit_2509": "2509 edit",
                 "edit_2511": "2511 edit", "qwen21": "Qwen-Image-2.1", "qwen21_turbo": "Qwen-Image-2.1-Turbo"}
_DISK_WIDTH = {"fp32": 4, "fp64": 8}  # bytes per weight on disk by dtype_summary; fp8 / GGUF ~1, others 2


@dataclass
class CatalogueEntry:
    """One model the panel offers: its catalogue key (the dropdown's value), the overrides that load it,
    a line a researcher reads, and its weight count (what the fit warning multiplies by the dtype width)."""

    key: str
    overrides: list[str]
    description: str
    parameters: int  # seeded models: from their sizes (preflight.seeded_parameters); files: bytes on disk / dtype width
    seeded: bool  # source=tiny: preflight refuses what does not fit, with the same numbers as fit_report


def model_config(name: str):
    """``conf/model/<name>.yaml`` as a ``ModelConfig`` without composing (Hydra takes ~0.5 s a config)."""
    from omegaconf import OmegaConf

    from workbench.config import ModelConfig
    from workbench.config.build import option_data

    data = option_data("model", name)
    if "name" not in data and isinstance(data.get("model"), dict):  # a `# @package _global_` file
        data = data["model"]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), data))


def precision_config(name: str):
    """``conf/precision/<name>.yaml`` as a ``PrecisionConfig``, without composing."""
    from omegaconf import OmegaConf

    from workbench.config import PrecisionConfig
    from workbench.config.build import option_data

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PrecisionConfig), option_data("precision", name)))


def _disk_parameters(files) -> int:
    return sum(e.size // (1 if e.dtype.startswith(("fp8", "Q")) else _DISK_WIDTH.get(e.dtype, 2)) for e in files)


def catalogue_entries(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, CatalogueEntry]:
    """``catalogue()`` with a description and a weight count per model: configured models describe
    themselves (``model.description`` in conf/model/), discovered ones by their path, layout and variant."""
    from workbench.config.preflight import seeded_parameters

    out: dict[str, CatalogueEntry] = {}
    for key, overrides in configured_models().items():
        model = model_config(key)
        out[key] = CatalogueEntry(key, overrides, model.description or key, seeded_parameters(model.tiny), True)
    for key, (overrides, files) in _discovered(roots, hf_cache).items():
        source = model_config(overrides[0].removeprefix("model=")).description
        variant = VARIANT_WORDS.get(files[0].variant or "t2i", files[0].variant)
        out[key] = CatalogueEntry(key, overrides, f"{key.removeprefix('files:')} ({source}, {variant})",
                                  _disk_parameters(files), False)
    return out


def weights_bytes(entry: CatalogueEntry, precision: str) -> int:
    """What ``entry``'s weights take at ``precision`` (``preflight.weight_width`` bytes per weight)."""
    from workbench.config.preflight import weight_width

    return entry.parameters * weight_width(precision_config(precision))


def _need_and_room(entry: CatalogueEntry, precision: str, device: str, memory: Optional[str]) -> tuple[int, int, str, int]:
    """(bytes needed, bytes free, where, of it held by resident builds a new one releases): files with an offload
    ``memory`` mode are held in CPU RAM."""
    import sys

    from workbench.config import limits

    offload = not entry.seeded and memory not in (None, "all_on_device")
    free, where = limits.available_memory("cpu" if offload else device)
    built = sys.modules.get("workbench.models.build")  # loaded once this process built a model
    reclaim = 0 if offload or built is None else built.resident_bytes_on(device, precision_config(precision))
    return weights_bytes(entry, precision), free + reclaim, where, reclaim


def fit_report(entry: CatalogueEntry, precision: str = "fp32", device: str = "auto",
               memory: Optional[str] = None) -> Optional[str]:
    """None when ``entry``'s weights at ``precision`` fit the free memory of ``device``, else one line
    naming both numbers and a fix. Seeded models get preflight's own numbers and wording (loading one
    is refused the same way, ``preflight.check_weights_memory``); files are estimated from their size
    on disk (their load checks the headers), held in CPU RAM with an offload ``memory`` mode."""
    from workbench.config import limits
    from workbench.config.preflight import weights_message

    need, free, where, reclaim = _need_and_room(entry, precision, device, memory)
    if need <= free:
        return None
    if entry.seeded:
        fix = f"pick model=tiny, or a device with >= {limits.fmt_bytes(need)} free (a CUDA GPU: device=cuda precision=bf16)"
        return f"{weights_message(f'model={entry.key}', need, precision_config(precision), free, where, reclaim)}; {fix}"
    fix = "pick a narrower precision (bf16, fp8_e4m3fn), an offload memory mode, or a device with more memory"
    message = weights_message(entry.key, need, precision_config(precision), free, where, reclaim)
    return f"{message} (estimated from the file sizes); {fix}"


def model_labels(entries: dict[str, CatalogueEntry], precision: str = "fp32", device: str = "auto",
                 memory: Optional[str] = None) -> list[tuple[str, str]]:
    """(label, key) pairs for a dropdown: ``key — description (≈ size at precision)``, marked
    ``— does not fit <device>`` where ``fit_report`` would warn."""
    from workbench.config import limits

    out = []
    for key, e in entries.items():
        need, free, where, _ = _need_and_room(e, precision, device, memory)
        label = f"{key} — {e.description}" if e.seeded else e.description
        label += f" (≈ {limits.fmt_bytes(need)} at {precision})" + (f" — does not fit {where}" if need > free else "")
        out.append((label, key))
    return out


def resident_label(resident: dict) -> str:
    """One ``resident_models()`` set as a researcher reads it: ``tiny — trained tiny ..., fp32`` for a
    seeded model, ``<transformer file> (ComfyUI files), bf16`` for files; the perf setting unless eager."""
    transformer = resident["identity"].get("transformer", "?")
    name, description = resident.get("model", "?"), resident.get("description", "")
    if transformer.startswith("tiny:"):
        label = f"{name} — {description}" if description else name
    else:
        label = transformer.split("|")[0] + (f" ({description})" if description else "")
    extra = [resident.get("precision", "")] + [p for p in [resident.get("perf", "")] if p != "eager"]
    return ", ".join([label] + [e for e in extra if e])


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
