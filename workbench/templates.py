"""Prompt templates as data: render a prompt, tokenize it, and compute what is dropped.

Other tools hard-code "drop 34 tokens" (t2i) and "drop 64" (edit). Here the drop count is the
number of tokens that cover the template's system prefix (everything through ``drop_until``),
found from the tokenizer's character offsets, and it is checked that the kept tokens start exactly
where the user content starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config.schema import TemplateConfig
from workbench.tokenizer import IMAGE_PAD, IMAGE_PAD_ID, control_tokens


class TemplateError(ValueError):
    """A template or prompt cannot be rendered faithfully."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # full text given to the tokenizer (image pads not yet expanded)
    prompt: str
    keep_from_char: int  # first character of the user content (everything before is dropped)


@dataclass(frozen=True)
class TokenizedPrompt:
    input_ids: list[int]
    drop: int  # tokens of the system prefix, dropped from the hidden states
    text: str
    vision_tokens: list[int]  # expanded <|image_pad|> count per image


def render(template: TemplateConfig, prompt: str, num_images: int = 0, tokenizer=None) -> RenderedPrompt:
    """Fill the template's slots; refuse prompts that carry control tokens."""
    if tokenizer is not None:
        found = [t for t in control_tokens(tokenizer) if t in prompt]
        if found:
            raise TemplateError(
                f"prompt contains control token(s) {found}: they would be injected into the template "
                f"'{template.name}' (diffusers' str.format lets them through). Remove them from the prompt"
            )
    if not template.min_images <= num_images <= template.max_images:
        raise TemplateError(
            f"template '{template.name}' takes {template.min_images}-{template.max_images} images, got {num_images}"
        )
    images = "".join(template.image_slot.replace("{n}", str(i + 1)) for i in range(num_images))
    head, tail = template.text.split("{prompt}")
    head, tail = head.replace("{images}", images), tail.replace("{images}", images)
    text = head + prompt + tail
    if template.drop_until is None:
        keep_from = 0
    else:
        keep_from = head.index(template.drop_until) + len(template.drop_until)
    return RenderedPrompt(text=text, prompt=prompt, keep_from_char=keep_from)


def tokenize(
    tokenizer,
    rendered: RenderedPrompt,
    image_grids: list[tuple[int, int, int]] = (),
    merge_size: int = 2,
) -> TokenizedPrompt:
    """Tokenize a rendered prompt, expand each ``<|image_pad|>`` to its vision tokens, count the drop.

    ``image_grids``: (t, h, w) patch grid per image; each pad becomes t*h*w / merge_size**2 tokens.
    """
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=False)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    starts = [s for s, _ in offsets]
    drop = sum(1 for s in starts if s < rendered.keep_from_char)
    if rendered.keep_from_char and drop < len(starts) and starts[drop] != rendered.keep_from_char:
        raise TemplateError(
            "the template prefix and the prompt merge into one token at the boundary "
            f"(char {rendered.keep_from_char}); the kept tokens would not start at the user content. "
            "Start the prompt without leading whitespace/newlines"
        )
    pads = [i for i, t in enumerate(ids) if t == IMAGE_PAD_ID]
    if len(pads) != len(image_grids):
        raise TemplateError(f"{len(pads)} {IMAGE_PAD} slot(s) in the text but {len(image_grids)} image(s)")
    if any(p < drop for p in pads):
        raise TemplateError("an image slot lies inside the dropped system prefix; move it to the user part")
    counts = [t * h * w // merge_size**2 for t, h, w in image_grids]
    expanded: list[int] = []
    last = 0
    for p, n in zip(pads, counts):
        expanded += ids[last:p] + [IMAGE_PAD_ID] * n
        last = p + 1
    expanded += ids[last:]
    return TokenizedPrompt(input_ids=expanded, drop=drop, text=rendered.text, vision_tokens=counts)
