"""Model panel: model / precision / memory mode / device, load and free buttons, resident memory.

Loading goes through ``Workbench.from_config`` (the per-process component cache), freeing through
``workbench.pipeline.free_models``: what this panel loads is what sweeps and runs then reuse. Besides the
tiny models, the model list offers what model discovery finds on disk (``files:...``), as overrides.
"""

from __future__ import annotations

import html
import time
from typing import Optional

import ipywidgets as W


# ----------------------------------------------------------------------------- choices (library side)
def tiny_models() -> list[str]:
    """The embedded tiny models of ``conf/model/`` (each a ``model=<name>`` override)."""
    from omegaconf import OmegaConf

    from workbench.config import config_dir

    names = []
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        if OmegaConf.load(path).get("source", "tiny") == "tiny":
            names.append(path.stem)
    return names


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"  # Hydra: quoted, so '/', ':', spaces and ',' stay literal


def _arch_rules(transformer) -> str:
    """Single files carry no config: heads of Qwen-Image's 128 mean its real rules, anything else is the tiny
    test model's shape (folders bring config.json, so either works for them)."""
    from workbench.loading.header import read_header
    from workbench.loading.infer import REAL_ROPE_AXES
    from workbench.loading.keys import strip_dit_prefix

    if transformer.path.is_dir():
        return "real"
    shapes = {strip_dit_prefix(n): t.shape for n, t in read_header(transformer.path).tensors.items()}
    head = shapes.get("transformer_blocks.0.attn.norm_q.weight", (sum(REAL_ROPE_AXES),))[0]
    return "real" if head == sum(REAL_ROPE_AXES) else "tiny"


def discovered_models(roots: Optional[list[str]] = None, hf_cache: bool = True) -> dict[str, list[str]]:
    """Complete models that discovery finds (``workbench.loading.discover.scan``), label -> the overrides
    that load them.

    A diffusers folder is one model (``files:<folder>``). Each other transformer is paired with the text
    encoder and the VAE nearest to it on disk (same ComfyUI tree first), since ComfyUI keeps them in
    sibling folders; other pairings are a ``model.text_encoder=`` / ``model.vae=`` override away.
    """
    import os

    from workbench.config.schema import Variant
    from workbench.loading.discover import scan

    entries = scan(roots, hf_cache=hf_cache)
    by_kind = {k: [e for e in entries if e.kind == k] for k in ("transformer", "text_encoder", "vae")}
    base = [f"model.roots=[{', '.join(_quote(str(r)) for r in roots)}]"] if roots else []
    out: dict[str, list[str]] = {}
    for dit in by_kind["transformer"]:
        variant = [f"model.variant={dit.variant}"] if dit.variant in {v.value for v in Variant} else []
        if dit.path.name == "transformer" and (dit.path.parent / "model_index.json").is_file():
            folder = dit.name.removesuffix("/transformer")
            parts = {e.name for e in entries}
            if {f"{folder}/text_encoder", f"{folder}/vae"} <= parts:
                out[f"files:{folder}"] = ["model=files_diffusers", *base, *variant,
                                          *(f"model.{s}={_quote(folder)}" for s in ("transformer", "text_encoder", "vae"))]
            continue
        # nearest on disk first; on a tie, a standalone file before a part of some diffusers folder
        near = lambda e: (-len(os.path.commonpath([e.path, dit.path])), (e.path.parent / "model_index.json").is_file())  # noqa: E731
        te = min(by_kind["text_encoder"], key=near, default=None)
        vae = min(by_kind["vae"], key=near, default=None)
        if te is None or vae is None:  # not a complete model: nothing to load it with
            continue
        out[f"files:{dit.name}"] = ["model=files_comfyui", *base, *variant, f"model.arch_rules={_arch_rules(dit)}",
                                    f"model.transformer={_quote(dit.name)}", f"model.text_encoder={_quote(te.name)}",
                                    f"model.vae={_quote(vae.name)}"]
    return out


def available_models(roots: Optional[list[str]] = None, hf_cache: bool = True) -> list[str]:
    """Dropdown options: the tiny models (``model=<name>``), then the ``files:...`` models discovery finds
    under the model roots (default ``$WORKBENCH_MODELS``, else ./models) and in the HF cache."""
    return tiny_models() + list(discovered_models(roots, hf_cache))


def available_precisions() -> list[str]:
    from workbench.config import config_dir

    return sorted(p.stem for p in (config_dir() / "precision").glob("*.yaml"))


def available_memory_modes() -> list[str]:
    try:
        from workbench.config.schema import MemoryMode
    except ImportError:  # a schema without memory modes
        return []
    return [m.value for m in MemoryMode]


def available_devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def memory_report() -> dict:
    """Resident component sets (``pipeline.resident_models()``), plus CUDA and process memory now."""
    import torch

    from workbench.pipeline import resident_models

    report: dict = {"resident": resident_models(), "process_rss_bytes": _rss_bytes()}
    if torch.cuda.is_available():
        report["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated())
        report["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return report


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# ----------------------------------------------------------------------------- the view
class ModelPanel(W.VBox):
    """Dropdowns for the model settings; Load builds (or reuses) them, Free drops every resident model.

    ``roots``: model roots to discover files in (default ``$WORKBENCH_MODELS``, else ./models).
    """

    def __init__(self, model: str = "tiny", precision: str = "fp32", device: str = "auto", memory: Optional[str] = None,
                 roots: Optional[list[str]] = None, hf_cache: bool = True):
        self.discovered = discovered_models(roots, hf_cache)  # label -> overrides, for files:... options
        self.model = W.Dropdown(options=tiny_models() + list(self.discovered), value=model, description="model")
        self.precision = W.Dropdown(options=available_precisions(), value=precision, description="precision")
        modes = available_memory_modes()
        self.memory = W.Dropdown(options=modes, value=memory or (modes[0] if modes else None), description="memory",
                                 layout=W.Layout(display="" if modes else "none"))
        self.device = W.Dropdown(options=available_devices(), value=device, description="device")
        self.load_button = W.Button(description="Load", button_style="primary", icon="download")
        self.free_button = W.Button(description="Free all", icon="trash")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="load")
        self.status = W.HTML()
        self.info = W.HTML()
        self.bench = None  # the last loaded Workbench
        self.load_button.on_click(lambda _: self.load())
        self.free_button.on_click(lambda _: self.free())
        super().__init__([
            W.HBox([self.model, self.precision]), W.HBox([self.memory, self.device]),
            W.HBox([self.load_button, self.free_button, self.progress]), self.status, self.info,
        ])
        self.refresh()

    def overrides(self) -> list[str]:
        """The Hydra overrides these dropdowns stand for (paste them into a run or a sweep base)."""
        model = self.discovered.get(self.model.value, [f"model={self.model.value}"])
        out = [*model, f"precision={self.precision.value}", f"device={self.device.value}"]
        if self.memory.value:
            out.append(f"precision.memory={self.memory.value}")
        return out

    def load(self):
        from workbench.config import compose, to_run_config
        from workbench.pipeline import Workbench

        self.progress.value, self.progress.bar_style = 0, "info"
        self.status.value = "loading..."
        started = time.perf_counter()
        try:
            self.bench = Workbench.from_config(to_run_config(compose(self.overrides())))
        except Exception as err:  # shown in the panel; the sweep / run would raise the same
            self.progress.bar_style = "danger"
            self.status.value = f"<span style='color:#a00'>{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"
            self.refresh()
            return None
        self.progress.value, self.progress.bar_style = 1, "success"
        self.status.value = f"ready on {self.bench.device} ({time.perf_counter() - started:.1f} s)"
        self.refresh()
        return self.bench

    def free(self) -> int:
        from workbench.pipeline import free_models

        n = free_models()
        self.bench = None
        self.progress.value, self.progress.bar_style = 0, ""
        self.status.value = f"freed {n} resident model set(s)"
        self.refresh()
        return n

    def refresh(self) -> dict:
        """Redraw the memory view; returns ``memory_report()``."""
        report = memory_report()
        slots = ("text_encoder", "transformer", "vae")
        rows = "".join(
            f"<tr><td>{html.escape(r['identity'].get('transformer', '?'))}</td><td>{html.escape(r['device'])}</td>"
            + "".join(f"<td>{_mb(r['bytes'][s])} {html.escape(r['dtypes'][s])}</td>" for s in slots) + "</tr>"
            for r in report["resident"]
        )
        table = (
            "<table><tr><th>resident</th><th>device</th><th>text encoder</th><th>transformer</th><th>VAE</th></tr>"
            f"{rows}</table>" if rows else "no models resident"
        )
        extra = f"process RSS {_mb(report['process_rss_bytes'])}"
        if "cuda_allocated_bytes" in report:
            extra += f", CUDA allocated {_mb(report['cuda_allocated_bytes'])}, reserved {_mb(report['cuda_reserved_bytes'])}"
        self.info.value = f"{table}<div>{extra}</div>"
        self.resident = len(report["resident"])
        return report

    def __repr__(self) -> str:
        return f"ModelPanel({', '.join(self.overrides())})"
