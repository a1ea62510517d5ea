"""Compose the Hydra config from Python (notebooks, tests) and turn it into typed objects."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Sequence

from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from workbench.config.limits import unknown_key_message
from workbench.config.schema import Config, ConfigError, register_configs


class ComposeError(ConfigError, ConfigCompositionException):
    """Hydra could not compose the config; the message is one line naming the key (``__cause__`` keeps
    OmegaConf's original error). Still a ``ConfigCompositionException`` for code that catches Hydra's."""


def _schema_paths() -> dict[type, str]:
    """{dataclass: its key in the config}, e.g. SamplerConfig -> 'sampler', LoraItem -> 'lora.items[]'."""
    paths: dict[type, str] = {Config: ""}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            args = typing.get_args(hint)
            inner = args[0] if typing.get_origin(hint) is list and args else hint
            if dataclasses.is_dataclass(inner) and inner not in paths:
                paths[inner] = f"{prefix}{name}" + ("[]" if inner is not hint else "")
                walk(inner, paths[inner] + ".")

    walk(Config, "")
    return paths


def _one_line(text: str) -> str:
    """Hydra's multi-line messages ('Available options in ...:' then one option a line) as one line."""
    parts = []
    for paragraph in text.strip().split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        cut = next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))
        lines = lines[:cut]  # Hydra's search path: internals, no help to a user
        group = re.fullmatch(r"Available options in '(.+)':", lines[0]) if lines else None
        if group:
            parts.append(f"{group[1]} options available: {', '.join(lines[1:])}")
        elif lines and lines[0].endswith(":") and len(lines) > 1:
            parts.append(f"{lines[0]} {', '.join(lines[1:])}")
        else:
            parts.append(" ".join(lines))
    return "; ".join(p for p in parts if p)


def _composition_error(err: HydraException) -> ComposeError:
    """Rewrite Hydra's error as one line; an unknown key gets 'did you mean ...?' instead of Hydra's
    '+key=value' hint (which would add the misspelt key and have it ignored)."""
    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type) \
            and cause.key is not None:
        key, full_key = str(cause.key), str(cause.full_key or cause.key)
        path = full_key[: -len(key) - 1] if full_key.endswith("." + key) else _schema_paths().get(cause.object_type, "")
        known = [f.name for f in dataclasses.fields(cause.object_type)]
        return ComposeError(unknown_key_message(path, key, known))
    text = _one_line(str(err))
    override = getattr(err, "override", None)  # a syntax error: Hydra's text does not say which override
    if override and override not in text:
        text = f"override {override!r}: {text}"
    if isinstance(cause, OmegaConfBaseException) and cause.msg:
        key = f" (key {cause.full_key})" if cause.full_key else ""
        text = f"{text.rstrip('.')}: {cause.msg.strip().splitlines()[0]}{key}"  # the rest repeats the key
    return ComposeError(text)


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
    Hydra's errors come back as one-line ``ComposeError`` (a ``ConfigError``); an unknown key says
    ``unknown key sampler.stepz; did you mean sampler.steps?``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        try:
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        except HydraException as err:
            raise _composition_error(err) from (err.__cause__ or err)


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


def check_known_keys(node: DictConfig | ListConfig, path: str = "") -> None:
    """Refuse keys the schema does not have, at any depth: ``+sampler.stepz=3`` (Hydra's own hint for a
    typo) adds one that ``OmegaConf.to_object`` would silently drop. The top-level ``hydra`` node is Hydra's."""
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                check_known_keys(child, f"{path}[{i}]")
        return
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if known is not None and key not in known and not (path == "" and key == "hydra"):
            raise ConfigError(unknown_key_message(path, str(key), known))
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not (path == "" and key == "hydra"):
            check_known_keys(child, f"{path}.{key}" if path else str(key))


def to_run_config(cfg: DictConfig | Config) -> Config:
    """Validate a composed config and return the typed ``Config`` (runs the ``__post_init__`` checks)."""
    if isinstance(cfg, Config):
        return cfg
    check_known_keys(cfg)
    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise ConfigError(str(cause)) from None
        raise ConfigError(str(err)) from err
    assert isinstance(run_cfg, Config), type(run_cfg)
    _check_control_tokens(run_cfg)
    return run_cfg



def _check_control_tokens(cfg: Config) -> None:
    """Prompts smuggling ``<|im_end|>`` & co. are refused here, before models load (not at encode)."""
    from workbench.templates import check_prompts

    prompts = {f"prompts[{i}]": p for i, p in enumerate(cfg.prompts)}
    if cfg.sampler.cfg > 1:
        prompts["negative_prompt"] = cfg.negative_prompt
    check_prompts(cfg.template, prompts)
