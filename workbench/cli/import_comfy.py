"""``workbench import-comfy FILE [-o OUT.yaml] [--force]``: print or write the experiment, report on stderr.

Exit codes (``workbench.errors``): 0 written / printed; 2 the workflow or the -o path is refused
(one line on stderr, nothing written); 3 the write itself failed (the file is left as it was).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.comfy.mapping import import_workflow
from workbench.comfy.writer import check_output, report_lines, to_yaml, write_yaml
from workbench.config.build import config_dir
from workbench.errors import WorkbenchError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="workbench import-comfy",
        description="Turn a ComfyUI workflow (UI / API JSON, or a PNG) into an experiment config.",
    )
    p.add_argument("file", help="workflow .json (UI or API format) or a ComfyUI .png")
    p.add_argument("-o", "--output", help="write the YAML here (default: print it); an existing file is refused")
    p.add_argument("--force", action="store_true", help="replace the -o file if it exists")
    args = p.parse_args(argv)
    try:
        if args.output:  # refused before the workflow is even read
            check_output(Path(args.output), args.force)
        r = import_workflow(Path(args.file))
        text = to_yaml(r)
        if args.output:
            write_yaml(text, Path(args.output), args.force)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    lines = report_lines(r)
    print(f"import report for {r.source}:" if lines else f"imported {r.source}: everything mapped", file=sys.stderr)
    for line in lines:
        print(f"  - {line}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        print(f"wrote {out}", file=sys.stderr)
        if out.parent.name == "experiment" and out.resolve().parent.parent == config_dir().resolve():
            print(f"run it: workbench run experiment={out.stem}", file=sys.stderr)  # the package's own conf/
        elif out.parent.name == "experiment":
            print(f"run it: workbench run \"hydra.searchpath=['file://{out.resolve().parent.parent}']\" "
                  f"experiment={out.stem}", file=sys.stderr)
        else:
            print(f"run it: copy it to conf/experiment/ (or any <dir>/experiment/ on hydra.searchpath) and use "
                  f"experiment={out.stem}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
