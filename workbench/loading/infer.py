"""Architectures inferred from tensor shapes, so one loader serves the 20 B files and the tiny ones.

Widths, depths, vocab and channel counts are read off the shapes. What shapes cannot tell (the head
size that splits a width into heads, the RoPE axis split, which vision blocks use full attention)
comes from ``rules``: "real" = Qwen-Image's values (text heads of 128, vision heads of 80, RoPE
16+56+56, mRoPE 16+24+24, full attention every 8th vision block); "tiny" = the sizes in
``model.tiny`` (the embedded test model). Each function returns its kwargs and a report of what
was inferred and from where.
"""

from __future__ import annotations

import math
import re

from workbench.config import TinySpec
from workbench.loading.errors import LoadError, few
from workbench.models import arch


def _count(shapes: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for m in map(pat.match, shapes) if m})


def _need(shapes: dict, path, what: str, *names: str) -> None:
    missing = [n for n in names if n not in shapes]
    if missing:
        raise LoadError(f"{path}: {what} is missing tensors {few(missing)}; the file is incomplete or of another model")


def _split(width: int, head_dim: int, path, what: str, rules: str) -> int:
    if width % head_dim:
        hint = "; for the tiny test model set model.arch_rules=tiny" if rules == "real" else ""
        raise LoadError(
            f"{path}: cannot split the {what} width {width} into heads of {head_dim} "
            f"(arch_rules={rules}): not the architecture those rules describe{hint}"
        )
    return width // head_dim


def text_encoder(shapes: dict, rules: str, tiny: TinySpec, path) -> tuple[dict, dict, dict]:
    """(text_config, vision_config, report) for transformers' Qwen2_5_VLConfig; names are transformers 5."""
    lm, vis = "model.language_model.", "model.visual."
    _need(shapes, path, "the text encoder", lm + "embed_tokens.weight", lm + "layers.0.self_attn.q_proj.weight",
          lm + "layers.0.mlp.gate_proj.weight", vis + "patch_embed.proj.weight", vis + "blocks.0.mlp.gate_proj.weight",
          vis + "merger.mlp.0.weight", vis + "merger.mlp.2.weight")
    vocab, hidden = shapes[lm + "embed_tokens.weight"]
    if rules == "real":
        head_dim, mrope, v_head = arch.TEXT_HEAD_DIM, list(arch.MROPE_SECTION), arch.VISION_HEAD_DIM
    else:
        head_dim, mrope = tiny.text_encoder.hidden_size // tiny.text_encoder.num_heads, list(tiny.text_encoder.mrope_section)
        v_head = tiny.vision.hidden_size // tiny.vision.num_heads
    q_rows = shapes[lm + "layers.0.self_attn.q_proj.weight"][0]
    k_rows = shapes[lm + "layers.0.self_attn.k_proj.weight"][0]
    heads = _split(q_rows, head_dim, path, "text attention", rules)
    kv_heads = _split(k_rows, head_dim, path, "text key/value", rules)
    v_hidden, _, t_patch, patch, _ = shapes[vis + "patch_embed.proj.weight"]
    depth = _count(shapes, vis + "blocks.")
    merge = math.isqrt(shapes[vis + "merger.mlp.0.weight"][1] // v_hidden)
    fullatt = arch.fullatt_blocks(depth) if rules == "real" else list(tiny.vision.fullatt_block_indexes)
    text = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes[lm + "layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=_count(shapes, lm + "layers."), num_attention_heads=heads, num_key_value_heads=kv_heads,
        rms_norm_eps=arch.RMS_NORM_EPS, max_position_embeddings=arch.MAX_POSITIONS,
        rope_parameters=arch.rope_parameters(mrope),
        tie_word_embeddings="lm_head.weight" not in shapes,
    )
    vision = dict(
        depth=depth, hidden_size=v_hidden, intermediate_size=shapes[vis + "blocks.0.mlp.gate_proj.weight"][0],
        num_heads=_split(v_hidden, v_head, path, "vision attention", rules),
        out_hidden_size=shapes[vis + "merger.mlp.2.weight"][0], patch_size=patch, spatial_merge_size=merge,
        temporal_patch_size=t_patch, window_size=arch.VISION_WINDOW, fullatt_block_indexes=fullatt,
    )
    report = {
        "layers": text["num_hidden_layers"], "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
        "head_dim": f"{head_dim} (arch_rules={rules})", "mrope_section": mrope, "vocab": vocab,
        "vision_depth": depth, "vision_hidden": v_hidden, "vision_heads": vision["num_heads"],
        "vision_fullatt_blocks": fullatt, "lm_head": "in file" if "lm_head.weight" in shapes else "absent: tied to embeddings (unused for conditioning)",
    }
    return text, vision, report


def transformer(shapes: dict, rules: str, tiny: TinySpec, path) -> tuple[dict, dict]:
    """QwenImageTransformer2DModel kwargs (zero_cond_t is set by the caller from the markers)."""
    _need(shapes, path, "the diffusion transformer", "img_in.weight", "txt_in.weight", "proj_out.weight",
          "transformer_blocks.0.attn.norm_q.weight")
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    inner, in_channels = shapes["img_in.weight"]
    out_channels = shapes["proj_out.weight"][0] // arch.PATCH_SIZE**2
    if in_channels != arch.IN_CHANNELS or out_channels != arch.OUT_CHANNELS:
        raise LoadError(
            f"{path}: shape mismatch: img_in takes {in_channels} and proj_out gives {out_channels * 4} channels; "
            "Qwen-Image's transformer has 64 / 64 (16 latent channels x 2x2 patches)"
        )
    axes = list(arch.ROPE_AXES) if rules == "real" else list(tiny.transformer.axes_dims_rope)
    if sum(axes) != head_dim:
        hint = "; for the tiny test model set model.arch_rules=tiny" if rules == "real" else ""
        raise LoadError(f"{path}: RoPE axes {axes} (arch_rules={rules}) do not sum to the head size {head_dim} read from norm_q{hint}")
    kwargs = dict(
        patch_size=arch.PATCH_SIZE, in_channels=in_channels, out_channels=out_channels,
        num_layers=_count(shapes, "transformer_blocks."), attention_head_dim=head_dim,
        num_attention_heads=_split(inner, head_dim, path, "transformer attention", rules),
        joint_attention_dim=shapes["txt_in.weight"][1], axes_dims_rope=tuple(axes),
    )
    report = {k: kwargs[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim", "joint_attention_dim")}
    report["axes_dims_rope"] = f"{axes} (arch_rules={rules})"
    return kwargs, report


def vae(shapes: dict, path) -> tuple[dict, dict]:
    """AutoencoderKLQwenImage kwargs from diffusers-named shapes (latent stats stay the real ones)."""
    _need(shapes, path, "the VAE", "encoder.conv_in.weight", "post_quant_conv.weight")
    base = shapes["encoder.conv_in.weight"][0]
    z_dim = shapes["post_quant_conv.weight"][0]
    if z_dim != arch.LATENT_CHANNELS:
        raise LoadError(
            f"{path}: shape mismatch: the VAE has {z_dim} latent channels (post_quant_conv {shapes['post_quant_conv.weight']}); "
            "Qwen-Image uses 16 (the Wan 2.1 VAE); a 48-channel file is the Wan 2.2 VAE"
        )
    n = _count(shapes, "encoder.down_blocks.")
    if n < 7 or (n - 3) % 4:
        raise LoadError(f"{path}: {n} encoder down blocks; a Qwen-Image VAE has 4 x num_res_blocks + 3")
    nrb = (n - 3) // 4
    mult = [shapes[f"encoder.down_blocks.{s * (nrb + 1)}.conv1.weight"][0] // base for s in range(4)]
    temporal = [f"encoder.down_blocks.{s * (nrb + 1) + nrb}.time_conv.weight" in shapes for s in range(3)]
    kwargs = dict(base_dim=base, z_dim=z_dim, dim_mult=mult, num_res_blocks=nrb, temperal_downsample=temporal)
    return kwargs, dict(kwargs)


def arch_rules_for(shapes: dict) -> str:
    """The ``model.arch_rules`` a single transformer file needs: heads of the family's size (read off
    ``norm_q``) mean its real rules, anything else is the tiny test model's shape. ``shapes``: names
    without a checkpoint prefix (``keys.strip_dit_prefix``)."""
    head = shapes.get("transformer_blocks.0.attn.norm_q.weight", (sum(arch.ROPE_AXES),))[0]
    return "real" if head == sum(arch.ROPE_AXES) else "tiny"
