"""A bounded LRU of conditionings, so that runs differing only after the text encoder never re-encode.

A sweep over steps, samplers, guidance, LoRAs or the transformer's precision encodes each
(prompt, template, reference image) once. The key holds everything the text encoder's output
depends on, and nothing else:

- the encoder's identity: ``Components.identity`` of the text encoder and tokenizer (tiny spec
  hash, or file name | size | mtime for loaded files), a sampled fingerprint of its weights, its
  dtype and device;
- the template (every ``TemplateConfig`` field, so an edited template or ``control_tokens`` misses);
- the prompts, in order;
- a SHA-256 of each reference image's pixels as handed to the encoder (after reference sizing, so
  the sizing policy is covered), and the preprocessing settings (resample filter, pixel bounds);
- ``max_sequence_length``.

A different model has a different identity, so a stale entry cannot be returned. Components
without an identity (hand-built) are never cached. Conditionings come back shared: treat them as
read-only (``Conditioning.select`` and ``concat`` make new tensors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from typing import Callable, Optional

from PIL import Image

from workbench.conditioning import Conditioning
from workbench.values import plain


def image_digest(image: Image.Image) -> str:
    """Content hash of a PIL image: mode, size and raw pixels."""
    h = hashlib.sha256(f"{image.mode}|{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def weights_fingerprint(module) -> str:
    """A cheap hash of a module's weights: name, shape, dtype and 16 strided samples of each tensor.

    Computed once per module object (kept on it). It backs up ``Components.identity``, whose file
    form (name | size | mtime in seconds) cannot tell apart two same-sized files written within one
    second. Weights changed in place afterwards are not seen: build new components instead.
    """
    cached = getattr(module, "_workbench_fingerprint", None)
    if cached is not None:
        return cached
    import torch

    h = hashlib.sha256()
    samples = []
    try:
        with torch.no_grad():
            for name, t in list(module.named_parameters()) + list(module.named_buffers()):
                h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
                if t.device.type == "meta" or t.numel() == 0:
                    continue
                flat = t.detach().reshape(-1)
                samples.append(flat[:: max(1, flat.numel() // 16)][:16].float().cpu())
        if samples:
            h.update(torch.cat(samples).numpy().tobytes())
        digest = h.hexdigest()[:16]
    except Exception:  # exotic tensor subclasses (quantised weights): fall back to the object itself
        digest = f"object:{id(module)}"
    try:
        module._workbench_fingerprint = digest
    except Exception:
        pass
    return digest


def encoder_identity(components) -> Optional[dict]:
    """What identifies the text encoder's function, or None when the components carry no identity."""
    ident = getattr(components, "identity", None) or {}
    if not ident.get("text_encoder"):
        return None
    te = components.text_encoder
    return {
        "text_encoder": ident["text_encoder"],
        "tokenizer": ident.get("tokenizer", ""),
        "weights": weights_fingerprint(te),
        "dtype": str(getattr(te, "dtype", "")),
        "device": str(getattr(te, "device", components.device)),
    }


def _template_dict(template) -> dict:
    d = dataclasses.asdict(template) if dataclasses.is_dataclass(template) else dict(template)
    return {k: plain(v) for k, v in d.items()}


class ConditioningCache:
    """LRU of ``Conditioning`` objects with hit / miss counters (``stats()``)."""

    def __init__(self, max_entries: int = 32):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: "OrderedDict[str, Conditioning]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def key(
        self,
        components,
        template,
        prompts,
        images=(),
        max_sequence_length: int = 1024,
        preprocessing: Optional[dict] = None,
    ) -> Optional[str]:
        """The cache key of one encode call, or None when it must not be cached (no encoder identity)."""
        ident = encoder_identity(components)
        if ident is None:
            return None
        parts = {
            "encoder": ident,
            "template": _template_dict(template),
            "prompts": list(prompts),
            "images": [image_digest(img) for img in images],
            "preprocessing": preprocessing or {},
            "max_sequence_length": int(max_sequence_length),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get_or_encode(self, key: Optional[str], encode: Callable[[], Conditioning]) -> Conditioning:
        """The cached conditioning for ``key``, else ``encode()`` (stored unless key is None)."""
        if key is not None and key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        cond = encode()
        if key is not None and self.max_entries > 0:
            self._entries[key] = cond
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return cond

    def clear(self) -> int:
        """Drop every entry (counters are kept); returns how many were dropped."""
        n = len(self._entries)
        self._entries.clear()
        return n

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self), "max_entries": self.max_entries}

    def __repr__(self) -> str:
        s = self.stats()
        return f"ConditioningCache({s['entries']}/{s['max_entries']} entries, {s['hits']} hits, {s['misses']} misses)"


# shared by every Workbench of the process (sweeps and notebooks build several on the same models)
DEFAULT_CACHE = ConditioningCache(max_entries=32)
