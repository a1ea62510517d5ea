"""Config schema and composition (Hydra / OmegaConf)."""

from workbench.config.compose import compose, config_dir, to_run_config
from workbench.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError", "compose", "config_dir", "to_run_config"]
