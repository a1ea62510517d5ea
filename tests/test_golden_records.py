"""Records of fixed configs, made before a change, hold after it: the refactor guard (issue 14).

``tests/fixtures/golden/<name>/`` holds ``record.json`` and the images of ``workbench run`` on the tiny
model for t2i (batched, two prompts x two seeds), guided t2i with a negative prompt, edit and img2img, plus
``latents.json``: a slice of each image's final (packed) latents (diffusers' ``expected_slice`` style).
The test runs each config again and compares:

- the record's content exactly, except what describes the machine and the moment (dates, timings,
  versions, host, git state, memory peaks);
- the images' pixels (at most 1 level of 255 apart: a CPU with other vector units may round one value
  differently; on one machine they are bit-identical);
- the latents slices to 1e-4.

Regenerate (only when a change is MEANT to change results, and say so in the commit):
``WORKBENCH_REGEN_GOLDEN=1 python -m pytest tests/test_golden_records.py``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
REGEN = os.environ.get("WORKBENCH_REGEN_GOLDEN") == "1"
CASES = {
    "t2i_batched": [
        "prompts=['a large red circle on the left, on a blue background','a small white square on the top, on a green background']",
        "seeds=[0,1]", "batch_size=2", "sampler.steps=6",
    ],
    "t2i_cfg_negative": [
        "prompts=['a yellow triangle on a black background']", "seeds=[7]", "sampler.cfg=3",
        "negative_prompt=a blue triangle", "template=chat", "sampler.steps=5",
    ],
    "edit": ["experiment=edit_tiny", "sampler.steps=6", "seeds=[3]"],
    "img2img": [
        "init_image=asset:world_red_circle.png", "strength=0.6", "sampler.steps=8", "seeds=[5]",
        "prompts=['a large green circle on the centre, on a blue background']",
    ],
    "lightning": ["experiment=lightning_8step", "prompts=['a small orange square on the right, on a purple background']"],
}
VOLATILE = {"created", "device", "versions", "git_commit", "git_dirty", "peak_memory", "import_s", "model_load_s", "total_s"}


def _stable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["images"] = [{k: v for k, v in e.items() if k != "timings_s"} for e in record["images"]]
    return out


def _run(name: str, out: Path) -> tuple[dict, list]:
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench
    from workbench.run import run

    overrides = CASES[name]
    record = json.loads(run(compose(overrides), out, progress=False).read_text())
    cfg = to_run_config(compose(overrides))
    generated = Workbench.from_config(cfg).generate(cfg, progress=False)
    # packed latents (1, tokens, 64): the first and last two tokens, eight channels each
    slices = [g.latents[0, [0, 1, -2, -1], :8].flatten().tolist() for g in generated]
    return record, slices


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_record(name, tmp_path):
    record, slices = _run(name, tmp_path)
    folder = GOLDEN / name
    if REGEN:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        (folder / "images").mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(_stable(record), indent=1, ensure_ascii=False) + "\n")
        (folder / "latents.json").write_text(json.dumps({"machine": platform.machine(), "slices": slices}) + "\n")
        for e in record["images"]:
            shutil.copy(tmp_path / e["file"], folder / e["file"])
        pytest.skip(f"golden files of {name} written")
    expected = json.loads((folder / "record.json").read_text())
    assert _stable(json.loads(json.dumps(record))) == expected
    for e in expected["images"]:
        got = np.asarray(Image.open(tmp_path / e["file"]).convert("RGB"), dtype=np.int16)
        want = np.asarray(Image.open(folder / e["file"]).convert("RGB"), dtype=np.int16)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1, e["file"]
    pinned = json.loads((folder / "latents.json").read_text())["slices"]
    assert len(slices) == len(pinned)
    for got_slice, want_slice in zip(slices, pinned):
        np.testing.assert_allclose(got_slice, want_slice, atol=1e-4, rtol=0)


def test_golden_files_are_shipped():
    """A missing golden folder fails (it is never silently regenerated in CI)."""
    for name in CASES:
        assert (GOLDEN / name / "record.json").is_file() and (GOLDEN / name / "latents.json").is_file(), name
