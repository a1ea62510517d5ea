"""The embedded Qwen-Image-2.1 models: the real 2.1 classes at tiny sizes, seeded random weights.

Same sizes block (``model.tiny``) and seeding rules as the 20B family's ``tiny.py`` (seed, seed+1,
seed+2 for encoder, transformer, VAE), mapped onto ``Qwen3VLForConditionalGeneration``,
``QwenImage21Transformer2DModel`` and ``AutoencoderKLQwenImage21``.
"""

from __future__ import annotations

from workbench.config import ModelConfig, TinySpec
from workbench.models import arch21
from workbench.models.tiny import _seeded, check_rope_sizes


def text_encoder_config(spec: TinySpec):
    from transformers import Qwen3VLConfig

    check_rope_sizes(spec)
    t, v = spec.text_encoder, spec.vision
    head_dim = t.hidden_size // t.num_heads
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=arch21.VOCAB_SIZE,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=arch21.RMS_NORM_EPS,
            max_position_embeddings=arch21.TINY_MAX_POSITIONS,
            rope_parameters=arch21.rope_parameters(t.mrope_section),
        ),
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            out_hidden_size=t.hidden_size,
            patch_size=arch21.VISION_PATCH,
            spatial_merge_size=arch21.VISION_MERGE,
            temporal_patch_size=arch21.VISION_TEMPORAL_PATCH,
            deepstack_visual_indexes=list(arch21.TINY_DEEPSTACK),
            num_position_embeddings=arch21.TINY_VISION_POSITIONS,
        ),
        **arch21.vision_token_ids(),
    )


def build_text_encoder(cfg: ModelConfig):
    from transformers import Qwen3VLForConditionalGeneration

    config = text_encoder_config(cfg.tiny)
    return _seeded(cfg.seed, lambda: Qwen3VLForConditionalGeneration(config)).eval()


def build_transformer(cfg: ModelConfig):
    from diffusers import QwenImage21Transformer2DModel

    check_rope_sizes(cfg.tiny)
    s = cfg.tiny.transformer
    return _seeded(
        cfg.seed + 1,
        lambda: QwenImage21Transformer2DModel(
            patch_size=arch21.PATCH_SIZE,
            in_channels=arch21.LATENT_CHANNELS,
            out_channels=arch21.LATENT_CHANNELS,
            num_layers=s.num_layers,
            attention_head_dim=s.head_dim,
            num_attention_heads=s.num_heads,
            context_in_dim=cfg.tiny.text_encoder.hidden_size,
            axes_dims_rope=tuple(s.axes_dims_rope),
        ),
    ).eval()


def build_vae(cfg: ModelConfig, stats=None):
    """z_dim, dim_mult, temporal flags, latents_mean / std: the real 2.1 VAE's (diffusers defaults)."""
    from diffusers import AutoencoderKLQwenImage21

    s = cfg.tiny.vae
    return _seeded(
        cfg.seed + 2,
        lambda: AutoencoderKLQwenImage21(base_dim=s.base_dim, decoder_base_dim=s.base_dim,
                                         num_res_blocks=s.num_res_blocks, **(stats or {})),
    ).eval()
