"""The ``template`` group (conf/template/): a prompt template as data, with its value checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from workbench.config.common import MISSING
from workbench.errors import ConfigError
from workbench.tokenizer import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START  # the strings only


class ControlTokens(str, Enum):
    refuse = "refuse"  # a prompt holding special-token text (<|im_end|>...) is an error
    escape = "escape"  # such text is tokenized as plain BPE pieces, never as control ids


_IM = (IM_START, IM_END)
_VISION = (VISION_START, VISION_END)
_IMAGE_PAD = IMAGE_PAD


def _special_sequence(text: str, tokens: tuple[str, ...]) -> list[str]:
    """The occurrences of ``tokens`` in ``text``, in order."""
    return re.findall("|".join(re.escape(t) for t in tokens), text)


def _check_special_balance(t: "TemplateConfig") -> None:
    r"""Unbalanced chat / vision markers silently change what the model sees: refuse them at load time.

    ``<|im_start|>`` / ``<|im_end|>`` must alternate; only the last block may stay open (the
    ``<|im_start|>assistant\n`` generation prompt of the official templates). ``<|vision_start|>`` /
    ``<|vision_end|>`` must pair up exactly, in ``image_slot`` and in ``text``; an image slot holds
    exactly one ``<|image_pad|>`` inside its vision pair.
    """
    opened = False
    for tok in _special_sequence(t.text, _IM):
        if tok == _IM[0] and opened:
            raise ConfigError(
                f"template '{t.name}': key 'text' opens {_IM[0]} twice without {_IM[1]} in between; "
                f"close each block with {_IM[1]} (only the last, e.g. '{_IM[0]}assistant\\n', may stay open)"
            )
        if tok == _IM[1] and not opened:
            raise ConfigError(
                f"template '{t.name}': key 'text' has {_IM[1]} without a matching {_IM[0]} before it; "
                f"open the block with {_IM[0]} or remove the {_IM[1]}"
            )
        opened = tok == _IM[0]
    for key, text in (("image_slot", t.image_slot), ("text", t.text)):
        if key == "image_slot" and t.max_images == 0:
            continue  # the slot is never used
        inside = False
        for tok in _special_sequence(text, _VISION + (_IMAGE_PAD,)):
            if tok == _IMAGE_PAD and not inside:
                raise ConfigError(
                    f"template '{t.name}': key '{key}' has {_IMAGE_PAD} outside a "
                    f"{_VISION[0]}...{_VISION[1]} pair; write '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
                )
            if tok == _VISION[0] and inside or tok == _VISION[1] and not inside:
                raise ConfigError(
                    f"template '{t.name}': key '{key}' has unbalanced {_VISION[0]} / {_VISION[1]}; "
                    f"write each image as '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
                )
            if tok in _VISION:
                inside = tok == _VISION[0]
        if inside:
            raise ConfigError(
                f"template '{t.name}': key '{key}' has {_VISION[0]} without {_VISION[1]}; "
                f"write each image as '{_VISION[0]}{_IMAGE_PAD}{_VISION[1]}'"
            )
    if t.max_images > 0 and t.image_slot.count(_IMAGE_PAD) != 1:
        raise ConfigError(
            f"template '{t.name}': key 'image_slot' must hold exactly one {_IMAGE_PAD} (one per image), "
            f"found {t.image_slot.count(_IMAGE_PAD)}"
        )
    if _IMAGE_PAD in t.text:
        raise ConfigError(
            f"template '{t.name}': key 'text' holds {_IMAGE_PAD} itself; put image slots in 'image_slot' "
            "and reference them with '{images}'"
        )


@dataclass
class TemplateConfig:
    r"""A prompt template as data.

    ``text`` holds one ``{prompt}`` slot and, for edit templates, one ``{images}`` slot that is
    filled with ``image_slot`` once per reference image (``{n}`` = 1-based image number), the slots
    joined by ``image_separator``.
    Everything up to and including ``drop_until`` (first occurrence) is the system prefix whose
    hidden states are dropped; ``null`` keeps every token. The drop count is computed by the
    tokenizer, never written down. ``drop_until`` may be any marker string, not only the official
    ``<|im_start|>user\n``: a custom template such as ``"### Task: draw.\n### Prompt:\n{prompt}"``
    with ``drop_until: "### Prompt:\n"`` drops exactly the tokens covering ``### Task: draw.\n###
    Prompt:\n`` (the tokenizer must place a token boundary right after the marker; see templates.py).

    ``control_tokens`` says what happens to a prompt that contains special-token text such as
    ``<|im_end|>``: ``refuse`` (an error naming the tokens) or ``escape`` (the prompt is tokenized
    as plain text: ``<|im_end|>`` becomes ordinary BPE pieces, never the control id).

    From a notebook cell, build one directly and pass it to ``Workbench.encode``::

        from workbench.config import TemplateConfig
        mine = TemplateConfig(
            name="terse",
            text="<|im_start|>system\nDraw exactly this.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n",
        )
        cond = bench.encode(["a red fox"], mine)   # drop count computed from the text: 12 tokens

    or load one from YAML with ``workbench.config.build.load_template(path)``.
    """

    name: str = MISSING
    text: str = MISSING
    image_slot: str = "<|vision_start|><|image_pad|><|vision_end|>"
    image_separator: str = ""  # between consecutive image slots (Qwen-Image-2.1: " ")
    drop_until: Optional[str] = "<|im_start|>user\n"
    min_images: int = 0
    max_images: int = 0
    control_tokens: ControlTokens = ControlTokens.refuse
    # the model family it was written for (``Variant.family``), or ``any`` (no family's text: raw, chat). A run
    # refuses another family's template unless it says so (template.family=<the model's family>): picking a
    # model never silently runs the other family's template, and a cross-family ablation stays one key away
    family: str = "qwen-image"

    def __post_init__(self) -> None:
        try:
            self.control_tokens = ControlTokens(self.control_tokens)  # a plain string from a notebook cell
        except ValueError:
            raise ConfigError(
                f"template '{self.name}': control_tokens={self.control_tokens!r}; expected one of "
                f"{[m.value for m in ControlTokens]} (template.control_tokens=refuse|escape)"
            ) from None
        if self.family not in ("qwen-image", "qwen-image-2.1", "any"):
            raise ConfigError(f"template '{self.name}': family={self.family!r}; expected qwen-image (the 20B family), "
                              "qwen-image-2.1 or any (a template of no family's text)")
        if self.text.count("{prompt}") != 1:
            raise ConfigError(
                f"template '{self.name}': key 'text' must contain exactly one '{{prompt}}' slot, "
                f"found {self.text.count('{prompt}')}"
            )
        has_images = "{images}" in self.text
        if self.max_images > 0 and not has_images:
            raise ConfigError(
                f"template '{self.name}': max_images={self.max_images} but key 'text' has no "
                "'{images}' slot; add one or set max_images: 0"
            )
        if has_images and self.max_images == 0:
            raise ConfigError(
                f"template '{self.name}': key 'text' has an '{{images}}' slot but max_images is 0; "
                "set min_images / max_images"
            )
        if self.min_images > self.max_images:
            raise ConfigError(
                f"template '{self.name}': min_images={self.min_images} > max_images={self.max_images}"
            )
        if self.drop_until is not None and self.drop_until not in self.text:
            raise ConfigError(
                f"template '{self.name}': drop_until {self.drop_until!r} does not occur in key 'text'; "
                "use the marker that ends the system prefix, or null to keep every token"
            )
        if self.drop_until is not None and self.text.index(self.drop_until) > self.text.index("{prompt}"):
            raise ConfigError(
                f"template '{self.name}': drop_until {self.drop_until!r} comes after '{{prompt}}' in key "
                "'text'; the dropped prefix must end before the prompt"
            )
        _check_special_balance(self)
