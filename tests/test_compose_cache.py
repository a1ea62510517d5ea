"""Hydra compositions are kept per process (workbench.config.build.compose): a sweep re-planned, or re-run from a
notebook, does not re-read the YAML tree; an edited file composes afresh, and a caller's edits never leak."""

from __future__ import annotations

import os
import shutil

import pytest

from workbench.config import build


@pytest.fixture
def conf_copy(tmp_path, monkeypatch):
    root = tmp_path / "conf"
    shutil.copytree(build.config_dir(), root)
    monkeypatch.setattr(build, "config_dir", lambda: root)
    monkeypatch.setattr(build, "_COMPOSED", {})
    return root


def test_a_second_compose_is_served_from_the_cache(conf_copy, monkeypatch):
    first = build.compose(["template=raw", "seeds=[3]"])
    calls = []
    import hydra

    monkeypatch.setattr(hydra, "compose", lambda **kw: calls.append(kw))  # Hydra must not be asked again
    second = build.compose(["template=raw", "seeds=[3]"])
    assert calls == [] and second == first and second is not first


def test_an_edited_config_file_composes_afresh(conf_copy):
    assert build.compose(["template=raw"]).template.text == "{prompt}"
    raw = conf_copy / "template" / "raw.yaml"
    raw.write_text(raw.read_text().replace('text: "{prompt}"', 'text: "<<{prompt}>>"'))
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems: a visible change
    assert build.compose(["template=raw"]).template.text == "<<{prompt}>>"


def test_a_new_config_file_composes_afresh(conf_copy):
    with pytest.raises(build.ComposeError):
        build.compose(["template=mine"])
    (conf_copy / "template" / "mine.yaml").write_text("name: mine\ntext: 'say {prompt}'\nfamily: any\n")
    assert build.compose(["template=mine"]).template.text == "say {prompt}"


def test_editing_a_returned_tree_does_not_touch_the_cache(conf_copy):
    cfg = build.compose(["template=raw"])
    cfg.height = 4096
    cfg.template.text = "changed {prompt}"
    again = build.compose(["template=raw"])
    assert again.template.text == "{prompt}" and again.height != 4096


def test_failures_are_not_kept(conf_copy):
    with pytest.raises(build.ComposeError, match="stepz"):
        build.compose(["sampler.stepz=3"])
    assert not build._COMPOSED


def test_files_hydra_does_not_read_leave_the_cache_in_place(conf_copy, monkeypatch):
    build.compose(["template=raw"])
    (conf_copy / "__pycache__").mkdir(exist_ok=True)
    (conf_copy / "__pycache__" / "__init__.cpython-312.pyc").write_bytes(b"\0")  # the package's first import
    import hydra

    monkeypatch.setattr(hydra, "compose", lambda **kw: pytest.fail("composed again"))
    build.compose(["template=raw"])


def test_a_symlinked_group_counts_and_a_link_cycle_ends(conf_copy):
    """Group folders may be links (followed: an edit inside one composes afresh); a link back up the tree
    (careless or hostile) must not walk forever."""
    outside = conf_copy.parent / "my_templates"
    outside.mkdir()
    (outside / "mine.yaml").write_text("name: mine\ntext: 'say {prompt}'\nfamily: any\n")
    (conf_copy / "extra").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(conf_copy, target_is_directory=True)
    state = build._conf_tree_state()
    assert ("extra/mine.yaml" in {name for name, *_ in state})
    assert not any("loop" in name for name, *_ in state)
    assert build.compose(["template=raw"]).template.text == "{prompt}"
