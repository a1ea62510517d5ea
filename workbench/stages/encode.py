"""Stage 1: template -> token ids -> Qwen2.5-VL hidden states -> conditioning.

Differs from diffusers 0.42.1 on purpose in two places:
- the drop count comes from the template (``workbench.templates``), not a constant;
- with images, ``mm_token_type_ids`` is passed so transformers 5 computes the 3-D mRoPE positions
  of the vision tokens (diffusers' edit pipelines omit it and silently get 1-D positions).

Which hidden state the DiT reads is a switch (``encoder_tap``): ``post_norm`` is ``hidden_states[-1]``,
which transformers 5 records AFTER the final RMSNorm (what diffusers' 20B pipelines read); ``pre_norm``
is the last decoder layer's output before that norm (what diffusers' Qwen-Image-2.1 pipeline restores
with a hook, saying 2.1 was trained on it); ``-k`` (k >= 2) is ``hidden_states[-k]``, an earlier layer.
Nobody has shown which form the 20B models were trained on, so this is a research axis.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from PIL import Image

from workbench.conditioning import Conditioning, pad_stack
from workbench.encoder_memory import inner_model
from workbench.errors import InputError
from workbench.config import TemplateConfig
from workbench.config.run import MAX_SEQUENCE_LENGTH
from workbench.templates import render, tokenize
from workbench.tokenizer import IMAGE_PAD_ID
from workbench.vision import QWEN3_VL, QWEN25_VL, VisionInput, VisionSpec, preprocess

PAD_ID = 151643  # <|endoftext|>, the Qwen pad token


@dataclass(frozen=True)
class EncoderStyle:
    """How a family's pipeline feeds its encoder (what diffusers' pipelines of that family do)."""

    vision: VisionSpec = QWEN25_VL
    padding_side: str = "right"  # of a batch of prompts of different lengths
    empty_prompt: str = ""  # what an empty prompt becomes (Qwen has no BOS: 2.1 sends " ")
    # cut at max_sequence_length (20B), or refuse a prompt whose TEXT is longer (2.1: a cut could split
    # an image's tokens, and condition images alone may exceed the limit)
    truncate: bool = True


QWEN25_STYLE = EncoderStyle()
QWEN3_STYLE = EncoderStyle(vision=QWEN3_VL, padding_side="left", empty_prompt=" ", truncate=False)


@torch.no_grad()
def encode_prompts(
    tokenizer,
    text_encoder,
    template: TemplateConfig,
    prompts: list[str],
    images: list[Image.Image] = (),
    max_sequence_length: int = 1024,
    resample: str = "bicubic",
    tap: str = "post_norm",
    style: EncoderStyle = QWEN25_STYLE,
    device=None,
) -> Conditioning:
    """Encode a batch of prompts (all with the same reference images) into one ``Conditioning``;
    ``tap`` picks the hidden state (module docstring); ``style`` is the family's (``QWEN3_STYLE`` for 2.1);
    ``device``: where the inputs go (default: the encoder's weights' device; a streamed encoder's is the GPU).
    The inner VL model runs (hidden states only: the LM head's logits are never computed)."""
    vision: VisionInput | None = preprocess(list(images), resample=resample, spec=style.vision) if images else None
    grids = vision.grids if vision else []
    prompts = [p or style.empty_prompt for p in prompts]
    tokenized = [tokenize(tokenizer, render(template, p, len(grids), tokenizer), grids) for p in prompts]
    if not style.truncate:
        _check_text_length(tokenized, max_sequence_length)

    device = device or text_encoder.device
    length = max(len(t.input_ids) for t in tokenized)
    input_ids = torch.full((len(prompts), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    starts = [length - len(t.input_ids) if style.padding_side == "left" else 0 for t in tokenized]
    for i, t in enumerate(tokenized):
        input_ids[i, starts[i] : starts[i] + len(t.input_ids)] = torch.tensor(t.input_ids)
        attention_mask[i, starts[i] : starts[i] + len(t.input_ids)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    kwargs = {}
    if vision is not None:
        n = len(prompts)  # every prompt carries the same images
        kwargs = dict(
            # the compute dtype: the embedding table's (``text_encoder.dtype`` reads fp8 under fp8 storage)
            pixel_values=vision.pixel_values.repeat(n, 1).to(device, text_encoder.get_input_embeddings().weight.dtype),
            image_grid_thw=torch.tensor(grids * n, device=device),
            mm_token_type_ids=(input_ids == IMAGE_PAD_ID).int(),
        )
    with _pre_norm_capture(text_encoder, tap) as captured:
        out = inner_model(text_encoder)(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                        **kwargs)
    hidden = captured[0] if captured else tapped(out.hidden_states, tap)  # (B, L, D)

    limit = max_sequence_length if style.truncate else None
    rows = [hidden[i, starts[i] : starts[i] + len(t.input_ids)][t.drop :][:limit] for i, t in enumerate(tokenized)]
    embeds, mask = pad_stack(rows)
    return Conditioning(
        embeds=embeds,
        mask=mask,
        token_ids=[t.input_ids[t.drop :][:limit] for t in tokenized],
        drop=[t.drop for t in tokenized],
        template=template.name,
        prompts=list(prompts),
        image_grids=grids,
    )


def _check_text_length(tokenized, max_sequence_length: int) -> None:
    for i, t in enumerate(tokenized):
        text = sum(1 for token in t.input_ids[t.drop :] if token != IMAGE_PAD_ID)
        if text > max_sequence_length:
            raise InputError(f"prompt {i} has {text} text tokens, over max_sequence_length={max_sequence_length}; this "
                             "model's pipeline does not cut prompts: shorten it or raise max_sequence_length")


def tapped(hidden_states: tuple, tap: str):
    """``post_norm`` -> the last entry (after the final norm); ``-k`` -> ``hidden_states[-k]``."""
    if tap == "post_norm":
        return hidden_states[-1]
    k = int(tap)
    if not 2 <= -k <= len(hidden_states):
        raise InputError(f"encoder_tap={tap}: this text encoder records {len(hidden_states)} hidden states "
                         f"(embeddings + {len(hidden_states) - 1} layers); use -2..-{len(hidden_states)}, "
                         "post_norm or pre_norm")
    return hidden_states[k]


@contextlib.contextmanager
def _pre_norm_capture(text_encoder, tap: str):
    """For ``pre_norm``: the input of the language model's final norm, caught by a forward pre-hook
    (removed on exit); an empty list for every other tap."""
    captured: list = []
    if tap != "pre_norm":
        yield captured
        return
    norm = _final_norm(text_encoder)
    handle = norm.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def _final_norm(text_encoder):
    for path in ("model.language_model.norm", "language_model.norm", "model.norm"):
        module = text_encoder
        for name in path.split("."):
            module = getattr(module, name, None)
        if module is not None:
            return module
    raise InputError(f"encoder_tap=pre_norm: no final norm found in {type(text_encoder).__name__} "
                     "(looked for model.language_model.norm, language_model.norm, model.norm); use post_norm or -k")


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
                        f"shorten it or raise max_sequence_length (at most {MAX_SEQUENCE_LENGTH})")
    return notes
