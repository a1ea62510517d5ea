"""Compose the Hydra config from Python (notebooks, tests) and turn it into typed objects."""

from __future__ import annotations

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
