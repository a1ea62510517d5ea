"""The compiled transformer: one graph for every text length (a template ablation never recompiles), the
image dimension kept static, the compile cache where the user can see and clear it (tiny model)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from workbench.compiling import CompileCounts, cache_dir, clear_cache, compile_transformer, default_cache_dir
from workbench.config import CompileMode, ModelConfig, PerfConfig
from workbench.errors import InputError
from workbench.models.tiny import build_transformer
from workbench.perf import prepare_attention

TEXT_LENGTHS = (7, 12, 31, 64, 90)  # five prompts / templates of different token counts


def _forward(model, text_len: int, side: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(hidden_states=torch.randn(1, side * side, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, text_len, 64, generator=g),
                  encoder_hidden_states_mask=torch.ones(1, text_len, dtype=torch.bool),
                  timestep=torch.tensor([0.5]), img_shapes=[[(1, side, side)]], return_dict=False)
    with torch.no_grad():
        return model(**kwargs)[0]


@pytest.fixture(scope="module")
def eager():
    torch.manual_seed(0)
    return build_transformer(ModelConfig()).eval()


def _compiled(eager, fast_attention: bool):
    model = copy.deepcopy(eager)
    perf = PerfConfig(fast_attention=fast_attention, compile=CompileMode.regional)
    prepare_attention(model, perf)
    counter = CompileCounter()
    torch._dynamo.reset()
    return compile_transformer(model, perf, backend=counter), counter


@pytest.mark.parametrize("fast_attention", [True, False], ids=["fast-attention", "stock-attention"])
def test_one_graph_for_five_text_lengths(eager, fast_attention):
    model, counter = _compiled(eager, fast_attention)
    for n in TEXT_LENGTHS:
        got = _forward(model, n)
        assert torch.allclose(got, _forward(eager, n), atol=1e-4), n  # and still the same numbers
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for text lengths {TEXT_LENGTHS}"


def test_a_new_resolution_is_a_new_static_graph(eager):
    """The image dimension stays static (best kernels); a second resolution compiles once more."""
    model, counter = _compiled(eager, True)
    _forward(model, 9, side=8)
    _forward(model, 9, side=6)
    _forward(model, 20, side=6)
    assert counter.frame_count == 2


def test_without_the_dynamic_text_mark_every_length_recompiles(eager):
    """What the mark saves: the same blocks compiled static (as before) make one graph per length."""
    model = copy.deepcopy(eager)
    prepare_attention(model, PerfConfig(fast_attention=True))
    counter = CompileCounter()
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True, dynamic=False, backend=counter)
    for n in TEXT_LENGTHS:
        _forward(model, n)
    assert counter.frame_count == len(TEXT_LENGTHS)


def test_compile_counts_see_the_graphs(eager):
    model, _ = _compiled(eager, True)
    before = CompileCounts.now()
    _forward(model, 11)
    _forward(model, 23)
    delta = CompileCounts.now() - before
    assert delta.graphs == 1
    record = delta.as_record()
    assert record["graphs"] == 1 and record["cache_dir"] == str(cache_dir())


def test_cache_dir_defaults_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "wb"))
    assert cache_dir() == tmp_path / "wb" / "torch-compile" == default_cache_dir()
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", torch_default())  # what Inductor writes there itself
    assert cache_dir() == default_cache_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"  # the user's own setting wins


def test_clear_cache_refuses_a_folder_that_is_not_a_compile_cache(monkeypatch, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(precious))
    with pytest.raises(InputError, match=r"does not look like a torch compile cache .* not deleting it"):
        clear_cache()
    assert (precious / "chapter1.tex").read_text() == "years of work"

    cache = tmp_path / "cache"
    (cache / "fxgraph" / "ab").mkdir(parents=True)
    (cache / "fxgraph" / "ab" / "entry").write_bytes(b"x" * 100)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    assert clear_cache() == 100 and not cache.exists()
    assert clear_cache() == 0  # already gone


def test_cli_cache_shows_and_clears(monkeypatch, tmp_path, capsys):
    from workbench.cli import main

    cache = tmp_path / "compiled"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    assert main(["cache"]) == 0
    assert capsys.readouterr().out.strip() == f"compile cache: {cache}  empty (nothing compiled yet)"
    (cache / "aotautograd").mkdir(parents=True)
    (cache / "aotautograd" / "x").write_bytes(b"y" * 2048)
    assert main(["cache"]) == 0
    assert capsys.readouterr().out.strip() == f"compile cache: {cache}  2.0 KB"
    (cache / "precompiled" / "key").mkdir(parents=True)
    (cache / "precompiled" / "key" / "0123456789abcdef.bin").write_bytes(b"z" * 1024)
    assert main(["cache"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"compile cache: {cache}  3.0 KB  (1 saved compiled block(s), perf.precompile)",
                                                    "  key  (no readable facts.json)  1 variant(s); 1.0 KB"]
    assert main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out.strip() == f"cleared {cache} (3.0 KB)" and not cache.exists()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # not a cache: refused, one line, exit 2
    (tmp_path / "notes.txt").write_text("keep")
    assert main(["cache", "--clear"]) == 2
    assert "does not look like a torch compile cache" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize("tuning", [False, True])
def test_coordinate_descent_is_a_per_compile_inductor_option(eager, monkeypatch, tuning):
    """Inductor's coordinate-descent tuning goes to each compile as an option, never into the process-wide
    config (torchao's default set it there: every later compile of the process paid for it)."""
    import torch._inductor.config as inductor_config

    seen = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    before = inductor_config.coordinate_descent_tuning
    perf = PerfConfig(fast_attention=True, compile=CompileMode.regional, coordinate_descent=tuning)
    compile_transformer(copy.deepcopy(eager), perf)
    assert seen and all(kw["options"] == {"coordinate_descent_tuning": tuning} for kw in seen)
    assert "mode" not in seen[0]
    assert inductor_config.coordinate_descent_tuning == before


def test_coordinate_descent_with_an_autotune_mode_is_refused():
    from workbench.config import compose, to_run_config
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"perf.coordinate_descent=true with perf.inductor_mode=max_autotune: that mode "
                                          r"already tunes the kernels"):
        to_run_config(compose(["perf=fast", "perf.coordinate_descent=true", "perf.inductor_mode=max_autotune"]))
