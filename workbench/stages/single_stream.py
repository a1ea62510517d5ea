"""Stage 3b for Qwen-Image-2.1: one call of the single-stream transformer, with its prefix KV cache.

2.1 reads one joint sequence: the encoder's tokens, in which every ``<|image_pad|>`` slot stands for
2x2 latent tokens of a condition image, then the target image's tokens. Text and condition tokens are
modulated from t = 0 (``causal_condition``), so their keys and values do not change across steps: the
first call of a generation fills a ``QwenImage21KVCache`` ("extract"), later calls recompute only the
target's tokens ("cached"), as diffusers' ``QwenImage21Pipeline(use_kv_cache=True)`` does.
"""

from __future__ import annotations

from typing import Optional

import torch

from workbench.conditioning import Conditioning
from workbench.tokenizer import IMAGE_PAD_ID


def is_single_stream(transformer) -> bool:
    """True for ``QwenImage21Transformer2DModel`` (compiled or not): it alone has ``causal_condition``."""
    return "causal_condition" in getattr(transformer, "config", {})


class PrefixCache:
    """One KV cache per conditioning slot (cond / uncond / batch) for one generation; ``enabled=False``
    runs every step on the whole sequence (``perf.prefix_kv_cache=false``)."""

    def __init__(self, transformer, enabled: bool = True):
        self.enabled = bool(enabled and transformer.config.causal_condition)
        self.blocks = len(transformer.transformer_blocks)
        self.slots: dict = {}

    def get(self, name: str) -> tuple[Optional[object], Optional[str]]:
        """(cache, mode) for the next call on slot ``name``: "extract" the first time, then "cached"."""
        if not self.enabled:
            return None, None
        from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

        if name in self.slots:
            return self.slots[name], "cached"
        self.slots[name] = QwenImage21KVCache(self.blocks)
        return self.slots[name], "extract"


def image_slots(cond: Conditioning, target_tokens: int) -> torch.Tensor:
    """(B, L + target/4) bool: True at the encoder's image slots, then one slot per 2x2 target tokens."""
    rows = torch.zeros(cond.mask.shape, dtype=torch.bool)
    for i, ids in enumerate(cond.token_ids):
        rows[i, : len(ids)] = torch.tensor(ids) == IMAGE_PAD_ID
    target = torch.ones(rows.shape[0], target_tokens // 4, dtype=torch.bool)
    return torch.cat([rows, target], dim=1).to(cond.embeds.device)


def call(transformer, latents: torch.Tensor, cond: Conditioning, timestep: torch.Tensor,
         img_shapes: list[tuple[int, int, int]], reference: Optional[torch.Tensor], cache: PrefixCache,
         name: str, encoder_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The target's predicted velocity (B, tokens, 64). ``img_shapes``: target first, then each
    reference (the workbench's order); 2.1 takes references first and the target last."""
    n = latents.shape[0]
    x = latents if reference is None else torch.cat([reference.expand(n, -1, -1), latents], dim=1)
    shapes = list(img_shapes[1:]) + [img_shapes[0]]
    kv_cache, mode = cache.get(name)
    out = transformer(
        hidden_states=x,
        timestep=timestep.expand(n).to(latents.dtype) / 1000,
        encoder_hidden_states=cond.embeds.to(latents.dtype),
        encoder_hidden_states_mask=encoder_mask,
        img_shapes=[shapes] * n,
        img_mask=image_slots(cond, latents.shape[1]),
        kv_cache=kv_cache,
        kv_cache_mode=mode,
        return_dict=False,
    )[0]
    return out[:, -latents.shape[1]:]
