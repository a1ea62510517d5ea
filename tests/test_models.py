"""The embedded model builder: real classes, seeded weights, full sizes from config."""

from __future__ import annotations

import torch

from workbench.models.components import build_components
from workbench.models.tiny import build_text_encoder, build_transformer


def test_random_full_config_has_the_real_sizes():
    """model=random_full builds the real 20.4 B DiT and 8.3 B Qwen2.5-VL (counted on the meta device); the
    preflight's estimate from the sizes (which refuses it where it cannot fit) is within 1 % of that."""
    from workbench.config.build import group_config
    from workbench.config.preflight import seeded_parameters

    model = group_config("model", "random_full")  # the model group alone: a CPU host refuses the whole run
    with torch.device("meta"):
        dit = build_transformer(model)
        te = build_text_encoder(model)
    assert round(sum(p.numel() for p in dit.parameters()) / 1e9, 2) == 20.43
    assert round(sum(p.numel() for p in te.parameters()) / 1e9, 2) == 8.29
    real = sum(p.numel() for p in dit.parameters()) + sum(p.numel() for p in te.parameters())
    assert abs(seeded_parameters(model.tiny) - real) / real < 0.01
    assert dit.config.num_layers == 60 and dit.config.attention_head_dim == 128 and dit.config.num_attention_heads == 24
    assert list(dit.config.axes_dims_rope) == [16, 56, 56] and dit.config.joint_attention_dim == 3584
    assert te.config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]


def test_init_on_device_builds_in_the_run_dtype_and_says_so(make_cfg):
    on_dev = make_cfg("model=tiny_random", "model.init_on_device=true", "precision=bf16")
    default = make_cfg("model=tiny_random", "precision=bf16")
    a = build_components(on_dev.model, on_dev.precision, "cpu")
    b = build_components(default.model, default.precision, "cpu")
    assert a.transformer.dtype == a.text_encoder.dtype == a.vae.dtype == torch.bfloat16
    assert a.identity["transformer"] != b.identity["transformer"]  # different weights, different identity
    again = build_components(on_dev.model, on_dev.precision, "cpu")
    for p, q in zip(a.transformer.parameters(), again.transformer.parameters()):
        assert torch.equal(p, q)  # still seeded: the same build twice gives the same weights
