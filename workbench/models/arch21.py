"""Qwen-Image-2.1's architecture constants (the second family beside ``arch.py``).

2.1 shares nothing with the 20B family but the tokenizer's BPE: a Qwen3-VL-8B encoder, a ~7B
single-stream block-causal transformer, a 64-channel RGBA VAE that compresses 16x and is read
unpatched. Values are those of diffusers 0.42.1's ``QwenImage21Pipeline`` / model classes and the
Qwen3-VL-8B configuration. Imports nothing heavy: config-time code reads it too.
"""

from __future__ import annotations

from workbench.tokenizer import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID

FAMILY = "qwen-image-2.1"

# ----------------------------------------------------------------------------- text encoder (Qwen3-VL-8B)
VOCAB_SIZE = 151936  # Qwen3-VL embedding rows (the Qwen3 tokenizer's 151669 ids fit inside)
VIDEO_PAD_ID = 151656
TEXT_HIDDEN = 4096  # = the transformer's context_in_dim
MROPE_SECTION = (24, 20, 20)  # interleaved mRoPE split of a text head (t, h, w), sums to head_dim / 2
MAX_POSITIONS = 262144  # the released Qwen3-VL-8B's max_position_embeddings
VISION_HEAD_DIM = 72  # 1152 wide / 16 heads
DEEPSTACK = (8, 16, 24)  # the 8B's vision layers whose features feed the first decoder layers
ROPE_THETA = 5000000.0
RMS_NORM_EPS = 1e-6
TINY_MAX_POSITIONS = 32768
VISION_PATCH = 16
VISION_MERGE = 2
VISION_TEMPORAL_PATCH = 2
VISION_MEAN = (0.5, 0.5, 0.5)  # Qwen3-VL's preprocessor normalises to [-1, 1]
VISION_STD = (0.5, 0.5, 0.5)
TINY_DEEPSTACK = [0]  # vision layers whose features are added to early decoder layers (8B: 8, 16, 24)
TINY_VISION_POSITIONS = 64  # learned vision position table (8B: 2304 = 48 x 48)

# ----------------------------------------------------------------------------- transformer + VAE
LATENT_CHANNELS = 64  # AutoencoderKLQwenImage21 z_dim; the transformer reads latents unpatched
PATCH_SIZE = 1
VAE_SCALE = 16  # one latent token = one 16x16 pixel tile
IMAGE_CHANNELS = 4  # RGBA in and out
SIZE_MULTIPLE = 32  # sides are multiples of 2 x 16 (one encoder image slot = 2x2 latent tokens)
ROPE_AXES = (16, 56, 56)
DIT_HIDDEN = 4096  # 32 heads x 128: the released transformer's width (memory estimates for files)
VAE_DECODER_BASE_DIM = 144  # the released VAE's decoder base width (its encoder's is 96)
SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."


def rope_parameters(mrope_section) -> dict:
    """Qwen3-VL's interleaved mRoPE (transformers 5 ``rope_parameters``)."""
    return {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(mrope_section),
            "mrope_interleaved": True}


def vision_token_ids() -> dict:
    return dict(image_token_id=IMAGE_PAD_ID, video_token_id=VIDEO_PAD_ID, vision_start_token_id=VISION_START_ID,
                vision_end_token_id=VISION_END_ID)
