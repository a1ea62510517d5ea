"""The real models' shapes (as their file headers give them) infer the real configs under arch_rules=real."""

from __future__ import annotations

import pytest

from workbench.config import TinySpec
from workbench.loading import infer
from workbench.loading.errors import LoadError


def qwen25_vl_7b_shapes() -> dict:
    lm, vis = "model.language_model.", "model.visual."
    s = {lm + "embed_tokens.weight": (152064, 3584), "lm_head.weight": (152064, 3584)}
    for i in range(28):
        s[lm + f"layers.{i}.self_attn.q_proj.weight"] = (3584, 3584)
        s[lm + f"layers.{i}.self_attn.k_proj.weight"] = (512, 3584)
        s[lm + f"layers.{i}.mlp.gate_proj.weight"] = (18944, 3584)
    s[vis + "patch_embed.proj.weight"] = (1280, 3, 2, 14, 14)
    for i in range(32):
        s[vis + f"blocks.{i}.mlp.gate_proj.weight"] = (3420, 1280)
    s[vis + "merger.mlp.0.weight"] = (5120, 5120)
    s[vis + "merger.mlp.2.weight"] = (3584, 5120)
    return s


def test_real_text_encoder_config_from_7b_shapes():
    text, vision, report = infer.text_encoder(qwen25_vl_7b_shapes(), "real", TinySpec(), "qwen_2.5_vl_7b.safetensors")
    assert (text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"]) == (28, 28, 4)
    assert text["intermediate_size"] == 18944 and text["rope_parameters"]["mrope_section"] == [16, 24, 24]
    assert text["tie_word_embeddings"] is False
    assert (vision["depth"], vision["num_heads"], vision["spatial_merge_size"]) == (32, 16, 2)
    assert vision["fullatt_block_indexes"] == [7, 15, 23, 31] and vision["out_hidden_size"] == 3584
    assert report["heads"] == 28


def test_real_transformer_config_from_20b_shapes():
    s = {"img_in.weight": (3072, 64), "txt_in.weight": (3072, 3584), "proj_out.weight": (64, 3072),
         "transformer_blocks.0.attn.norm_q.weight": (128,)}
    s |= {f"transformer_blocks.{i}.img_mod.1.weight": (18432, 3072) for i in range(60)}
    kwargs, _ = infer.transformer(s, "real", TinySpec(), "qwen_image_bf16.safetensors")
    from diffusers import QwenImageTransformer2DModel

    import inspect

    # diffusers' defaults ARE the real config
    defaults = {k: p.default for k, p in inspect.signature(QwenImageTransformer2DModel.__init__).parameters.items() if k in kwargs}
    assert kwargs == defaults


def test_wrong_channel_count_is_refused():
    s = {"img_in.weight": (3072, 128), "txt_in.weight": (3072, 3584), "proj_out.weight": (128, 3072),
         "transformer_blocks.0.attn.norm_q.weight": (128,)}
    with pytest.raises(LoadError, match=r"x.safetensors: shape mismatch: img_in takes 128 .*Qwen-Image's transformer has 64"):
        infer.transformer(s, "real", TinySpec(), "x.safetensors")
