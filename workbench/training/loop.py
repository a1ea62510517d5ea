"""What the VAE and DiT training loops share: the schedule's progress, the learning rate, thinned curves."""

from __future__ import annotations

import time

import numpy as np
import torch


def progress(step: int, steps: int, t0: float, max_seconds: float) -> float:
    """Fraction of the schedule done: by steps, or by time when a time limit is set (whichever is further)."""
    return max(step / steps, (time.time() - t0) / max_seconds if max_seconds else 0.0)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def thin(curve: list[float], every: int = 100) -> list[float]:
    """Means of consecutive ``every`` values: a loss curve small enough for record.json."""
    return [round(float(np.mean(curve[i : i + every])), 5) for i in range(0, len(curve), every)]
