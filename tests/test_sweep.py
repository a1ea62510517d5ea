"""Sweeps: axis syntax, validation before running, resident models, shared conditioning, disk cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import RunFailure
from workbench.record import read_png_record
from workbench.sweep import FAILED, Sweep, SweepError
from workbench.sweep.axes import Axis, parse_axes, parse_axis, parse_values

SMALL = ["height=32", "width=32"]


# ----------------------------------------------------------------------------- axis syntax
@pytest.mark.parametrize(
    "text, values",
    [
        ("4,8,16", [4, 8, 16]),
        ("1-8 (+2)", [1, 3, 5, 7]),
        ("1-4", [1, 2, 3, 4]),
        ("8-2 (-3)", [8, 5, 2]),
        ("1.0-4.0 (+0.5)", [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
        ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # no float drift, the end is included
        ("qwen_t2i, chat", ["qwen_t2i", "chat"]),
        ('"a cat, at night",a dog', ["a cat, at night", "a dog"]),
        ("2.5,3", [2.5, 3]),
    ],
)
def test_parse_values(text, values):
    assert parse_values(text) == values


@pytest.mark.parametrize(
    "text, message",
    [
        ("1-8 (+0)", "step 0"),
        ("1-8 (-1)", "never reaches 8"),
        ("1.0-4.0", "needs a step"),
        ("1-100000", "at most 256"),
        ("4,,8", "empty value"),
        ("", "no values"),
    ],
)
def test_parse_values_errors(text, message):
    with pytest.raises(SweepError, match=message):
        parse_values(text)


@pytest.mark.parametrize(
    "axis",
    ["sampler.steps=range(2,10,2)", "sampler.cfg=range(1.0,2.5,0.5)", "template=choice(qwen_t2i,chat)",
     "negative_prompt=choice('blurry, low quality',ugly)", "sampler.steps=sort(8,2,4)", "sampler.steps=4,8,16"],
)
def test_hydra_sweep_functions_give_what_run_m_runs(axis):
    """An axis in Hydra's sweep syntax has the values, in the order, that `workbench run -m` gives its jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    jobs = BasicSweeper.split_arguments(parser.parse_overrides([axis]), None)[0]
    ax = parse_axis(axis)
    assert list(ax.values) == [parser.parse_override(job[0]).value() for job in jobs]
    assert [parser.parse_override(ax.override(v)).value() for v in ax.values] == list(ax.values)  # each cell's override


@pytest.mark.parametrize(
    "axis, message",
    [
        ("prompts=[a cat,a dog]", r"'\[a cat,a dog\]' is a list; an axis takes its values without brackets, one cell "
                                  r"per value: prompts=a cat,a dog"),  # csv kept '[a cat' and 'a dog]' as prompts
        ("seeds=[1, 2]", r"without brackets, one cell per value: seeds=1, 2"),
        ("seeds=range(0,10**9)", "not a valid Hydra sweep"),
        ("seeds=range(0,1000000000)", "gives more than 256 values"),  # counted lazily, never listed
        ("seeds=range(3,3)", "gives no values"),
        ("seeds=shuffle(1,2)", r"Hydra's shuffle\(\) draws a random order; give the values"),
        ("sampler.cfg=interval(1,2)", r"interval\(\) is a range for optimisers"),
        ("sampler.steps=choice([1,2],[3])", "value \\[1, 2\\] is a list; an axis value is a number or a string"),
    ],
)
def test_axis_syntax_errors_name_the_fix(axis, message):
    with pytest.raises(SweepError, match=message):
        parse_axis(axis)


def test_parse_axes_and_overrides():
    x, y = parse_axes(["sampler.steps=2-4", ("prompts", ["a cat", "it's late"])])
    assert x == Axis("sampler.steps", (2, 3, 4), "sampler.steps=2-4")
    assert x.override(3) == "sampler.steps=3"
    assert y.override("it's late") == "prompts=['it\\'s late']"  # list keys take one element per value
    assert parse_axis("template=chat").override("chat") == "template=chat"
    with pytest.raises(SweepError, match="at most 3"):
        parse_axes(["seeds=1,2", "sampler.steps=2,3", "sampler.cfg=1,2", "template=chat,raw"])
    with pytest.raises(SweepError, match="on two axes"):
        parse_axes(["sampler.steps=2,3", "sampler.steps=4"])
    with pytest.raises(SweepError, match="axis Y: '\\+sampler.stepz' is not a config key"):
        parse_axes(["seeds=1", "+sampler.stepz=2"])
    with pytest.raises(SweepError, match="axis X \\(sampler.steps\\): range 1-8 with step -1"):
        parse_axes(["sampler.steps=1-8 (-1)"])
    with pytest.raises(SweepError, match="is not 'key=values'"):
        parse_axes(["steps"])


# ----------------------------------------------------------------------------- validation before running
@pytest.mark.parametrize(
    "axes, message",
    [
        (["sampler.steps=2,abc"], "axis X (sampler.steps) value 'abc': .*could not be converted to Integer"),
        (["seeds=1", "sampler.stepz=2,3"], "axis Y (sampler.stepz) value 2: .*Key 'stepz' not in 'SamplerConfig'"),
        (["template=qwen_t2i,nope"], "axis X (template) value 'nope': .*available: chat, qwen21, qwen_edit"),
        (["sampler.steps=0,2"], "axis X (sampler.steps) value 0: sampler.steps must be >= 1"),
        (["seeds=1,2", "sampler.cfg=2,0.5"], "axis Y (sampler.cfg) value 0.5: sampler.cfg must be >= 1"),
    ],
)
def test_plan_names_axis_and_value_before_anything_runs(tmp_path, axes, message):
    import re

    with pytest.raises(SweepError, match=re.escape(message).replace(r"\.\*", ".*")):
        Sweep.plan(axes, base=SMALL, out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing was run or written


def test_base_key_on_an_axis_is_refused(tmp_path):
    with pytest.raises(SweepError, match="also an axis"):
        Sweep.plan(["sampler.steps=2,3"], base=["sampler.steps=4"], out_dir=tmp_path)


def test_careless_plan_arguments(tmp_path):
    """One string is one axis / one base override (iterated, it was nine axes / a base of letters); hydra.*
    in the base was composed away without a word; a base of non-strings is named."""
    one = Sweep.plan("sampler.steps=2,3", base="height=32", out_dir=tmp_path)
    listed = Sweep.plan(["sampler.steps=2,3"], base=["height=32"], out_dir=tmp_path)
    assert one.shape == listed.shape == (2,) and [c.key for c in one.cells] == [c.key for c in listed.cells]
    with pytest.raises(SweepError, match=r"base override 'hydra.run.dir=/x': hydra.\* settings choose where `workbench "
                                         r"run` writes; a sweep writes its cells under out_dir"):
        Sweep.plan(["seeds=0,1"], base=["hydra.run.dir=/x"], out_dir=tmp_path)
    with pytest.raises(SweepError, match=r"base override '\+hydra.job.chdir=true': hydra"):
        Sweep.plan(["seeds=0,1"], base=["+hydra.job.chdir=true"], out_dir=tmp_path)
    with pytest.raises(SweepError, match=r"base override 'hydra/launcher=basic': hydra"):
        Sweep.plan(["seeds=0,1"], base=["hydra/launcher=basic"], out_dir=tmp_path)
    with pytest.raises(SweepError, match=r"base overrides\[1\] must be a string, got int 64"):
        Sweep.plan(["seeds=0,1"], base=["height=32", 64], out_dir=tmp_path)


@pytest.mark.parametrize("base, message", [
    (["widht=64"], r"base overrides \['widht=64'\]: unknown key widht; did you mean width\?"),
    (["height=64", "sampler.cfg=0.5"], r"base overrides .*: sampler.cfg must be >= 1"),
])
def test_a_failing_base_override_is_blamed_not_the_first_axis_value(tmp_path, base, message):
    with pytest.raises(SweepError, match=message) as err:
        Sweep.plan(["sampler.steps=2,4", "template=qwen_t2i,chat"], base=base, out_dir=tmp_path)
    assert "axis X" not in str(err.value)
    # a base that works alone but fails with every value of an axis still names that axis
    with pytest.raises(SweepError, match=r"axis Y \(sampler.cfg\) value 0.5"):
        Sweep.plan(["sampler.steps=2,4", "sampler.cfg=0.5"], base=["height=64"], out_dir=tmp_path)


# ----------------------------------------------------------------------------- running
def test_sweep_groups_models_shares_conditioning_and_caches(tmp_path):
    # precision on X (fastest in display order): execution must still group by precision
    sweep = Sweep.plan(["precision=fp32,bf16", "sampler.steps=2,3"], base=SMALL, out_dir=tmp_path)
    assert sweep.shape == (2, 2)
    assert [c.values for c in sweep.cells] == [("fp32", 2), ("bf16", 2), ("fp32", 3), ("bf16", 3)]
    assert [c.values for c in sweep.execution_order()] == [("fp32", 2), ("fp32", 3), ("bf16", 2), ("bf16", 3)]

    result = sweep.run(progress=False)
    assert result.stats == {"ran": 4, "cached": 0, "failed": 0, "encodes": 2, "conditioning_hits": 2, "model_switches": 1}
    assert result.run_order == [0, 2, 1, 3]

    table = result.table
    assert list(table["precision"]) == ["fp32", "bf16", "fp32", "bf16"]
    assert list(table["sampler.steps"]) == [2, 2, 3, 3] and list(table["status"]) == ["ok"] * 4
    assert list(table["cond_cached"]) == [False, False, True, True]
    assert (table[["denoise_s", "decode_s", "total_s", "peak_mem_mb"]] > 0).all().all()
    assert set(table["peak_mem_kind"]) == {"process rss"}  # a CPU run: the process's peak, labelled as such
    assert table.loc[0, "size"] == "32x32" and table.loc[3, "steps"] == 3

    # each cell: image + record (PNG chunk and record.json) under the hash of its resolved config
    cell = result.cells[3]
    record = json.loads((sweep.cell_dir(cell.cell) / "record.json").read_text())
    assert record["config"]["precision"]["transformer"] == "bfloat16" and record["config"]["sampler"]["steps"] == 3
    assert record["sweep"]["axes"] == {"precision": "bf16", "sampler.steps": 3}
    assert read_png_record(cell.files[0])["image"]["seed"] == 0
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "table.csv").is_file()

    # the grid: 2 x 2 tiles of at least 64 px (model=tiny's size) plus legends
    grid = result.grid
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    a, b = (np.asarray(result.cells[i].images[0], dtype=np.float32) for i in (0, 2))
    assert np.abs(a - b).mean() > 0  # different steps, different images

    for a, b in ((0, 4), ("0", 1), (True, 1)):
        with pytest.raises(SweepError, match=rf"cell {a if a != 0 else b!r} is not an index of this sweep's 4 cells \(0..3"):
            result.compare(a, b)
    cmp = result.compare(0, 1)  # A/B: fp32 vs bf16 at 2 steps
    assert set(cmp.diff) == {"precision.name", "precision.transformer", "precision.text_encoder", "precision.vae"}
    assert cmp.diff["precision.name"] == ("fp32", "bf16")
    assert cmp.mean_abs_diff is not None and cmp.image.width > 3 * 32  # A, B and the difference map
    from workbench import metrics

    ta, tb = result.cells[0].tile, result.cells[1].tile
    assert cmp.psnr == pytest.approx(metrics.psnr(ta, tb)) and cmp.ssim == pytest.approx(metrics.ssim(ta, tb))
    want = np.clip(np.abs(np.asarray(ta, dtype=np.float32) - np.asarray(tb, dtype=np.float32)) * 4, 0, 255).astype(int)
    assert np.array_equal(np.asarray(cmp.difference).astype(int), want) and want.max() > 0

    again = sweep.run(progress=False)  # finished cells are read back, nothing is encoded or denoised
    assert again.stats == {"ran": 0, "cached": 4, "failed": 0, "encodes": 0, "conditioning_hits": 0, "model_switches": 0}
    assert list(again.table["status"]) == ["cached"] * 4
    for r1, r2 in zip(result.cells, again.cells):
        assert np.array_equal(np.asarray(r1.images[0]), np.asarray(r2.images[0]))


def test_interrupted_sweep_resumes(tmp_path):
    sweep = Sweep.plan(["prompts=a cat,a dog", "sampler.steps=2,3"], base=SMALL, out_dir=tmp_path)
    first = sweep.run(progress=False, on_cell=lambda res, result: result.done == 2)  # stop after 2 cells
    assert first.done == 2 and first.stats["ran"] == 2 and list(first.table["status"]).count("pending") == 2

    def interrupt(res, result):
        if res.status == "ok":  # finished cells are read back first; Ctrl-C after one more cell ran
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Sweep.plan(["prompts=a cat,a dog", "sampler.steps=2,3"], base=SMALL, out_dir=tmp_path).run(progress=False, on_cell=interrupt)
    resumed = sweep.run(progress=False)
    assert resumed.stats["cached"] == 3 and resumed.stats["ran"] == 1
    assert resumed.stats["encodes"] == 1  # two prompts, but only the unfinished cell needed an encode


def test_failing_cells_become_labelled_blank_tiles(tmp_path):
    # steps=1 is invalid with flow_euler's terminal stretch but fine with lightning: a bad combination;
    # a reference image that disappears after planning fails only when the cell runs
    sweep = Sweep.plan(
        ["sampler=flow_euler,lightning", "sampler.steps=1,2"], base=SMALL, out_dir=tmp_path / "a"
    )
    invalid = [c for c in sweep.cells if c.error]
    assert [c.values for c in invalid] == [("flow_euler", 1)]
    assert "shift_terminal" in invalid[0].error
    result = sweep.run(progress=False)
    assert list(result.table["status"]) == ["failed", "ok", "ok", "ok"]
    assert "shift_terminal" in result.table.loc[0, "error"]

    gone = tmp_path / "ref.png"  # checked when planned (config time), removed before the cell runs
    gone.write_bytes((Path(__file__).parents[1] / "workbench" / "assets" / "sample_reference.png").read_bytes())
    edit = Sweep.plan(
        [f"images=asset:sample_reference.png,{gone}"],
        base=["experiment=edit_tiny", "sampler.steps=2"],
        out_dir=tmp_path / "b",
    )
    gone.unlink()
    result = edit.run(progress=False)
    assert list(result.table["status"]) == ["ok", "failed"]
    assert f"images[0] '{gone}': file not found" in result.cells[1].error
    grid = np.asarray(result.grid)
    tile_w = result.cells[0].images[0].width
    assert (grid == np.array(FAILED, dtype=grid.dtype)).all(axis=-1).sum() > tile_w * 10  # the blank tile is drawn
    rerun = edit.run(progress=False)  # failures are not cached: they are tried again
    assert rerun.stats["cached"] == 1 and rerun.stats["failed"] == 1


def test_cells_are_written_in_the_background_and_a_failed_write_raises(tmp_path, monkeypatch):
    """PNG encoding runs on the writer thread (overlapping the next cell's compute); a write that fails
    must fail the sweep and leave that cell unfinished on disk, so the next run computes it again."""
    import threading

    from workbench import record as rec

    save_png, threads, calls = rec.save_png, set(), []

    def flaky_save_png(path, image, record):
        threads.add(threading.current_thread().name)
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save_png(path, image, record)

    monkeypatch.setattr(rec, "save_png", flaky_save_png)
    sweep = Sweep.plan(["sampler.steps=2,3,4"], base=SMALL, out_dir=tmp_path)
    with pytest.raises(RunFailure, match=r"1 cell\(s\) ran but could not be written \(OSError: .*No space left on device\)"):
        sweep.run(progress=False)
    assert {name.split("_")[0] for name in threads} == {"sweep-writer"}  # never the main thread
    done = [c for c in sweep.cells if (sweep.cell_dir(c) / "record.json").is_file()]
    assert (2,) in [c.values for c in done] and (3,) not in [c.values for c in done]  # the failed write left no record.json
    assert (tmp_path / "grid.partial.png").is_file() and not (tmp_path / "grid.png").exists()  # partial summary only

    monkeypatch.setattr(rec, "save_png", save_png)
    again = sweep.run(progress=False)
    assert again.stats["cached"] == len(done) and again.stats["ran"] == 3 - len(done)
    assert (tmp_path / "grid.png").is_file() and not (tmp_path / "grid.partial.png").exists()


# ----------------------------------------------------------------------------- metric columns
CAPTION = "a large red circle on the left, on a blue background"


def test_metric_columns_score_cells_against_caption_and_reference(tmp_path):
    """Steps 2 vs 8 on the trained tiny model: each cell's adherence is its own images' score, the reference cell scores itself
    perfectly (PSNR inf, SSIM 1), the values equal workbench.metrics on the cells' own images, and
    table.csv holds the same columns."""
    from workbench import metrics

    sweep = Sweep.plan(["sampler.steps=2,8"], [f"prompts=['{CAPTION}']", "seeds=[0,1]"], tmp_path,
                       metrics=["adherence", "ssim", "psnr"], metric_reference=1)
    result = sweep.run(progress=False)
    table = result.table
    for column in ["adherence", "background_ok", "colour_ok", "shape_ok", "position_ok", "size_ok", "psnr_vs_1", "ssim_vs_1"]:
        assert column in table.columns
    few, many = result.cells[0], result.cells[1]
    expect = metrics.adherence([metrics.score(img, CAPTION) for img in many.images])
    assert table.loc[1, "adherence"] == pytest.approx(expect) and expect >= 0.8
    assert table.loc[0, "adherence"] == pytest.approx(metrics.adherence([metrics.score(i, CAPTION) for i in few.images]))
    assert table.loc[1, "psnr_vs_1"] == float("inf") and table.loc[1, "ssim_vs_1"] == pytest.approx(1.0)
    ssim0 = np.mean([metrics.ssim(a, b) for a, b in zip(few.images, many.images)])
    assert table.loc[0, "ssim_vs_1"] == pytest.approx(ssim0) and ssim0 < 0.99
    import pandas as pd

    saved = pd.read_csv(tmp_path / "table.csv", index_col="cell")
    assert saved.loc[0, "adherence"] == pytest.approx(table.loc[0, "adherence"])
    assert json.loads((tmp_path / "sweep.json").read_text())["metrics"] == ["adherence", "ssim", "psnr"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics": ["clip"]}, "metric 'clip' is not known; choose from adherence, psnr, ssim"),
        ({"metrics": "clip"}, "metric 'clip' is not known"),  # one string is one metric (it was 'c', 'l', ...)
        ({"metrics": [1]}, r"metrics\[0\] must be a string, got int 1"),
        ({"metrics": ["ssim"], "metric_reference": 5}, "reference cell 5 is outside the sweep's cells 0..1"),
        ({"metrics": ["adherence"], "base": ["prompts=['a photo of a cat']"]}, "cell 0: caption 'a photo of a cat' is not in the world's grammar"),
    ],
)
def test_metric_errors_before_anything_runs(tmp_path, kwargs, message):
    base = kwargs.pop("base", [f"prompts=['{CAPTION}']"])
    with pytest.raises(SweepError, match=message):
        Sweep.plan(["sampler.steps=2,3"], base, tmp_path, **kwargs)
    assert not (tmp_path / "cells").exists()


def test_the_table_says_what_each_cell_ignored(tmp_path):
    """A shift swept across both shift modes runs (the fixed cells read it); the dynamic cells' notes say they
    did not, in the table and its HTML (cut, the whole text on hover), also when the cells are read back."""
    from workbench.sweep import report

    sweep = Sweep.plan(["sampler.shift=2,3", "sampler.shift_mode=dynamic,fixed"], base=SMALL, out_dir=tmp_path)
    for result in (sweep.run(progress=False), sweep.run(progress=False)):  # computed, then read back
        notes = list(result.table["notes"])
        assert notes[:2] == [f"sampler.shift={v} is not used: shift_mode=dynamic takes the shift from the image size "
                             "(set sampler.shift_mode=fixed to use it)" for v in (2, 3)]
        assert notes[2:] == ["", ""]
    page = report.table_html(result)
    assert '<span title="sampler.shift=2 is not used: shift_mode=dynamic' in page



@pytest.mark.parametrize("kwargs, message", [
    ({"on_cell": 3}, r"on_cell=3 is not callable; pass a function \(cell_result, sweep_result\) or None"),
    ({"control": "stop"}, r"control must be a SweepControl \(workbench.sweep.control\), got str"),
    ({"conditioning_cache_size": -1}, r"conditioning_cache_size=-1 must be an integer >= 0"),
])
def test_run_arguments_are_checked_before_any_cell(tmp_path, kwargs, message):
    """A wrong on_cell failed after the first cell had run (and a wrong control inside the loop)."""
    sweep = Sweep.plan(["seeds=0,1"], base=SMALL, out_dir=tmp_path / "sweep")
    with pytest.raises(SweepError, match=message):
        sweep.run(progress=False, **kwargs)
    assert not (tmp_path / "sweep").exists()  # nothing ran, nothing was written


def test_finished_cells_are_written_while_the_next_cell_denoises(tmp_path, monkeypatch):
    """A cell's files are written once the next cell's denoise steps are queued (not during its encode, noise
    and decode, whose host work a writer thread slows down), the last one after the run; all land on disk."""
    import workbench.sweep.execute as execute

    watches, writes = [], []  # writes: (cell written, cell running then, its steps done)
    real_watch, real_write = execute.RunWatch, execute.write_output

    def watch(*args, **kwargs):
        watches.append(real_watch(*args, **kwargs))
        return watches[-1]

    def write(sweep, cell, out):
        running = watches[0].running
        writes.append((cell.index, None if running is None else running.index, watches[0].step_done))
        real_write(sweep, cell, out)

    monkeypatch.setattr(execute, "RunWatch", watch)
    monkeypatch.setattr(execute, "write_output", write)
    sweep = Sweep.plan(["seeds=0,1,2"], base=SMALL + ["sampler.steps=3"], out_dir=tmp_path)
    result = sweep.run(progress=False)
    assert result.stats["ran"] == 3 and result.complete
    assert [(w, r) for w, r, _ in writes] == [(0, 1), (1, 2), (2, None)]  # the last: once nothing is computed
    assert all(steps >= 1 for _, _, steps in writes[:2])
    for cell in result.cells:
        assert (sweep.cell_dir(cell.cell) / "record.json").is_file()
