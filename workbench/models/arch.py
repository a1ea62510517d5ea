"""The Qwen-Image 20B family's architecture constants: the one place both the tiny model (``tiny.py``)
and the loaders (``loading/infer.py``, ``loading/load.py``, ``loading/export.py``) read them from.

What the weights' shapes cannot tell lives here: head sizes, RoPE splits, which vision blocks attend
fully, the fixed channel counts, and the scheduler diffusers ships with the model. A second family
gets a module of its own beside this one. Imports nothing heavy: config-time code reads it too.
"""

from __future__ import annotations

from workbench.tokenizer import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID

FAMILY = "qwen-image"

# ----------------------------------------------------------------------------- text encoder (Qwen2.5-VL)
VOCAB_SIZE = 152064  # Qwen2.5-VL embedding rows (the tokenizer's 151665 ids fit inside)
TEXT_HEAD_DIM = 128
MROPE_SECTION = (16, 24, 24)  # mRoPE split of a text head (t, h, w), sums to TEXT_HEAD_DIM / 2
RMS_NORM_EPS = 1e-6
ROPE_THETA = 1000000.0
MAX_POSITIONS = 128000  # the released model's max_position_embeddings
TINY_MAX_POSITIONS = 32768  # the embedded tiny model's (part of its seeded identity: keep)

VISION_HEAD_DIM = 80
VISION_PATCH = 14
VISION_TEMPORAL_PATCH = 2
VISION_MERGE = 2  # 2x2 patches merged into one vision token
VISION_WINDOW = 112
VISION_FULLATT_EVERY = 8  # every 8th vision block attends to the whole image


def rope_parameters(mrope_section) -> dict:
    """Qwen2.5-VL's text RoPE (transformers 5 ``rope_parameters``)."""
    return {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(mrope_section)}


def vision_token_ids() -> dict:
    """The special-token ids a Qwen2_5_VLConfig needs (their strings: ``workbench.tokenizer``)."""
    return dict(image_token_id=IMAGE_PAD_ID, vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID)


def fullatt_blocks(depth: int) -> list[int]:
    """The vision blocks with full attention in a tower of ``depth`` blocks (7, 15, 23, 31 at 32)."""
    return [i for i in range(depth) if i % VISION_FULLATT_EVERY == VISION_FULLATT_EVERY - 1]


# ----------------------------------------------------------------------------- diffusion transformer
PATCH_SIZE = 2  # 2x2 latent patches per image token
LATENT_CHANNELS = 16  # the Wan 2.1 VAE's z_dim
IN_CHANNELS = LATENT_CHANNELS * PATCH_SIZE * PATCH_SIZE  # 64
OUT_CHANNELS = LATENT_CHANNELS
ROPE_AXES = (16, 56, 56)  # the transformer's RoPE split (frame, h, w), sums to its head size of 128

# ----------------------------------------------------------------------------- scheduler
# diffusers' Qwen-Image scheduler config (= ``sampler=flow_euler``'s): dynamic shift, exponential.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)
