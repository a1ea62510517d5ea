"""The models of a run: the embedded tiny model (``tiny``), the family's architecture constants
(``arch``), the resident set and its build order (``components``, ``build``), and the catalogue of
models a panel or ``workbench models`` offers (``catalogue``)."""

__all__ = ["Components", "build_components"]


def __getattr__(name: str):
    # lazy: ``workbench.models.arch`` is read at config time, before torch is wanted
    if name in __all__:
        from workbench.models import components

        return getattr(components, name)
    raise AttributeError(name)
