"""The ``workbench`` command. ``run`` hands its arguments to Hydra; other verbs are plain argparse.

Heavy imports (torch, transformers, diffusers) happen inside the verbs, so ``workbench --help``
answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = """usage: workbench <command> [args]

commands:
  run [overrides] [-m]   generate images from the Hydra config (conf/); e.g.
                         workbench run sampler.steps=8 'prompts=[a cat, a dog]' seeds=[1,2]
                         workbench run -m sampler.steps=2,4 template=qwen_t2i,chat
  tokens [--template NAME | --template-file T.yaml] [--image FILE] [--control-tokens refuse|escape] [--json] PROMPT
                         show token ids, kept / dropped tokens and vision-token counts
  import-comfy FILE [-o OUT.yaml]   ComfyUI workflow (UI / API JSON or PNG) -> experiment config
  reproduce RECORD_OR_PNG           re-run a record.json or image; report identical / PSNR / what changed
  models [--root DIR] [--json]      list model files found (kind, variant, dtype, size) by the names configs use

exit codes: 0 done, 2 bad input (one line, refused before any work), 3 the run failed (one line saying
what was written), 4 reproduce: the re-run differs, 130 interrupted, 1 a bug (traceback). `workbench run --help` for run's keys.
"""


_HYDRA_NOISE = ("To append to your config use", "Config search path", "provider=", "full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(err: BaseException) -> str:
    """Hydra / OmegaConf errors span several lines (and suggest ``+key=`` for a misspelt key, which
    would add the typo): keep the lines that say what is wrong, joined into one."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0] not in str(err):
        lines += [ln.strip() for ln in str(cause).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(_HYDRA_NOISE)]
    return " ".join(kept) or type(err).__name__


def print_error(err: BaseException) -> None:
    """``error: <message>`` on stderr, on one line whatever the message holds."""
    print("error: " + " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()), file=sys.stderr, flush=True)


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
    from workbench.config.compose import compose_many, to_run_config

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
            to_run_config(cfg)
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

    from workbench.config.compose import config_dir

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


def _run(argv: list[str]) -> int:
    import hydra
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from workbench.config.compose import config_dir
    from workbench.config.schema import register_configs
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


def _tokens(argv: list[str]) -> int:
    import dataclasses
    import json

    from workbench.config import ConfigError, compose, to_run_config
    from workbench.pipeline import load_image
    from workbench.templates import TemplateError, load_template, render, tokenize
    from workbench.tokenizer import load_tokenizer
    from workbench.vision import preprocess

    p = argparse.ArgumentParser(prog="workbench tokens", description="Tokenize a prompt with a template.")
    p.add_argument("prompt")
    p.add_argument("--template", default="qwen_t2i", help="name of a file in conf/template/")
    p.add_argument("--template-file", help="a YAML file with TemplateConfig keys (name, text, drop_until, ...)")
    p.add_argument("--control-tokens", choices=["refuse", "escape"], help="override the template's control_tokens")
    p.add_argument("--image", action="append", default=[], help="reference image (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        if args.template_file:
            template = load_template(args.template_file)
        else:
            template = to_run_config(compose([f"template={args.template}", f"images={args.image!r}", "height=null", "width=null"] if args.image else [f"template={args.template}"])).template
        if args.control_tokens:
            template = dataclasses.replace(template, control_tokens=args.control_tokens)
        tok = load_tokenizer()
        grids = preprocess([load_image(f) for f in args.image]).grids if args.image else []
        t = tokenize(tok, render(template, args.prompt, len(grids), tok), grids)
    except (ConfigError, TemplateError, FileNotFoundError) as err:
        print_error(err)
        return getattr(err, "exit_code", 2)
    except Exception as err:  # Hydra's "Could not find 'template/x'" and friends
        print_error(one_line(err))
        return 2
    pieces = tok.convert_ids_to_tokens(t.input_ids)
    if args.json:
        print(json.dumps({"template": template.name, "drop": t.drop, "kept": len(t.input_ids) - t.drop,
                          "vision_tokens": t.vision_tokens, "ids": t.input_ids, "tokens": pieces}))
        return 0
    print(f"template {template.name}: {len(t.input_ids)} tokens, drop {t.drop}, keep {len(t.input_ids) - t.drop}, "
          f"vision tokens per image {t.vision_tokens}")
    for i, (tid, piece) in enumerate(zip(t.input_ids, pieces)):
        print(f"{'drop' if i < t.drop else 'keep'} {i:5d} {tid:7d} {piece!r}")
    return 0


# verb -> "module:function(argv) -> exit code"; imported only when that verb runs
VERBS = {
    "run": "workbench.cli:_run",
    "tokens": "workbench.cli:_tokens",
    "import-comfy": "workbench.comfy.cli:main",
    "reproduce": "workbench.reproduce:main",
    "models": "workbench.loading.cli:main",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch a verb; every ``WorkbenchError`` becomes one ``error: ...`` line on stderr and its
    documented exit code (workbench/errors.py: 2 bad input, 3 run failure; 130 Ctrl-C; 1 a bug)."""
    import importlib

    from workbench.errors import WorkbenchError, exit_code

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"workbench: unknown command {verb!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module, func = VERBS[verb].split(":")
    try:
        return getattr(importlib.import_module(module), func)(rest)
    except WorkbenchError as err:
        print_error(err)
        return exit_code(err)
    except KeyboardInterrupt as err:
        print(f"\nworkbench {verb}: interrupted", file=sys.stderr, flush=True)
        return exit_code(err)
    except BrokenPipeError:  # `workbench tokens ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe
        return 0


if __name__ == "__main__":
    sys.exit(main())
