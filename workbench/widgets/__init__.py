"""ipywidgets panels: views over the library (state in traitlets, compute in workbench)."""

from workbench.widgets.model_panel import ModelPanel
from workbench.widgets.sweep_panel import SweepPanel
from workbench.widgets.template_panel import TemplatePanel

__all__ = ["ModelPanel", "SweepPanel", "TemplatePanel"]
