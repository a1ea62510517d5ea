"""The synthetic world as training data: scenes and edit pairs from the data seed, captions, pixels."""

from __future__ import annotations

import os

import numpy as np
import torch

from workbench.training import world
from workbench.training.config import TrainConfig

def t2i_scenes(cfg: TrainConfig) -> list[world.Scene]:
    rng = np.random.default_rng(cfg.data_seed)
    return [world.random_scene(rng, held_out=False) for _ in range(cfg.data.images)]


def edit_pairs(cfg: TrainConfig) -> list[world.EditPair]:
    rng = np.random.default_rng(cfg.data_seed + 1)
    return [world.random_edit(rng, held_out=False) for _ in range(cfg.data.edit_pairs)]


def scene_captions(s: world.Scene) -> list[str]:
    """The four caption columns of an image: short, long, Chinese, long with "center" (or long again)."""
    centre = world.caption_long(s, "center") if s.position == "centre" else world.caption_long(s)
    return [world.caption_short(s), world.caption_long(s), world.caption_zh(s), centre]


def images_tensor(scenes: list[world.Scene]) -> torch.Tensor:
    """(N, 3, 1, 64, 64) in [-1, 1], rendered in parallel (PIL drawing is the slow part)."""
    from concurrent.futures import ProcessPoolExecutor

    workers = min(16, os.cpu_count() or 1)
    if len(scenes) < 2000 or workers == 1:
        arrays = [np.asarray(world.render(s)) for s in scenes]
    else:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_render_array, scenes, chunksize=256))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x[:, :, None]


def _render_array(s: world.Scene) -> np.ndarray:
    return np.asarray(world.render(s))


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), length, rows[0].shape[1], dtype=torch.float16)
    lengths = torch.tensor([r.shape[0] for r in rows])
    for i, r in enumerate(rows):
        embeds[i, : r.shape[0]] = r.half()
    return embeds, lengths
