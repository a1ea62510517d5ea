"""Compose the Hydra config from Python (notebooks, tests) and turn it into typed objects."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from workbench.config.schema import Config, ConfigError, register_configs


def config_dir() -> Path:
    """The ``conf/`` tree, shipped as the package ``workbench.conf`` (see pyproject.toml)."""
    from importlib.resources import files

    try:
        path = Path(str(files("workbench.conf")))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not pip-installed: conf/ beside the package
        path = Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"workbench config tree not found at {path} (expected config.yaml there)")
    return path


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, as ``workbench run`` would.

    Uses the context-manager form of ``initialize_config_dir``, which survives re-running a cell.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_many(override_lists: Sequence[Sequence[str]], config_name: str = "config") -> list[DictConfig | Exception]:
    """``compose`` for many override lists (sweep cells): each result equals ``compose(overrides)``,
    or is the exception it raises.

    Hydra's composition (defaults tree, YAML loads, merges: ~0.3 s a call) runs once per distinct set
    of *group* overrides (``sampler=heun``, ``+x=1``); the plain value overrides (``sampler.steps=8``)
    are then applied to a copy by Hydra's own parser and merge step, which is what Hydra itself does
    after composing (``ConfigLoaderImpl._apply_overrides_to_config``: same order, same type checks).
    A 3x3 steps x cfg sweep composes once instead of nine times. Any failure is re-derived by a plain
    ``compose`` so that errors read exactly as they would from the command line.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    parser = OverridesParser.create()

    def is_plain_value(o) -> bool:  # ``a.b=v`` / ``height=v``: applied after composing, as Hydra does
        return (o.package is None and not (o.is_add() or o.is_force_add() or o.is_delete())
                and o.key_or_group not in groups and "/" not in o.key_or_group
                and o.key_or_group.split(".")[0] != "hydra")

    structural_configs: dict[tuple[str, ...], DictConfig] = {}
    results: list[DictConfig | Exception] = []
    for overrides in override_lists:
        try:
            values, structural = [], []
            for o in parser.parse_overrides(list(overrides)):
                (values if is_plain_value(o) else structural).append(o)
            structural = tuple(o.input_line for o in structural)
            if structural not in structural_configs:
                structural_configs[structural] = compose(structural, config_name)
            cfg = copy.deepcopy(structural_configs[structural])
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            results.append(cfg)
        except Exception:
            try:  # the slow path, for the exact error (and the config, should it compose after all)
                results.append(compose(overrides, config_name))
            except Exception as err:
                results.append(err)
    return results


def to_run_config(cfg: DictConfig | Config) -> Config:
    """Validate a composed config and return the typed ``Config`` (runs the ``__post_init__`` checks)."""
    if isinstance(cfg, Config):
        return cfg
    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise ConfigError(str(cause)) from None
        raise ConfigError(str(err)) from err
    assert isinstance(run_cfg, Config), type(run_cfg)
    return run_cfg
