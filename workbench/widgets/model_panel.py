"""Model panel: model / precision / memory mode / device, load and free buttons, resident memory.

Loading goes through ``Workbench.from_config`` (the per-process component cache), freeing through
``workbench.pipeline.free_models``: what this panel loads is what sweeps and runs then reuse.
"""

from __future__ import annotations

import html
import time
from typing import Optional

import ipywidgets as W


# ----------------------------------------------------------------------------- choices (library side)
def available_models() -> list[str]:
    """Model options for the dropdown: the embedded tiny models of ``conf/model/``.

    This is the one place to plug model discovery into (``workbench.loading``, being written): it
    should return the names a ``model=<name>`` override accepts.
    """
    from omegaconf import OmegaConf

    from workbench.config import config_dir

    names = []
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        if OmegaConf.load(path).get("source", "tiny") == "tiny":
            names.append(path.stem)
    return names


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


def _module_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def memory_report() -> dict:
    """Resident component sets with their weight bytes, plus CUDA and process memory now."""
    import torch

    from workbench import pipeline

    resident = []
    for comps in list(pipeline._CACHE.values()):  # no public accessor yet; see the module docstring
        sizes = {name: _module_bytes(getattr(comps, name)) for name in ("text_encoder", "transformer", "vae")}
        resident.append({"models": comps.identity.get("transformer", "?"), "device": str(comps.device), **sizes})
    report: dict = {"resident": resident, "process_rss_bytes": _rss_bytes()}
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
    """Dropdowns for the model settings; Load builds (or reuses) them, Free drops every resident model."""

    def __init__(self, model: str = "tiny", precision: str = "fp32", device: str = "auto", memory: Optional[str] = None):
        self.model = W.Dropdown(options=available_models(), value=model, description="model")
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
        out = [f"model={self.model.value}", f"precision={self.precision.value}", f"device={self.device.value}"]
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
        rows = "".join(
            f"<tr><td>{html.escape(r['models'])}</td><td>{html.escape(r['device'])}</td>"
            f"<td>{_mb(r['text_encoder'])}</td><td>{_mb(r['transformer'])}</td><td>{_mb(r['vae'])}</td></tr>"
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
