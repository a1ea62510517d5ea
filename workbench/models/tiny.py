"""The embedded default: the real Qwen-Image classes at tiny sizes, random weights, fixed seed.

Each component is initialised under its own seed (seed, seed+1, seed+2) inside ``fork_rng`` so
that building it neither depends on nor disturbs the caller's random state, and resizing one
component does not change the weights of the others.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from workbench.config.schema import ModelConfig, TinySpec, Variant
from workbench.tokenizer import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID

VOCAB_SIZE = 152064  # Qwen2.5-VL embedding rows (the tokenizer's 151665 ids fit inside)


def _seeded(seed: int, build):
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build()


@contextmanager
def init_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (model.init_on_device).

    Why: a full-size random model (28 B parameters) does not fit a float32 build on the CPU and
    takes minutes there; on a GPU in bf16 it takes seconds. The weights then come from that
    device's random generator, so they differ from a CPU build (the identity says so).
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def text_encoder_config(spec: TinySpec):
    from transformers import Qwen2_5_VLConfig

    t, v = spec.text_encoder, spec.vision
    head_dim = t.hidden_size // t.num_heads
    if 2 * sum(t.mrope_section) != head_dim:
        raise ValueError(
            f"model.tiny.text_encoder.mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {head_dim // 2}"
        )
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_kv_heads,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(t.mrope_section)},
        ),
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            out_hidden_size=t.hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=list(v.fullatt_block_indexes),
        ),
        image_token_id=IMAGE_PAD_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )


def build_text_encoder(cfg: ModelConfig):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = text_encoder_config(cfg.tiny)
    return _seeded(cfg.seed, lambda: Qwen2_5_VLForConditionalGeneration(config)).eval()


def build_transformer(cfg: ModelConfig):
    from diffusers import QwenImageTransformer2DModel

    s = cfg.tiny.transformer
    if sum(s.axes_dims_rope) != s.head_dim:
        raise ValueError(f"model.tiny.transformer.axes_dims_rope {list(s.axes_dims_rope)} must sum to head_dim={s.head_dim}")
    return _seeded(
        cfg.seed + 1,
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=s.num_layers,
            attention_head_dim=s.head_dim,
            num_attention_heads=s.num_heads,
            joint_attention_dim=cfg.tiny.text_encoder.hidden_size,
            axes_dims_rope=tuple(s.axes_dims_rope),
            zero_cond_t=cfg.variant == Variant.edit_2511,
        ),
    ).eval()


def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKLQwenImage

    s = cfg.tiny.vae
    # z_dim, dim_mult, temporal flags and latents_mean/std are the real model's (diffusers defaults).
    return _seeded(
        cfg.seed + 2,
        lambda: AutoencoderKLQwenImage(base_dim=s.base_dim, num_res_blocks=s.num_res_blocks),
    ).eval()
