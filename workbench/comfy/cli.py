"""``workbench import-comfy FILE [-o OUT.yaml]``: print or write the experiment, report on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.comfy.graph import WorkflowError
from workbench.comfy.mapping import import_workflow
from workbench.comfy.writer import report_lines, to_yaml


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench import-comfy",
                                description="Turn a ComfyUI workflow (UI / API JSON, or a PNG) into an experiment config.")
    p.add_argument("file", help="workflow .json (UI or API format) or a ComfyUI .png")
    p.add_argument("-o", "--output", help="write the YAML here (default: print it)")
    args = p.parse_args(argv)
    try:
        r = import_workflow(Path(args.file))
        text = to_yaml(r)
    except (WorkflowError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = report_lines(r)
    print(f"import report for {r.source}:" if lines else f"imported {r.source}: everything mapped", file=sys.stderr)
    for line in lines:
        print(f"  - {line}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
        if out.parent.name == "experiment":
            print(f"run it: workbench run \"hydra.searchpath=['file://{out.resolve().parent.parent}']\" "
                  f"experiment={out.stem}", file=sys.stderr)
        else:
            print(f"run it: copy it to conf/experiment/ (or any <dir>/experiment/ on hydra.searchpath) and use "
                  f"experiment={out.stem}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
