"""One record and one image naming rule for ``workbench run``, sweep cells and ``workbench reproduce``
(``workbench.record.build``); the sweep and record packages import without cycles (issue 14)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from workbench import record as rec

ROOT = Path(__file__).resolve().parents[1]
# guided (a negative prompt in the entries), two prompts in one forward batch: image 1 is the second of its batch
BASE = ["height=32", "width=32", "prompts=['a red fox','a blue fox']", "seeds=[3]", "batch_size=2",
        "sampler.cfg=2", "negative_prompt=blurry"]
AXIS = "sampler.steps=2"  # one cell: the config of the run
RUN_ONLY = {"import_s", "model_load_s", "total_s"}  # known once a run's images are written
CELL_ONLY = {"sweep", "timings_s", "conditioning_cached"}  # where the cell sits, its stage timings, its cache hit


def _entry(e: dict) -> dict:
    """An image entry with its timings' keys but not their values (they differ between two runs)."""
    return e | {"timings_s": sorted(e["timings_s"])}


@pytest.fixture(scope="module")
def three_records(tmp_path_factory):
    """The records of one config made by ``workbench run``, by a sweep cell, and by ``workbench reproduce``
    re-making the run's second image from its PNG."""
    from workbench.config import compose
    from workbench.reproduce import reproduce
    from workbench.run import run
    from workbench.sweep import Sweep

    tmp = tmp_path_factory.mktemp("records")
    run_path = run(compose([*BASE, AXIS]), tmp / "run", progress=False)
    ran = json.loads(run_path.read_text())
    result = Sweep.plan([AXIS], base=BASE, out_dir=tmp / "sweep").run(progress=False)
    cell = result.cells[0]
    report = reproduce(tmp / "run" / ran["images"][1]["file"], tmp / "re")
    again = json.loads((tmp / "re" / "record.json").read_text())
    return SimpleNamespace(tmp=tmp, run=ran, cell=cell, cell_dir=result.sweep.cell_dir(cell.cell), again=again,
                           report=report)


def test_the_three_producers_write_the_same_record(three_records):
    ran, cell, again, report = three_records.run, three_records.cell, three_records.again, three_records.report
    assert ran["status"] == again["status"] == cell.record["status"] == "complete"
    assert set(again) == set(ran)  # reproduce re-makes an image through `workbench run`
    assert set(cell.record) == (set(ran) - RUN_ONLY) | CELL_ONLY
    assert cell.record["config"] == {k: v for k, v in ran["config"].items() if k != "executor"}
    assert [_entry(e) for e in cell.record["images"]] == [_entry(e) for e in ran["images"]]
    assert _entry(again["images"][0]) == _entry(ran["images"][1]) and report["identical"]
    for key in ("models", "model_files", "reference_images", "init_image", "peak_memory"):
        assert set(cell.record[key]) == set(ran[key]) and set(again[key]) == set(ran[key]), key


def test_cells_are_laid_out_and_named_as_runs(three_records):
    tmp, ran, cell, folder = three_records.tmp, three_records.run, three_records.cell, three_records.cell_dir
    assert [f.relative_to(folder).as_posix() for f in cell.files] == [e["file"] for e in ran["images"]]
    for e, f, image in zip(ran["images"], cell.files, cell.images):
        with Image.open(tmp / "run" / e["file"]) as a:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(image))
        assert (folder / "record.json").is_file() and f.is_file()


def test_a_cell_reproduces_as_a_run(three_records):
    from workbench.reproduce import reproduce

    report = reproduce(three_records.cell_dir / "record.json", three_records.tmp / "re-cell")
    assert report["identical"] and report["changed_inputs"] == [] and len(report["images"]) == 2


def test_each_png_holds_the_record_head_and_its_entry(three_records):
    tmp, ran, cell = three_records.tmp, three_records.run, three_records.cell
    head = {k: v for k, v in ran.items() if k not in rec.RECORD_ONLY}
    chunk = rec.read_png_record(tmp / "run" / ran["images"][0]["file"])
    assert chunk == json.loads(json.dumps(head | {"image": ran["images"][0]}))
    chunk = rec.read_png_record(cell.files[1])
    assert set(chunk) == (set(cell.record) - set(rec.RECORD_ONLY)) | {"image"}
    assert chunk["image"] == cell.record["images"][1] and chunk["sweep"]["axes"] == {"sampler.steps": 2}


def test_the_naming_rule():
    from workbench.reproduce import job_index

    assert rec.image_file(0, 7, "A Red Fox, on the LEFT!") == "images/000-seed7-a-red-fox-on-the-left.png"
    assert rec.image_file(12, 0, "ÜÜ ??") == "images/012-seed0-image.png"  # nothing left of the prompt
    assert rec.image_file(3, 1, "x" * 100) == f"images/003-seed1-{'x' * 40}.png"

    class Cfg:  # the same prompt and seed twice: the index in the name says which image it is
        prompts, seeds = ["a fox", "a fox"], [5]

    entry = {"file": rec.image_file(1, 5, "a fox"), "prompt": "a fox", "seed": 5}
    assert job_index(Cfg, entry, Path("x.png")) == 1


# ----------------------------------------------------------------------------- import cycles
PACKAGES = ("workbench/sweep", "workbench/record")


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module or function level; ``if TYPE_CHECKING:`` blocks excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_sweep_and_record_packages_have_no_import_cycle():
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    graph = {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}

    def visit(node, trail):
        assert node not in trail, "import cycle: " + " -> ".join([*trail[trail.index(node):], node])
        for nxt in graph[node]:
            visit(nxt, [*trail, node])

    for name in graph:
        visit(name, [])
    assert "workbench.sweep.execute" not in graph["workbench.sweep.plan"]  # the plan is data: it runs nothing
    assert not graph["workbench.sweep.keys"]  # the keys are a leaf


def test_each_sweep_and_record_module_imports_first():
    """In a fresh interpreter, each module imported before any other of the package (no partial module)."""
    names = sorted(_module(p) for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'workbench' or m.startswith('workbench.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "    from workbench.sweep import FAILED, Sweep, SweepError, SweepResult\n"
        "    assert hasattr(Sweep, 'plan') and hasattr(Sweep, 'run')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
