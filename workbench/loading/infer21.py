"""Qwen-Image-2.1's architectures inferred from tensor shapes (``infer.py`` does the 20B family).

Widths, depths, head sizes (Qwen3 keeps a per-head q/k norm), vocab, channel counts and the VAE's
stage widths are read off the shapes. What shapes cannot tell comes from ``rules``: "real" =
Qwen-Image-2.1's values (``models/arch21.py``: mRoPE 24+20+20, vision heads of 72, deepstack layers
8/16/24, DiT RoPE 16+56+56); "tiny" = the embedded tiny 2.1 model's (``model.tiny`` sizes,
``arch21.TINY_*``). Names are transformers 5 / diffusers names (``keys``).
"""

from __future__ import annotations

import math

from workbench.config import TinySpec
from workbench.loading.errors import LoadError
from workbench.loading.infer import _count, _need, _split
from workbench.models import arch21


def _rules_hint(rules: str) -> str:
    return "; for the tiny test model set model.arch_rules=tiny" if rules == "real" else ""


def text_encoder(shapes: dict, rules: str, tiny: TinySpec, path) -> tuple[dict, dict, dict]:
    """(text_config, vision_config, report) for transformers' Qwen3VLConfig."""
    lm, vis = "model.language_model.", "model.visual."
    _need(shapes, path, "the Qwen3-VL text encoder", lm + "embed_tokens.weight", lm + "layers.0.self_attn.q_proj.weight",
          lm + "layers.0.self_attn.q_norm.weight", lm + "layers.0.mlp.gate_proj.weight", vis + "patch_embed.proj.weight",
          vis + "pos_embed.weight", vis + "blocks.0.mlp.linear_fc1.weight", vis + "merger.linear_fc1.weight",
          vis + "merger.linear_fc2.weight")
    vocab, hidden = shapes[lm + "embed_tokens.weight"]
    head_dim = shapes[lm + "layers.0.self_attn.q_norm.weight"][0]  # Qwen3's per-head norm: the head size itself
    if rules == "real":
        mrope, v_head, deepstack = list(arch21.MROPE_SECTION), arch21.VISION_HEAD_DIM, list(arch21.DEEPSTACK)
        max_positions = arch21.MAX_POSITIONS
    else:
        mrope, v_head = list(tiny.text_encoder.mrope_section), tiny.vision.hidden_size // tiny.vision.num_heads
        deepstack, max_positions = list(arch21.TINY_DEEPSTACK), arch21.TINY_MAX_POSITIONS
    if 2 * sum(mrope) != head_dim:
        raise LoadError(f"{path}: mRoPE split {mrope} (arch_rules={rules}) does not fit the head size {head_dim} read from "
                        f"q_norm (it must sum to {head_dim // 2}){_rules_hint(rules)}")
    v_hidden, _, t_patch, patch, _ = shapes[vis + "patch_embed.proj.weight"]
    n_deep = _count(shapes, vis + "deepstack_merger_list.")
    if n_deep != len(deepstack):
        raise LoadError(f"{path}: {n_deep} deepstack mergers in the vision tower, but arch_rules={rules} knows the "
                        f"layers of {len(deepstack)} ({deepstack}); not Qwen3-VL-8B's vision tower{_rules_hint(rules)}")
    text = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes[lm + "layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=_count(shapes, lm + "layers."), head_dim=head_dim,
        num_attention_heads=_split(shapes[lm + "layers.0.self_attn.q_proj.weight"][0], head_dim, path, "text attention", rules),
        num_key_value_heads=_split(shapes[lm + "layers.0.self_attn.k_proj.weight"][0], head_dim, path, "text key/value", rules),
        rms_norm_eps=arch21.RMS_NORM_EPS, max_position_embeddings=max_positions, rope_parameters=arch21.rope_parameters(mrope),
    )
    vision = dict(
        depth=_count(shapes, vis + "blocks."), hidden_size=v_hidden,
        intermediate_size=shapes[vis + "blocks.0.mlp.linear_fc1.weight"][0],
        num_heads=_split(v_hidden, v_head, path, "vision attention", rules),
        out_hidden_size=shapes[vis + "merger.linear_fc2.weight"][0], patch_size=patch, temporal_patch_size=t_patch,
        spatial_merge_size=math.isqrt(shapes[vis + "merger.linear_fc1.weight"][1] // v_hidden),
        num_position_embeddings=shapes[vis + "pos_embed.weight"][0], deepstack_visual_indexes=deepstack,
    )
    report = {
        "layers": text["num_hidden_layers"], "hidden": hidden, "heads": text["num_attention_heads"],
        "kv_heads": text["num_key_value_heads"], "head_dim": f"{head_dim} (q_norm)", "mrope_section": f"{mrope} (arch_rules={rules})",
        "vocab": vocab, "vision_depth": vision["depth"], "vision_hidden": v_hidden, "vision_heads": vision["num_heads"],
        "deepstack": f"{deepstack} (arch_rules={rules})",
        "lm_head": "in file" if "lm_head.weight" in shapes else "absent: tied to embeddings (unused for conditioning)",
    }
    return text, vision, report


def transformer(shapes: dict, rules: str, tiny: TinySpec, path) -> tuple[dict, dict]:
    """QwenImage21Transformer2DModel kwargs (causal_condition and eps: the class defaults, the released values)."""
    _need(shapes, path, "the 2.1 diffusion transformer", "img_in.weight", "txt_in.in_layer.weight", "proj_out.weight",
          "transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.img_mlp.proj.weight")
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    inner, in_channels = shapes["img_in.weight"]
    out_channels = shapes["proj_out.weight"][0]
    if in_channels != arch21.LATENT_CHANNELS or out_channels != arch21.LATENT_CHANNELS:
        raise LoadError(f"{path}: shape mismatch: img_in takes {in_channels} and proj_out gives {out_channels} channels; "
                        f"Qwen-Image-2.1's transformer reads and writes {arch21.LATENT_CHANNELS}-channel latents unpatched")
    axes = list(arch21.ROPE_AXES) if rules == "real" else list(tiny.transformer.axes_dims_rope)
    if sum(axes) != head_dim:
        raise LoadError(f"{path}: RoPE axes {axes} (arch_rules={rules}) do not sum to the head size {head_dim} read "
                        f"from norm_q{_rules_hint(rules)}")
    mlp = shapes["transformer_blocks.0.img_mlp.proj.weight"][0]
    if mlp % inner:
        raise LoadError(f"{path}: the feed-forward width {mlp} is not a multiple of the model width {inner}")
    kwargs = dict(
        patch_size=arch21.PATCH_SIZE, in_channels=in_channels, out_channels=out_channels,
        num_layers=_count(shapes, "transformer_blocks."), attention_head_dim=head_dim,
        num_attention_heads=_split(inner, head_dim, path, "transformer attention", rules),
        context_in_dim=shapes["txt_in.in_layer.weight"][1], mlp_ratio=mlp // inner, axes_dims_rope=tuple(axes),
    )
    report = {k: kwargs[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim", "context_in_dim", "mlp_ratio")}
    report["axes_dims_rope"] = f"{axes} (arch_rules={rules})"
    return kwargs, report


def vae(shapes: dict, path) -> tuple[dict, dict]:
    """AutoencoderKLQwenImage21 kwargs from diffusers-named shapes (latent stats: the released ones)."""
    _need(shapes, path, "the 2.1 VAE", "encoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.weight",
          "encoder.down_blocks.0.resnets.0.conv1.weight")
    base, channels = shapes["encoder.conv_in.weight"][:2]
    z_dim = shapes["post_quant_conv.weight"][0]
    if z_dim != arch21.LATENT_CHANNELS or channels != arch21.IMAGE_CHANNELS:
        raise LoadError(f"{path}: shape mismatch: the VAE takes {channels}-channel images to {z_dim} latent channels; "
                        f"Qwen-Image-2.1's takes RGBA ({arch21.IMAGE_CHANNELS}) to {arch21.LATENT_CHANNELS}")
    stages = _count(shapes, "encoder.down_blocks.")
    mult = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // base for i in range(stages)]
    out_channels, out_width = shapes["decoder.conv_out.weight"][:2]
    kwargs = dict(
        base_dim=base, decoder_base_dim=out_width // mult[0], z_dim=z_dim, dim_mult=mult,
        num_res_blocks=_count(shapes, "encoder.down_blocks.0.resnets."),
        temperal_downsample=[f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes for i in range(stages - 1)],
        in_channels=channels, out_channels=out_channels,
    )
    return kwargs, dict(kwargs)
