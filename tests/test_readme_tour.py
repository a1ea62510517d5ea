"""The README's Tour stays true: every ``workbench ...`` line of it is run or validated from a folder laid
out like the repository root (``examples/``, ``tests/fixtures/`` and an empty ``conf/experiment/``).

- ``tokens``, ``models`` and ``import-comfy`` lines run as written (in this process: fast);
- every ``run`` line is composed and validated as written (multirun lines expanded into their runs, and
  their count checked against the line's "N runs" comment); the plain ``workbench run`` then runs for
  real on the tiny model (``height=64 width=64 sampler.steps=2``) and ``reproduce`` re-runs its record.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.cli import main as workbench
from workbench.config import compose, to_run_config

REPO = Path(__file__).resolve().parents[1]


def tour() -> list[tuple[list[str], str]]:
    """(argv after ``workbench``, trailing comment) for each command line of the README's Tour section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n#{2,3} ", text.split("\n## Tour\n", 1)[1], maxsplit=1)[0]
    lines = []
    for line in section.splitlines():
        if line.startswith("    workbench "):
            comment = re.search(r"\s#\s+(.*)$", line)
            argv = shlex.split(line.strip(), comments=True)
            lines.append((argv[1:], comment.group(1) if comment else ""))
    return lines


@pytest.fixture
def repo_like(tmp_path, monkeypatch):
    """A scratch current directory where the Tour's relative paths resolve and its outputs land."""
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "user-cache"))  # `workbench cache` reads it
    monkeypatch.chdir(tmp_path)
    return tmp_path


def expand(overrides: list[str]) -> list[list[str]]:
    """A multirun's override lists, one per run, expanded by Hydra's own override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def test_tour_lists_the_verbs_and_no_placeholders():
    lines = tour()
    assert len(lines) >= 12
    assert {argv[0] for argv, _ in lines} == {"run", "tokens", "models", "cache", "import-comfy", "reproduce"}
    for argv, _ in lines:  # the files a line names ship with the repository
        for arg in argv:
            if arg.startswith(("examples/", "tests/")):
                assert (REPO / arg).is_file(), arg


def test_every_tour_line_runs_or_validates(repo_like, capsys):
    checked = set()
    for argv, comment in tour():
        verb, args = argv[0], argv[1:]
        if verb == "run":
            runs = expand([a for a in args if a != "-m"]) if "-m" in args else [args]
            if "-m" in args:
                want = re.search(r"(\d+) runs", comment)
                assert want and int(want.group(1)) == len(runs), (argv, comment)
            for overrides in runs:
                to_run_config(compose(overrides))  # raises on a bad key, value or file
        elif verb == "reproduce":
            assert args == ["outputs/<date>/<time>"]  # the run folder; run for real below
            continue
        else:
            assert workbench(argv) == 0, (argv, capsys.readouterr().err)
            out = capsys.readouterr()
            if verb == "cache":
                assert out.out.startswith("compile cache: ")
            if verb == "tokens" and "--template-file" in args:
                assert out.out.startswith("template my_template: ")
            if verb == "import-comfy":
                written = repo_like / args[args.index("-o") + 1]
                assert "  - override /template: qwen_t2i" in written.read_text()
                assert f"wrote {args[args.index('-o') + 1]}" in out.err
                # as the README says: a second import is refused, --force replaces
                assert workbench(argv) == 2 and "exists: pass --force" in capsys.readouterr().err
                assert workbench([*argv, "--force"]) == 0
        checked.add(verb)
    assert checked == {"run", "tokens", "models", "cache", "import-comfy"}


@pytest.mark.slow
def test_tour_run_writes_under_outputs_and_reproduce_matches(repo_like, capsys):
    assert (["run"], "defaults: tiny model, official t2i template, 20 Euler steps") in tour()
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", "height=64", "width=64", "sampler.steps=2"],
                          cwd=repo_like, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = Path(proc.stdout.strip().splitlines()[-1])  # "prints that folder as its last line"
    rel = out.relative_to(repo_like)  # "outputs/<date>/<time>/ under the current directory"
    assert re.fullmatch(r"outputs/\d{4}-\d{2}-\d{2}/[\d-]+", str(rel)), rel
    assert (out / "record.json").is_file() and len(list((out / "images").glob("*.png"))) == 1
    (reproduce,) = [argv for argv, _ in tour() if argv[0] == "reproduce"]
    argv = [a.replace("outputs/<date>/<time>", str(rel)) for a in reproduce]
    assert workbench(argv) == 0, capsys.readouterr().err
    assert "IDENTICAL" in capsys.readouterr().out.upper()
