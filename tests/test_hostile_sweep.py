"""Hostile and careless sweep caches (issue 12): corrupt cells are recomputed and named, the summary is
replaced only by a complete sweep, and a failed write (disk full) is never reported as ok."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from workbench.errors import RunFailure
from workbench.sweep import CorruptCellWarning, Sweep, SweepError, SweepWriteError
from workbench.sweep.result import PARTIAL_SUMMARY, SUMMARY, replace_together

SMALL = ["height=32", "width=32", "sampler.steps=2"]


def plan(out_dir, values="1,2,3"):
    return Sweep.plan([f"seeds={values}"], base=SMALL, out_dir=out_dir)


def stored(sweep) -> list:
    return [c.values[0] for c in sweep.cells if (sweep.cell_dir(c) / "record.json").is_file()]


# ----------------------------------------------------------------------------- corrupt cached cells
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-cell sweep (its folder and result), copied by each test that damages it."""
    folder = tmp_path_factory.mktemp("finished")
    return folder, plan(folder, "1,2").run(progress=False)


def _truncate_png(sweep, cell):
    png = next(sweep.cell_dir(cell).glob("images/*.png"))
    png.write_bytes(png.read_bytes()[:200])


def _truncate_record(sweep, cell):
    path = sweep.cell_dir(cell) / "record.json"
    path.write_bytes(path.read_bytes()[:50])


def _record_points_outside(sweep, cell):
    path = sweep.cell_dir(cell) / "record.json"
    record = json.loads(path.read_text())
    record["images"][0]["file"] = "../../../../etc/passwd"
    path.write_text(json.dumps(record))


def _record_not_an_object(sweep, cell):
    (sweep.cell_dir(cell) / "record.json").write_text("[1, 2]")


@pytest.mark.parametrize("damage, why", [
    (_truncate_png, r"OSError: .*[Tt]runcated|SyntaxError: .*broken"),
    (_truncate_record, r"JSONDecodeError: "),
    (_record_points_outside, r"ValueError: image entry .file.: .*etc/passwd. does not name a file of this folder"),
    (_record_not_an_object, r"ValueError: record.json is not an object with an .images. list"),
], ids=["truncated_png", "truncated_record", "path_outside_the_cell", "record_not_an_object"])
def test_a_corrupt_cached_cell_is_named_and_computed_again(finished, tmp_path, damage, why):
    import shutil

    shutil.copytree(finished[0], tmp_path, dirs_exist_ok=True)
    sweep, first = plan(tmp_path, "1,2"), finished[1]
    bad = sweep.cells[1]
    damage(sweep, bad)
    with pytest.warns(CorruptCellWarning, match=rf"sweep cell 1 \(seeds=\[?2\]?\) in .*{bad.key}: the cached result cannot be read \((?:{why})"):
        again = sweep.run(progress=False)
    assert again.stats["cached"] == 1 and again.stats["ran"] == 1  # only the damaged cell ran again
    assert again.cells[1].status == "ok"
    with Image.open(again.cells[1].files[0]) as img:  # stored again, whole
        img.load()
    assert json.loads((sweep.cell_dir(bad) / "record.json").read_text())["images"][0]["file"] != "../../../../etc/passwd"
    assert np.array_equal(np.asarray(again.cells[1].images[0]), np.asarray(first.cells[1].images[0]))


# ----------------------------------------------------------------------------- summary files
def _summary(folder, names=SUMMARY) -> dict:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


def test_the_summary_is_replaced_only_by_a_complete_sweep(tmp_path):
    sweep = plan(tmp_path)
    sweep.run(progress=False, on_cell=lambda res, result: True)  # stopped after the first cell
    assert _summary(tmp_path) == {} and set(_summary(tmp_path, PARTIAL_SUMMARY)) == set(PARTIAL_SUMMARY)
    assert json.loads((tmp_path / "sweep.partial.json").read_text())["complete"] is False

    sweep.run(progress=False)
    complete = _summary(tmp_path)
    assert set(complete) == set(SUMMARY) and _summary(tmp_path, PARTIAL_SUMMARY) == {}  # stale partials removed
    assert json.loads(complete["sweep.json"])["complete"] is True

    # one cell lost from the cache, then a run that stops early and one that is interrupted
    import shutil

    shutil.rmtree(sweep.cell_dir(sweep.cells[2]))
    sweep.run(progress=False, on_cell=lambda res, result: res.status == "cached")
    assert _summary(tmp_path) == complete  # the complete summary is untouched
    assert "pending" in (tmp_path / "table.partial.csv").read_text()

    def interrupt(res, result):
        if res.status == "cached":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run(progress=False, on_cell=interrupt)
    assert _summary(tmp_path) == complete
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left behind


def test_summary_files_are_replaced_together_or_not_at_all(tmp_path):
    old = {tmp_path / "a.txt": b"old a", tmp_path / "b.txt": b"old b"}
    for path, data in old.items():
        path.write_bytes(data)
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    with pytest.raises(OSError):
        replace_together({tmp_path / "a.txt": b"new a", tmp_path / "b.txt": b"new b", tmp_path / "blocker/c.txt": b"c"})
    assert {p: p.read_bytes() for p in old} == old  # nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "blocker"]  # no temporary file left
    replace_together({tmp_path / "a.txt": b"new a"})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").read_bytes() == b"new a"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # readable by colleagues, as the umask says


# ----------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("writer", ["save_png", "atomic_write_json"])
def test_a_full_disk_never_reports_a_cell_as_ok(tmp_path, monkeypatch, writer):
    """The writes after the first cell fail with ENOSPC: those cells are failed (not ok) in the result
    and the table, the sweep raises naming how many cells are stored, and the next run computes them."""
    from workbench import record as rec

    real, written = getattr(rec, writer), []

    def full_disk(path, *args):
        if len(written) >= 1 and path.name != "error.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        return real(path, *args)

    monkeypatch.setattr(rec, writer, full_disk)
    sweep = plan(tmp_path, "1,2,3")
    seen = []
    with pytest.raises(SweepWriteError, match=r"could not be written \(OSError: .*No space left on device.*\); 1 of 3 cells are stored") as err:
        sweep.run(progress=False, on_cell=lambda res, result: seen.append((res.cell.index, res.status)) and None)
    assert isinstance(err.value, RunFailure) and "\n" not in str(err.value)
    result = err.value.result
    assert stored(sweep) == [1]
    for res in result.cells:  # every cell reported ok is on disk
        if res is not None and res.status in ("ok", "cached"):
            assert (sweep.cell_dir(res.cell) / "record.json").is_file()
    table = result.table
    assert table.loc[1, "status"] == "failed" and "not stored (OSError" in table.loc[1, "error"]
    assert result.stats["ran"] == 1 and result.stats["failed"] == len(result.unstored) >= 1
    assert (1, "failed") in seen and seen.index((1, "failed")) > seen.index((1, "ok"))  # the panel was told
    assert not (tmp_path / "grid.png").exists() and (tmp_path / "grid.partial.png").is_file()

    monkeypatch.setattr(rec, writer, real)
    again = sweep.run(progress=False)
    assert again.stats["cached"] == 1 and again.stats["ran"] == 2
    assert stored(sweep) == [1, 2, 3] and (tmp_path / "grid.png").is_file()


def test_a_sweep_folder_that_cannot_be_written_fails_before_any_cell(tmp_path, monkeypatch):
    from workbench.sweep.runner import CellRunner

    monkeypatch.setattr(CellRunner, "run", lambda *a: pytest.fail("a cell was computed"))
    (tmp_path / "taken").write_text("a file where the sweep folder should be")
    with pytest.raises(SweepError, match=r"sweep folder .*taken cannot be written \(\w+Error: .*\); give another folder"):
        plan(tmp_path / "taken").run(progress=False)
