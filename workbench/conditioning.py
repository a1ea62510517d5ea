"""The conditioning a denoiser sees, with everything needed to inspect how it was made."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

import torch

from workbench.errors import InputError


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (B, L, D) last hidden state with the template prefix dropped, zero-padded
    mask: torch.Tensor  # (B, L) bool, True on real tokens
    token_ids: list[list[int]]  # kept token ids per item (vision pads expanded)
    drop: list[int]  # tokens dropped per item (system prefix)
    template: str
    prompts: list[str]
    image_grids: list[tuple[int, int, int]] = field(default_factory=list)  # shared reference images

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def lengths(self) -> list[int]:
        return self.mask.sum(dim=1).tolist()

    def tokens(self, tokenizer, index: int = 0) -> list[str]:
        """Kept tokens of one item as strings (for display)."""
        return tokenizer.convert_ids_to_tokens(self.token_ids[index])

    def stats(self) -> dict:
        """Per-item debugging numbers: length, per-token norm summary, non-finite count."""
        out = []
        for i in range(len(self)):
            e = self.embeds[i, self.mask[i]].float()  # (L_i, D)
            norms = e.norm(dim=-1)
            out.append(
                {
                    "prompt": self.prompts[i],
                    "tokens": int(e.shape[0]),
                    "drop": self.drop[i],
                    "norm_mean": float(norms.mean()),
                    "norm_min": float(norms.min()),
                    "norm_max": float(norms.max()),
                    "nonfinite": int((~torch.isfinite(e)).sum()),
                }
            )
        return {"template": self.template, "items": out}

    def to(self, device) -> "Conditioning":
        """The same conditioning with its tensors on ``device`` (an encoder on the CPU, a DiT on the GPU)."""
        return dataclasses.replace(self, embeds=self.embeds.to(device), mask=self.mask.to(device))

    def select(self, indices: list[int]) -> "Conditioning":
        """A sub-batch, trimmed to its own longest item (indices may repeat: [0] * n gives n copies of item 0)."""
        n = len(self)
        indices = indices.tolist() if hasattr(indices, "tolist") else indices  # a numpy array or a tensor of indices
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (list, tuple)) or not indices or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= i < n for i in indices):
            raise InputError(f"select({indices!r:.80}): give a non-empty list of item indices in 0..{n - 1} "
                             f"(this conditioning holds {n} prompt(s))")
        indices = [int(i) for i in indices]
        idx = torch.tensor(indices, device=self.embeds.device)
        mask = self.mask.index_select(0, idx)
        length = int(mask.sum(dim=1).max())
        return Conditioning(
            embeds=self.embeds.index_select(0, idx)[:, :length],
            mask=mask[:, :length],
            token_ids=[self.token_ids[i] for i in indices],
            drop=[self.drop[i] for i in indices],
            template=self.template,
            prompts=[self.prompts[i] for i in indices],
            image_grids=self.image_grids,
        )


def pad_stack(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (L_i, D) tensors with zeros to (B, max L, D) plus a bool mask of real rows."""
    length = max(x.shape[0] for x in items)
    embeds = torch.stack([torch.cat([x, x.new_zeros(length - x.shape[0], x.shape[1])]) for x in items])
    mask = torch.stack(
        [torch.arange(length, device=x.device) < x.shape[0] for x in items]
    )
    return embeds, mask


def concat(a: Conditioning, b: Conditioning) -> Conditioning:
    """Stack two conditionings into one batch (e.g. cond + uncond for one CFG forward)."""
    rows = [a.embeds[i, a.mask[i]] for i in range(len(a))] + [b.embeds[i, b.mask[i]] for i in range(len(b))]
    embeds, mask = pad_stack(rows)
    return Conditioning(
        embeds=embeds,
        mask=mask,
        token_ids=a.token_ids + b.token_ids,
        drop=a.drop + b.drop,
        template=a.template,
        prompts=a.prompts + b.prompts,
        image_grids=a.image_grids,
    )
