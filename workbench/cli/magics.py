"""IPython extension: ``%load_ext workbench``, then

    %workbench run sampler.steps=8 'prompts=[a red fox]'        # one config -> images + record.json
    %workbench sweep -x sampler.steps=2,4,8 -y precision=fp32,bf16 height=64 width=64
    %workbench record outputs/2025-01-01/12-00-00/record.json  # show what a record says
    %workbench panel sweep | template | model                   # open a panel

    %%workbench sweep --out sweeps/steps                        # cell form: one argument per line,
    -x sampler.steps=1-8 (+2)                                   # so values may hold spaces unquoted
    prompts=[a red fox in the snow]

The magics only parse arguments and display; the work is ``workbench.run`` / ``workbench.sweep``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

from IPython.core.magic import Magics, line_cell_magic, magics_class

from workbench.errors import InputError
from workbench.record import png_bytes
from workbench.sweep.grid import in_a_row

USAGE = __doc__.split("\n\n")[1]


class MagicError(InputError):
    """Bad magic arguments; shown as one line, without a traceback."""


class RunResult:
    """What ``%workbench run`` returns: the images, the record and where they are; displays as the images."""

    def __init__(self, path: Path):
        from PIL import Image

        self.path = Path(path)  # record.json
        self.record = json.loads(self.path.read_text(encoding="utf-8"))
        self.images = []
        for entry in self.record["images"]:
            with Image.open(self.path.parent / entry["file"]) as img:
                self.images.append(img.convert("RGB"))

    def __repr__(self) -> str:  # stable text (no paths, no timings): notebooks keep it
        c = self.record["config"]
        s = c["sampler"]
        return (
            f"RunResult({len(self.images)} image(s), model {c['model']['name']}, precision {c['precision']['name']}, "
            f"template {c['template']['name']}, {s['name']} {s['steps']} steps, cfg {s['cfg']}, seeds {c['seeds']})"
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": repr(self), "image/png": png_bytes(in_a_row(self.images))}


class RecordView:
    """A record (``record.json`` or an image's PNG chunk) as a settings table plus its images."""

    KEYS = ("model.name", "precision.name", "template.name", "sampler.name", "sampler.steps", "sampler.cfg",
            "sampler.shift_mode", "height", "width", "seeds", "prompts")

    def __init__(self, path: str | Path):
        from workbench.record import read_png_record, read_record_json, record_images, record_source

        self.path = record_source(path)  # a record.json, a PNG, or a run folder (its record.json)
        if self.path.suffix.lower() == ".png":
            self.record = read_png_record(self.path)
            self.files = [self.path]
        else:  # a record is data: its image files must stay inside its folder (they are embedded in the HTML)
            self.record = read_record_json(self.path)
            self.files = [png for _, png in record_images(self.record, self.path)]

    def settings(self) -> dict:
        """The KEYS read as plain data: a record's ``${...}`` is shown as written, never resolved."""
        out = {}
        for key in self.KEYS:
            value = self.record.get("config", {})
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out[key] = value
        return out

    def __repr__(self) -> str:
        return "RecordView(" + ", ".join(f"{k}={v!r}" for k, v in self.settings().items()) + ")"

    def _repr_html_(self) -> str:
        import base64
        import html

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in self.settings().items())
        timings = self.record.get("timings_s") or (self.record.get("images") or [{}])[0].get("timings_s", {})
        rows += "".join(f"<tr><td>{html.escape(k)} (s)</td><td>{v:.3f}</td></tr>" for k, v in timings.items())
        imgs = ""
        for f in self.files:
            if f.is_file():
                imgs += f"<img src='data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}' style='margin:2px'/>"
        return f"<table>{rows}</table><div>{imgs}</div>"


def _conditioning_html(cond) -> str:
    """Rich display of a ``Conditioning``: one row per item of ``stats()``."""
    import html

    stats = cond.stats()
    head = "".join(f"<th>{k}</th>" for k in stats["items"][0]) if stats["items"] else ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in item.values()) + "</tr>"
        for item in stats["items"]
    )
    shape = "x".join(map(str, cond.embeds.shape))
    return f"<div>Conditioning <b>{html.escape(stats['template'])}</b>, embeds {shape}</div><table><tr>{head}</tr>{rows}</table>"


# ----------------------------------------------------------------------------- argument parsing
def split_args(line: str, cell: Optional[str]) -> list[str]:
    """Line arguments by shell rules; cell lines one argument each (``-x AXIS`` / ``--out DIR`` split once)."""
    try:
        args = shlex.split(line)
    except ValueError as err:
        raise MagicError(f"cannot parse {line!r}: {err}") from None
    for raw in (cell or "").splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        flag, _, rest = text.partition(" ")
        if flag in ("-x", "-y", "-z", "--out") and rest.strip():
            args += [flag, rest.strip()]
        else:
            args.append(text)
    return args


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit the kernel's process
        raise MagicError(f"{self.prog}: {message}")


class _Once(argparse.Action):
    """A flag given twice is refused: argparse keeps the last one, and ``-x a -x b`` silently lost axis a."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest)
        if before is not None:
            hint = "; one axis per flag: -x, -y, -z" if self.dest in "xyz" else ""
            parser.error(f"{option_string} given twice ({before!r}, then {values!r}){hint}")
        setattr(namespace, self.dest, values)


def _run_parser() -> _Parser:
    p = _Parser(prog="%workbench run", add_help=False)
    p.add_argument("--out", action=_Once, help="output folder (default outputs/<date>/<time>)")
    p.add_argument("overrides", nargs="*")
    return p


def _sweep_parser() -> _Parser:
    p = _Parser(prog="%workbench sweep", add_help=False)
    for axis in "xyz":
        p.add_argument(f"-{axis}", dest=axis, action=_Once, help=f"{axis.upper()} axis: key=values")
    p.add_argument("--out", action=_Once, help="sweep folder (default outputs/sweeps/<hash of the sweep>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--metric", action="append", default=[], help="table column: adherence, psnr or ssim (repeatable)")
    p.add_argument("overrides", nargs="*", help="base overrides, applied to every cell")
    return p


# ----------------------------------------------------------------------------- verbs
def run_magic(args: list[str]) -> RunResult:
    from workbench.config import compose
    from workbench.run import run

    ns = _run_parser().parse_args(args)
    out = Path(ns.out) if ns.out else Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return RunResult(run(compose(ns.overrides), out, progress=True))


def sweep_magic(args: list[str]):
    """Plan and run a sweep; an interrupt (the notebook's stop button, Ctrl-C) returns the partial result
    after one line on stderr saying what is stored and how to resume, without a traceback."""
    from workbench.sweep import Sweep, SweepInterrupted
    from workbench.sweep.control import stop_message

    ns = _sweep_parser().parse_args(args)
    axes = [a for a in (ns.x, ns.y, ns.z) if a]
    if not axes:
        raise MagicError("%workbench sweep needs an axis: -x key=values (e.g. -x sampler.steps=2,4,8)")
    sweep = Sweep.plan(axes, ns.overrides, ns.out, metrics=ns.metric)
    try:
        return sweep.run(progress=not ns.no_progress)
    except SweepInterrupted as stop:
        print(stop_message(stop.result), file=sys.stderr, flush=True)
        return stop.result


def panel_magic(args: list[str]):
    from workbench import widgets

    panels = {"sweep": widgets.SweepPanel, "template": widgets.TemplatePanel, "model": widgets.ModelPanel}
    if len(args) != 1 or args[0] not in panels:
        raise MagicError(f"%workbench panel takes one of {sorted(panels)}")
    return panels[args[0]]()


def record_magic(args: list[str]) -> RecordView:
    if len(args) != 1:
        raise MagicError("%workbench record takes one path (a record.json, a run folder or a PNG)")
    return RecordView(args[0])


VERBS = {"run": run_magic, "sweep": sweep_magic, "record": record_magic, "panel": panel_magic}


@magics_class
class WorkbenchMagics(Magics):
    @line_cell_magic
    def workbench(self, line: str, cell: Optional[str] = None):
        """Run a config or a sweep, show a record, open a panel: see ``workbench.cli.magics``."""
        from hydra.errors import HydraException
        from IPython.core.error import UsageError
        from omegaconf.errors import OmegaConfBaseException

        from workbench.errors import WorkbenchError
        from workbench.config.build import describe_error

        args = split_args(line, cell)
        if not args or args[0] not in VERBS:
            raise UsageError(f"%workbench needs a verb: {', '.join(VERBS)}\n{USAGE}")
        try:
            return VERBS[args[0]](args[1:])
        except (WorkbenchError, HydraException, OmegaConfBaseException) as err:  # every error that names its fix
            raise UsageError(describe_error(err)) from None  # one line, no traceback; Run All stops here


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(WorkbenchMagics)
    html = ipython.display_formatter.formatters["text/html"]
    html.for_type_by_name("workbench.conditioning", "Conditioning", _conditioning_html)
