"""Model components: the embedded tiny model and (later) loaders for real checkpoints."""

from workbench.models.components import Components, build_components

__all__ = ["Components", "build_components"]
