"""ipywidgets panels: views over the library (state in traitlets, compute in workbench)."""
