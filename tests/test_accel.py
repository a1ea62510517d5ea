"""The ``accel`` group: diffusers cache hooks on the trained tiny model skip real work (attention
output projections not called), change the result by a bounded amount, never leak state between
runs or batches, and refuse the combinations that cannot run (perf.compile, unbatched CFG for
pyramid_attention) with messages naming both keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.config import ComposeError, ConfigError
from workbench.sweep import Sweep

STEPS = ["sampler.steps=10"]
CAPTION = "a large red circle on the left, on a blue background"


@pytest.fixture(scope="module")
def counted(bench):
    """The shared tiny workbench with a counter of attention output projections (one per block call
    that really computes attention: a skipped block or a reused attention output does not call it)."""
    calls = [0]
    handles = [b.attn.to_out[0].register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
               for b in bench.components.transformer.transformer_blocks]
    yield bench, calls
    for h in handles:
        h.remove()
    bench.set_accel(_cfg().accel)


def _cfg(*overrides):
    from workbench.config import compose, to_run_config

    return to_run_config(compose([*STEPS, *overrides]))


def _run(counted, *overrides):
    bench, calls = counted
    calls[0] = 0
    out = bench.generate(_cfg(*overrides), progress=False)
    return torch.cat([g.latents for g in out]), calls[0]


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("overrides, most_calls, max_rel", [
    (["accel=first_block", "accel.threshold=0.2"], 0.8, 0.05),
    (["accel=taylorseer"], 0.6, 0.25),
    (["accel=taylorseer", "accel.cache_interval=2", "accel.max_order=2"], 0.8, 0.25),
    (["accel=pyramid_attention"], 0.8, 0.05),
])
def test_each_method_skips_work_and_changes_the_result_a_bounded_amount(counted, overrides, most_calls, max_rel):
    ref, full = _run(counted, "accel=none")
    assert full == 10 * 3  # 10 steps x 3 blocks, every attention computed
    lat, calls = _run(counted, *overrides)
    assert calls <= most_calls * full, f"{overrides}: {calls} of {full} attention calls ran"
    assert 0 < _rel(lat, ref) < max_rel


def test_none_after_a_method_is_bit_identical_and_runs_every_block(counted):
    ref, full = _run(counted, "accel=none")
    _run(counted, "accel=taylorseer")
    again, calls = _run(counted, "accel=none")
    assert calls == full and torch.equal(again, ref)


@pytest.mark.parametrize("method", ["first_block", "taylorseer", "pyramid_attention"])
def test_no_state_leaks_between_runs_or_batches(counted, method):
    """The same run twice gives the same bits; the second image of a two-batch run equals that seed run alone
    (the cache is reset at each denoise call, not carried from the first batch)."""
    knobs = ["accel.threshold=0.2"] if method == "first_block" else []
    first, _ = _run(counted, f"accel={method}", *knobs, "seeds=[0,1]", "batch_size=1")
    second, _ = _run(counted, f"accel={method}", *knobs, "seeds=[0,1]", "batch_size=1")
    alone, _ = _run(counted, f"accel={method}", *knobs, "seeds=[1]")
    assert torch.equal(first, second)
    assert torch.equal(first[1:], alone)


@pytest.mark.parametrize("overrides, message", [
    (["accel=first_block", "perf=fast"], "accel=first_block (accel.method=first_block) with perf.compile=regional"),
    (["accel=pyramid_attention", "sampler.cfg=4", "sampler.cfg_batching=separate"],
     "sampler.cfg_batching=padded"),
    (["accel=taylorseer", "accel.cache_interval=0"], "accel.cache_interval=0 must be an integer >= 1"),
    (["accel=first_block", "accel.threshold=-1"], "accel.threshold=-1.0 must be a number in (0, 10)"),
    (["accel=pyramid_attention", "accel.timestep_range=[800,100]"], "accel.timestep_range=[800.0, 100.0] must be"),
])
def test_refused_before_any_model_loads(overrides, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        _cfg(*overrides)


@pytest.mark.parametrize("override, message", [
    ("accel.thresold=0.1", "accel.thresold"),
    ("accel.cache_interval=often", "cache_interval"),
    ("accel=magic", "magic"),
])
def test_wrong_keys_and_types_fail_at_compose(override, message):
    with pytest.raises(ComposeError, match=message):
        _cfg(override)


def test_a_compiled_transformer_refuses_hooks():
    from workbench.accel import AccelError, apply_accel
    from workbench.config import ModelConfig
    from workbench.models.tiny import build_transformer

    transformer = build_transformer(ModelConfig())
    transformer.transformer_blocks[0]._compiled_call_impl = transformer.transformer_blocks[0]._call_impl
    apply_accel(transformer, _cfg().accel)  # none: fine
    with pytest.raises(AccelError, match="on a compiled transformer .* Use perf.compile=none, or accel=none"):
        apply_accel(transformer, _cfg("accel=taylorseer").accel)


def test_accel_sweeps_as_an_axis_with_speedup_and_latent_distance(tmp_path):
    base = [*STEPS, f"prompts=['{CAPTION}']"]
    result = Sweep.plan(["accel=none,taylorseer"], base, tmp_path, metrics=["psnr", "ssim"]).run(progress=False)
    table = result.table
    assert list(table["accel"]) == ["none", "taylorseer"]
    assert table.loc[0, "latent_rel_l2_vs_0"] == 0.0 and table.loc[0, "speedup_vs_0"] == 1.0
    rel = table.loc[1, "latent_rel_l2_vs_0"]
    a, b = result.cells[1].latents, result.cells[0].latents
    assert rel == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b)) and 0 < rel < 0.25
    assert table.loc[1, "speedup_vs_0"] == pytest.approx(
        result.cells[0].timings["denoise"] / result.cells[1].timings["denoise"])
    assert 10 < table.loc[1, "psnr_vs_0"] < float("inf")
    again = Sweep.plan(["accel=none,taylorseer"], base, tmp_path, metrics=["psnr", "ssim"]).run(progress=False)
    assert again.stats["cached"] == 2 and again.table.loc[1, "latent_rel_l2_vs_0"] == pytest.approx(rel)


def test_composes_with_fp8_storage():
    """precision=fp8_e4m3fn (diffusers layerwise casting hooks on every layer) under the block-level cache
    hooks: runs, skips, and stays close to the same precision without accel."""
    from workbench.pipeline import Workbench

    plain = _cfg("precision=fp8_e4m3fn")
    bench = Workbench.from_config(plain)
    ref = bench.generate(plain, progress=False)[0].latents
    lat = bench.generate(_cfg("precision=fp8_e4m3fn", "accel=taylorseer"), progress=False)[0].latents
    assert 0 < _rel(lat, ref) < 0.25
    bench.set_accel(plain.accel)


def test_a_record_from_before_the_group_reproduces_with_accel_none(tmp_path):
    """Records written before ``accel`` existed ran without cache hooks: reproduce fills accel=none and says so."""
    import json
    from pathlib import Path

    from workbench.reproduce import recorded_config

    record = json.loads((Path(__file__).parent / "fixtures/golden/t2i_batched/record.json").read_text())
    del record["config"]["accel"]
    _, cfg, defaults = recorded_config(record, tmp_path / "record.json")
    assert cfg.accel.method.value == "none"
    assert {"key": "accel.method", "default": "none"} in defaults
