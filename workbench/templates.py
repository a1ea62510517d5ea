"""Prompt templates as data: render a prompt, tokenize it, and compute what is dropped.

Other tools hard-code "drop 34 tokens" (t2i) and "drop 64" (edit). Here the drop count is the
number of tokens that cover the template's system prefix (everything through ``drop_until``, the
official ``<|im_start|>user\n`` or any marker a custom template names), found from the tokenizer's
character offsets, and it is checked that the kept tokens start exactly where the user content starts.

Templates come from ``conf/template/*.yaml`` (``template=NAME``), from any YAML file
(``workbench.config.build.load_template(path)``, ``workbench tokens --template-file PATH``) or from a notebook cell
(``TemplateConfig(name=..., text=...)``); all are validated by ``TemplateConfig``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from workbench.config.template import ControlTokens, TemplateConfig
from workbench.errors import InputError
from workbench.tokenizer import IMAGE_PAD, IMAGE_PAD_ID, control_tokens


class TemplateError(InputError):
    """A template or prompt cannot be rendered faithfully."""


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # full text given to the tokenizer (image pads not yet expanded)
    prompt: str
    keep_from_char: int  # first character of the user content (everything before is dropped)
    prompt_span: tuple[int, int] = (0, 0)  # [start, end) of the prompt in ``text``
    escape: bool = False  # tokenize the prompt's special-token text as plain text
    template: str = ""  # the template's name and drop_until marker, to word boundary errors
    drop_until: str | None = None


@dataclass(frozen=True)
class TokenizedPrompt:
    input_ids: list[int]
    drop: int  # tokens of the system prefix, dropped from the hidden states
    text: str
    vision_tokens: list[int]  # expanded <|image_pad|> count per image


def _special_pattern(tokens) -> re.Pattern:
    """Leftmost-longest match of every added token, as the tokenizer splits them out."""
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def injected_control_tokens(template: TemplateConfig, prompt: str, tokens, images: str = "") -> list[str]:
    """Control tokens (of ``tokens``) that ``prompt`` would inject into ``template``: inside the
    prompt, or formed together with the template text around it. Empty when the template escapes."""
    if ControlTokens(template.control_tokens) == ControlTokens.escape:
        return []
    head, tail = template.text.split("{prompt}")
    head = head.replace("{images}", images)
    text, span = head + prompt + tail.replace("{images}", images), (len(head), len(head) + len(prompt))
    return sorted({m.group() for m in _special_pattern(tokens).finditer(text) if m.end() > span[0] and m.start() < span[1]})


def control_token_error(template: TemplateConfig, found: list[str], key: str = "prompt") -> TemplateError:
    return TemplateError(
        f"{key} contains control token(s) {found}: they would be injected into the template "
        f"'{template.name}' (diffusers' str.format lets them through). Remove them from the prompt, "
        "or set template.control_tokens=escape to encode them as plain text"
    )


def check_prompts(template: TemplateConfig, prompts: dict[str, str]) -> None:
    """Config-time check (before any model loads) of ``{key: prompt}`` against the vendored
    tokenizer's control tokens, the same added tokens every Qwen2.5-VL tokenizer has."""
    from workbench.tokenizer import vendored_control_tokens

    for key, prompt in prompts.items():
        found = injected_control_tokens(template, prompt, vendored_control_tokens())
        if found:
            raise control_token_error(template, found, key)


def render(template: TemplateConfig, prompt: str, num_images: int = 0, tokenizer=None) -> RenderedPrompt:
    """Fill the template's slots; refuse (or mark for escaping) prompts that carry control tokens."""
    if not template.min_images <= num_images <= template.max_images:
        raise TemplateError(
            f"template '{template.name}' takes {template.min_images}-{template.max_images} images, got {num_images}"
        )
    images = template.image_separator.join(template.image_slot.replace("{n}", str(i + 1)) for i in range(num_images))
    head, tail = template.text.split("{prompt}")
    head, tail = head.replace("{images}", images), tail.replace("{images}", images)
    text = head + prompt + tail
    span = (len(head), len(head) + len(prompt))
    escape = ControlTokens(template.control_tokens) == ControlTokens.escape
    if tokenizer is not None:
        found = injected_control_tokens(template, prompt, control_tokens(tokenizer), images)
        if found:
            raise control_token_error(template, found)
    if template.drop_until is None:
        keep_from = 0
    else:
        keep_from = head.index(template.drop_until) + len(template.drop_until)
    return RenderedPrompt(text=text, prompt=prompt, keep_from_char=keep_from, prompt_span=span, escape=escape,
                          template=template.name, drop_until=template.drop_until)


def plain_tokenizer(tokenizer):
    """The tokenizer's byte-level BPE without its added tokens: any text -> ordinary pieces only.

    Built once per tokenizer from its ``tokenizers`` JSON with ``added_tokens`` emptied; used to
    encode a prompt's ``<|im_end|>`` as ``<``, ``|``, ``im``, ``_end``... instead of id 151645.
    """
    cached = getattr(tokenizer, "_workbench_plain_bpe", None)
    if cached is not None:
        return cached
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TemplateError(
            f"template.control_tokens=escape needs a fast (tokenizers) tokenizer, got {type(tokenizer).__name__}; "
            "use template.control_tokens=refuse"
        )
    spec = json.loads(backend.to_str())
    spec["added_tokens"] = []
    plain = Tokenizer.from_str(json.dumps(spec))
    tokenizer._workbench_plain_bpe = plain
    return plain


def _encode_escaped(tokenizer, rendered: RenderedPrompt) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize like the tokenizer does (added tokens split out first, BPE on the runs between them),
    except that only the template's own added tokens count: special-token text in the prompt stays
    plain text. For a prompt without such text this gives exactly the ids of a normal call."""
    text, (p0, p1) = rendered.text, rendered.prompt_span
    pattern = _special_pattern(control_tokens(tokenizer))
    specials = [(m.start(), m.end()) for m in pattern.finditer(text, 0, p0)]
    specials += [(p1 + m.start(), p1 + m.end()) for m in pattern.finditer(text[p1:])]
    plain = plain_tokenizer(tokenizer)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []

    def plain_run(start: int, end: int) -> None:
        if end > start:
            enc = plain.encode(text[start:end], add_special_tokens=False)
            ids.extend(enc.ids)
            offsets.extend((start + a, start + b) for a, b in enc.offsets)

    last = 0
    for start, end in specials:
        plain_run(last, start)
        ids.append(tokenizer.convert_tokens_to_ids(text[start:end]))
        offsets.append((start, end))
        last = end
    plain_run(last, len(text))
    return ids, offsets


def _boundary_error(rendered: RenderedPrompt, token: tuple[int, int]) -> TemplateError:
    """The token ``token`` = (start, end) spans the end of the dropped prefix: say whose fault it is.

    Inside the template's own text (or joined with a prompt that starts like any prompt would), the
    template's ``drop_until`` is to blame; a prompt starting with whitespace that merges with the
    marker's last characters is the prompt's."""
    text, k, (p0, _) = rendered.text, rendered.keep_from_char, rendered.prompt_span
    start, end = token
    piece, marker, name = text[start:end], rendered.drop_until, rendered.template or "?"
    if end <= p0 or k < p0:  # the token lies in the template's text: the marker cuts it
        return TemplateError(
            f"template '{name}': drop_until {marker!r} ends inside the token {piece!r} of the template text, so "
            f"no token boundary follows the marker and the dropped prefix cannot end there. End drop_until "
            f"where a token ends: {marker + text[k:end]!r} (through that token) or {marker[: len(marker) - (k - start)]!r} "
            "(before it)"
        )
    if rendered.prompt[:1].isspace():
        return TemplateError(
            f"the template prefix and the prompt merge into one token {piece!r} at the boundary (char {k}): the "
            f"prompt starts with whitespace that joins the end of drop_until {marker!r} (template '{name}'), so "
            "the kept tokens would not start at the user content. Start the prompt without leading whitespace/newlines"
        )
    return TemplateError(
        f"template '{name}': drop_until {marker!r} ends with {text[start:k]!r}, which the tokenizer joins with the "
        f"start of the prompt into the token {piece!r}, so the dropped prefix cannot end at the marker. End "
        "drop_until after a character the tokenizer always splits after, e.g. a newline as in '<|im_start|>user\\n'"
    )


def check_boundary(template: TemplateConfig, tokenizer=None) -> None:
    """Tokenize ``template`` with a plain probe prompt: a ``drop_until`` that ends inside a token (or
    merges with any prompt) fails here, at config time, naming the template and the marker."""
    if template.drop_until is None:
        return
    if tokenizer is None:
        from workbench.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    n = template.min_images
    tokenize(tokenizer, render(template, "a", n, tokenizer), [(1, 2, 2)] * n)


def tokenize(
    tokenizer,
    rendered: RenderedPrompt,
    image_grids: list[tuple[int, int, int]] = (),
    merge_size: int = 2,
) -> TokenizedPrompt:
    """Tokenize a rendered prompt, expand each ``<|image_pad|>`` to its vision tokens, count the drop.

    ``image_grids``: (t, h, w) patch grid per image; each pad becomes t*h*w / merge_size**2 tokens.
    """
    if rendered.escape:
        ids, offsets = _encode_escaped(tokenizer, rendered)
    else:
        enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    starts = [s for s, _ in offsets]
    drop = sum(1 for s in starts if s < rendered.keep_from_char)
    k = rendered.keep_from_char
    # a token that starts in the prefix and ends after it: the kept tokens would not start at the user
    # content (also when it is the last token, so that nothing would be kept of the prompt's start)
    if k and drop and (offsets[drop - 1][1] > k or drop < len(starts) and starts[drop] != k):
        raise _boundary_error(rendered, offsets[drop - 1])
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
