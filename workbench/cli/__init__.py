"""The ``workbench`` command: one module per verb (``run`` hands its arguments to Hydra, the others
are plain argparse), and the ``%workbench`` magics (``magics.py``).

Heavy imports (torch, transformers, diffusers) happen inside the verbs, so ``workbench --help``
answers at once.
"""

from __future__ import annotations

import sys

from workbench.cli.messages import one_line, print_error

__all__ = ["main", "one_line", "print_error"]

USAGE = """usage: workbench <command> [args]

commands:
  run [overrides] [-m]   generate images from the Hydra config (conf/); e.g.
                         workbench run sampler.steps=8 'prompts=[a cat, a dog]' seeds=[1,2]
                         workbench run -m sampler.steps=2,4 template=qwen_t2i,chat
  tokens [--template NAME | --template-file T.yaml] [--image FILE] [--control-tokens refuse|escape]
         [--max-sequence-length N] [--json] PROMPT
                         show token ids, kept / dropped / cut tokens and vision-token counts
  import-comfy FILE [-o OUT.yaml]   ComfyUI workflow (UI / API JSON or PNG) -> experiment config
  reproduce RECORD_OR_PNG           re-run a record.json (or a run's folder) or image; report identical / PSNR / what changed
  models [--root DIR] [--json]      list model files found (kind, variant, dtype, size) by the names configs use
  cache [--clear]                   the torch.compile cache kept between processes: where, how big; clear it

exit codes: 0 done, 2 bad input (one line, refused before any work), 3 the run failed (one line saying
what was written), 4 reproduce: the re-run differs, 130 interrupted, 1 a bug (traceback). `workbench run --help` for run's keys.
"""

# verb -> "module:function(argv) -> exit code"; imported only when that verb runs
VERBS = {
    "run": "workbench.cli.run:main",
    "tokens": "workbench.cli.tokens:main",
    "import-comfy": "workbench.cli.import_comfy:main",
    "reproduce": "workbench.reproduce:main",  # its argument parsing lives in workbench/reproduce.py
    "models": "workbench.cli.models:main",
    "cache": "workbench.cli.cache:main",
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

