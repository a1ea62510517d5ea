"""Model panel: model / precision / memory mode / device, a fit warning, load, resident models (each
with its own Free button), and "use as sweep base".

A view over ``workbench.models.catalogue`` (the models offered with readable labels, ``fit_report``,
the memory report): loading goes through ``Workbench.from_config`` (the per-process component cache),
freeing through ``free_model`` / ``free_models``: what this panel loads is what sweeps and runs then reuse.
"""

from __future__ import annotations

import html
import time
from typing import Optional

import ipywidgets as W

from workbench.config.overrides import merge_overrides
from workbench.models.catalogue import (
    available_devices,
    available_memory_modes,
    available_precisions,
    catalogue_entries,
    configured_models,
    fit_report,
    memory_report,
    model_labels,
    resident_label,
)

SWEEP_KEYS = ("model", "precision", "device")  # the sweep base lines this panel's settings replace
SLOTS = ("text_encoder", "transformer", "vae")


def tiny_models() -> list[str]:
    """The configured tiny models' names (``models.catalogue.configured_models``)."""
    return list(configured_models())


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# ----------------------------------------------------------------------------- the view
class ModelPanel(W.VBox):
    """Dropdowns for the model settings; Load builds (or reuses) them, each resident row's Free drops
    that set, Free all drops every one; "Use as sweep base" writes these settings into ``sweep``'s base.

    ``roots``: model roots to discover files in (default ``$WORKBENCH_MODELS``, else ./models).
    ``sweep``: a ``SweepPanel`` whose base overrides the button rewrites (``use_as_sweep_base``).
    """

    def __init__(self, model: str = "tiny", precision: str = "fp32", device: str = "auto", memory: Optional[str] = None,
                 roots: Optional[list[str]] = None, hf_cache: bool = True, sweep=None):
        self.entries = catalogue_entries(roots, hf_cache)  # key -> CatalogueEntry (overrides, description, size)
        self.models = {k: e.overrides for k, e in self.entries.items()}  # key -> the overrides that load it
        self.sweep_panel = sweep
        self._relabelling = False
        self.model = W.Dropdown(options=[(k, k) for k in self.entries], value=model, description="model",
                                layout=W.Layout(width="640px"))
        self.precision = W.Dropdown(options=available_precisions(), value=precision, description="precision")
        modes = available_memory_modes()
        self.memory = W.Dropdown(options=modes, value=memory or (modes[0] if modes else None), description="memory",
                                 layout=W.Layout(display="" if modes else "none"))
        self.device = W.Dropdown(options=available_devices(), value=device, description="device")
        self.fit = W.HTML()  # the fit warning of the chosen settings ("" when they fit)
        self.load_button = W.Button(description="Load", button_style="primary", icon="download")
        self.free_button = W.Button(description="Free all", icon="trash")
        self.sweep_button = W.Button(description="Use as sweep base", icon="table",
                                     layout=W.Layout(display="" if sweep is not None else "none"))
        self.progress = W.IntProgress(value=0, min=0, max=1, description="load")
        self.status = W.HTML()
        self.rows = W.GridBox(layout=W.Layout(grid_template_columns="auto auto auto auto auto auto", grid_gap="2px 12px"))
        self.row_free_buttons: dict[str, W.Button] = {}  # resident key -> its Free button
        self.info = W.HTML()
        self.bench = None  # the last loaded Workbench
        self.load_button.on_click(lambda _: self.load())
        self.free_button.on_click(lambda _: self.free())
        self.sweep_button.on_click(lambda _: self.use_as_sweep_base())
        for w in (self.model, self.precision, self.memory, self.device):
            w.observe(self._check_fit, names="value")
        super().__init__([
            self.model, W.HBox([self.precision, self.memory, self.device]), self.fit,
            W.HBox([self.load_button, self.free_button, self.sweep_button, self.progress]), self.status,
            self.rows, self.info,
        ])
        self._check_fit()
        self.refresh()

    def overrides(self) -> list[str]:
        """The Hydra overrides these dropdowns stand for (paste them into a run or a sweep base)."""
        model = self.models.get(self.model.value, [f"model={self.model.value}"])
        out = [*model, f"precision={self.precision.value}", f"device={self.device.value}"]
        if self.memory.value:
            out.append(f"precision.memory={self.memory.value}")
        return out

    # ----------------------------------------------------------------- fit warning
    def _check_fit(self, change=None) -> Optional[str]:
        """Relabel the models for the chosen precision / device and show the chosen one's fit warning."""
        if self._relabelling:
            return None
        chosen = self.model.value
        self._relabelling = True  # new options reset the value: put it back without re-entering
        try:
            self.model.options = model_labels(self.entries, self.precision.value, self.device.value, self.memory.value)
            self.model.value = chosen
        finally:
            self._relabelling = False
        entry = self.entries.get(chosen)
        warning = fit_report(entry, self.precision.value, self.device.value, self.memory.value) if entry else None
        self.fit.value = f"<span style='color:#a60'>&#9888; {html.escape(warning)}</span>" if warning else ""
        return warning

    # ----------------------------------------------------------------- actions
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

    def free_one(self, key: str) -> bool:
        """Drop one resident set (its row's Free button); the others stay resident."""
        from workbench.models.build import free_model

        label = next((resident_label(r) for r in memory_report()["resident"] if r["key"] == key), key)
        freed = free_model(key)
        self.status.value = html.escape(f"freed {label}" if freed else f"{label} was no longer resident")
        report = self.refresh()
        if self.bench is not None and not any(r["identity"] == self.bench.components.identity for r in report["resident"]):
            self.bench, self.progress.value, self.progress.bar_style = None, 0, ""
        return freed

    def use_as_sweep_base(self, sweep_panel=None) -> list[str]:
        """Replace the model / precision / device lines of a SweepPanel's base with this panel's
        overrides (other lines stay, in order); returns the new base lines."""
        target = sweep_panel if sweep_panel is not None else self.sweep_panel
        if target is None:
            raise ValueError("no SweepPanel to write to: pass ModelPanel(sweep=panel) or use_as_sweep_base(panel)")
        lines = merge_overrides(target.base_overrides(), self.overrides(), SWEEP_KEYS)
        target.base.value = "\n".join(lines)  # the sweep panel replans on this change
        self.status.value = html.escape(f"sweep base: {', '.join(self.overrides())}")
        return lines

    # ----------------------------------------------------------------- memory view
    def _row(self, r: dict) -> list:
        button = W.Button(description="Free", icon="trash", tooltip=f"free {resident_label(r)}",
                          layout=W.Layout(width="80px"))
        button.on_click(lambda _, key=r["key"]: self.free_one(key))
        self.row_free_buttons[r["key"]] = button
        cells = [resident_label(r), r["device"]] + [f"{_mb(r['bytes'][s])} {r['dtypes'][s]}" for s in SLOTS]
        return [W.HTML(html.escape(c)) for c in cells] + [button]

    def refresh(self) -> dict:
        """Redraw the resident rows and memory line; returns ``memory_report()``."""
        report = memory_report()
        self.row_free_buttons = {}
        head = [W.HTML(f"<b>{h}</b>") for h in ("resident", "device", "text encoder", "transformer", "VAE", "")]
        rows = [w for r in report["resident"] for w in self._row(r)]
        self.rows.children = head + rows if rows else []
        extra = f"process RSS {_mb(report['process_rss_bytes'])}"
        if "cuda_allocated_bytes" in report:
            extra += f", CUDA allocated {_mb(report['cuda_allocated_bytes'])}, reserved {_mb(report['cuda_reserved_bytes'])}"
        self.info.value = f"<div>{extra}</div>" if rows else f"no models resident<div>{extra}</div>"
        self.resident = len(report["resident"])
        return report

    def resident_text(self) -> str:
        """The resident rows as plain text, one line each (what the grid shows)."""
        cells = [c.value for c in self.rows.children if isinstance(c, W.HTML)][6:]
        return "\n".join(" | ".join(html.unescape(c) for c in cells[i:i + 5]) for i in range(0, len(cells), 5))

    def __repr__(self) -> str:
        return f"ModelPanel({', '.join(self.overrides())})"
