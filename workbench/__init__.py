"""Qwen-Image Workbench: every stage of the Qwen-Image pipelines owned, inspectable and reproducible.

    from workbench import compose, to_run_config, Workbench
    cfg = to_run_config(compose(["sampler.steps=8"]))
    bench = Workbench.from_config(cfg)          # models stay resident
    images = bench.generate(cfg)
"""

__version__ = "0.1.0"

__all__ = ["Workbench", "compose", "to_run_config", "free_models", "__version__"]


def __getattr__(name: str):
    # lazy: importing the package must not pull in torch / diffusers (CLI start-up time)
    if name == "Workbench":
        from workbench.pipeline import Workbench

        return Workbench
    if name == "free_models":
        from workbench.models.build import free_models

        return free_models
    if name in ("compose", "to_run_config"):
        import importlib

        return getattr(importlib.import_module("workbench.config.build"), name)
    raise AttributeError(name)


def load_ipython_extension(ipython):  # `%load_ext workbench`: the %workbench magics (workbench/cli/magics.py)
    from workbench.cli.magics import load_ipython_extension as load
    load(ipython)
