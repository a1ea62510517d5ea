"""The build door: YAML and Hydra overrides become typed config objects here, and only here.

This is the one module (besides the CLI's Hydra entry point) that imports Hydra / OmegaConf:
- ``compose`` / ``compose_many``: ``conf/config.yaml`` plus overrides, as ``workbench run`` composes it;
- ``to_run_config``: the composed tree -> ``Config`` (the dataclasses' value checks), then the checks
  that need the machine or the files, once (``workbench.config.preflight.check_run``);
- ``load_template``: a template YAML file -> ``TemplateConfig``;
- ``options(group)``, ``option_data(group, option)``, ``group_config(group, option)``: the options of a
  config group (``conf/<group>/*.yaml``) that panels and the CLI show, one option's keys, its typed object;
- ``to_object`` / ``resolved``: any composed tree as dataclasses / as plain resolved data;
- ``describe_error``: any Hydra / OmegaConf / workbench error as one readable line;
- ``record_config``: a record's resolved config back into the tree and the typed ``Config``;
- ``override_value`` (from ``workbench.config.overrides``): a value written as a Hydra override value
  that composes back to itself.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from workbench.config.limits import unknown_key_message
from workbench.config.messages import list_hint, one_line
from workbench.config.overrides import literal, override_value  # noqa: F401 - override_value: part of the door
from workbench.config.preflight import check_run
from workbench.config.run import Config, schema_paths
from workbench.config.template import TemplateConfig
from workbench.errors import ConfigError, WorkbenchError
from workbench.values import flatten, string_list


class ComposeError(ConfigError, ConfigCompositionException):
    """Hydra could not compose the config; the message is one line naming the key (``__cause__`` keeps
    OmegaConf's original error). Still a ``ConfigCompositionException`` for code that catches Hydra's."""


# ----------------------------------------------------------------------------- the config tree
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


def options(group: str) -> list[str]:
    """The options of config group ``group`` (``template`` -> ``['chat', 'qwen_edit', ...]``), sorted:
    the stems of ``conf/<group>/*.yaml``, what ``group=OPTION`` accepts."""
    folder = config_dir() / group
    if not folder.is_dir():
        groups = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        raise ConfigError(f"no config group {group!r}; groups: {', '.join(groups)}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def option_data(group: str, option: str) -> dict:
    """The keys one option file sets (``conf/<group>/<option>.yaml``) as plain data, unresolved and as
    written (a ``# @package _global_`` file nests its keys under the group's name): what a panel shows
    about an option without composing (``option_data("model", "files_comfyui")["source"]``). Its ``defaults``
    list (the other groups' options a model of another family brings) is Hydra's, not a key, and is left out."""
    data = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"), resolve=False)
    if isinstance(data, dict):
        data.pop("defaults", None)
    return data


def group_config(group: str, option: str) -> Any:
    """The typed object of one group option on its own (``group_config("template", "qwen_edit")`` ->
    ``TemplateConfig``), with its value checks, without the run checks of the full config (which
    would, e.g., insist on reference images for an edit template)."""
    return _to_object(compose([f"{group}={option}"])[group])


def edit_templates(family: str = "qwen-image") -> dict[str, tuple[int, int]]:
    """{name: (min_images, max_images)} of the shipped templates of ``family`` that take reference images."""
    found = {}
    try:
        for file in sorted((config_dir() / "template").glob("*.yaml")):
            data = OmegaConf.load(file)
            if int(data.get("max_images", 0) or 0) > 0 and data.get("family", "qwen-image") == family:
                found[str(data.get("name", file.stem))] = (int(data.get("min_images", 0)), int(data.max_images))
    except Exception:  # noqa: BLE001 - only used to word a message; never hide the real error
        pass
    return found


def register_configs() -> None:
    """Register the schema: each group file merges into a typed field of ``Config``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)


# ----------------------------------------------------------------------------- composing
def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, as ``workbench run`` would.

    Uses the context-manager form of ``initialize_config_dir``, which survives re-running a cell.
    Hydra's errors come back as one-line ``ComposeError`` (a ``ConfigError``); an unknown key says
    ``unknown key sampler.stepz; did you mean sampler.steps?``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = string_list(overrides, "overrides", ConfigError, "['sampler.steps=8']")  # one string: one override
    key = (config_name, tuple(overrides), _conf_tree_state(), _schema_state(Config), os.getcwd())
    if key not in _COMPOSED:
        register_configs()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            try:
                composed = hydra_compose(config_name=config_name, overrides=list(overrides))
            except HydraException as err:
                raise _composition_error(err) from (err.__cause__ or err)
        if len(_COMPOSED) >= _COMPOSED_MAX:
            _COMPOSED.pop(next(iter(_COMPOSED)))
        _COMPOSED[key] = composed
    return copy.deepcopy(_COMPOSED[key])  # callers may edit their tree; the cached one stays as Hydra made it


# Hydra re-reads and re-merges every YAML file on each compose (0.1-0.3 s a call); a notebook re-running a sweep,
# or a sweep re-planned with other seeds, composes the same group choices again. Kept while the config tree's files
# and the schema's defaults are unchanged (a template edited in place composes afresh); failures are never kept.
_COMPOSED: dict[tuple, DictConfig] = {}
_COMPOSED_MAX = 256


def _schema_state(cls: type) -> tuple:
    """The schema's defaults (``Config`` and the dataclasses nested in it), part of every composition: a default
    patched at run time (tests do) composes afresh instead of serving a tree composed before."""
    state = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            state.append((f.name, _schema_state(f.default_factory)))
        else:
            state.append((f.name, repr(f.default), f.default_factory))
    return tuple(state)


def _conf_tree_state() -> tuple:
    """Each YAML file under the config folder with its size and modification time (a few milliseconds to read);
    other files (the package's ``__pycache__``, written on first import) are not what Hydra composes."""
    root = config_dir()
    state, seen = [], set()
    for dirpath, dirnames, files in os.walk(root, followlinks=True):  # a group folder may be a symlink
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen]  # no link cycle
        for name in files:
            if not name.endswith((".yaml", ".yml")):
                continue
            st = os.stat(os.path.join(dirpath, name))
            state.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns))
    return tuple(sorted(state))


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


# ----------------------------------------------------------------------------- typed objects
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


def _to_object(cfg: DictConfig, where: str = "") -> Any:
    """``OmegaConf.to_object`` with the dataclasses' ``ConfigError`` (wrapped by OmegaConf) unwrapped."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if where:
            raise ConfigError(f"{where}{cause or err}") from None
        if cause is not None:
            raise ConfigError(str(cause)) from None
        raise ConfigError(str(err)) from err


def to_object(cfg: DictConfig) -> Any:
    """A composed tree (of any config name, e.g. ``train_tiny``) as its dataclasses, value checks run;
    a failing check or type is a one-line ``ConfigError``."""
    return _to_object(cfg)


def resolved(cfg: DictConfig) -> dict:
    """The composed tree as plain data with interpolations resolved (what records and cache keys hold);
    an interpolation that cannot resolve is a one-line ``ConfigError``."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_error(err)) from err


def to_run_config(cfg: DictConfig | Config) -> Config:
    """Validate a composed config and return the typed ``Config``: the dataclasses' value checks, then
    the checks that need the machine and the files (``preflight.check_run``), once, before any model
    loads. A ``Config`` passes through unchanged (it was built here already)."""
    if isinstance(cfg, Config):
        return cfg
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"to_run_config takes what compose([...]) returns (or a Config), got {type(cfg).__name__}; "
                          "e.g. to_run_config(compose(['sampler.steps=8']))")
    check_known_keys(cfg)
    run_cfg = _to_object(cfg)
    assert isinstance(run_cfg, Config), type(run_cfg)
    check_run(run_cfg, lambda: edit_templates(run_cfg.model.variant.family))  # read only to word a refusal
    return run_cfg


def sweep_values(key: str, text: str, limit: int) -> list:
    """What Hydra's sweep ``key=text`` (``range(2,10,2)``, ``choice(a,b)``, ``sort(...)``) gives its jobs, as for
    ``workbench run -m``: at most ``limit`` + 1 values are listed (``range(0,10**12)`` is never expanded)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
        found = override.sweep_iterator() if override.is_sweep_override() else iter([override.value()])
        return list(itertools.islice(found, limit + 1))
    except HydraException as err:
        raise ConfigError(f"{text!r} is not a valid Hydra sweep: {str(err).splitlines()[0]}") from None


def load_template(path: str | Path) -> TemplateConfig:
    """A user-defined template from a YAML file, validated like the ones in ``conf/template/``.

    The file holds the keys of ``TemplateConfig`` (``text`` is required; ``name`` defaults to the
    file's stem). Unknown keys and wrong types fail naming the key, semantic errors as ``ConfigError``.
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"template file {str(path)!r} is a folder; give a YAML file with a 'text' key")
    if not file.is_file():
        raise FileNotFoundError(f"template file {str(path)!r} not found")
    data = OmegaConf.load(file)
    if not OmegaConf.is_dict(data):
        raise ConfigError(f"template file {file}: expected a mapping of TemplateConfig keys (name, text, ...)")
    if "text" not in data:
        raise ConfigError(f"template file {file}: key 'text' is missing; give the template text with one '{{prompt}}' slot")
    if "name" not in data:
        data.name = file.stem
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TemplateConfig), data)
    except OmegaConfBaseException as err:  # an unknown key or a wrong type
        raise ConfigError(f"template file {file}: {err}") from None
    return _to_object(merged, f"template file {file}: ")


def record_config(recorded: dict, source: str | Path) -> tuple[DictConfig, Config, list[dict]]:
    """A record's resolved config back into (the OmegaConf tree, the typed ``Config``, [{key, default}]
    of nested keys the record lacks, filled with this version's defaults).

    Strings are read as literal text (a recorded ``${...}`` is never resolved); every check of
    ``to_run_config`` runs, and errors name ``source``. The caller refuses records that lack whole
    groups or top-level keys before calling this.
    """
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), literal(recorded))
        merged = OmegaConf.to_container(cfg, resolve=False)
    except OmegaConfBaseException as err:
        where = f" (key {err.full_key})" if getattr(err, "full_key", None) else ""
        raise ConfigError(f"{source}: the recorded config does not fit this version's schema{where}: "
                          f"{str(err).splitlines()[0]}") from None
    have = flatten(recorded)
    defaults = [{"key": k, "default": v} for k, v in flatten(merged).items()
                if k not in have and not k.startswith("executor.") and not any(h.startswith(k + ".") for h in have)]
    try:
        run_cfg = to_run_config(cfg)  # every check before anything is written or loaded
    except ConfigError as err:
        raise ConfigError(f"{source}: the recorded config is not valid here: {err}") from None
    return cfg, run_cfg, defaults


# ----------------------------------------------------------------------------- one-line errors
_HYDRA_NOISE = ("To append to your config use", "Config search path", "provider=", "full_key:", "reference_type=",
                "object_type=", "Set the environment variable HYDRA_FULL_ERROR")


def _composition_error(err: HydraException) -> ComposeError:
    """Rewrite Hydra's error as one line; an unknown key gets 'did you mean ...?' instead of Hydra's
    '+key=value' hint (which would add the misspelt key and have it ignored)."""
    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type) \
            and cause.key is not None:
        key, full_key = str(cause.key), str(cause.full_key or cause.key)
        path = full_key[: -len(key) - 1] if full_key.endswith("." + key) else schema_paths().get(cause.object_type, "")
        known = [f.name for f in dataclasses.fields(cause.object_type)]
        return ComposeError(unknown_key_message(path, key, known))
    text = one_line(str(err))
    override = getattr(err, "override", None)  # a syntax error: Hydra's text does not say which override
    if override and override not in text:
        text = f"override {override!r}: {text}"
    if isinstance(cause, OmegaConfBaseException) and cause.msg:
        key = f" (key {cause.full_key})" if cause.full_key else ""
        text = f"{text.rstrip('.')}: {cause.msg.strip().splitlines()[0]}{key}"  # the rest repeats the key
    return ComposeError(list_hint(text))


def describe_error(err: BaseException) -> str:
    """One readable line for any error of composing or validating a config: a Hydra error (unknown key
    -> 'did you mean', a missing group option -> the options available, a wrong type), an OmegaConf
    error (its message and key), or a workbench error (its message). Hydra's '+key=' hint, search
    path and internals are left out; the first line of the cause is added when the text lacks it."""
    if isinstance(err, HydraException) and not isinstance(err, WorkbenchError):
        text = str(_composition_error(err))
    elif isinstance(err, OmegaConfBaseException) and not isinstance(err, WorkbenchError) and err.msg:
        key = f" (key {err.full_key})" if err.full_key else ""
        text = f"{err.msg.strip().splitlines()[0]}{key}"
    else:
        lines = (ln.strip() for ln in str(err).splitlines())
        text = " ".join(ln for ln in lines if ln and not ln.startswith(_HYDRA_NOISE))
    cause = err.__cause__
    first = str(cause).strip().splitlines()[0].strip() if cause is not None and str(cause).strip() else ""
    if first and first not in text and not first.startswith(_HYDRA_NOISE):
        text = f"{text} ({first})" if text else first
    return text or type(err).__name__
