"""Hostile and careless input to ``workbench run`` (issue 12): exit codes, refusal before anything is
created, output folders, failed writes, records (valid JSON, modes, provenance), help and console notes.

Real CLI runs go through ``python -m workbench run`` in a fresh process; in-process tests use the tiny
model at 64x64 with 2 steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import cli, errors
from workbench import record as rec
from workbench.errors import InputError, RunFailure

TINY = ["height=64", "width=64", "sampler.steps=2"]


def wb(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal: exactly one line on stderr, ``error: ...``, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def created(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- config errors: 2, nothing created
def test_hydra_config_error_exits_2_with_one_line_and_creates_nothing(tmp_path):
    proc = wb("run", "sampler.stepz=3", cwd=tmp_path)  # Hydra's own error: exit 1 and 7 lines before
    assert proc.returncode == errors.EXIT_INPUT, proc.stderr
    assert "stepz" in error_line(proc)
    assert "To append to your config use +" not in proc.stderr  # Hydra's hint would add the typo
    assert created(tmp_path) == [] and proc.stdout == ""  # no outputs/<date>/<time>/ left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sampler.steps=abc"], r"sampler\.steps.*abc|abc.*sampler\.steps"),  # wrong type
        (["template=nope"], r"template.*nope|nope.*template"),  # missing group option
        (["sampler.steps=2,3"], r"--multirun"),  # a sweep without -m
        (["prompts=[a"], r"cannot parse the overrides"),  # override syntax
        (["sampler.steps=0"], r"sampler\.steps must be >= 1"),  # the schema's own checks
        (["-m", "sampler.steps=2,3", "hydra.sweep.dir=/dev/null/x"], r"/dev/null is a file, not a folder.*hydra\.sweep\.dir"),
    ],
)
def test_config_errors_exit_2_before_hydra_runs(tmp_path, monkeypatch, capsys, args, message):
    """The same dispatch as the console script, in this process: refused before Hydra starts a job."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", *args]) == errors.EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and __import__("re").search(message, err), err
    assert created(tmp_path) == []


def test_multirun_validates_every_combination_before_any_job(tmp_path):
    proc = wb("run", "-m", "sampler.steps=2,0", "height=64,48", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "job 2 of 4 (sampler.steps=0 height=64)" in line and "sampler.steps must be >= 1" in line
    assert created(tmp_path) == []  # not one job ran, no multirun/ folder


# ----------------------------------------------------------------------------- output folders
def test_run_dir_under_a_file_is_refused_before_anything(tmp_path):
    (tmp_path / "somefile").write_text("not a folder")
    proc = wb("run", f"hydra.run.dir={tmp_path}/somefile/out", *TINY, cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"{tmp_path}/somefile is a file, not a folder" in line and "hydra.run.dir=PATH" in line
    assert created(tmp_path) == ["somefile"]


def test_images_existing_as_a_file_is_refused_before_generation(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "images").write_text("a file where the run puts its images")
    started = time.perf_counter()
    proc = wb("run", f"hydra.run.dir={out}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{out}/images exists as a file; the run writes its images there (move it away)" in error_line(proc)
    assert created(out) == ["images"]  # no .hydra/, no record.json
    assert time.perf_counter() - started < 60


def test_run_checks_the_output_folder_before_loading_models(tmp_path, monkeypatch):
    from workbench.config import compose
    from workbench.pipeline import Workbench
    from workbench.run import run

    def no_models(*a, **k):
        raise AssertionError("models were loaded before the output folder was checked")

    monkeypatch.setattr(Workbench, "from_config", classmethod(no_models))
    (tmp_path / "images").write_text("x")
    with pytest.raises(InputError, match=r"images exists as a file; the run writes its images there"):
        run(compose(TINY), tmp_path)
    (tmp_path / "images").unlink()
    (tmp_path / "record.json").mkdir()
    with pytest.raises(InputError, match=r"record.json exists as a folder"):
        run(compose(TINY), tmp_path)


def test_unwritable_output_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    # root ignores permission bits, so deny through os.access as an unprivileged user would see it
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real_access(p, mode, **k))
    with pytest.raises(InputError, match=rf"output folder {locked}/a/b cannot be used: no permission to create "
                                         rf"folders in {locked}; choose another with hydra.run.dir=PATH"):
        rec.check_output_dir(locked / "a" / "b")
    with pytest.raises(InputError, match=rf"no permission to write into {locked}; choose another with hydra.sweep.dir"):
        rec.check_output_dir(locked, "hydra.sweep.dir")
    rec.check_output_dir(tmp_path / "fresh" / "x")  # a writable place is accepted, and nothing is created
    assert not (tmp_path / "fresh").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_folder_where_no_folder_can_be_made(tmp_path):
    """/proc passes every permission check for root, yet refuses mkdir: Hydra's traceback (exit code 1) before."""
    with pytest.raises(InputError, match=r"output folder /proc/wb-run/x cannot be used: cannot create folders in "
                                         r"/proc \(mkdir refused: .*\); choose another with hydra.run.dir=PATH"):
        rec.check_output_dir("/proc/wb-run/x")
    proc = wb("run", "hydra.run.dir=/proc/wb-run", *TINY, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert error_line(proc).startswith("error: output folder /proc/wb-run cannot be used: cannot create folders in /proc (mkdir")
    assert "Traceback" not in proc.stderr
    proc = wb("run", "-m", "hydra.sweep.dir=/proc/wb-sweep", "height=64", "width=64", "sampler.steps=2,3", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert "cannot create folders in /proc (mkdir" in line and line.endswith("; choose another with hydra.sweep.dir=PATH")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_output_folder_for_real(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = wb("run", f"hydra.run.dir={locked}/out", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and f"no permission to create folders in {locked}" in error_line(proc)


def test_refusal_inside_the_job_removes_the_folder_hydra_made(tmp_path):
    (tmp_path / "mine").mkdir()
    proc = wb("run", "init_image=missing.png", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and "missing.png" in error_line(proc)
    assert created(tmp_path) == ["mine"]  # outputs/<date>/<time>/.hydra removed with the empty folders above


# ----------------------------------------------------------------------------- failed writes
def test_disk_full_leaves_a_partial_record_and_exit_code_3(tmp_path, monkeypatch):
    from workbench.config import compose
    from workbench.run import run

    real_save, calls = rec.save_png, []

    def save_then_fill(path, image, record):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, image, record)

    monkeypatch.setattr(rec, "save_png", save_then_fill)
    with pytest.raises(RunFailure, match=r"images/001-seed2-a-fox.png failed: No space left on device; wrote 1 of 3 "
                                         r"images \(000-seed1-a-fox.png\); .*record.json records the partial run "
                                         r"\(status 'partial'\); free space and re-run") as info:
        run(compose([*TINY, "seeds=[1,2,3]", "prompts=[a fox]"]), tmp_path, progress=False)
    assert errors.exit_code(info.value) == 3
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "partial"
    assert [e["file"] for e in record["images"]] == ["images/000-seed1-a-fox.png"]
    assert [e["seed"] for e in record["images_not_written"]] == [2, 3]
    assert record["write_error"] == {"file": "images/001-seed2-a-fox.png", "error": "OSError: No space left on device"}
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000-seed1-a-fox.png"]  # no temp files
    assert rec.read_png_record(tmp_path / "images/000-seed1-a-fox.png")["image"]["seed"] == 1


def test_record_write_failure_is_never_reported_ok(tmp_path, monkeypatch):
    from workbench.config import compose
    from workbench.run import run

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec, "atomic_write_json", full)
    with pytest.raises(RunFailure, match=r"all 1 images were written to .*images, but .*record.json could not be "
                                         r"written: No space left on device"):
        run(compose(TINY), tmp_path, progress=False)


# ----------------------------------------------------------------------------- exit codes of every verb
def test_cli_maps_errors_to_documented_exit_codes(monkeypatch, capsys):
    import workbench.cli.tokens as cli_tokens

    def raiser(err):
        def verb(argv):
            raise err
        return verb

    for err, code in [(InputError("bad key x; use y"), 2), (RunFailure("write failed; wrote 0 of 1"), 3)]:
        monkeypatch.setattr(cli_tokens, "main", raiser(err))
        assert cli.main(["tokens", "x"]) == code
        assert capsys.readouterr().err == f"error: {err}\n"
    monkeypatch.setattr(cli_tokens, "main", raiser(KeyboardInterrupt()))
    assert cli.main(["tokens", "x"]) == 130
    assert capsys.readouterr().err.strip() == "workbench tokens: interrupted"
    monkeypatch.setattr(cli_tokens, "main", raiser(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback (Python exits 1)
        cli.main(["tokens", "x"])


def test_one_line_drops_hydras_append_hint():
    from workbench.config import compose

    with pytest.raises(Exception) as info:
        compose(["sampler.stepz=3"])
    line = cli.one_line(info.value)
    assert "\n" not in line and "stepz" in line and "+sampler.stepz" not in line


# ----------------------------------------------------------------------------- records
def test_record_json_is_always_valid_json(tmp_path):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    obj = {"cfg": float("nan"), "x": [float("inf"), -float("inf"), 1.5], "nested": {"psnr_db": float("inf")}}
    rec.atomic_write_json(tmp_path / "r.json", obj)
    back = strict((tmp_path / "r.json").read_text())
    assert back == {"cfg": "NaN", "x": ["Infinity", "-Infinity", 1.5], "nested": {"psnr_db": "Infinity"}}
    assert float(back["x"][0]) == float("inf")  # Python reads the strings back as numbers
    from PIL import Image

    (tmp_path / "i.png").write_bytes(rec.png_bytes(Image.new("RGB", (4, 4)), obj))
    with Image.open(tmp_path / "i.png") as img:
        assert strict(img.text[rec.PNG_KEY])["cfg"] == "NaN"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from workbench.record.files import _umask as read_umask

    old = os.umask(umask)
    try:
        rec.atomic_write_bytes(tmp_path / "f.bin", b"x")
        rec.atomic_write_json(tmp_path / "r.json", {"a": 1})
        assert read_umask() == umask  # read without changing it
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_records_dirty_and_none_outside_a_checkout(tmp_path):
    assert rec.git_state(tmp_path) is None  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert rec.git_state(tmp_path) is None  # a checkout without a commit
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert rec.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert rec.git_state(tmp_path) == {"commit": head, "dirty": True}


def test_model_load_time_excludes_imports(tmp_path, monkeypatch):
    from workbench import run as run_module
    from workbench.config import compose
    from workbench.pipeline import Workbench

    monkeypatch.setattr(run_module, "import_model_libraries", lambda: time.sleep(0.4))
    build = Workbench.from_config.__func__
    measured = []

    def timed_build(cls, cfg, *a, **k):
        t = time.perf_counter()
        try:
            return build(cls, cfg, *a, **k)
        finally:
            measured.append(time.perf_counter() - t)

    monkeypatch.setattr(Workbench, "from_config", classmethod(timed_build))
    record = json.loads(run_module.run(compose(TINY), tmp_path, progress=False).read_text())
    assert record["import_s"] >= 0.4
    assert abs(record["model_load_s"] - measured[0]) < 0.05  # the build alone


def test_real_run_records_and_console(tmp_path):
    """bf16 with a size the run snaps: no diffusers float32 warning, the note on stderr, no cli.log,
    files readable by the group, peak memory and git state in the records."""
    proc = wb("run", "precision=bf16", "height=72", "width=64", "snap_size=true", "sampler.steps=2", cwd=tmp_path, umask=0o022)
    assert proc.returncode == 0, proc.stderr
    assert "should be kept in float32" not in proc.stderr
    assert "note: size 64x72 snapped to 64x64 (sides multiple of 16)\n" in proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert not list(out.glob("*.log")) and (out / ".hydra" / "config.yaml").is_file()
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "complete"
    assert isinstance(record["git_dirty"], bool) == isinstance(record["git_commit"], str)
    assert record["model_load_s"] < record["total_s"] and record["import_s"] >= 0
    (entry,) = record["images"]
    png = out / entry["file"]
    chunk = rec.read_png_record(png)
    assert chunk["peak_memory"] == record["peak_memory"] and chunk["peak_memory"]["process_max_rss_bytes"] > 0
    assert chunk["image"]["notes"] == ["size 64x72 snapped to 64x64 (sides multiple of 16)"]
    for f in (out / "record.json", png):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_bf16_cast_warns_nothing_and_casts_everything():
    import logging

    import torch

    from workbench.config import compose, to_run_config
    from workbench.models.components import build_components

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    cfg = to_run_config(compose(["precision=bf16", "device=cpu"]))
    collect = Collect()
    library_logger = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root
    library_logger.addHandler(collect)
    try:
        comps = build_components(cfg.model, cfg.precision, "cpu")
    finally:
        library_logger.removeHandler(collect)
    assert not [m for m in collect.messages if "kept in float32" in m], collect.messages
    assert {p.dtype for p in comps.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in comps.vae.parameters()} == {torch.bfloat16}


# ----------------------------------------------------------------------------- help
def test_run_help_says_what_run_does(tmp_path):
    proc = wb("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "powered by Hydra" not in proc.stdout
    assert proc.stdout.startswith("workbench run [OVERRIDES] [-m]: generate images")
    for part in ("== Key groups (group=option) ==", "sampler: comfy_euler", "== Examples ==", "== Exit codes ==",
                 "2    bad input", "3    input accepted, the run failed", "hydra.run.dir="):
        assert part in proc.stdout
    assert created(tmp_path) == []


def test_run_folder_template_is_checked_up_to_its_first_interpolation(tmp_path):
    import workbench.cli.run as cli_run

    assert cli_run._static_prefix("outputs/${now:%Y-%m-%d}/${now:%H}") == Path("outputs")
    assert cli_run._static_prefix("runs/fox_${now:%H}") == Path("runs")
    assert cli_run._static_prefix(f"{tmp_path}/a/b") == tmp_path / "a" / "b"
    (tmp_path / "images").write_text("x")  # the parent of dated run folders may hold anything
    rec.check_output_dir(tmp_path, final=False)
    with pytest.raises(InputError, match="images exists as a file"):
        rec.check_output_dir(tmp_path)
