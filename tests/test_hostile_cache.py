"""Careless compile-cache settings: ``$WORKBENCH_CACHE`` / ``$TORCHINDUCTOR_CACHE_DIR`` pointing through a file or
at a folder that cannot be written. Before: torch failed in the middle of the build (or, for a bad
``$TORCHINDUCTOR_CACHE_DIR``, on importing ``torch._dynamo`` in any run) with a traceback and exit code 1, after
Hydra had made the output folder. Now: one ``error:`` line naming the variable, exit code 2, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import cli, errors
from workbench.config import CompileMode, PerfConfig
from workbench.errors import InputError
from workbench.user_cache import check_cache_dir

TINY = ["height=64", "width=64", "sampler.steps=2"]
COMPILED = PerfConfig(compile=CompileMode.regional)


def _created(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def a_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("WORKBENCH_CACHE", raising=False)
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


def test_a_workbench_cache_through_a_file_is_refused_when_a_run_compiles(a_file, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(a_file))
    with pytest.raises(InputError) as err:
        check_cache_dir(COMPILED)
    assert str(err.value) == (f"compile cache folder {a_file}/torch-compile cannot be used: {a_file} is a file, not "
                              "a folder; choose another with WORKBENCH_CACHE=PATH")
    check_cache_dir(PerfConfig())  # a run that compiles nothing does not need it


def test_torchinductor_cache_dir_is_checked_whatever_the_run_compiles(a_file, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(a_file / "x"))
    for perf in (PerfConfig(), COMPILED):
        with pytest.raises(InputError, match=rf"compile cache folder {a_file}/x cannot be used: {a_file} is a file, "
                                             r"not a folder; choose another with TORCHINDUCTOR_CACHE_DIR=PATH"):
            check_cache_dir(perf)


def test_a_cache_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    real_access = os.access  # root passes os.access everywhere: the check's own probe is what refuses
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(locked))
    with pytest.raises(InputError, match=rf"no permission to write into {locked}; choose another with "
                                         r"TORCHINDUCTOR_CACHE_DIR=PATH"):
        check_cache_dir(COMPILED)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "new" / "deeper"))
    check_cache_dir(COMPILED)  # a folder the compile can make is accepted, and nothing is made now
    assert not (tmp_path / "new").exists()


def test_the_models_are_not_built_before_the_cache_is_checked(a_file, monkeypatch):
    from workbench.config import compose, to_run_config
    from workbench.models import build

    monkeypatch.setenv("WORKBENCH_CACHE", str(a_file))
    monkeypatch.setattr(build, "build_components", lambda *a, **k: pytest.fail("models built before the check"))
    monkeypatch.setattr(build, "_CACHE", {})  # not resident: this run would build
    cfg = to_run_config(compose([*TINY, "perf.compile=regional"]))
    with pytest.raises(InputError, match=r"is a file, not a folder; choose another with WORKBENCH_CACHE=PATH"):
        build.components_for(cfg)


@pytest.mark.parametrize("verb", [["run", *TINY, "perf.compile=regional"], ["cache"], ["cache", "--clear"]])
def test_cli_refuses_with_one_line_and_creates_nothing(a_file, tmp_path, monkeypatch, capsys, verb):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE", str(a_file))
    assert cli.main(verb) == errors.EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert err == (f"error: compile cache folder {a_file}/torch-compile cannot be used: {a_file} is a file, not a "
                   "folder; choose another with WORKBENCH_CACHE=PATH")
    assert _created(tmp_path) == ["afile"]


def test_a_bad_torchinductor_cache_dir_is_one_line_not_torchs_traceback(a_file, tmp_path):
    """In a fresh process, where torch would fail on its own when diffusers imports ``torch._dynamo``."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(a_file / "x")}
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == errors.EXIT_INPUT, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: compile cache folder {a_file}/x cannot be used: {a_file} is a file, not a folder; choose another "
        "with TORCHINDUCTOR_CACHE_DIR=PATH"]
    assert _created(tmp_path) == ["afile"]
