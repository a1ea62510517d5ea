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
    from workbench.accel import work

    ref, full = _run(counted, "accel=none")
    assert full == 10 * 3  # 10 steps x 3 blocks, every attention computed
    assert work(counted[0].components.transformer) is None
    lat, calls = _run(counted, *overrides)
    assert calls <= most_calls * full, f"{overrides}: {calls} of {full} attention calls ran"
    assert 0 < _rel(lat, ref) < max_rel
    # the run's own count (what records and sweep tables report) agrees with the attention calls counted here
    done = work(counted[0].components.transformer)
    assert done == {"unit": "blocks" if "first_block" in overrides[0] else "attention modules",
                    "calls": full, "computed": calls}


def test_none_after_a_method_is_bit_identical_and_runs_every_block(counted):
    from workbench.accel_work import _Counted

    ref, full = _run(counted, "accel=none")
    _run(counted, "accel=taylorseer")
    again, calls = _run(counted, "accel=none")
    assert calls == full and torch.equal(again, ref)
    assert not any(isinstance(vars(m).get("forward"), _Counted) for m in counted[0].components.transformer.modules())


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


def _taylor_states(transformer) -> list:
    return [m._diffusers_hook.hooks[name].state_manager for m in transformer.modules() if hasattr(m, "_diffusers_hook")
            for name in m._diffusers_hook.hooks if "taylorseer" in name]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_taylorseer_keeps_its_factors_in_the_outputs_dtype_and_releases_them_after_the_run(precision, monkeypatch):
    """Factors in fp32 doubled a bf16 run's state (about 10 GB at 1328x1328 at block granularity, run44) and bought
    nothing: the differences are taken in the outputs' dtype. And a run's state is released when it ends, not held
    until the next run starts (a sweep's next cell needs that memory)."""
    from workbench import accel
    from workbench.config import compose, to_run_config
    from workbench.pipeline import Workbench

    cfg = to_run_config(compose([*STEPS, f"precision={precision}", "accel=taylorseer", "accel.granularity=block"]))
    bench = Workbench.from_config(cfg)
    transformer = bench.components.transformer
    seen = set()

    def look(info):
        seen.update(f.dtype for m in _taylor_states(transformer) for state in m._state_cache.values()
                    for factors in state.taylor_factors.values() for f in factors.values())

    ours = bench.generate(cfg, progress=False, callback=look)[0].latents
    assert seen == {torch.float32 if precision == "fp32" else torch.bfloat16}
    states = _taylor_states(transformer)
    assert len(states) == 3 and all(not m._state_cache for m in states)  # released with the run
    original = accel.hook_config

    def fp32_factors(*args):
        config = original(*args)
        if config is not None:
            config.taylor_factors_dtype = torch.float32
        return config

    bench.set_accel(_cfg("accel=none").accel)
    monkeypatch.setattr(accel, "hook_config", fp32_factors)
    wide = bench.generate(cfg, progress=False)[0].latents
    assert torch.equal(ours, wide)  # the same numbers in half the memory
    bench.set_accel(_cfg("accel=none").accel)


@pytest.mark.parametrize("overrides, message", [
    (["accel=taylorseer", "perf=fast"], "accel=taylorseer (accel.method=taylorseer, accel.granularity=attention) with "
     "perf.compile=regional (perf=fast): its hooks sit inside the blocks, which a compiled (fullgraph) block cannot "
     "trace. Set accel.granularity=block"),
    (["accel=pyramid_attention", "perf=fast"], "accel=first_block or accel=taylorseer accel.granularity=block (they "
     "compose with perf.compile=regional)"),
    (["accel=first_block", "perf=fast", "perf.compile=full"], "with perf.compile=full (perf=fast): the whole-model "
     "compile would trace the hooks' per-step decisions. Use perf.compile=regional"),
    (["accel=first_block", "perf=fast", "perf.inductor_mode=reduce_overhead"], "accel=first_block with "
     "perf.inductor_mode=reduce_overhead: that mode replays CUDA graphs recorded for one order of block calls"),
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
    ("accel.granularity=blocks", "granularity"),
])
def test_wrong_keys_and_types_fail_at_compose(override, message):
    with pytest.raises(ComposeError, match=message):
        _cfg(override)


def test_a_compiled_transformer_refuses_hooks_inside_its_blocks():
    from workbench.accel import AccelError, apply_accel
    from workbench.config import ModelConfig
    from workbench.models.tiny import build_transformer

    transformer = build_transformer(ModelConfig())
    transformer.transformer_blocks[0]._compiled_call_impl = transformer.transformer_blocks[0]._call_impl
    apply_accel(transformer, _cfg().accel)  # none: fine
    for method in ("accel=taylorseer", "accel=pyramid_attention"):
        with pytest.raises(AccelError, match="on a compiled transformer .* Use perf.compile=none, accel=none, or with "
                                             "perf.compile=regional accel=first_block or accel=taylorseer "
                                             "accel.granularity=block"):
            apply_accel(transformer, _cfg(method).accel)
    whole = torch.compile(build_transformer(ModelConfig()))  # perf.compile=full: no method at all
    with pytest.raises(AccelError, match="on a compiled transformer"):
        apply_accel(whole, _cfg("accel=first_block").accel)


BLOCK_LEVEL = [["accel=first_block", "accel.threshold=0.5"], ["accel=taylorseer", "accel.granularity=block"]]


def _block_inputs(step: int, text_len: int) -> dict:
    """A slowly drifting latent (as along a trajectory), so that first_block's residual test can skip."""
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 64, 64, generator=g) * (1 + 0.01 * step),
                encoder_hidden_states=torch.randn(1, text_len, 64, generator=g), encoder_hidden_states_mask=None,
                timestep=torch.tensor([1.0 - 0.01 * step]), img_shapes=[[(1, 8, 8)]], return_dict=False)


def _trajectory(model, accel_cfg, text_len: int = 9, steps: int = 10) -> torch.Tensor:
    """``steps`` transformer calls under ``accel_cfg`` as the denoise loop makes them (reset, one cache slot)."""
    from workbench import accel

    accel.apply_accel(model, accel_cfg)
    accel.reset(model)
    out = []
    with torch.no_grad():
        for i in range(steps):
            with accel.step(model, "cond", 1000.0 - 50 * i):
                out.append(model(**_block_inputs(i, text_len))[0])
    return torch.stack(out)


@pytest.mark.parametrize("overrides", BLOCK_LEVEL)
def test_block_level_hooks_run_the_compiled_blocks_beneath_them(overrides):
    """With perf.compile=regional, first_block and block-granularity TaylorSeer keep their per-step decisions eager
    and run each block that runs through compiled code: the eager run's numbers, one graph for every block, step
    and text length; accel=none afterwards gives the regional compile back as it was (no new graph)."""
    from torch._dynamo.testing import CompileCounter

    from workbench.compiling import compile_transformer
    from workbench.config import CompileMode, ModelConfig, PerfConfig
    from workbench.models.tiny import build_transformer

    def build(compiled: bool, counter=None):
        torch.manual_seed(0)
        model = build_transformer(ModelConfig()).eval()
        return compile_transformer(model, PerfConfig(compile=CompileMode.regional), backend=counter) if compiled else model

    on, off = _cfg(*overrides).accel, _cfg().accel
    eager = build(False)
    want, plain = _trajectory(eager, on), _trajectory(eager, off)
    assert not torch.equal(want, plain)  # the method skipped work: the eager trajectory changed
    counter = CompileCounter()
    model = build(True, counter)
    block = model.transformer_blocks[0]
    regional = block._compiled_call_impl
    before = _trajectory(model, off)
    graphs = counter.frame_count
    assert torch.equal(_trajectory(model, on), want)
    assert "forward" in vars(block) and block._compiled_call_impl is None  # beneath the hooks
    _trajectory(model, on, text_len=23)  # another template length
    # at most one graph more for every block, step and length: none on torch 2.13, whose regional compile already
    # keys its graph on the block class's forward, which the compiled call beneath the hooks reuses
    new_graphs = counter.frame_count - graphs
    assert new_graphs <= 1
    assert torch.equal(_trajectory(model, off), before) and counter.frame_count - graphs == new_graphs
    assert block._compiled_call_impl is regional and "forward" not in vars(block)


def test_block_level_hooks_run_saved_compiled_blocks_as_they_are(tmp_path, monkeypatch):
    """perf.precompile: the saved block's call goes beneath the hooks unchanged (Inductor on the CPU)."""
    from workbench.compiling import CompileCounts, compile_transformer
    from workbench.config import CompileMode, ModelConfig, PerfConfig
    from workbench.models.tiny import build_transformer
    from workbench.precompiled import PrecompiledCall

    def build():
        torch.manual_seed(0)
        return build_transformer(ModelConfig()).eval()

    on = _cfg(*BLOCK_LEVEL[0]).accel
    want = _trajectory(build(), on)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = compile_transformer(build(), PerfConfig(compile=CompileMode.regional, precompile=True))
    block = model.transformer_blocks[0]
    saved = block._compiled_call_impl
    before = CompileCounts.now()
    got = _trajectory(model, on)
    assert isinstance(saved, PrecompiledCall) and block._diffusers_hook._fn_refs[0].original_forward.fn is saved
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, _trajectory(build(), _cfg().accel))
    assert (CompileCounts.now() - before).graphs <= 1
    _trajectory(model, _cfg().accel)
    assert block._compiled_call_impl is saved


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
    work = result.cells[1].record["accel_work"]  # in the cell's record.json, and as the table's work_speedup
    assert work["unit"] == "attention modules" and work["calls"] == 30 and 0 < work["computed"] < 30
    assert list(table["work_speedup"]) == [1.0, pytest.approx(30 / work["computed"])]
    assert "accel_work" not in result.cells[0].record
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
    from workbench.accel import work

    done = work(bench.components.transformer)  # the casting hooks on every layer are not counted as its work
    assert done["unit"] == "attention modules" and done["calls"] == 30 and 0 < done["computed"] < 30
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


def test_a_compiled_sweep_over_the_block_level_methods(tmp_path):
    """The research loop: accel as a sweep axis under perf.compile=regional (Inductor on the CPU). One resident
    compiled model serves every cell, no cell compiles a graph after the first, and each method's latents match
    the same method uncompiled (Inductor's rounding apart)."""
    axis = ["accel=none,first_block,taylorseer"]
    base = [*STEPS, "height=64", "width=64", "accel.granularity=block", "accel.threshold=0.3"]
    compiled = Sweep.plan(axis, [*base, "perf.compile=regional"], tmp_path / "compiled").run(progress=False)
    eager = Sweep.plan(axis, base, tmp_path / "eager").run(progress=False)
    assert [c.status for c in compiled.cells] == ["ok"] * 3
    assert all(c.record["compile"]["graphs"] == 0 for c in compiled.cells[1:])
    for got, want in zip(compiled.cells, eager.cells):
        assert np.allclose(got.latents, want.latents, atol=2e-3), got.cell.overrides
    assert not np.allclose(compiled.cells[2].latents, compiled.cells[0].latents, atol=1e-2)  # TaylorSeer skipped work
    assert list(compiled.table["work_speedup"]) == list(eager.table["work_speedup"])  # the same blocks ran
    assert compiled.table.loc[2, "work_speedup"] > 1.5 and compiled.cells[2].record["accel_work"]["unit"] == "blocks"
