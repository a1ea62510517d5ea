"""Records carry input hashes, and ``workbench reproduce`` re-runs a record / PNG and compares.

Runs go through the real console entry (``python -m workbench``) in a temporary folder, as
tests/test_cli.py does; the hash cache goes to a temporary $WORKBENCH_CACHE.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from workbench import record as rec
from workbench.reproduce import _print, main

ASSET = Path(__file__).resolve().parents[1] / "workbench" / "assets" / "sample_reference.png"


def wb(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WORKBENCH_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    """One tiny text-to-image run: (cwd, output dir, record)."""
    cwd = tmp_path_factory.mktemp("t2i")
    proc = wb("run", "sampler.steps=2", cwd=cwd, cache=cwd / "cache")
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    return cwd, out, json.loads((out / "record.json").read_text())


def reproduce(source: Path, cwd: Path) -> tuple[int, dict | None, str]:
    proc = wb("reproduce", str(source), "--json", "-o", str(cwd / f"re-{source.stem}"), cwd=cwd, cache=cwd / "cache")
    report = json.loads(proc.stdout) if proc.returncode in (0, 4) else None
    return proc.returncode, report, proc.stderr


# ----------------------------------------------------------------------------- record additions
def test_record_has_input_hashes_for_the_tiny_model(t2i_run):
    _, out, record = t2i_run
    assert record["model_files"] == {}  # the tiny model has no files: its identity is in "models"
    assert record["models"]["transformer"].startswith("tiny:transformer:")
    assert record["reference_images"] == [] and record["images"][0]["reference_sha256"] == []


def test_file_sha256_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"A" * 1000)
    want = hashlib.sha256(b"A" * 1000).hexdigest()
    assert rec.file_sha256(f) == want
    cache = json.loads((tmp_path / "cache" / rec.HASH_CACHE).read_text())
    st = f.stat()
    assert cache[str(f.resolve())] == {"size": 1000, "mtime_ns": st.st_mtime_ns, "sha256": want}
    # same size and mtime: the cached digest is returned without reading the file (proved by a stale answer)
    f.write_bytes(b"B" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rec.file_sha256(f) == want
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    assert rec.file_sha256(f) == hashlib.sha256(b"B" * 1000).hexdigest()


def test_model_file_hashes_for_files_and_loras(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "models"
    (root / "diffusion_models").mkdir(parents=True)
    (root / "diffusion_models" / "dit.safetensors").write_bytes(b"dit")
    (root / "te.safetensors").write_bytes(b"te")
    folder = root / "vae_folder"
    folder.mkdir()
    (folder / "config.json").write_bytes(b"{}")
    (tmp_path / "lora.safetensors").write_bytes(b"lora")
    cfg = {"model": {"source": "files", "transformer": "dit.safetensors", "text_encoder": "te.safetensors",
                     "vae": "vae_folder", "roots": [str(root)]},
           "lora": {"items": [{"file": str(tmp_path / "lora.safetensors"), "strength": 1.0}]}}
    got = rec.model_file_hashes(cfg)
    assert got["model.transformer"] == {"name": "dit.safetensors", "path": str(root / "diffusion_models" / "dit.safetensors"),
                                        "size": 3, "sha256": hashlib.sha256(b"dit").hexdigest()}
    assert got["model.text_encoder"]["sha256"] == hashlib.sha256(b"te").hexdigest()
    tree = f"config.json {hashlib.sha256(b'{}').hexdigest()}"  # a folder: digest of its "name digest" lines
    assert got["model.vae"]["sha256"] == hashlib.sha256(tree.encode()).hexdigest() and got["model.vae"]["size"] is None
    assert got["lora.items.0"]["sha256"] == hashlib.sha256(b"lora").hexdigest()
    assert rec.model_file_hashes({"model": {"source": "tiny"}}) == {}


def test_reference_image_hashes():
    got = rec.reference_image_hashes(["asset:sample_reference.png", "nope.png"])
    assert got == [{"path": "asset:sample_reference.png", "sha256": hashlib.sha256(ASSET.read_bytes()).hexdigest()},
                   {"path": "nope.png", "sha256": None}]


# ----------------------------------------------------------------------------- reproduce
def test_reproduce_record_is_bit_identical_and_reports_changed_inputs(t2i_run):
    cwd, out, record = t2i_run
    code, report, err = reproduce(out / "record.json", cwd)
    assert code == 0, err
    (img,) = report["images"]
    assert img["identical"] and img["max_abs_diff"] == 0 and math.isinf(img["psnr_db"])
    assert report["changed_inputs"] == []
    # the folder `workbench run` printed reads its record.json
    code, report, err = reproduce(out, cwd)
    assert code == 0, err
    assert report["source"] == str(out / "record.json") and report["images"][0]["identical"]
    # the same record with other recorded inputs: still identical pixels, and the changes are named
    old = json.loads(json.dumps(record))
    old["versions"]["torch"], old["git_commit"] = "1.0.0", "0" * 40
    old["device"]["device"] = "cuda:0"
    edited = out / "edited-record.json"
    edited.write_text(json.dumps(old))
    code, report, err = reproduce(edited, cwd)
    assert code == 0, err
    changes = {c["field"]: (c["old"], c["new"]) for c in report["changed_inputs"]}
    assert changes == {"versions.torch": ("1.0.0", record["versions"]["torch"]),
                       "git_commit": ("0" * 40, record["git_commit"]),
                       "device.device": ("cuda:0", "cpu")}


def test_reproduce_tampered_png_reports_psnr(t2i_run):
    cwd, out, record = t2i_run
    png = out / record["images"][0]["file"]
    with Image.open(png) as img:
        chunk = img.text[rec.PNG_KEY]
        pixels = np.asarray(img.convert("RGB")).copy()
    d = 40
    pixels[5, 7, 1] = (int(pixels[5, 7, 1]) + d) % 256 if pixels[5, 7, 1] < 256 - d else pixels[5, 7, 1] - d
    info = PngImagePlugin.PngInfo()
    info.add_itxt(rec.PNG_KEY, chunk)
    tampered = cwd / "tampered.png"
    Image.fromarray(pixels).save(tampered, pnginfo=info)

    code, report, err = reproduce(tampered, cwd)
    assert code == 4, err  # EXIT_DIFFERS
    (img,) = report["images"]
    h, w = pixels.shape[:2]
    # one channel of one pixel off by d: MSE = d^2 / (h * w * 3)
    assert img["identical"] is False and img["max_abs_diff"] == d and img["pixels_differing"] == 1
    assert img["psnr_db"] == pytest.approx(10 * math.log10(255**2 * h * w * 3 / d**2), abs=1e-3)

def test_human_readable_report(capsys):
    report = {"source": "a.png", "output_dir": "re", "identical": False, "changed_inputs": [
        {"field": "versions.torch", "old": "2.12.0", "new": "2.13.0"}], "images": [
        {"file": "a.png", "identical": False, "psnr_db": 71.2, "max_abs_diff": 40, "pixels_differing": 1}]}
    _print(report)
    out = capsys.readouterr().out
    assert "  DIFFERS  a.png: PSNR 71.2 dB, max abs pixel diff 40, 1 pixels differ" in out
    assert "  versions.torch: '2.12.0' -> '2.13.0'" in out and out.endswith("result: differs\n")


def test_reproduce_edit_run_detects_a_changed_reference_image(tmp_path):
    ref = tmp_path / "ref.png"
    shutil.copyfile(ASSET, ref)
    proc = wb("run", "experiment=edit_tiny", "sampler.steps=2", "images=[ref.png]", cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    record = json.loads((out / "record.json").read_text())
    old_sha = hashlib.sha256(ASSET.read_bytes()).hexdigest()
    assert record["reference_images"] == [{"path": "ref.png", "sha256": old_sha}]
    assert record["images"][0]["reference_sha256"] == [old_sha]

    with Image.open(ASSET) as img:  # a different reference image under the same name
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(ref)
    code, report, err = reproduce(out / "record.json", tmp_path)
    assert code == 4, err  # EXIT_DIFFERS
    new_sha = hashlib.sha256(ref.read_bytes()).hexdigest()
    assert {"field": "reference_images[0].sha256", "old": old_sha, "new": new_sha} in report["changed_inputs"]
    assert report["images"][0]["psnr_db"] < 100


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("plain_png", "has no 'workbench' text chunk: it was not written by the workbench"),
        ("missing", "not found: give a record.json, a run folder or a PNG written by `workbench run`"),
        ("other_json", "is JSON but not a workbench record.json"),
        ("folder", "is a folder without a record.json: give a run's folder (the one `workbench run` printed), "
                   "its record.json or one of its images"),
    ],
)
def test_reproduce_bad_input_exits_2(tmp_path, capsys, make, message):
    path = tmp_path / {"plain_png": "plain.png", "missing": "nope.json", "other_json": "x.json", "folder": "run"}[make]
    if make == "folder":
        (path / "images").mkdir(parents=True)
    elif make == "plain_png":
        Image.new("RGB", (16, 16)).save(path)
    elif make == "other_json":
        path.write_text('{"a": 1}')
    assert main([str(path), "-o", str(tmp_path / "re")]) == 2
    got = capsys.readouterr()
    assert message in got.err and got.out == ""
