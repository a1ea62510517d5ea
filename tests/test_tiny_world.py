"""The synthetic world, the caption grammar and the pixel scorer (workbench.training.world, workbench.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workbench import metrics
from workbench.metrics import CaptionError
from workbench.training import world


def _scenes(n: int, seed: int = 123, held_out=None):
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng, held_out=held_out) for _ in range(n)]


def test_world_is_deterministic_and_follows_its_rules():
    a, b = _scenes(30, seed=5), _scenes(30, seed=5)
    assert a == b
    assert np.array_equal(np.asarray(world.render(a[0])), np.asarray(world.render(b[0])))
    assert all(s.colour != s.background for s in _scenes(200))
    assert not any(s.held_out for s in _scenes(300, held_out=False))
    assert all(s.held_out for s in _scenes(20, held_out=True))
    img = world.render(a[0])
    assert img.size == (64, 64) and img.mode == "RGB"


def test_grammar_has_the_forms_outside_evaluations_use_verbatim():
    s = world.Scene("red", "circle", "small", "left", "blue")
    assert world.caption_short(s) == "a red circle on a blue background"
    assert world.caption_long(s) == "a small red circle on the left, on a blue background"
    captions = world.all_captions()
    assert "a large purple square on the center, on a white background" in captions
    assert "a purple triangle on a white background" not in captions  # held out of training
    assert "a purple triangle on a white background" in world.all_captions(include_held_out=True)


def test_parse_caption_reads_both_forms_center_and_chinese():
    assert metrics.parse_caption("a small red circle on the center, on a blue background") == {
        "size": "small", "colour": "red", "shape": "circle", "position": "centre", "background": "blue"}
    assert metrics.parse_caption("a green triangle on a black background")["position"] is None
    s = world.Scene("yellow", "square", "large", "bottom", "purple")
    assert metrics.parse_caption(world.caption_zh(s)) == {
        "background": "purple", "position": "bottom", "size": "large", "colour": "yellow", "shape": "square"}
    with pytest.raises(CaptionError, match="not in the world's grammar.*expected 'a <colour> <shape>"):
        metrics.parse_caption("a pink circle on a blue background")
    with pytest.raises(CaptionError, match="expected 'make the <shape> <colour>'"):
        metrics.parse_edit("paint the circle green")
    assert metrics.parse_edit("make the triangle orange") == ("triangle", "orange")


def test_scorer_is_right_on_the_worlds_own_renders():
    scenes = _scenes(150, seed=9)
    scores = [metrics.score(world.render(s), world.caption_long(s)) for s in scenes]
    assert metrics.accuracy(scores) == {a: 1.0 for a in metrics.ATTRIBUTES}
    zh = [metrics.score(world.render(s), world.caption_zh(s)) for s in scenes[:40]]
    assert metrics.adherence(zh) == 1.0
    short = metrics.score(world.render(scenes[0]), world.caption_short(scenes[0]))
    assert short["position"] is None and short["size"] is None and short["colour"] is True


def test_scorer_flags_each_wrong_attribute():
    s = world.Scene("red", "circle", "small", "left", "blue")
    img = world.render(s)
    wrong = {
        "background": "a small red circle on the left, on a white background",
        "colour": "a small green circle on the left, on a blue background",
        "shape": "a small red square on the left, on a blue background",
        "position": "a small red circle on the right, on a blue background",
        "size": "a large red circle on the left, on a blue background",
    }
    for attribute, caption in wrong.items():
        got = metrics.score(img, caption)
        assert got[attribute] is False, (attribute, got)
        assert sum(v is False for v in got.values()) == 1
    # a blank image: background read, everything about the shape wrong
    blank = Image.new("RGB", (64, 64), world.COLOURS["blue"])
    assert metrics.score(blank, world.caption_long(s)) == {
        "background": True, "colour": False, "shape": False, "position": False, "size": False}


def test_score_edit_and_image_measures():
    rng = np.random.default_rng(4)
    pair = world.random_edit(rng)
    src, tgt = world.render(pair.source), world.render(pair.target)
    assert metrics.score_edit(src, tgt, pair.instruction) == {"colour": True, "background": True, "shape": True, "position": True}
    assert metrics.score_edit(src, src, pair.instruction)["colour"] is False
    assert metrics.psnr(src, src) == float("inf") and metrics.ssim(src, src) == pytest.approx(1.0)
    assert 5.0 < metrics.psnr(src, tgt) < 40.0 and metrics.ssim(src, tgt) < 0.99
    with pytest.raises(Exception, match="images differ in size"):
        metrics.psnr(src, src.resize((32, 32)))
