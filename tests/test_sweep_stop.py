"""Stopping a sweep (SweepControl.stop, Ctrl-C), resuming it, and the live progress feed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from workbench.sweep import Progress, Sweep, SweepControl, SweepInterrupted

BASE = ["model=tiny_random", "height=64", "width=64", "sampler.steps=4"]
AXES = ["seeds=0,1,2"]  # one conditioning, one model: the cells run in display order


def plan(folder, axes=AXES, base=BASE) -> Sweep:
    return Sweep.plan(axes, base=base, out_dir=folder)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def stop_at(k: int, step: int, snapshots: list) -> SweepControl:
    """A control that stops the sweep when cell ``k`` has done ``step`` denoise steps."""

    def watch(p: Progress) -> None:
        snapshots.append(p)
        if p.cell_index == k and p.phase == "denoise" and p.step == step:
            control.stop()

    control = SweepControl(on_progress=watch)
    return control


def test_stop_mid_cell_keeps_finished_cells_and_cuts_the_running_one(tmp_path):
    sweep = plan(tmp_path)
    snapshots: list[Progress] = []
    result = sweep.run(progress=False, control=stop_at(1, 2, snapshots))

    assert result.stopped and result.cut == 1 and "stopped" in repr(result) and "cell 1 cut" in repr(result)
    assert result.stats == {"ran": 1, "cached": 0, "failed": 0, "encodes": 1, "conditioning_hits": 0,
                            "model_switches": 0}
    assert result.cells[1] is None and result.cells[2] is None
    assert list(result.table["status"]) == ["ok", "stopped", "pending"]
    # the running cell stopped right after the step that asked: no step 3 of cell 1, nothing of cell 2
    assert max(p.step for p in snapshots if p.cell_index == 1) == 2
    assert not any(p.cell_index == 2 for p in snapshots)
    assert snapshots[-1].phase == "stopped" and snapshots[-1].cells_done == 1

    # cell 0 is on disk and reads back as the image in memory; cell 1 left no record
    done = result.cells[0]
    record = json.loads((sweep.cell_dir(sweep.cells[0]) / "record.json").read_text())
    folder = sweep.cell_dir(sweep.cells[0])
    assert record["config"]["seeds"] == [0] and done.files == [folder / e["file"] for e in record["images"]]
    from PIL import Image

    with Image.open(done.files[0]) as img:
        assert np.array_equal(pixels(img), pixels(done.images[0]))
    assert not (sweep.cell_dir(sweep.cells[1]) / "record.json").exists()
    assert not (sweep.cell_dir(sweep.cells[2]) / "record.json").exists()

    # the partial summary, never the complete one
    assert (tmp_path / "grid.partial.png").is_file() and (tmp_path / "table.partial.csv").is_file()
    summary = json.loads((tmp_path / "sweep.partial.json").read_text())
    assert summary["complete"] is False and summary["stopped"] is True and summary["cut"] == 1
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "sweep.json").exists()


def test_run_again_resumes_and_matches_an_uninterrupted_run(tmp_path):
    sweep = plan(tmp_path / "stopped")
    first = sweep.run(progress=False, control=stop_at(1, 2, []))
    assert first.cut == 1

    resumed = sweep.run(progress=False)  # the same plan again, no control
    assert not resumed.stopped and resumed.cut is None and resumed.complete
    assert resumed.stats["cached"] == 1 and resumed.stats["ran"] == 2
    assert [r.status for r in resumed.cells] == ["cached", "ok", "ok"]
    assert (tmp_path / "stopped" / "grid.png").is_file() and not (tmp_path / "stopped" / "grid.partial.png").exists()

    reference = plan(tmp_path / "reference").run(progress=False)
    for a, b in zip(resumed.cells, reference.cells):
        assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))  # CPU: bit-exact


def test_progress_snapshots_and_previews(tmp_path):
    snapshots: list[Progress] = []
    result = plan(tmp_path / "a").run(progress=False, control=SweepControl(on_progress=snapshots.append))
    assert result.complete and result.stats["ran"] == 3

    done = [p.cells_done for p in snapshots]
    assert done == sorted(done) and done[-1] == 3 and all(p.cells_total == 3 for p in snapshots)
    for k in range(3):
        mine = [p for p in snapshots if p.cell_index == k]
        assert [p.phase for p in mine] == ["load"] + ["denoise"] * 4 + ["decode"]
        assert [p.step for p in mine if p.phase == "denoise"] == [1, 2, 3, 4]
        assert {p.steps for p in mine if p.phase != "load"} == {4} and mine[0].steps == 0
        assert mine[0].cell_label == result.sweep.cells[k].label(result.axes)
    first_end = next(i for i, p in enumerate(snapshots) if p.phase == "done")
    assert all(p.eta_s is None for p in snapshots[:first_end])  # no cell has run yet: no estimate
    assert all(isinstance(p.eta_s, float) and p.eta_s >= 0 for p in snapshots[first_end:])
    assert snapshots[first_end].eta_s > 0  # two cells left
    assert snapshots[-1].phase == "done" and snapshots[-1].cell_index is None and snapshots[-1].eta_s == 0
    assert all(p.preview is None for p in snapshots)  # not asked for
    elapsed = [p.elapsed_s for p in snapshots]
    assert elapsed == sorted(elapsed)

    # read back: one "read back" snapshot per cell, no estimate (nothing ran)
    again: list[Progress] = []
    plan(tmp_path / "a").run(progress=False, control=SweepControl(on_progress=again.append))
    assert [p.phase for p in again if p.cell_index is not None] == ["read back"] * 3
    assert all(p.eta_s is None for p in again) and again[-1].phase == "done" and again[-1].cells_done == 3

    # previews: every step with preview_every_s=0, the cell's size; the images are unchanged by them
    shown: list[Progress] = []
    previewed = plan(tmp_path / "b").run(progress=False, control=SweepControl(shown.append, preview_every_s=0))
    steps = [p for p in shown if p.phase == "denoise"]
    assert len(steps) == 12 and all(p.preview is not None and p.preview.size == (64, 64) for p in steps)
    assert np.asarray(steps[-1].preview).std() > 0  # a decoded image, not a blank
    for a, b in zip(result.cells, previewed.cells):
        assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))

    # a long interval: only each cell's first step is decoded
    sparse: list[Progress] = []
    plan(tmp_path / "c", axes=["seeds=0,1"]).run(progress=False, control=SweepControl(sparse.append, 3600))
    assert [p.step for p in sparse if p.preview is not None] == [1, 1]


def test_keyboard_interrupt_stores_finished_cells_and_raises_sweep_interrupted(tmp_path):
    def interrupt(p: Progress) -> None:  # the notebook's interrupt arrives while cell 1 denoises
        if p.cell_index == 1 and p.phase == "denoise" and p.step == 1:
            raise KeyboardInterrupt

    sweep = plan(tmp_path)
    with pytest.raises(SweepInterrupted) as caught:
        sweep.run(progress=False, control=SweepControl(on_progress=interrupt))
    assert isinstance(caught.value, KeyboardInterrupt)
    partial = caught.value.result
    assert partial.stopped and partial.cut == 1 and partial.cells[0].status == "ok" and partial.cells[2] is None
    assert (sweep.cell_dir(sweep.cells[0]) / "record.json").is_file()
    assert not (sweep.cell_dir(sweep.cells[1]) / "record.json").exists()
    assert json.loads((tmp_path / "sweep.partial.json").read_text())["cut"] == 1
    assert str(caught.value).startswith(f"stopped: 1 of 3 cells stored in {tmp_path}; cell 1 (")

    # Ctrl-C without a control (here: while cell 2 loads) is handled the same way
    from workbench.sweep.runner import CellRunner

    real = CellRunner._generate

    def generate(self, sweep, cell, watch=None):
        if cell.index == 2:
            raise KeyboardInterrupt
        return real(self, sweep, cell, watch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CellRunner, "_generate", generate)
        with pytest.raises(SweepInterrupted) as caught:
            plan(tmp_path).run(progress=False)
    again = caught.value.result
    assert [r.status if r else None for r in again.cells] == ["cached", "ok", None] and again.cut == 2


def test_magic_prints_one_line_and_returns_the_partial_result(tmp_path, capsys, monkeypatch):
    from workbench.cli.magics import sweep_magic
    from workbench.sweep.runner import CellRunner

    real = CellRunner._generate

    def generate(self, sweep, cell, watch=None):  # Ctrl-C while cell 1 runs
        if cell.index == 1:
            raise KeyboardInterrupt
        return real(self, sweep, cell, watch)

    monkeypatch.setattr(CellRunner, "_generate", generate)
    out = tmp_path / "sweep"
    result = sweep_magic(["-x", "seeds=0,1,2", "--out", str(out), "--no-progress", *BASE])
    assert result.stopped and result.cut == 1 and result.cells[0].status == "ok"
    label = result.sweep.cells[1].label(result.axes)
    err = capsys.readouterr().err
    assert err == (f"stopped: 1 of 3 cells stored in {out}; cell 1 ({label}) was cut and not stored; "
                   "run the same command again to resume\n")


def test_stop_before_any_cell_runs_nothing(tmp_path):
    control = SweepControl(on_progress=lambda p: seen.append(p))
    seen: list[Progress] = []
    control.stop()
    result = plan(tmp_path).run(progress=False, control=control)
    assert result.stopped and result.cut is None and result.done == 0 and result.stats["ran"] == 0
    assert list(result.table["status"]) == ["pending"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells", "grid.partial.png", "sweep.partial.json",
                                                         "table.partial.csv"]
    assert list((tmp_path / "cells").iterdir()) == []
    assert [p.phase for p in seen] == ["stopped"]


def test_a_failing_on_progress_warns_once_and_the_sweep_goes_on(tmp_path):
    def broken(p: Progress) -> None:
        raise ValueError("display gone")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = plan(tmp_path, axes=["seeds=0,1"], base=[*BASE[:3], "sampler.steps=2"]).run(
            progress=False, control=SweepControl(on_progress=broken))
    assert result.complete and result.stats["ran"] == 2
    mine = [w for w in caught if "on_progress raised ValueError: display gone" in str(w.message)]
    assert len(mine) == 1
    with pytest.raises(ValueError, match="preview_every_s"):
        SweepControl(preview_every_s=-1)


def test_the_watch_stays_in_this_process():
    """RunOptions travels to Ray actors pickled: the watch (a callback, a threading.Event) is left behind."""
    import pickle

    from workbench.sweep.control import RunWatch
    from workbench.sweep.executors import RunOptions

    control = SweepControl(on_progress=lambda p: None)
    options = RunOptions(keep_models=False, conditioning_cache_size=3, watch=RunWatch(control, 4))
    assert not options.stopped
    control.stop()
    assert options.stopped
    shipped = pickle.loads(pickle.dumps(options))
    assert shipped == RunOptions(keep_models=False, conditioning_cache_size=3) and shipped.watch is None
    assert not shipped.stopped and options.watch is not None
