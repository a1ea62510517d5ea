"""The keys a sweep groups and caches cells by: pure functions of a cell's resolved config (a leaf module).

    config_hash         the cell cache folder (same config -> same folder, whatever executor ran it)
    model_group_key     the resident weights a cell needs: cells sharing it run one after another
    conditioning_key    what its conditioning depends on: cells sharing it encode once
"""

from __future__ import annotations

import hashlib
import json

CACHE_VERSION = "sweep-cell-v2"  # bump when what a cell writes changes (v2: the run record and image names)


def config_hash(resolved: dict) -> str:
    """Hash of a resolved config: the cell cache key (same config -> same folder)."""
    text = json.dumps({"v": CACHE_VERSION, "config": resolved}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_group_key(resolved: dict) -> str:
    """What a set of resident weights is built from: cells with the same key share them."""
    return json.dumps([resolved["model"], resolved["precision"], resolved["device"]], sort_keys=True)


def conditioning_key(resolved: dict) -> str:
    """What the conditioning depends on: template, prompts, images (and their sizing), model, encoder dtype."""
    r = resolved
    guided = r["sampler"]["cfg"] > 1
    parts = {
        "template": r["template"],
        "prompts": r["prompts"],
        "negative": r["negative_prompt"] if guided else None,
        "images": r["images"],
        "reference": r["reference"] if r["images"] else None,
        "model": r["model"],
        "dtype": [r["precision"]["text_encoder"], r["precision"]["vae"] if r["images"] else None],
        "device": r["device"],
        "max_sequence_length": r["max_sequence_length"],
    }
    return json.dumps(parts, sort_keys=True)


def is_executor_key(key: str) -> bool:
    """``executor`` / ``executor.*`` (with Hydra's ``+`` / ``~``): where cells run, never what they are."""
    key = key.strip().lstrip("+~")
    return key == "executor" or key.startswith("executor.")
