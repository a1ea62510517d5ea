"""Model panel: model / precision / memory mode / device, load and free buttons, resident memory.

A view over ``workbench.models.catalogue`` (the models and choices offered, the memory report):
loading goes through ``Workbench.from_config`` (the per-process component cache), freeing through
``free_models``: what this panel loads is what sweeps and runs then reuse.
"""

from __future__ import annotations

import html
import time
from typing import Optional

import ipywidgets as W

from workbench.models.catalogue import (
    available_devices,
    available_memory_modes,
    available_precisions,
    catalogue,
    configured_models,
    memory_report,
)


def tiny_models() -> list[str]:
    """The configured tiny models' names (``models.catalogue.configured_models``)."""
    return list(configured_models())



def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# ----------------------------------------------------------------------------- the view
class ModelPanel(W.VBox):
    """Dropdowns for the model settings; Load builds (or reuses) them, Free drops every resident model.

    ``roots``: model roots to discover files in (default ``$WORKBENCH_MODELS``, else ./models).
    """

    def __init__(self, model: str = "tiny", precision: str = "fp32", device: str = "auto", memory: Optional[str] = None,
                 roots: Optional[list[str]] = None, hf_cache: bool = True):
        self.models = catalogue(roots, hf_cache)  # label -> the overrides that load it
        self.model = W.Dropdown(options=list(self.models), value=model, description="model")
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
        model = self.models.get(self.model.value, [f"model={self.model.value}"])
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
        from workbench.models.build import free_models

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
