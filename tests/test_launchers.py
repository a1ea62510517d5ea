"""Hydra multirun through a launcher plugin: each job is its own `workbench run` with its own record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_joblib_launcher_runs_one_job_per_config(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install qwen-image-workbench[launchers]")
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1",
         "sampler.steps=2,3", "height=32", "width=32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel" in proc.stdout + proc.stderr  # the plugin launched the jobs, not Hydra's basic launcher
    records = sorted(tmp_path.glob("multirun/*/*/*/record.json"))
    assert [r.parent.name for r in records] == ["0", "1"]
    steps = [json.loads(r.read_text())["config"]["sampler"]["steps"] for r in records]
    assert steps == [2, 3]
    assert all(list((r.parent / "images").glob("*.png")) for r in records)
