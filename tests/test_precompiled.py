"""perf.precompile: the compiled block saved with Dynamo's trace (torch's AOT compile) and loaded by a new process
without tracing; the same numbers as the regional compile; what Dynamo could not save (the attention processor's
settings, the traced source) keyed and checked here (tiny model, Inductor on the CPU)."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.compiling import CompileCounts, clear_cache, compile_transformer
from workbench.config import AttentionKernel, CompileMode, ModelConfig, PerfConfig
from workbench.models.tiny import build_transformer
from workbench.perf import prepare_attention
from workbench import precompiled
from workbench.trusted_files import why_untrusted

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (7, 12, 31, 64, 90)
PRECOMPILE = PerfConfig(fast_attention=True, compile=CompileMode.regional, precompile=True)


def _inputs(text_len: int, side: int = 8) -> dict:
    g = torch.Generator().manual_seed(text_len)
    return dict(hidden_states=torch.randn(1, side * side, 64, generator=g),
                encoder_hidden_states=torch.randn(1, text_len, 64, generator=g),
                encoder_hidden_states_mask=None,  # no padding (the pipeline's single prompt)
                timestep=torch.tensor([0.5]), img_shapes=[[(1, side, side)]], return_dict=False)


def _forward(model, text_len: int, side: int = 8):
    with torch.no_grad():
        return model(**_inputs(text_len, side))[0]


def _build(perf: PerfConfig):
    torch.manual_seed(0)
    model = build_transformer(ModelConfig()).eval()
    prepare_attention(model, perf)
    return compile_transformer(model, perf)


def _child_env(**extra: str) -> dict:
    """A new process's environment: this repository first, then what this process was given (the GPU machine's
    carried packages sit on PYTHONPATH)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _files(cache: Path) -> list[Path]:
    return sorted((cache / "precompiled").glob("*/*.bin"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("compile-cache")
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    torch._dynamo.reset()
    yield path
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def saved(cache):
    """One process's run: five text lengths compiled once, saved; outputs and counts kept for the tests."""
    model = _build(PRECOMPILE)
    before = CompileCounts.now()
    outputs = {n: _forward(model, n) for n in LENGTHS}
    return model, outputs, CompileCounts.now() - before


def test_one_saved_graph_for_five_text_lengths_with_the_regional_compiles_numbers(saved, cache):
    model, outputs, counts = saved
    assert (counts.graphs, counts.precompiled_saves, counts.precompiled_loads) == (1, 1, 0)
    assert len(_files(cache)) == 1
    eager, regional = _build(PerfConfig(fast_attention=True)), _build(PerfConfig(fast_attention=True, compile=CompileMode.regional))
    for n in LENGTHS:
        assert torch.allclose(outputs[n], _forward(eager, n), atol=1e-4), n
        assert torch.equal(outputs[n], _forward(regional, n)), n  # the same Inductor code, bit for bit


def test_a_new_process_loads_the_saved_block_without_tracing(saved, cache, tmp_path):
    """The point of the switch: the second process's Dynamo captures nothing, and computes the same numbers."""
    _, outputs, _ = saved
    out = tmp_path / "outputs.pt"
    script = (
        "import json, sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "import test_precompiled as t\n"
        "from torch._dynamo.utils import counters\n"
        "from workbench.compiling import CompileCounts\n"
        "model = t._build(t.PRECOMPILE)\n"
        f"torch.save({{n: t._forward(model, n) for n in t.LENGTHS}}, {str(out)!r})\n"
        "c = CompileCounts.now()\n"
        "print(json.dumps({'captured': int(counters['stats']['calls_captured']), 'graphs': c.graphs,"
        " 'loads': c.precompiled_loads, 'saves': c.precompiled_saves}))\n"
    )
    env = _child_env(TORCHINDUCTOR_CACHE_DIR=str(cache))
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"captured": 0, "graphs": 0, "loads": 1, "saves": 0}
    loaded = torch.load(out)
    for n in LENGTHS:
        assert torch.equal(loaded[n], outputs[n]), n


def test_a_new_resolution_compiles_and_saves_a_second_variant(saved, cache):
    model, outputs, _ = saved
    before = CompileCounts.now()
    _forward(model, 9, side=6)
    _forward(model, 20, side=6)
    assert torch.equal(_forward(model, 12), outputs[12])  # the first variant still serves its shape
    counts = CompileCounts.now() - before
    assert (counts.graphs, counts.precompiled_saves) == (1, 1)
    assert len(_files(cache)) == 2 and len({f.parent for f in _files(cache)}) == 1


def test_the_attention_kernel_is_keyed_though_dynamo_drops_its_guard(saved, cache):
    """perf.attention_kernel is set per run on the resident model; Dynamo's guard on it cannot be saved. Without
    the processor in the key the sdpa block would run for fp8_emulated: here it compiles its own, files it apart,
    and switching back reuses the first."""
    model, outputs, _ = saved
    procs = [m.processor for m in model.modules() if hasattr(m, "processor")]
    eager = _build(PerfConfig(fast_attention=True, attention_kernel=AttentionKernel.fp8_emulated))
    before = CompileCounts.now()
    for p in procs:
        p.kernel = AttentionKernel.fp8_emulated
    try:
        got = _forward(model, 31)
    finally:
        for p in procs:
            p.kernel = AttentionKernel.sdpa
    assert (CompileCounts.now() - before).precompiled_saves == 1
    assert torch.allclose(got, _forward(eager, 31), atol=1e-4)
    assert not torch.allclose(got, outputs[31], atol=1e-4)  # fp8 attention does change the numbers
    assert len({f.parent for f in _files(cache)}) == 2
    before = CompileCounts.now()
    assert torch.equal(_forward(model, 31), outputs[31])
    assert (CompileCounts.now() - before).graphs == 0


def test_a_block_whose_traced_source_changed_is_not_reused(saved, cache, monkeypatch, caplog):
    folder = _files(cache)[0].parent
    assert len(precompiled.Variants(folder, folder.parent).fns) >= 1  # loads as it is
    monkeypatch.setattr(precompiled, "source_hash", lambda module, first, last: "edited")
    kept = list(folder.glob("*.bin"))
    with caplog.at_level(logging.INFO, logger="workbench.precompiled"):
        assert precompiled.Variants(folder, folder.parent).fns == []
    assert not any(f.exists() for f in kept)
    assert "traced code that has changed since: removed" in caplog.text


def test_an_unreadable_file_is_removed_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "key"
    folder.mkdir(mode=0o700)
    (folder / "0123456789abcdef.bin").write_bytes(b"half a file")
    (folder / "0123456789abcdef.bin").chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        assert precompiled.Variants(folder, tmp_path).fns == []
    assert not (folder / "0123456789abcdef.bin").exists()
    assert "could not be loaded" in caplog.text and "the block compiles again" in caplog.text


def _copy_of_saved(cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The saved block's key folder copied under a root of the test's own: (root, key folder)."""
    import shutil

    root = tmp_path / "precompiled"
    root.mkdir(mode=0o700)
    source = _files(cache)[0].parent
    folder = root / source.name
    shutil.copytree(source, folder)  # copies the modes too
    return root, folder


def test_saved_blocks_are_private_files_in_private_folders(saved, cache):
    file = _files(cache)[0]
    modes = [p.stat().st_mode & 0o777 for p in (cache / "precompiled", file.parent, file)]
    assert modes == [0o700, 0o700, 0o600]
    assert why_untrusted(file, cache / "precompiled") is None


@pytest.mark.parametrize("loosen", ["folder", "file", "root"])
def test_code_others_could_have_written_is_neither_loaded_nor_saved(saved, cache, tmp_path, caplog, loosen):
    """Loading runs code: a saved block in a folder (or a file) writable by other users is left alone, with a
    warning naming the path and the fix, and nothing new is written there."""
    root, folder = _copy_of_saved(cache, tmp_path)
    files = sorted(folder.glob("*.bin"))
    trusted = precompiled.Variants(folder, root)
    assert len(trusted.fns) == len(files)
    {"folder": folder, "file": files[0], "root": root}[loosen].chmod(0o777 if loosen != "file" else 0o666)
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        variants = precompiled.Variants(folder, root)
    assert len(variants.fns) == (len(files) - 1 if loosen == "file" else 0)
    assert f"is writable by other users (mode {'666' if loosen == 'file' else '777'})" in caplog.text
    assert "another user could have written" in caplog.text and "chmod go-w" in caplog.text
    assert sorted(folder.glob("*.bin")) == files  # not deleted: they may be someone else's
    if loosen != "file":
        assert "$WORKBENCH_CACHE" in caplog.text
        kept = sorted(folder.glob("*"))
        variants.add(trusted.fns[0])  # the process keeps it, the folder gets nothing
        assert variants.fns[0] is trusted.fns[0] and sorted(folder.glob("*")) == kept


def test_a_saved_block_reached_through_a_symbolic_link_is_not_loaded(saved, cache, tmp_path, caplog):
    root, folder = _copy_of_saved(cache, tmp_path)
    elsewhere = tmp_path / "elsewhere.bin"
    sorted(folder.glob("*.bin"))[0].rename(elsewhere)
    (folder / "0123456789abcdef.bin").symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        precompiled.Variants(folder, root)
    assert f"{folder / '0123456789abcdef.bin'} is a symbolic link" in caplog.text
    assert elsewhere.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_saved_block_another_user_owns_is_not_loaded(saved, cache, tmp_path, caplog):
    root, folder = _copy_of_saved(cache, tmp_path)
    file = sorted(folder.glob("*.bin"))[0]
    os.chown(file, 4321, 4321)
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        assert file not in [f for f in folder.glob("*.bin") if why_untrusted(f, root) is None]
        precompiled.Variants(folder, root)
    assert f"{file} belongs to user id 4321, not to you (0)" in caplog.text


def test_a_loaded_block_that_fails_to_run_is_removed_and_compiled_again(saved, cache, tmp_path, monkeypatch, caplog):
    """Code that loads but cannot run here (say, a kernel this driver cannot load): its file goes, the block compiles
    again (and is saved), and the output is the regional compile's. Only the first call of a loaded file is watched."""
    import torch.compiler

    _, outputs, _ = saved
    root, folder = _copy_of_saved(cache, tmp_path)
    copied = len(list(folder.glob("*.bin")))  # other tests of the module may have saved a variant more
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(root.parent))
    real_load = torch.compiler.load_compiled_function

    class FailsToRun:
        def __init__(self, fn):
            self.fn = fn

        def __getattr__(self, name):
            return getattr(self.fn, name)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("CUDA error: device kernel image is invalid\nmore lines")

    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda f: FailsToRun(real_load(f)))
    model = _build(PRECOMPILE)
    before = CompileCounts.now()
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        got = _forward(model, 31)
    counts = CompileCounts.now() - before
    assert "failed to run here (RuntimeError: CUDA error: device kernel image is invalid): removed" in caplog.text
    assert (counts.precompiled_loads, counts.precompiled_saves) == (copied, 1)
    assert torch.equal(got, outputs[31])
    assert torch.equal(_forward(model, 7), outputs[7])  # the new compile serves the other lengths
    monkeypatch.setattr(torch.compiler, "load_compiled_function", real_load)
    assert len(list(folder.glob("*.bin"))) == copied  # the failed one removed, the new compile saved
    assert torch.equal(_forward(_build(PRECOMPILE), 12), outputs[12])  # what was saved again loads and runs


def test_workbench_cache_says_what_each_saved_block_was_compiled_for(saved, cache, capsys):
    from workbench.cli import main

    folder = _files(cache)[0].parent
    facts = json.loads((folder / "facts.json").read_text())
    assert (folder / "facts.json").stat().st_mode & 0o777 == 0o600
    assert facts["torch"] == torch.__version__ and facts["layout"].endswith("parameters and buffers")
    assert main(["cache"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"  {folder.name[:12]}  "))
    assert line.startswith(f"  {folder.name[:12]}  QwenImageTransformerBlock  python ")
    assert f"torch {torch.__version__}" in line and "FastQwenAttnProcessor kernel=sdpa" in line
    assert "variant(s)" in line and "not used here" not in line and "not loaded" not in line


def test_workbench_cache_reads_facts_as_data(tmp_path, monkeypatch, capsys):
    """facts.json is shown, never trusted: other versions are named as unusable here, control characters do not
    reach the terminal, a huge / malformed / wrongly typed file is shown as unreadable, a loose folder is flagged."""
    from workbench.cli import main

    root = tmp_path / "precompiled"
    root.mkdir(mode=0o700)
    entries = {
        "a_old": {"torch": "0.0.1", "python": "3.0", "modules": ["x.FooBlock", 3], "device": "cuda H100 sm90",
                  "processors": [["m.Proc", [["kernel", "<AttentionKernel.fp8_cudnn: 'fp8_cudnn'>"]]], "junk"]},
        "b_escape": {"torch": "\x1b[31mred\x07", "modules": "not a list", "processors": {"a": 1}},
        "c_list": ["not", "a", "dict"],
        "d_huge": {"torch": "x" * (2 << 20)},
    }
    for name, facts in entries.items():
        (root / name).mkdir(mode=0o700)
        (root / name / "0123456789abcdef.bin").write_bytes(b"b" * 10)
        (root / name / "facts.json").write_text(json.dumps(facts))
    (root / "e_loose").mkdir(mode=0o700)
    (root / "e_loose").chmod(0o777)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert main(["cache"]) == 0
    lines = dict(line.strip().split("  ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert lines["a_old"].startswith("FooBlock  python 3.0 torch 0.0.1 diffusers - torchao -  cuda H100 sm90  "
                                     "Proc kernel=fp8_cudnn  1 variant(s); 10 B; not used here: compiled for python 3.0")
    assert f"torch 0.0.1 (here {torch.__version__})" in lines["a_old"]
    assert "?[31mred?" in lines["b_escape"] and "\x1b" not in lines["b_escape"] and "\x07" not in lines["b_escape"]
    assert lines["c_list"].startswith("(no readable facts.json)") and lines["d_huge"].startswith("(no readable facts.json)")
    assert "not loaded: " in lines["e_loose"] and "is writable by other users (mode 777)" in lines["e_loose"]


def test_a_hook_on_a_saved_block_is_refused(saved):
    model, _, _ = saved
    handle = model.transformer_blocks[0].register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(precompiled.PrecompileError, match=r"forward hook on a compiled QwenImageTransformerBlock"):
            _forward(model, 7)
    finally:
        handle.remove()


def test_what_torch_cannot_compile_for_saving_runs_as_the_regional_compile(monkeypatch, tmp_path, caplog):
    """A failure of torch's AOT compile (say, a guard it cannot save) costs the warm start, not the run: the
    regional compile runs, with a warning and a count in the record, and nothing is written."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))

    def refuse(*args, **kwargs):
        raise RuntimeError("ID_MATCH guard cannot be serialized.")

    monkeypatch.setattr(precompiled, "aot_compile", refuse)
    model = _build(PRECOMPILE)
    before = CompileCounts.now()
    with caplog.at_level(logging.WARNING, logger="workbench.precompiled"):
        got = {9: _forward(model, 9)}
    first = CompileCounts.now() - before
    got[33] = _forward(model, 33)
    second = CompileCounts.now() - before - first
    assert (first.precompile_fallbacks, first.precompiled_saves) == (1, 0)
    assert second.compile_s == 0 and second.precompile_fallbacks == 0  # a new text length: no recompile
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    # compiled, not eager: Dynamo holds code for the block's forward (compiled here, or shared with a regional
    # compile of the same block earlier in the process, whose frame is the same forward)
    assert _debug_get_cache_entry_list(type(model.transformer_blocks[0]).forward.__code__)
    assert "could not compile QwenImageTransformerBlock for saving (RuntimeError: ID_MATCH guard" in caplog.text
    eager = _build(PerfConfig(fast_attention=True))
    for n, out in got.items():
        assert torch.allclose(out, _forward(eager, n), atol=1e-4)
    assert not any(tmp_path.rglob("*.bin"))


def test_an_error_of_the_block_itself_is_raised_as_it_is(saved):
    """A workbench check inside the block (fp8 attention refuses a padding mask) reaches the user as its own
    message, not as Dynamo's "Observed exception" or a precompile failure."""
    from workbench.errors import WorkbenchError

    model, _, _ = saved
    procs = [m.processor for m in model.modules() if hasattr(m, "processor")]
    inputs = {**_inputs(5), "encoder_hidden_states_mask": torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)}
    for p in procs:
        p.kernel = AttentionKernel.fp8_emulated
    try:
        with pytest.raises(WorkbenchError, match=r"fp8_emulated runs unmasked.*has a padding mask") as err, torch.no_grad():
            model(**inputs)
        assert not isinstance(err.value, precompiled.PrecompileError)
    finally:
        for p in procs:
            p.kernel = AttentionKernel.sdpa


def test_clear_cache_takes_the_saved_blocks(tmp_path, monkeypatch):
    cache = tmp_path / "mine"
    (cache / "precompiled" / "k").mkdir(parents=True)
    (cache / "precompiled" / "k" / "a.bin").write_bytes(b"z" * 10)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    assert clear_cache() == 10 and not cache.exists()


def test_the_key_follows_versions_layout_and_processor_settings():
    block = copy.deepcopy(build_transformer(ModelConfig()).transformer_blocks[0])
    static = precompiled.static_facts(block, {"coordinate_descent_tuning": False})
    attn = [m for m in block.modules() if hasattr(m, "processor")]
    key = precompiled.artefact_key(static, precompiled.processor_facts(attn))
    assert key == precompiled.artefact_key(precompiled.static_facts(block, {"coordinate_descent_tuning": False}),
                                           precompiled.processor_facts(attn))  # stable
    assert key != precompiled.artefact_key({**static, "torch": "0.0"}, precompiled.processor_facts(attn))
    assert key != precompiled.artefact_key(precompiled.static_facts(block, {"coordinate_descent_tuning": True}),
                                           precompiled.processor_facts(attn))
    block.to(torch.bfloat16)
    assert key != precompiled.artefact_key(precompiled.static_facts(block, {"coordinate_descent_tuning": False}),
                                           precompiled.processor_facts(attn))


@pytest.mark.parametrize(("overrides", "note"), [
    (["perf=fast", "perf.precompile=true", "perf.compile=none"],
     "perf.precompile=true is not used: it saves the regional compile and perf.compile=none"),
    (["perf=fast", "perf.precompile=true", "perf.inductor_mode=reduce_overhead"],
     "perf.precompile=true is not used: perf.inductor_mode=reduce_overhead captures CUDA graphs"),
])
def test_precompile_where_it_cannot_act_is_noted(make_cfg, overrides, note):
    from workbench.config.unused import unused_notes

    assert any(n.startswith(note) for n in unused_notes(make_cfg(*overrides))), unused_notes(make_cfg(*overrides))
    assert not any("perf.precompile" in n for n in unused_notes(make_cfg("perf=fast", "perf.precompile=true")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 GEMMs need a CUDA device of compute capability >= 8.9")
def test_fp8_saved_block_is_bit_equal_to_the_regional_compile_and_reloads(make_cfg, monkeypatch, tmp_path):
    """torchao's fp8 weights (tensor subclasses) as inputs of the saved block: the whole pipeline at
    perf=fast computes the same latents with and without perf.precompile, and a new process loads it."""
    pytest.importorskip("torchao")
    from workbench.pipeline import Workbench

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compiled"))
    common = ["model=tiny_random", "sampler.steps=2", "prompts=[a kite]", "seeds=[2]", "height=64", "width=64",
              "device=cuda", "precision=fp8_torchao", "perf=fast", "perf.precompile=true"]
    latents = {}
    for precompile in (True, False):
        cfg = make_cfg(*common[:-1], f"perf.precompile={str(precompile).lower()}")
        bench = Workbench.from_config(cfg)
        latents[precompile] = bench.generate(cfg, progress=False)[0].latents
        assert bench.last_compile["precompiled_saves"] == int(precompile)
    assert torch.equal(latents[True], latents[False])
    out = tmp_path / "latents.pt"
    script = (
        "import json, sys, torch\n"
        "from torch._dynamo.utils import counters\n"
        "from workbench.config import compose, to_run_config\n"
        "from workbench.pipeline import Workbench\n"
        f"cfg = to_run_config(compose({common!r}))\n"
        "bench = Workbench.from_config(cfg)\n"
        f"torch.save(bench.generate(cfg, progress=False)[0].latents, {str(out)!r})\n"
        "print(json.dumps({'captured': int(counters['stats']['calls_captured']), **bench.last_compile}))\n"
    )
    env = _child_env()
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert (counts["captured"], counts["precompiled_loads"], counts["graphs"]) == (0, 1, 0), counts
    assert torch.equal(torch.load(out), latents[True])


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x).relu()


def _no_fallback():
    raise AssertionError("the block fell back to the regional compile")


def test_a_repr_bound_to_a_partial_does_not_stop_the_save(tmp_path):
    """torchao's quantize_ binds each quantised Linear's extra_repr to a functools.partial, which Dynamo's guard
    pickler cannot save (torch 2.11): the fp8 block fell back every time. It is set aside while saving."""
    import functools
    import types

    block = _Toy()
    block.proj.extra_repr = types.MethodType(functools.partial(lambda self, tag: tag, tag="fp8 weight"), block.proj)
    store = precompiled.PrecompiledBlocks(block, {}, tmp_path, before_compile=lambda kwargs: None,
                                          regional=_no_fallback)
    before = CompileCounts.now()
    x = torch.randn(3, 4)
    assert torch.allclose(store(block, [], (x,), {}), block(x))
    counts = CompileCounts.now() - before
    assert (counts.precompiled_saves, counts.precompile_fallbacks) == (1, 0)
    assert "fp8 weight" in repr(block)  # put back


def test_a_tensor_subclass_parameter_is_keyed_by_its_layout_not_a_saved_guard(tmp_path):
    """Guards on a tensor-subclass parameter and its inner tensors are not saved (torchao's Float8Tensor cannot be
    pickled by Dynamo's guard pickler); the key carries the subclass, its inner tensors' dtypes and shapes instead,
    and the saved block reloads and computes with the parameter it is given."""
    from torch.testing._internal.two_tensor import TwoTensor

    block = _Toy()
    w = block.proj.weight.detach()
    block.proj.weight = torch.nn.Parameter(TwoTensor(w, w.clone()), requires_grad=False)
    layout = precompiled.static_facts(block, {})["layout"]
    assert any(line.startswith("proj.weight TwoTensor torch.float32(4, 4) a:torch.float32(4, 4) b:") for line in layout)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = block(x)
        store = precompiled.PrecompiledBlocks(block, {}, tmp_path, before_compile=lambda kwargs: None,
                                          regional=_no_fallback)
        assert torch.allclose(store(block, [], (x,), {}), expected)
        reloaded = precompiled.PrecompiledBlocks(block, {}, tmp_path, before_compile=lambda kwargs: None,
                                          regional=_no_fallback)
        before = CompileCounts.now()
        assert torch.allclose(reloaded(block, [], (x,), {}), expected)
    assert (CompileCounts.now() - before).precompiled_loads == 1
