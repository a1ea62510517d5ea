"""``workbench run``: hands its arguments to Hydra, after composing and validating every job's
config and checking its output folder, so that a refused run creates nothing."""

from __future__ import annotations

import sys
from pathlib import Path

from workbench.cli.messages import one_line, print_error


def _input_error(err: Exception, where: str = ""):
    """A config-time failure as the one-line ``InputError`` the CLI prints (exit code 2)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from workbench.errors import InputError, WorkbenchError

    if isinstance(err, WorkbenchError) and not where:
        return err
    if isinstance(err, (WorkbenchError, HydraException, OmegaConfBaseException, FileNotFoundError)):
        error = InputError(f"{where}{one_line(err)}")
        if isinstance(err, WorkbenchError):
            error.exit_code = err.exit_code
        return error
    return err  # anything else is a bug: let its traceback show


def _static_prefix(template: str) -> Path:
    """The part of a run-folder template before its first interpolation (``outputs/${now:...}`` ->
    ``outputs``): what exists before Hydra makes the folder."""
    if "${" not in template:
        return Path(template)
    head = template.split("${", 1)[0]
    return Path(head) if head.endswith("/") else Path(head).parent  # "runs/x_${now:..}" -> "runs"


def _deepest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _prevalidate(overrides: list[str], multirun: bool) -> Path | None:
    """Compose and validate every job's config, and check its output folder, before Hydra creates
    anything. Raises ``InputError``; returns the deepest existing folder above the run folder (what
    a refused run may clean up to), or None when the folder could not be predicted."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from workbench import record as rec
    from workbench.config.build import compose_many, to_run_config
    from workbench.user_cache import check_cache_dir

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise _input_error(err, "cannot parse the overrides: ") from None
    if multirun and not any(o.key_or_group == "hydra/sweeper" for o in parsed):
        try:  # the combinations Hydra's basic sweeper will run, in its order
            jobs = BasicSweeper.split_arguments(parsed, None)[0]
        except HydraException as err:
            raise _input_error(err) from None
    else:  # a single run (or a sweeper plugin that chooses values itself: check the fixed part)
        jobs = [[o.input_line for o in parsed if not (multirun and o.is_sweep_override())]]
    for i, (job, cfg) in enumerate(zip(jobs, compose_many(jobs))):
        where = f"job {i} of {len(jobs)} ({' '.join(job)}): " if len(jobs) > 1 else ""
        try:
            if isinstance(cfg, Exception):
                raise cfg
            check_cache_dir(to_run_config(cfg).perf)
        except Exception as err:  # noqa: BLE001 - _input_error keeps bugs as they are
            raise _input_error(err, where) from None

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    template = _hydra_value(jobs[0], key)
    if template is None:
        return None
    folder = _static_prefix(template)
    rec.check_output_dir(folder, key, final="${" not in template)
    return _deepest_existing(folder)


def _hydra_value(overrides: list[str], key: str) -> str | None:
    """``key`` of the Hydra config these overrides compose, unresolved (its ``${now:...}`` stays)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from workbench.config.build import config_dir

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        node = OmegaConf.select(cfg, key.rsplit(".", 1)[0])
        return str(node._get_node(key.rsplit(".", 1)[1])._value())
    except Exception:  # noqa: BLE001 - validated above; Hydra reports anything left in its own way
        return None


def _remove_if_untouched(out: Path, anchor: Path | None) -> None:
    """After a refusal inside the job: remove the folder Hydra made for it (holding only Hydra's
    ``.hydra/`` copy) and the empty folders above it, down to what existed before the run."""
    import shutil

    out = out.absolute()
    if anchor is None or out == anchor or not out.is_relative_to(anchor):
        return
    try:
        if {p.name for p in out.iterdir()} - {".hydra"}:
            return
        shutil.rmtree(out / ".hydra", ignore_errors=True)
        out.rmdir()
        for parent in out.parents:
            if parent == anchor or not parent.is_relative_to(anchor):
                break
            parent.rmdir()  # only when empty: another run's folder stops the walk
    except OSError:
        pass


def main(argv: list[str]) -> int:
    import hydra
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from workbench.config.build import config_dir
    from workbench.config.build import register_configs
    from workbench.errors import EXIT_OK, WorkbenchError, exit_code

    register_configs()
    args, _ = get_args_parser().parse_known_args(argv)  # Hydra parses them again, and refuses unknown flags
    anchor = None
    skip = args.help or args.hydra_help or args.shell_completion or args.info is not None or args.config_path or args.config_dir or args.config_name
    if not skip:
        anchor = _prevalidate(args.overrides, args.multirun)
    status = {"code": EXIT_OK}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def main(cfg: DictConfig) -> None:
        from workbench.errors import EXIT_INPUT, RunFailure
        from workbench.run import run

        out = HydraConfig.get().runtime.output_dir
        try:
            run(cfg, out)
        except (WorkbenchError, FileNotFoundError) as err:  # a missing input file names itself: bad input
            print_error(err)
            status["code"] = max(status["code"], exit_code(err) if isinstance(err, WorkbenchError) else EXIT_INPUT)
            if not isinstance(err, RunFailure):
                _remove_if_untouched(Path(out), anchor)
            return
        print(out, flush=True)

    sys.argv = ["workbench run", *argv]
    main()
    return status["code"]
