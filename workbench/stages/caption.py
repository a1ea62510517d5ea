"""Qwen-Image-Layered's caption of its input: with an empty prompt, diffusers' ``QwenImageLayeredPipeline`` asks
the Qwen2.5-VL encoder to describe the image (``get_image_caption``) and generates from that caption. This stage
does the same generation (greedy or as the encoder's ``generation_config`` says, up to 512 new tokens), from the
same instruction text (workbench/assets/layered_caption/, data copied from diffusers) and the same image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from workbench.tokenizer import IMAGE_PAD_ID
from workbench.vision import QWEN25_VL, on_white, preprocess

INSTRUCTIONS = Path(__file__).resolve().parents[1] / "assets" / "layered_caption"
LANGUAGES = ("cn", "en")  # diffusers' use_en_prompt=False / True; False is its default
MAX_NEW_TOKENS = 512  # diffusers' get_image_caption


@lru_cache(maxsize=None)
def instruction(language: str) -> str:
    """The caption instruction in ``language`` (cn | en), with one ``<|image_pad|>`` where the image goes."""
    if language not in LANGUAGES:
        raise ValueError(f"caption language {language!r}: expected one of {LANGUAGES}")
    return (INSTRUCTIONS / f"{language}.txt").read_text(encoding="utf-8")


@torch.no_grad()
def caption_image(tokenizer, text_encoder, image: Image.Image, language: str = "cn", device=None) -> str:
    """The encoder's caption of ``image`` (the sized input Layered splits), decoded without special tokens."""
    vision = preprocess([on_white(image)], spec=QWEN25_VL)
    (t, h, w) = vision.grids[0]
    ids: list[int] = []
    for token in tokenizer(instruction(language)).input_ids:  # the one image pad becomes one id per merged patch
        ids.extend([IMAGE_PAD_ID] * (t * h * w // QWEN25_VL.merge**2) if token == IMAGE_PAD_ID else [token])
    device = device or text_encoder.device
    input_ids = torch.tensor([ids], device=device)
    generated = text_encoder.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=vision.pixel_values.to(device, text_encoder.get_input_embeddings().weight.dtype),
        image_grid_thw=torch.tensor(vision.grids, device=device),
        max_new_tokens=MAX_NEW_TOKENS,
    )
    new = generated[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def caption_empty_prompts(prompts: list[str], tokenizer, text_encoder, image: Image.Image, language: str,
                          device=None) -> dict[int, str]:
    """{prompt index: caption} for the empty prompts (diffusers: None, "" or " "); one caption serves them all."""
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if not empty:
        return {}
    caption = caption_image(tokenizer, text_encoder, image, language, device)
    return dict.fromkeys(empty, caption)
