"""The ``workbench`` command. ``run`` hands its arguments to Hydra; other verbs are plain argparse.

Heavy imports (torch, transformers, diffusers) happen inside the verbs, so ``workbench --help``
answers at once.
"""

from __future__ import annotations

import argparse
import sys

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
"""


def _run(argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from workbench.config.compose import config_dir
    from workbench.config.schema import ConfigError, register_configs
    from workbench.lora import LoraError
    from workbench.perf import PerfError
    from workbench.precision import NonFiniteError, PrecisionError
    from workbench.run import run
    from workbench.templates import TemplateError

    # errors whose message already names the cause and the fix: one line, no traceback
    user_errors = (ConfigError, FileNotFoundError, PrecisionError, PerfError, NonFiniteError, TemplateError, LoraError)

    register_configs()
    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def main(cfg: DictConfig) -> None:
        out = HydraConfig.get().runtime.output_dir
        try:
            run(cfg, out)
        except user_errors as err:
            print(f"error: {err}", file=sys.stderr)
            status["code"] = 2
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # Hydra's "Could not find 'template/x'" and friends
        print(f"error: {err}", file=sys.stderr)
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
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"workbench: unknown command {verb!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module, func = VERBS[verb].split(":")
    return getattr(importlib.import_module(module), func)(rest)


if __name__ == "__main__":
    sys.exit(main())
