"""The conditioning cache: hits without a text-encoder call, misses on any input that matters, no stale entries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.conditioning_cache import DEFAULT_CACHE, ConditioningCache
from workbench.pipeline import Workbench


@pytest.fixture
def calls(bench):
    """Counts forward calls of the resident tiny text encoder."""
    n = [0]
    # the inner VL model is what encoding runs (no LM head: workbench/encoder_memory.py)
    handle = bench.components.text_encoder.model.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    yield n
    handle.remove()


@pytest.fixture
def fresh(bench):
    return Workbench(bench.components, conditioning_cache=ConditioningCache(max_entries=8))


def _img(seed, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def test_identical_inputs_hit_without_a_text_encoder_call(fresh, make_cfg, calls):
    template = make_cfg().template
    a = fresh.encode(["a cat"], template)
    b = fresh.encode(["a cat"], dataclasses.replace(template))  # an equal template object also hits
    assert calls[0] == 1
    assert b is a
    assert fresh.conditioning_cache.stats() == {"hits": 1, "misses": 1, "entries": 1, "max_entries": 8}


def test_changed_prompt_template_image_or_settings_miss(fresh, make_cfg, calls):
    t2i = make_cfg().template
    edit = make_cfg("template=qwen_edit_plus", "images=[asset:sample_reference.png]", "height=64", "width=64").template
    base = fresh.encode(["x"], edit, [_img(1)])
    variants = [
        fresh.encode(["y"], edit, [_img(1)]),  # prompt
        fresh.encode(["x"], edit, [_img(2)]),  # image content, same size
        fresh.encode(["x"], dataclasses.replace(edit, text=edit.text.replace("Describe", "Depict")), [_img(1)]),  # template
        fresh.encode(["x"], dataclasses.replace(edit, control_tokens="escape"), [_img(1)]),  # template switch
        fresh.encode(["x"], edit, [_img(1)], resample="bilinear"),  # preprocessing
        fresh.encode(["x"], edit, [_img(1)], max_sequence_length=8),  # truncation
        fresh.encode(["x"], t2i),  # no image, other template
    ]
    assert calls[0] == 1 + len(variants) and fresh.conditioning_cache.hits == 0
    assert (variants[1].embeds - base.embeds).abs().max() > 1e-4  # the image matters, so must the key
    assert variants[5].embeds.shape[1] == 8
    assert fresh.encode(["x"], edit, [_img(1)]) is base and calls[0] == 1 + len(variants)


def test_other_model_never_gets_a_stale_entry(bench, make_cfg, calls):
    shared = ConditioningCache()
    cfg = make_cfg()
    mine = Workbench(bench.components, conditioning_cache=shared)
    other = Workbench.from_config(make_cfg("model=tiny_random", "model.seed=7"), conditioning_cache=shared)
    assert mine.components.identity["text_encoder"] != other.components.identity["text_encoder"]
    a = mine.encode(["a cat"], cfg.template)
    b = other.encode(["a cat"], cfg.template)
    assert shared.misses == 2 and shared.hits == 0 and len(shared) == 2
    assert (a.embeds - b.embeds).abs().max() > 1e-3
    # same identity string but other weights (e.g. a file rewritten within the same second): still a miss
    clone = dataclasses.replace(other.components, identity=dict(bench.components.identity))
    c = Workbench(clone, conditioning_cache=shared).encode(["a cat"], cfg.template)
    assert shared.misses == 3 and torch.equal(c.embeds, b.embeds)


def test_lru_bound_and_clear(fresh, make_cfg, calls):
    small = Workbench(fresh.components, conditioning_cache=ConditioningCache(max_entries=2))
    template = make_cfg().template
    for p in ("a", "b", "c"):
        small.encode([p], template)
    assert len(small.conditioning_cache) == 2
    small.encode(["c"], template)  # newest: hit
    small.encode(["a"], template)  # evicted: miss
    assert (small.conditioning_cache.hits, small.conditioning_cache.misses) == (1, 4) and calls[0] == 4
    assert small.clear_conditioning_cache() == 2 and len(small.conditioning_cache) == 0
    small.encode(["c"], template)
    assert calls[0] == 5


def test_components_without_identity_are_not_cached(fresh, make_cfg, calls):
    anon = Workbench(dataclasses.replace(fresh.components, identity={}), conditioning_cache=ConditioningCache())
    template = make_cfg().template
    anon.encode(["a cat"], template)
    anon.encode(["a cat"], template)
    assert calls[0] == 2 and len(anon.conditioning_cache) == 0


def test_generate_sweeping_steps_encodes_once(fresh, make_cfg, calls):
    runs = [fresh.generate(make_cfg(f"sampler.steps={s}", "sampler.cfg=2.0", "height=32", "width=32"), progress=False) for s in (1 + 1, 3)]
    assert calls[0] == 2  # prompt + negative prompt, once for both runs
    assert fresh.conditioning_cache.stats()["hits"] == 2
    assert (runs[0][0].latents - runs[1][0].latents).abs().max() > 0  # the runs did differ after the encoder


def test_workbenches_share_the_process_cache_by_default(bench, make_cfg):
    assert bench.conditioning_cache is DEFAULT_CACHE
    assert Workbench.from_config(make_cfg()).conditioning_cache is DEFAULT_CACHE


def test_sweep_over_transformer_precision_encodes_once(tmp_path):
    from workbench.sweep import Sweep

    sweep = Sweep.plan(
        ["precision.transformer=float32,bfloat16", "sampler.steps=1,2"],
        base=["height=32", "width=32", "sampler=lightning"],
        out_dir=tmp_path,
    )
    result = sweep.run(progress=False)
    # two model groups (the transformer differs), one text encoder (same identity, weights, dtype): one encode
    assert result.stats["ran"] == 4 and result.stats["model_switches"] == 1
    assert result.stats["encodes"] == 1 and result.stats["conditioning_hits"] == 3
    assert list(result.table["cond_cached"]) == [False, True, True, True]
