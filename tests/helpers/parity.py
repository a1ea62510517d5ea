"""Parity with diffusers' own pipelines on the tiny model: the pipeline built from a workbench's
resident components, and the text conditioning a run actually fed its transformer."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def diffusers_pipe(pipeline_class, bench, sampler, **extra):
    """``pipeline_class`` (e.g. ``QwenImagePipeline``) on ``bench``'s modules and ``sampler``'s scheduler;
    ``extra``: the class's other parts (the edit pipelines' VLM ``processor``)."""
    from workbench.stages.schedule import make_scheduler

    c = bench.components
    pipe = pipeline_class(scheduler=make_scheduler(sampler), vae=c.vae, text_encoder=c.text_encoder,
                          tokenizer=c.tokenizer, transformer=c.transformer, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def text_states(transformer) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """(embeds (B, L, D), mask (B, L) bool) of every transformer forward inside the block, in call order:
    what to inject as ``prompt_embeds`` / ``prompt_embeds_mask`` so both sides see the same text."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, _args, kwargs):
        embeds, mask = kwargs["encoder_hidden_states"], kwargs["encoder_hidden_states_mask"]
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        seen.append((embeds.detach().clone(), mask.clone()))

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def max_pixel_difference(a, b) -> int:
    """Largest per-channel difference of two PIL images, in levels of 255 (shapes must agree)."""
    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert x.shape == y.shape, (x.shape, y.shape)
    return int(np.abs(x - y).max())


# Qwen3-VL renders a system message as "<|im_start|>system\n{text}<|im_end|>\n": all diffusers' 2.1 pipeline
# reads from the chat template (its drop count)
SYSTEM_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
               "{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}")


def qwen3_processor(tokenizer, min_pixels: int = 1024):
    """transformers' Qwen3VLProcessor with Qwen3-VL's image processor settings (patch 16, [-1, 1]), for
    diffusers' ``QwenImage21Pipeline``. Its video processor needs torchvision (absent beside the CPU torch
    wheel) and is never used for images, so the class check is skipped for that one missing part.
    ``min_pixels`` is lowered so that the tiny model's 128 px images are not upscaled (Qwen3-VL's own
    minimum is 256^2: diffusers would fail below it, where the workbench does not)."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class NoVideoProcessor(Qwen3VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3, size={"shortest_edge": min_pixels, "longest_edge": 16777216})
    return NoVideoProcessor(image_processor=images, tokenizer=tokenizer, video_processor=None, chat_template=SYSTEM_CHAT)
