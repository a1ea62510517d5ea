"""LoRAs: every key style changes the tiny transformer exactly as diffusers' own loader does with the
diffusers-format equivalent; what diffusers drops silently we apply; what fits nothing raises.

The same random rank-4 LoRA (every nn.Linear of the tiny transformer, alpha 8 -> scale 2) is written
in each key style; the references are diffusers 0.42.1 ``QwenImagePipeline.load_lora_weights`` (PEFT)
on a second copy of the transformer.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

from workbench.config import LoraAlpha, LoraItem, ModelConfig
from workbench.lora import LoraError, apply_loras, load_lora, lora_set
from workbench.models.tiny import build_transformer


@pytest.fixture(scope="module")
def make_cfg(make_cfg):
    """The LoRAs here are made for the random tiny transformer's sizes (model=tiny_random)."""
    return lambda *overrides: make_cfg("model=tiny_random", *overrides)

RANK, ALPHA, STRENGTH = 4, 8.0, 0.7


def _forward(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(1, 16, 64, generator=g), torch.randn(1, 5, 64, generator=g)
    with torch.no_grad():
        return transformer(
            hidden_states=x, timestep=torch.tensor([0.6]), encoder_hidden_states=text, img_shapes=[[(1, 4, 4)]], return_dict=False
        )[0]


@pytest.fixture(scope="module")
def transformer():
    return build_transformer(ModelConfig())


@pytest.fixture(scope="module")
def base(transformer):
    return _forward(transformer)


@pytest.fixture(scope="module")
def pairs(transformer):
    """{module: (down (r, in), up (out, r))} for every Linear, seeded."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear):
            out[name] = (torch.randn(RANK, m.in_features, generator=g) * 0.05, torch.randn(m.out_features, RANK, generator=g) * 0.05)
    return out


def _write(tmp_path, name: str, pairs, style: str, alpha: bool = True, fold: bool = False, metadata=None) -> str:
    """Write ``pairs`` in a key style; ``fold``: alpha/rank baked into up (the diffusers-format equivalent)."""
    sd = {}
    for module, (down, up) in pairs.items():
        up = up * (ALPHA / RANK) if fold else up
        flat = module.replace(".", "_")
        prefix, a, b = {
            "diffusers": (f"transformer.{module}", "lora_A", "lora_B"),
            "bare": (module, "lora_A", "lora_B"),
            "down_up": (module, "lora_down", "lora_up"),
            "comfyui": (f"diffusion_model.{module}", "lora_A", "lora_B"),
            "comfyui_down_up": (f"diffusion_model.{module}", "lora_down", "lora_up"),
            "kohya": (f"lora_unet_{flat}", "lora_down", "lora_up"),
        }[style]
        sd[f"{prefix}.{a}.weight"] = down.contiguous()
        sd[f"{prefix}.{b}.weight"] = up.contiguous()
        if alpha:
            sd[f"{prefix}.alpha"] = torch.tensor(ALPHA)
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path), metadata=metadata)
    return str(path)


def _diffusers_output(file: str, strength: float) -> torch.Tensor:
    """diffusers' own loader on a fresh copy of the tiny transformer."""
    pytest.importorskip("peft")
    from diffusers import QwenImagePipeline

    fresh = build_transformer(ModelConfig())
    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(file, adapter_name="ref")
        if pipe.get_list_adapters():  # empty when diffusers loaded nothing
            pipe.set_adapters(["ref"], adapter_weights=[strength])
    return _forward(fresh)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def reference_scaled(lora_dir, pairs):
    """diffusers output for the diffusers-format file with alpha / rank folded into up."""
    return _diffusers_output(_write(lora_dir, "ref_scaled", pairs, "diffusers", alpha=False, fold=True), STRENGTH)


@pytest.fixture(scope="module")
def reference_unscaled(lora_dir, pairs):
    return _diffusers_output(_write(lora_dir, "ref_unscaled", pairs, "diffusers", alpha=False), STRENGTH)


def _ours(transformer, file: str, strength: float = STRENGTH, alpha: LoraAlpha = LoraAlpha.apply, fuse=False) -> torch.Tensor:
    apply_loras(transformer, [LoraItem(file=file, strength=strength, alpha=alpha)], fuse=fuse)
    try:
        return _forward(transformer)
    finally:
        apply_loras(transformer, [])


@pytest.mark.parametrize("style", ["diffusers", "bare", "down_up", "comfyui", "comfyui_down_up", "kohya"])
def test_every_key_style_equals_diffusers_format_through_diffusers(transformer, base, pairs, lora_dir, reference_scaled, style):
    # diffusers-format file: alpha already folded in (no .alpha key); every other style carries .alpha
    file = _write(lora_dir, f"style_{style}", pairs, style, alpha=style != "diffusers", fold=style == "diffusers")
    ours = _ours(transformer, file)
    assert load_lora(LoraItem(file=file), transformer).styles == {style.removesuffix("_down_up") if style != "down_up" else style}
    assert (reference_scaled - base).abs().max() > 1e-2  # the LoRA does change the output
    assert (ours - reference_scaled).abs().max().item() <= 1e-5


def test_bare_lora_a_b_keys_diffusers_drops_are_applied(transformer, base, pairs, lora_dir, reference_unscaled):
    file = _write(lora_dir, "bare_no_alpha", pairs, "bare", alpha=False)
    assert torch.equal(_diffusers_output(file, STRENGTH), base)  # diffusers 0.42.1: silently nothing
    ours = _ours(transformer, file)
    assert (ours - base).abs().max() > 1e-2
    assert (ours - reference_unscaled).abs().max().item() <= 1e-5  # = the same numbers as transformer.X keys


def test_alpha_ignore_is_diffsynth_rule(transformer, pairs, lora_dir, reference_unscaled, reference_scaled):
    file = _write(lora_dir, "down_up_alpha", pairs, "down_up")
    assert (_ours(transformer, file, alpha=LoraAlpha.ignore) - reference_unscaled).abs().max().item() <= 1e-5
    assert (_ours(transformer, file, alpha=LoraAlpha.apply) - reference_scaled).abs().max().item() <= 1e-5


def test_diffusers_adapter_metadata_alpha_is_applied_like_diffusers(transformer, pairs, lora_dir, reference_scaled):
    peft_config = {"r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(pairs)}  # as diffusers saves it
    meta = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in peft_config.items()})}
    file = _write(lora_dir, "peft_meta", pairs, "diffusers", alpha=False, metadata=meta)
    assert (_diffusers_output(file, STRENGTH) - reference_scaled).abs().max().item() <= 1e-5
    assert (_ours(transformer, file) - reference_scaled).abs().max().item() <= 1e-5


def test_strength_zero_is_no_lora_bit_for_bit(transformer, base, pairs, lora_dir):
    file = _write(lora_dir, "zero", pairs, "down_up")
    assert torch.equal(_ours(transformer, file, strength=0.0), base)
    assert torch.equal(_forward(transformer), base)  # and removing LoRAs leaves nothing behind


def test_fuse_matches_hooks_and_unfuse_restores_exact_bits(transformer, base, pairs, lora_dir):
    file = _write(lora_dir, "fuse", pairs, "kohya")
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    hooked = _ours(transformer, file)
    apply_loras(transformer, [LoraItem(file=file, strength=STRENGTH)], fuse=True)
    assert lora_set(transformer).fused
    fused = _forward(transformer)
    assert (fused - hooked).abs().max().item() <= 1e-5
    apply_loras(transformer, [])  # unfuse: original tensors back
    assert not lora_set(transformer).fused
    after = transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_forward(transformer), base)


def test_unmatched_keys_raise_listing_file_and_keys(transformer, base, pairs, lora_dir):
    good = _write(lora_dir, "good", pairs, "bare")
    apply_loras(transformer, [LoraItem(file=good)])
    with_good = _forward(transformer)
    try:
        sd = {
            "transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(RANK, 64),
            "transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(64, RANK),
            "transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(RANK, 64),
            "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, RANK),
        }
        save_file(sd, str(lora_dir / "unmatched.safetensors"))
        with pytest.raises(LoraError, match=r"unmatched\.safetensors.*2 key\(s\) match no nn\.Linear.*transformer_blocks\.7\.attn\.to_q\.lora_A"):
            apply_loras(transformer, [LoraItem(file=str(lora_dir / "unmatched.safetensors"))])

        save_file({"img_in.lora_down.weight": torch.zeros(RANK, 3072), "img_in.lora_up.weight": torch.zeros(64, RANK)}, str(lora_dir / "shape.safetensors"))
        with pytest.raises(LoraError, match=r"shape\.safetensors.*img_in: expected down \(r, 64\) and up \(64, r\), found \(4, 3072\)"):
            apply_loras(transformer, [LoraItem(file=str(lora_dir / "shape.safetensors"))])

        save_file({"img_in.lokr_w1": torch.zeros(4, 4), "img_in.lora_A.weight": torch.zeros(RANK, 64)}, str(lora_dir / "kinds.safetensors"))
        with pytest.raises(LoraError, match=r"img_in\.lokr_w1.*incomplete pair"):
            apply_loras(transformer, [LoraItem(file=str(lora_dir / "kinds.safetensors"))])

        with pytest.raises(FileNotFoundError, match="nope.safetensors.*models/loras"):
            apply_loras(transformer, [LoraItem(file="nope.safetensors")])
        # a failed change leaves the previous LoRAs applied, untouched
        assert torch.equal(_forward(transformer), with_good)
    finally:
        apply_loras(transformer, [])
    assert torch.equal(_forward(transformer), base)


def test_name_under_models_loras_resolves(transformer, pairs, lora_dir, tmp_path, monkeypatch):
    (tmp_path / "models" / "loras").mkdir(parents=True)
    src = _write(lora_dir, "named", pairs, "comfyui")
    (tmp_path / "models" / "loras" / "named.safetensors").write_bytes(open(src, "rb").read())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKBENCH_MODELS", raising=False)
    assert torch.equal(_ours(transformer, "named"), _ours(transformer, src))


def test_config_items_and_generate_swap_strengths_without_reloading(make_cfg, pairs, lora_dir, monkeypatch):
    """cfg.lora in from_config / generate; strength sweeps and swaps never build or load a model."""
    import workbench.models.build as model_build
    import workbench.models.tiny as tiny
    import workbench.pipeline as pipeline
    from workbench.config import ConfigError
    from workbench.lora import _RAW_CACHE

    a = _write(lora_dir, "cfg_a", pairs, "down_up")
    b = _write(lora_dir, "cfg_b", {k: (d, -u) for k, (d, u) in pairs.items()}, "kohya")
    common = ("sampler.steps=2", "prompts=[a kite]", "seeds=[4]", "height=64", "width=64")
    with pytest.raises(ConfigError, match=r"lora.items\[0\].file.*missing.safetensors"):
        make_cfg(*common, "lora.items=[{file:missing.safetensors}]")
    cfg_none = make_cfg(*common)
    cfg_a = make_cfg(*common, f"lora.items=[{{file:'{a}',strength:0.8}}]")
    bench = pipeline.Workbench.from_config(cfg_a)
    transformer = bench.components.transformer
    try:
        def no_build(*args, **kwargs):
            raise AssertionError("a model was built or loaded")

        monkeypatch.setattr(model_build, "build_components", no_build)
        monkeypatch.setattr(tiny, "build_transformer", no_build)
        reads = len(_RAW_CACHE)
        lat_a = bench.generate(cfg_a, progress=False)[0].latents
        lat_none = bench.generate(cfg_none, progress=False)[0].latents
        assert (lat_a - lat_none).abs().max() > 1e-3
        cfg_zero = make_cfg(*common, f"lora.items=[{{file:'{a}',strength:0.0}}]")
        assert torch.equal(bench.generate(cfg_zero, progress=False)[0].latents, lat_none)
        cfg_b = make_cfg(*common, f"lora.items=[{{file:'{b}'}},{{file:'{a}',strength:0.5}}]", "lora.fuse=true")
        assert (bench.generate(cfg_b, progress=False)[0].latents - lat_a).abs().max() > 1e-3
        assert lora_set(transformer).fused
        assert torch.equal(bench.generate(cfg_a, progress=False)[0].latents, lat_a)  # swap back: same bits
        assert pipeline.Workbench.from_config(cfg_none).components.transformer is transformer
        assert not lora_set(transformer).active  # from_config applied lora=none to the shared transformer
        assert len(_RAW_CACHE) - reads <= 1  # each file read once (b is new), however often it is swapped
    finally:
        bench.set_loras([])


def test_lora_on_fused_qkv_of_perf_fast_attention(transformer, pairs, lora_dir):
    """perf.fast_attention replaces to_q / to_k / to_v by one to_qkv: the LoRA goes to its thirds."""
    from workbench.perf import enable_fast_attention

    file = _write(lora_dir, "fast", pairs, "kohya")
    expected = _ours(transformer, file)
    fast = build_transformer(ModelConfig())
    enable_fast_attention(fast)
    assert not hasattr(fast.transformer_blocks[0].attn, "to_q")
    assert (_ours(fast, file) - expected).abs().max().item() <= 1e-5
    assert (_ours(fast, file, fuse=True) - expected).abs().max().item() <= 1e-5


def test_pickle_lora_is_refused(tmp_path):
    from workbench.loading.errors import LoadError

    bad = tmp_path / "old.pt"
    torch.save({"x.lora_A.weight": torch.zeros(1, 1)}, bad)
    with pytest.raises(LoadError, match="pickles, which can run arbitrary code"):
        apply_loras(build_transformer(ModelConfig()), [LoraItem(file=str(bad))])


def test_free_models_releases_a_transformer_that_had_loras(tmp_path, make_cfg):
    """The LoRA state (hooks, fused originals) must not keep a transformer alive after free_models()."""
    import weakref

    from workbench.models.build import free_models
    from workbench.pipeline import Workbench

    cfg = make_cfg("model.seed=123", "sampler.steps=2", "height=64", "width=64")
    bench = Workbench.from_config(cfg)
    path = tmp_path / "l.safetensors"
    module = "transformer_blocks.0.attn.to_q"
    lin = dict(bench.components.transformer.named_modules())[module]
    weights = [weakref.ref(m) for m in bench.components.transformer.modules()]  # where the memory is
    save_file({f"{module}.lora_A.weight": torch.randn(2, lin.in_features),
               f"{module}.lora_B.weight": torch.randn(lin.out_features, 2)}, str(path))
    bench.set_loras([LoraItem(file=str(path), strength=1.0)], fuse=True)
    bench.set_loras([LoraItem(file=str(path), strength=0.5)])
    del bench, lin
    free_models()  # must collect itself: LoRA hooks put the modules in reference cycles
    assert sum(w() is not None for w in weights) == 0


def test_fuse_keeps_the_originals_off_the_weights_and_is_all_or_nothing(tmp_path, monkeypatch):
    """Originals of fused weights are separate tensors (host memory on a GPU); a failure midway
    (here: the second module's delta raises) leaves every weight exactly as it was."""
    model = build_transformer(ModelConfig())
    names = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"]
    mods = dict(model.named_modules())
    before = {n: mods[n].weight.detach().clone() for n in names}
    tensors = {}
    for n in names:
        tensors[f"{n}.lora_A.weight"] = torch.randn(2, mods[n].in_features)
        tensors[f"{n}.lora_B.weight"] = torch.randn(mods[n].out_features, 2)
    path = tmp_path / "two.safetensors"
    save_file(tensors, str(path))
    lset = apply_loras(model, [LoraItem(file=str(path))], fuse=True)
    assert lset.fused and all(not torch.equal(mods[n].weight, before[n]) for n in names)
    apply_loras(model, [LoraItem(file=str(path))], fuse=False)
    assert all(torch.equal(mods[n].weight, before[n]) for n in names)

    import workbench.lora as lora_mod

    calls = {"n": 0}
    real_delta = lora_mod.LoraPair.delta

    def failing_delta(self, device="cpu"):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        return real_delta(self, device)

    monkeypatch.setattr(lora_mod.LoraPair, "delta", failing_delta)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        apply_loras(model, [LoraItem(file=str(path), strength=0.5)], fuse=True)
    assert all(torch.equal(mods[n].weight, before[n]) for n in names)


@pytest.mark.parametrize("precompile", [False, True], ids=["regional", "precompiled"])
def test_lora_on_a_compiled_transformer_is_fused_and_follows_strength_changes(transformer, base, pairs, lora_dir,
                                                                              precompile, monkeypatch, tmp_path):
    """perf.compile: a LoRA fused (or re-weighted) after the first compiled call takes effect without a
    recompile; hooks are refused with the fix. (Without hook guards torch.compile silently ignored hooks
    added after compiling; with them, 60 differently hooked blocks exceed its recompile limit: H100 run14.)
    The saved compiled block (perf.precompile) reads the fused weights as inputs, as the regional compile does."""
    import copy

    from workbench.config import CompileMode, PerfConfig
    from workbench.lora import LoraError
    from workbench.perf import apply_perf

    file = _write(lora_dir, "compiled", pairs, "kohya")
    expected = {s: _ours(transformer, file, strength=s, fuse=True) for s in (0.7, 0.3)}
    compiled = copy.deepcopy(transformer)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compiled"))
    fwd = apply_perf(compiled, PerfConfig(fast_attention=True, compile=CompileMode.regional, precompile=precompile))
    assert (_forward(fwd) - base).abs().max().item() <= 1e-4  # compiled, no LoRA yet
    for strength in (0.7, 0.3):
        apply_loras(compiled, [LoraItem(file=file, strength=strength)], fuse=True)
        got = _forward(fwd)
        assert (got - expected[strength]).abs().max().item() <= 1e-4, strength
        assert (got - base).abs().max().item() > 1e-2  # the LoRA does something
    with pytest.raises(LoraError, match=r"cannot run inside a compiled transformer .* Use lora.fuse=true"):
        apply_loras(compiled, [LoraItem(file=file, strength=0.7)], fuse=False)
    apply_loras(compiled, [])
    assert (_forward(fwd) - base).abs().max().item() <= 1e-4
    assert torch.equal(_forward(compiled), _forward(fwd))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["perf=fast"], "lora.items as hooks (lora.fuse=false) with perf.compile=regional (perf=fast): hooks cannot run"),
        (["precision=fp8_torchao", "lora.fuse=true"], "lora.fuse=true with precision=fp8_torchao (quantization=fp8_torchao): "
                                                      "fusing into the quantised fp8 weights would drop the quantisation"),
    ],
)
def test_lora_combinations_that_cannot_run_fail_at_config_time(tmp_path, make_cfg, overrides, message):
    """Caught while composing, before 60 GB of models load, with the fix in the message."""
    from workbench.config import ConfigError

    path = tmp_path / "one.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 2)}, str(path))
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_cfg(f"lora.items=[{{file: {path}}}]", *overrides)
    assert make_cfg(f"lora.items=[{{file: {path}}}]", "perf=fast", "lora.fuse=true").lora.fuse  # the fix works
    assert make_cfg(f"lora.items=[{{file: {path}, strength: 0.0}}]", "perf=fast").perf.compile.value == "regional"
