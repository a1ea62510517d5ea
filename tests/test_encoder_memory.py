"""The text encoder's placement and storage (issue 19): streamed one decoder layer / vision block per group,
on the CPU, or stored in fp8; what each changes in the conditioning, measured on the tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from workbench.encoder_memory import stream_encoder
from workbench.stages import encode as encode_stage

BASE = ["device=cpu", "prompts=['a large red circle on the left, on a blue background']", "sampler.steps=12",
        "height=64", "width=64", "precision=bf16"]


@pytest.fixture(scope="module")
def runs(make_cfg):
    from workbench.pipeline import Workbench

    def run(*extra):
        cfg = make_cfg(*BASE, *extra)
        bench = Workbench.from_config(cfg)
        bench.clear_conditioning_cache()
        cond = bench.encode(cfg.prompts, cfg.template, tap=cfg.encoder_tap)
        return cfg, bench, cond, bench.generate(cfg, progress=False)[0]

    return run


@pytest.mark.parametrize("model", ["tiny_random", "tiny_qwen21"])
def test_streaming_groups_each_layer_and_block_and_changes_nothing(make_cfg, model):
    """Block-level offloading of the whole VL model made ONE group (its layers sit two levels down); the
    workbench descends into visual / language_model: one group per block, plus each level's small rest."""
    from workbench.pipeline import Workbench

    cfg = make_cfg(f"model={model}", "device=cpu")
    bench = Workbench.from_config(cfg)
    streamed = copy.deepcopy(bench.components.text_encoder)
    groups = stream_encoder(streamed, torch.device("cpu"))  # onload to the CPU: the hooks, without a GPU
    layers = [g for g in groups if g.startswith("language_model.layers.")]
    blocks = [g for g in groups if g.startswith("visual.blocks.")]
    assert layers == [f"language_model.layers.{i}" for i in range(cfg.model.tiny.text_encoder.num_layers)]
    assert blocks == [f"visual.blocks.{i}" for i in range(cfg.model.tiny.vision.depth)]
    assert "language_model.norm+language_model.rotary_emb" in groups  # the level's rest: one group ...
    assert not any("embed_tokens" in g for g in groups)  # ... but the token embedding stays resident
    tok, template = bench.components.tokenizer, cfg.template
    want = encode_stage.encode_prompts(tok, bench.components.text_encoder, template, ["a red fox"])
    got = encode_stage.encode_prompts(tok, streamed, template, ["a red fox"])
    assert torch.equal(got.embeds, want.embeds)


def test_encoding_on_the_cpu_equals_resident_and_is_recorded(runs, tmp_path):
    _, _, resident, image = runs()
    cfg, bench, on_cpu, image_cpu = runs("precision.encoder_memory=cpu")
    assert bench.components.encoder_device == torch.device("cpu")
    assert torch.equal(on_cpu.embeds, resident.embeds) and torch.equal(image_cpu.latents, image.latents)
    from workbench.config import compose
    from workbench.run import run

    record = run(compose([*BASE, "precision.encoder_memory=cpu"]), tmp_path, progress=False).read_text()
    assert '"encoder_memory": "cpu"' in record


def test_fp8_encoder_storage_error_is_small_and_measured(runs):
    """fp8 weights (upcast per layer) on the trained tiny model: the conditioning moves by a few percent,
    the image by a few levels, and the picture still shows what the caption says."""
    from workbench import metrics

    _, _, bf16, image = runs()
    cfg, bench, fp8, image_fp8 = runs("precision.text_encoder_storage=float8_e4m3fn")
    layer = bench.components.text_encoder.model.language_model.layers[0].mlp.down_proj
    assert layer.weight.dtype == torch.float8_e4m3fn  # stored in fp8 ...
    assert bench.components.text_encoder.model.language_model.embed_tokens.weight.dtype == torch.bfloat16  # ... not all
    rel = float((fp8.embeds.float() - bf16.embeds.float()).norm() / bf16.embeds.float().norm())
    assert 1e-3 < rel < 0.08, rel  # measured 0.030 (tiny random: 0.034)
    assert metrics.psnr(image_fp8.image, image.image) > 30  # measured 41.2 dB at 12 steps
    caption = cfg.prompts[0]  # the trained model's world: what it draws can be read back and scored
    assert metrics.score(image_fp8.image, caption) == metrics.score(image.image, caption)
    assert all(metrics.score(image_fp8.image, caption).values())  # colour, shape, size, position, background


@pytest.mark.parametrize("overrides, message", [
    (["precision=fp32", "precision.text_encoder_storage=float8_e4m3fn"],
     "text_encoder_storage=float8_e4m3fn upcasts each layer to precision.text_encoder"),
    (["precision.memory=group_offload", "precision.encoder_memory=model_offload"],
     "precision.encoder_memory=model_offload chains the encoder into the model-offload ring"),
    (["precision.memory=model_offload", "precision.encoder_memory=stream"],
     "precision.encoder_memory=stream with precision.memory=model_offload"),
    (["precision.encoder_memory=sideways"], "encoder_memory"),
])
def test_bad_encoder_memory_configs_are_refused_by_name(make_cfg, overrides, message):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("=", "=")):
        make_cfg(*overrides)


def test_streaming_on_a_cpu_run_is_refused_before_building(make_cfg):
    from workbench.pipeline import Workbench
    from workbench.precision import PrecisionError

    with pytest.raises(PrecisionError, match=r"precision\.encoder_memory=stream streams the text encoder .* device is cpu"):
        Workbench.from_config(make_cfg("device=cpu", "precision.encoder_memory=stream"))
