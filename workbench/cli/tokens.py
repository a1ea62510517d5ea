"""``workbench tokens``: the token report of a prompt under a template (``workbench.token_report``)."""

from __future__ import annotations

import argparse

from workbench.cli.messages import one_line, print_error


def _template(args):
    import dataclasses

    from workbench.config import compose, to_run_config
    from workbench.config.build import load_template

    if args.template_file:
        template = load_template(args.template_file)
    else:
        images = [f"images={args.image!r}", "height=null", "width=null"] if args.image else []
        template = to_run_config(compose([f"template={args.template}", *images])).template
    if args.control_tokens:
        template = dataclasses.replace(template, control_tokens=args.control_tokens)
    return template


def main(argv: list[str]) -> int:
    import json

    from workbench.config import ConfigError
    from workbench.config.run import MAX_SEQUENCE_LENGTH
    from workbench.pipeline import load_image
    from workbench.templates import TemplateError
    from workbench.token_report import token_report

    p = argparse.ArgumentParser(prog="workbench tokens", description="Tokenize a prompt with a template.")
    p.add_argument("prompt")
    p.add_argument("--template", default="qwen_t2i", help="name of a file in conf/template/")
    p.add_argument("--template-file", help="a YAML file with TemplateConfig keys (name, text, drop_until, ...)")
    p.add_argument("--control-tokens", choices=["refuse", "escape"], help="override the template's control_tokens")
    p.add_argument("--image", action="append", default=[], help="reference image (repeatable)")
    p.add_argument("--area", type=int, default=1024 * 1024,
                   help="Qwen-Image-2.1 templates: pixels each image is sized to (output_resolution^2)")
    p.add_argument("--max-sequence-length", type=int, default=1024, metavar="N",
                   help="the run's limit on the kept tokens (config max_sequence_length): tokens past it are marked cut")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if not 1 <= args.max_sequence_length <= MAX_SEQUENCE_LENGTH:
        print_error(f"--max-sequence-length must be in 1..{MAX_SEQUENCE_LENGTH} (config max_sequence_length), "
                    f"got {args.max_sequence_length}")
        return 2
    try:
        report = token_report(_template(args), args.prompt, [load_image(f) for f in args.image], args.area,
                              args.max_sequence_length)
    except (ConfigError, TemplateError, FileNotFoundError) as err:
        print_error(err)
        return getattr(err, "exit_code", 2)
    except Exception as err:  # Hydra's "Could not find 'template/x'" and friends
        print_error(one_line(err))
        return 2
    print(json.dumps(report.as_dict()) if args.json else "\n".join(report.lines()))
    return 0
