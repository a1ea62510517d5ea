"""``workbench run`` end to end through the real console script (Hydra, records, PNG chunks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.record import read_png_record


def wb(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_run_default_writes_images_and_record(tmp_path):
    proc = wb("run", "sampler.steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])  # the output dir is the last line
    assert out.is_dir() and out.is_relative_to(tmp_path / "outputs")
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["sampler"]["steps"] == 3
    assert record["models"]["transformer"].startswith("tiny:transformer:")
    assert record["versions"]["diffusers"].startswith("0.42")
    assert record["device"]["device"] == "cpu"
    assert set(record["images"][0]["timings_s"]) >= {"encode", "latents", "denoise", "decode"}
    assert record["peak_memory"]["process_max_rss_bytes"] > 0
    (entry,) = record["images"]
    png = out / entry["file"]
    with Image.open(png) as img:
        assert img.size == (64, 64)  # model=tiny draws at its training size
        assert np.asarray(img).std() > 0  # a real decoded image, not a constant
    chunk = read_png_record(png)
    assert chunk["config"] == record["config"] and chunk["image"]["seed"] == 0


def test_prompts_and_seeds_batch(tmp_path):
    proc = wb("run", "sampler.steps=2", "prompts=[a cat,a dog]", "seeds=[1,2]", "batch_size=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "record.json").read_text())
    got = [(e["prompt"], e["seed"]) for e in record["images"]]
    assert got == [("a cat", 1), ("a cat", 2), ("a dog", 1), ("a dog", 2)]


def test_multirun(tmp_path):
    proc = wb("run", "-m", "sampler.steps=2,3", "template=qwen_t2i,chat", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = sorted((tmp_path / "multirun").glob("*/*/*/record.json"))
    assert len(records) == 4
    combos = {(json.loads(r.read_text())["config"]["sampler"]["steps"], json.loads(r.read_text())["config"]["template"]["name"]) for r in records}
    assert combos == {(2, "qwen_t2i"), (3, "qwen_t2i"), (2, "chat"), (3, "chat")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sampler.stepz=3"], "unknown key sampler.stepz; did you mean sampler.steps?"),
        (["template=nope"], "Could not find 'template/nope'"),
        (["height=100"], "height=100 is not a positive multiple of 16"),
        (["sampler.steps=0"], "sampler.steps must be >= 1"),
        (["precision=fp8_torchao", "device=cpu"], "fp8_torchao (precision=fp8_torchao) runs fp8 matrix multiplies on a CUDA GPU"),
        (['prompts=["a cat<|im_end|>"]'], "prompts[0] contains control token(s) ['<|im_end|>']"),
        (["precision=fp8_e4m3fn", "perf=fast"], "perf.compile=regional (perf=fast) cannot compile a transformer with "
         "precision.transformer_storage=float8_e4m3fn (precision=fp8_e4m3fn)"),
        (["perf.inductor_mode=fastest"], "Invalid value 'fastest', expected one of [default, max_autotune_no_cudagraphs"),
    ],
)
def test_run_bad_input_exits_nonzero_with_message(tmp_path, args, message):
    proc = wb("run", *args, cwd=tmp_path)
    assert proc.returncode == 2  # bad input (workbench/errors.py), not 1 like a crash
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr  # one clear line, not a stack trace
    assert not list(tmp_path.glob("outputs/*/*/record.json"))  # nothing half-written


def test_tokens_command_json(tmp_path):
    proc = wb("tokens", "--json", "--template", "qwen_edit", "--image", "asset:sample_reference.png", "a hat", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["drop"] == 64 and data["vision_tokens"] == [24]  # 160x120 -> 168x112 px -> 12x8 merged
    assert data["tokens"][data["drop"]] == "<|vision_start|>"


def test_tokens_command_text_marks_kept_and_dropped(tmp_path):
    proc = wb("tokens", "a cat", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("template qwen_t2i:") and "drop 34" in lines[0]
    assert sum(line.startswith("drop ") for line in lines) == 34
    assert lines[34].split()[:2] == ["drop", "33"] and lines[35].split()[:2] == ["keep", "34"]
    assert lines[35].endswith("'a'")  # the first kept token is the user's first word


def test_help_is_fast_and_lists_commands(tmp_path):
    proc = wb("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "run [overrides]" in proc.stdout and "tokens" in proc.stdout
