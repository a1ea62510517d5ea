"""Moved: composing and building typed configs is workbench/config/build.py (the build door)."""
# moved: see workbench.config.build

from workbench.config.build import (  # noqa: F401
    ComposeError,
    check_known_keys,
    compose,
    compose_many,
    config_dir,
    to_run_config,
)
