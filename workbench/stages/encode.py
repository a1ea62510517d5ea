"""Stage 1: template -> token ids -> Qwen2.5-VL hidden states -> conditioning.

Differs from diffusers 0.42.1 on purpose in two places:
- the drop count comes from the template (``workbench.templates``), not a constant;
- with images, ``mm_token_type_ids`` is passed so transformers 5 computes the 3-D mRoPE positions
  of the vision tokens (diffusers' edit pipelines omit it and silently get 1-D positions).
"""

from __future__ import annotations

import torch
from PIL import Image

from workbench.conditioning import Conditioning, pad_stack
from workbench.config import TemplateConfig
from workbench.templates import render, tokenize
from workbench.tokenizer import IMAGE_PAD_ID
from workbench.vision import VisionInput, preprocess

PAD_ID = 151643  # <|endoftext|>, the Qwen pad token


@torch.no_grad()
def encode_prompts(
    tokenizer,
    text_encoder,
    template: TemplateConfig,
    prompts: list[str],
    images: list[Image.Image] = (),
    max_sequence_length: int = 1024,
    resample: str = "bicubic",
) -> Conditioning:
    """Encode a batch of prompts (all with the same reference images) into one ``Conditioning``."""
    vision: VisionInput | None = preprocess(list(images), resample=resample) if images else None
    grids = vision.grids if vision else []
    tokenized = [tokenize(tokenizer, render(template, p, len(grids), tokenizer), grids) for p in prompts]

    device = text_encoder.device
    length = max(len(t.input_ids) for t in tokenized)
    input_ids = torch.full((len(prompts), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, t in enumerate(tokenized):  # right padding, like the HF tokenizer
        input_ids[i, : len(t.input_ids)] = torch.tensor(t.input_ids)
        attention_mask[i, : len(t.input_ids)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    kwargs = {}
    if vision is not None:
        n = len(prompts)  # every prompt carries the same images
        kwargs = dict(
            pixel_values=vision.pixel_values.repeat(n, 1).to(device, text_encoder.dtype),
            image_grid_thw=torch.tensor(grids * n, device=device),
            mm_token_type_ids=(input_ids == IMAGE_PAD_ID).int(),
        )
    out = text_encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    hidden = out.hidden_states[-1]  # (B, L, D) after the final norm

    rows = [hidden[i, : len(t.input_ids)][t.drop :][:max_sequence_length] for i, t in enumerate(tokenized)]
    embeds, mask = pad_stack(rows)
    return Conditioning(
        embeds=embeds,
        mask=mask,
        token_ids=[t.input_ids[t.drop :][:max_sequence_length] for t in tokenized],
        drop=[t.drop for t in tokenized],
        template=template.name,
        prompts=list(prompts),
        image_grids=grids,
    )


def truncation_notes(tokenizer, template: TemplateConfig, cond: Conditioning, max_sequence_length: int,
                     label: str = "prompt") -> dict[int, str]:
    """{item index: note} for the prompts of ``cond`` that ``encode_prompts`` cut at ``max_sequence_length``
    (tokens after the dropped system prefix, vision tokens included): a cut prompt loses its end
    without any error, so the run says it in the image's notes. Only items that reached the limit
    are tokenized again."""
    notes = {}
    for i, ids in enumerate(cond.token_ids):
        if len(ids) < max_sequence_length:
            continue
        grids = list(cond.image_grids)
        full = tokenize(tokenizer, render(template, cond.prompts[i], len(grids), tokenizer), grids)
        total = len(full.input_ids) - full.drop
        if total > max_sequence_length:
            name = f"prompt {i} (prompts[{i}])" if label == "prompt" else label
            notes[i] = (f"{name}: truncated from {total} to {max_sequence_length} tokens (max_sequence_length); "
                        "shorten it or raise max_sequence_length (at most 4096)")
    return notes
