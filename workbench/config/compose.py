"""Moved: composing and building typed configs is workbench/config/build.py (the build door)."""
# moved: see workbench.config.build

import sys
import types

from workbench.config.build import (  # noqa: F401
    ComposeError,
    check_known_keys,
    compose,
    compose_many,
    config_dir,
    to_run_config,
)


class _CallableModule(types.ModuleType):
    """Importing this module makes it the package attribute ``workbench.config.compose``, shadowing the
    function of that name: calling the module calls the function, so ``from workbench.config import
    compose`` keeps working while the shim exists."""

    def __call__(self, *args, **kwargs):
        return compose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
